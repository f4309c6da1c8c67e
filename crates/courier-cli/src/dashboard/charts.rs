//! The overview's charts: published events per second and commit→ACK p50/p99 over the last
//! minutes. The relay already counts published events and buckets commit→ACK latencies for
//! `/metrics`; a sampler turns the change of those figures each second into a point, kept in a
//! short ring, and the charts are drawn from the ring as SVG on the server.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::html::escape;

/// The upper bounds (seconds) of the commit→ACK buckets: 0.5 ms doubling up to ~65 s, shared
/// with the `courier_commit_to_ack` histogram.
pub fn latency_bounds() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 18)
}

/// How often a point is taken, and how many are kept (five minutes).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const POINTS_KEPT: usize = 300;

/// One second of the relay's work.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Point {
    /// Seconds since the Unix epoch at the end of the interval.
    pub at: i64,
    pub published_per_s: f64,
    /// `None` when nothing was acknowledged in the interval.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Commit→ACK latencies counted per bucket since the start, lock-free: the relay's ACK path
/// adds to one counter per event.
pub struct Recent {
    bounds: Vec<f64>,
    /// One more than `bounds`: the last counts latencies above every bound.
    counts: Vec<AtomicU64>,
    points: Mutex<VecDeque<Point>>,
}

impl Default for Recent {
    fn default() -> Self {
        let bounds: Vec<f64> = latency_bounds().collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self { bounds, counts, points: Mutex::new(VecDeque::with_capacity(POINTS_KEPT)) }
    }
}

impl Recent {
    /// Counts one commit→ACK latency.
    pub fn observe(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = self.bounds.partition_point(|bound| *bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// The points kept, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points.lock().expect("points lock").iter().copied().collect()
    }

    /// Takes a point every [`SAMPLE_EVERY`] from `published` (the relay's counter of published
    /// rows) and the latency buckets; runs until the task is dropped.
    pub async fn sample(&self, published: impl Fn() -> u64) {
        let mut ticker = tokio::time::interval(SAMPLE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let (mut last_published, mut last_counts, mut last_at) =
            (published(), self.snapshot(), std::time::Instant::now());
        loop {
            ticker.tick().await;
            let (now_published, counts, now) = (published(), self.snapshot(), std::time::Instant::now());
            let delta: Vec<u64> = counts.iter().zip(&last_counts).map(|(now, then)| now - then).collect();
            let elapsed = now.duration_since(last_at).as_secs_f64().max(f64::EPSILON);
            let point = Point {
                at: chrono::Utc::now().timestamp(),
                published_per_s: (now_published - last_published) as f64 / elapsed,
                p50_ms: quantile(&self.bounds, &delta, 0.5).map(|s| s * 1000.0),
                p99_ms: quantile(&self.bounds, &delta, 0.99).map(|s| s * 1000.0),
            };
            let mut points = self.points.lock().expect("points lock");
            if points.len() == POINTS_KEPT {
                points.pop_front();
            }
            points.push_back(point);
            drop(points);
            (last_published, last_counts, last_at) = (now_published, counts, now);
        }
    }
}

/// The `q` quantile of latencies counted in buckets with upper `bounds` (`counts` has one more
/// entry, above the last bound), interpolated linearly within its bucket as Prometheus'
/// `histogram_quantile` does; `None` without observations. Above the last bound it is that bound.
pub fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &count) in counts.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let Some(&upper) = bounds.get(i) else { return bounds.last().copied() };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += count;
    }
    bounds.last().copied()
}

/// One line of a chart: its label, colour and `(seconds since the Unix epoch, value)` points.
pub struct Series<'a> {
    pub label: &'a str,
    pub colour: &'a str,
    pub points: Vec<(i64, f64)>,
}

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 140.0;
const TOP: f64 = 20.0;

