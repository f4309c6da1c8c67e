//! SVG line charts for `courier bench report`, written by hand: a few lines per backend over the
//! pressure levels, on log-log axes because the levels span four orders of magnitude.

use std::fmt::Write as _;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// (x, y) points; points with a non-positive or non-finite coordinate are left out, as a log
    /// axis cannot show them.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (say, the bare client next to Courier).
    pub dashed: bool,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 8] =
    ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

/// A log-log line chart of `series` as an SVG document.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let shown: Vec<(&Series, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let points = s
                .points
                .iter()
                .copied()
                .filter(|&(x, y)| x > 0.0 && y > 0.0 && x.is_finite() && y.is_finite());
            (s, points.collect())
        })
        .collect();
    let all = shown.iter().flat_map(|(_, points)| points.iter().copied());
    let (x_range, y_range) = all
        .fold(None, |range: Option<((f64, f64), (f64, f64))>, (x, y)| {
            Some(match range {
                None => ((x, x), (y, y)),
                Some(((x0, x1), (y0, y1))) => ((x0.min(x), x1.max(x)), (y0.min(y), y1.max(y))),
            })
        })
        .unwrap_or(((1.0, 10.0), (1.0, 10.0)));
    let x_axis = LogAxis::new(x_range, LEFT, WIDTH - RIGHT);
    // SVG's y grows downwards.
    let y_axis = LogAxis::new(y_range, HEIGHT - BOTTOM, TOP);

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    svg.push('\n');
    let _ = writeln!(svg, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        escape(title)
    );
    for decade in x_axis.decades() {
        let x = x_axis.place(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 16.0,
            tick_label(decade)
        );
    }
    for decade in y_axis.decades() {
        let y = y_axis.place(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            tick_label(decade)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        WIDTH - RIGHT - LEFT,
        HEIGHT - BOTTOM - TOP
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 18.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">{1}</text>"#,
        (TOP + HEIGHT - BOTTOM) / 2.0,
        escape(y_label)
    );
    for (i, (series, points)) in shown.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let dash = if series.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let path: Vec<String> =
            points.iter().map(|&(x, y)| format!("{:.1},{:.1}", x_axis.place(x), y_axis.place(y))).collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x_axis.place(x),
                y_axis.place(y)
            );
        }
        let legend_y = TOP + 10.0 + 20.0 * i as f64;
        let legend_x = WIDTH - RIGHT + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            legend_x + 24.0,
            legend_x + 30.0,
            legend_y + 4.0,
            escape(&series.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A logarithmic axis from data range to pixel range, widened to whole decades.
struct LogAxis {
    low: f64,
    high: f64,
    from: f64,
    to: f64,
}

impl LogAxis {
    fn new((min, max): (f64, f64), from: f64, to: f64) -> Self {
        let low = min.log10().floor();
        let high = max.log10().ceil().max(low + 1.0);
        Self { low, high, from, to }
    }

    fn place(&self, value: f64) -> f64 {
        let share = (value.log10() - self.low) / (self.high - self.low);
        self.from + share * (self.to - self.from)
    }

    fn decades(&self) -> impl Iterator<Item = f64> {
        (self.low as i32..=self.high as i32).map(|e| 10f64.powi(e))
    }
}

/// `1000` as `1k`, `0.01` as `0.01`.
fn tick_label(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        // powi leaves noise in the last digits of 0.01 and below.
        v => format!("{}", (v * 1e6).round() / 1e6),
    }
}

/// Text made safe for an XML text node or attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series { name: name.into(), points: points.to_vec(), dashed: false }
    }

    #[test]
    fn a_chart_is_well_formed_xml_with_one_line_per_series() {
        let svg = line_chart(
            "Throughput <1 KiB> & more",
            "events",
            "events/s",
            &[series("nats", &[(500.0, 1e4), (1e6, 5e4)]), series("kafka", &[(500.0, 2e3)])],
        );
        let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
        let lines = doc.descendants().filter(|n| n.has_tag_name("polyline")).count();
        assert_eq!(lines, 2);
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"Throughput <1 KiB> & more"), "{texts:?}");
        assert!(texts.contains(&"nats") && texts.contains(&"kafka"));
    }

    #[test]
    fn points_a_log_axis_cannot_show_are_left_out() {
        let svg = line_chart("t", "x", "y", &[series("s", &[(0.0, 1.0), (10.0, f64::NAN), (10.0, 5.0)])]);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert_eq!(doc.descendants().filter(|n| n.has_tag_name("circle")).count(), 1);
        // No data at all still makes a valid, empty chart.
        roxmltree::Document::parse(&line_chart("t", "x", "y", &[])).unwrap();
    }

    #[test]
    fn the_log_axis_spans_whole_decades() {
        let axis = LogAxis::new((500.0, 1e6), 0.0, 100.0);
        assert_eq!(axis.decades().collect::<Vec<_>>(), vec![100.0, 1e3, 1e4, 1e5, 1e6]);
        assert_eq!(axis.place(100.0), 0.0);
        assert_eq!(axis.place(1e6), 100.0);
        assert!((axis.place(1e4) - 50.0).abs() < 1e-9);
        // One value still gets a decade of room.
        assert_eq!(LogAxis::new((1000.0, 1000.0), 0.0, 1.0).decades().count(), 2);
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick_label(1e6), "1M");
        assert_eq!(tick_label(1e4), "10k");
        assert_eq!(tick_label(0.1), "0.1");
        assert_eq!(tick_label(10f64.powi(-2)), "0.01");
    }
}
