//! The selection a request names in its query string, for the JSON API and the pages alike:
//! `status`, `topic`, `aggregate_type`, `aggregate_id`, `event_type`, `error` (text the last
//! error contains), `from`/`to` (enqueue time), `id` (repeatable), `before` (the keyset cursor:
//! the last id of the previous page), `limit`, and for bulk actions `all` and `dry_run`.

use chrono::{DateTime, NaiveDateTime, Utc};
use courier_outbox::{EventFilter, EventStatus};

/// Events per page unless `limit` says otherwise, and the most a page may hold.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// What a query string selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub status: Option<EventStatus>,
    pub filter: EventFilter,
    pub before: Option<i64>,
    pub limit: u32,
    /// A bulk action on an empty filter must say that it means every dead event.
    pub all: bool,
    /// Count what a bulk action would change, changing nothing.
    pub dry_run: bool,
}

impl Default for Selection {
    fn default() -> Self {
        Self {
            status: None,
            filter: EventFilter::default(),
            before: None,
            limit: DEFAULT_LIMIT,
            all: false,
            dry_run: false,
        }
    }
}

/// Parses `params` (name, value); an empty value counts as absent, as an empty form field sends
/// it. Refuses unknown names and bad values, naming the parameter.
pub fn parse(params: &[(String, String)]) -> Result<Selection, String> {
    let mut selection = Selection::default();
    for (name, value) in params {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let filter = &mut selection.filter;
        match name.as_str() {
            "status" => selection.status = Some(value.parse()?),
            "topic" => filter.topic = Some(value.to_owned()),
            "aggregate_type" => filter.aggregate_type = Some(value.to_owned()),
            "aggregate_id" => filter.aggregate_id = Some(value.to_owned()),
            "event_type" => filter.event_type = Some(value.to_owned()),
            "error" => filter.error_contains = Some(value.to_owned()),
            "from" => filter.created_from = Some(time(name, value)?),
            "to" => filter.created_to = Some(time(name, value)?),
            "id" => filter.ids.push(number(name, value)?),
            "before" => selection.before = Some(number(name, value)?),
            "limit" => {
                selection.limit = match u32::try_from(number(name, value)?) {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                    _ => return Err(format!("limit must be between 1 and {MAX_LIMIT}")),
                }
            }
            "all" => selection.all = flag(name, value)?,
            "dry_run" => selection.dry_run = flag(name, value)?,
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: expected status, topic, aggregate_type, aggregate_id, \
                     event_type, error, from, to, id, before, limit, all or dry_run"
                ))
            }
        }
    }
    Ok(selection)
}

fn number(name: &str, value: &str) -> Result<i64, String> {
    value.parse().map_err(|_| format!("{name} must be an integer, got {value:?}"))
}

fn flag(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{name} must be true or false, got {value:?}")),
    }
}

/// An RFC 3339 time, or one without an offset (as an HTML `datetime-local` field sends it),
/// taken as UTC.
fn time(name: &str, value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S").map(|t| t.and_utc()))
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M").map(|t| t.and_utc()))
        .map_err(|_| format!("{name} must be a time like 2026-12-01T14:00:00Z, got {value:?}"))
}

/// The query string of `params` with `name` set to `value` (replacing it), for links to the
/// next page and to the actions on what a page shows. Not HTML-escaped.
pub fn with(params: &[(String, String)], name: &str, value: &str) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (n, v) in params.iter().filter(|(n, v)| n != name && !v.is_empty()) {
        query.append_pair(n, v);
    }
    if !value.is_empty() {
        query.append_pair(name, value);
    }
    query.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_parameter_is_read_and_empty_ones_are_absent() {
        let selection = parse(&params(&[
            ("status", "dead"),
            ("topic", "orders"),
            ("aggregate_type", ""),
            ("aggregate_id", "order-1"),
            ("event_type", "OrderPlaced"),
            ("error", "refused"),
            ("from", "2026-12-01T14:00:00Z"),
            ("to", "2026-12-01T15:30"),
            ("id", "3"),
            ("id", "4"),
            ("before", "99"),
            ("limit", "10"),
            ("dry_run", "true"),
        ]))
        .unwrap();
        assert_eq!(selection.status, Some(EventStatus::Dead));
        let f = &selection.filter;
        assert_eq!(f.topic.as_deref(), Some("orders"));
        assert_eq!(f.aggregate_type, None);
        assert_eq!(f.error_contains.as_deref(), Some("refused"));
        assert_eq!(f.created_from.unwrap().to_rfc3339(), "2026-12-01T14:00:00+00:00");
        assert_eq!(f.created_to.unwrap().to_rfc3339(), "2026-12-01T15:30:00+00:00");
        assert_eq!(f.ids, vec![3, 4]);
        assert_eq!(
            (selection.before, selection.limit, selection.all, selection.dry_run),
            (Some(99), 10, false, true)
        );
        assert_eq!(parse(&[]).unwrap(), Selection::default());
    }

    #[test]
    fn bad_input_is_refused_naming_the_parameter() {
        let error = |pairs: &[(&str, &str)]| parse(&params(pairs)).unwrap_err();
        assert!(error(&[("status", "gone")]).contains("unknown status \"gone\""));
        assert!(error(&[("before", "x")]).starts_with("before must be an integer"));
        assert!(error(&[("limit", "0")]).starts_with("limit must be between 1 and 500"));
        assert!(error(&[("limit", "501")]).starts_with("limit must be between 1 and 500"));
        assert!(error(&[("limit", "-1")]).starts_with("limit must be between 1 and 500"));
        assert!(error(&[("from", "yesterday")]).starts_with("from must be a time"));
        assert!(error(&[("all", "yes")]).starts_with("all must be true or false"));
        assert!(error(&[("offset", "50")]).starts_with("unknown parameter \"offset\""));
    }

    #[test]
    fn links_keep_the_selection_and_replace_one_parameter() {
        let params = params(&[("topic", "a&b"), ("before", "10"), ("status", "")]);
        assert_eq!(with(&params, "before", "5"), "topic=a%26b&before=5");
        assert_eq!(with(&params, "before", ""), "topic=a%26b");
    }
}