/// A line chart of `series` over the `window_s` seconds up to `now` as an SVG element, the y
/// axis from zero to the largest value. Labels are escaped like any other text.
pub fn line_chart(title: &str, unit: &str, series: &[Series<'_>], now: i64, window_s: i64) -> String {
    let max = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let x = |at: i64| WIDTH * (1.0 - (now - at) as f64 / window_s as f64);
    let y = |v: f64| TOP + (HEIGHT - TOP) * (1.0 - v / top);
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{title}">"#,
        title = escape(title)
    );
    let _ = write!(
        svg,
        r#"<rect x="0" y="{TOP}" width="{WIDTH}" height="{h}" class="plot"/><text x="4" y="14">{title} (max {max} {unit})</text>"#,
        h = HEIGHT - TOP,
        title = escape(title),
        max = round(max),
        unit = escape(unit),
    );
    let mut legend_x = WIDTH - 4.0;
    for s in series.iter().rev() {
        let _ = write!(
            svg,
            r#"<text x="{legend_x}" y="14" text-anchor="end" fill="{colour}">{label}</text>"#,
            colour = escape(s.colour),
            label = escape(s.label)
        );
        legend_x -= 8.0 * s.label.len() as f64 + 12.0;
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|(at, _)| now - at <= window_s)
            .map(|&(at, v)| format!("{:.1},{:.1}", x(at), y(v)))
            .collect();
        if let Some(last) = points.last() {
            // The newest point as a dot too: a line of one point draws nothing.
            let (cx, cy) = last.split_once(',').expect("x,y");
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/><circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>"#,
                colour = escape(s.colour),
                points = points.join(" ")
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// `v` to three significant figures, for labels.
fn round(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The overview's two charts, drawn from `points`.
pub fn overview_charts(points: &[Point], now: i64) -> String {
    let window = POINTS_KEPT as i64 * SAMPLE_EVERY.as_secs() as i64;
    let series = |f: fn(&Point) -> Option<f64>| points.iter().filter_map(|p| Some((p.at, f(p)?))).collect();
    let published =
        [Series { label: "published/s", colour: "#2a6fdb", points: series(|p| Some(p.published_per_s)) }];
    let latency = [
        Series { label: "p50", colour: "#2a9d55", points: series(|p| p.p50_ms) },
        Series { label: "p99", colour: "#d9822b", points: series(|p| p.p99_ms) },
    ];
    line_chart("published per second", "/s", &published, now, window)
        + &line_chart("commit→ACK latency", "ms", &latency, now, window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let bounds = [1.0, 2.0, 4.0];
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        // 10 in (0,1], 10 in (1,2]: the median is the top of the first bucket.
        assert_eq!(quantile(&bounds, &[10, 10, 0, 0], 0.5), Some(1.0));
        assert_eq!(quantile(&bounds, &[10, 10, 0, 0], 0.75), Some(1.5));
        assert_eq!(quantile(&bounds, &[0, 0, 4, 0], 0.5), Some(3.0));
        // Above every bound, the last bound.
        assert_eq!(quantile(&bounds, &[1, 0, 0, 99], 0.99), Some(4.0));
    }

    #[test]
    fn observed_latencies_land_in_the_histograms_buckets() {
        let recent = Recent::default();
        recent.observe(Duration::from_micros(400)); // <= 0.5 ms
        recent.observe(Duration::from_micros(500)); // <= 0.5 ms: bounds are inclusive
        recent.observe(Duration::from_millis(3)); // (2 ms, 4 ms]
        recent.observe(Duration::from_secs(600)); // above every bound
        let counts = recent.snapshot();
        assert_eq!(counts[0], 2);
        assert_eq!(counts[3], 1);
        assert_eq!(counts[18], 1);
        assert_eq!(counts.iter().sum::<u64>(), 4);
    }

    #[test]
    fn a_chart_plots_points_in_its_window_and_escapes_its_labels() {
        let series =
            [Series { label: "<p99>", colour: "red", points: vec![(100, 5.0), (160, 10.0), (-500, 1.0)] }];
        let svg = line_chart("a & b", "ms", &series, 160, 60);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(svg.contains("a &amp; b (max 10.0 ms)") && svg.contains("&lt;p99&gt;"), "{svg}");
        // x from 0 (60 s ago) to 600 (now); y from 20 (top, 11.0) to 140 (zero).
        let top = 20.0 + 120.0 * (1.0 - 10.0 / 11.0);
        assert!(
            svg.contains(&format!(r#"points="0.0,{:.1} 600.0,{top:.1}""#, 20.0 + 120.0 * (1.0 - 5.0 / 11.0))),
            "{svg}"
        );
    }

    #[test]
    fn an_empty_chart_is_still_drawn() {
        let svg = overview_charts(&[], 0);
        assert_eq!(svg.matches("<svg").count(), 2);
        assert!(!svg.contains("<polyline"), "{svg}");
    }
}
