//! Stored events: `GET /api/v1/events` answers an [`EventPage`], `/api/v1/events/stats` an
//! [`EventStats`], `/api/v1/events/wait` an [`EventWait`]; all three take an [`EventFilter`] in
//! their query string (the MCP tools `query_events`, `event_stats` and `wait_for_hits` answer the
//! same documents).
//!
//! An event's payload ([`Event::data`]) is what the agent sent, as it sent it: for a probe hit
//! `{"values": {EXPR: TYPED}, "file", "line", "function", ...}` where `TYPED` is a captured value
//! such as `{"t": "int", "v": 3}` (docs/protocol.md "Probe hits"); for a log record, a trace
//! batch or a crash, the fields that kind defines. It stays a JSON document here because its
//! shape belongs to the agent's protocol, not to this API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which events: the filters every event query shares (all optional, all combined).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// A probe id or name: that probe's hits only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// A pid (every process that ever had it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// A registered process name (`scry.init(name=...)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// A store row id of a process ([`crate::ProcessView::id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_id: Option<i64>,
    /// An event source (a probe id for probe events, a trace id for trace events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// An event kind (`probe`, `log`, `trace`, `crash`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// From this time: a duration ago (`30s`, `5m`, `2h`), an RFC 3339 time
    /// (`2026-11-21T12:00:00Z`) or epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Until this time (exclusive), written as `since` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Conditions on captured values, joined by `&&`: `EXPR OP VALUE` with `OP` one of `==`
    /// (or `=`), `!=`, `<`, `<=`, `>`, `>=`, e.g. `total>100 && customer=='c1'`. `EXPR` is a
    /// probe expression exactly as it was added. Numbers compare with `int`, `float` and `bool`
    /// values, strings with `str` values; an event whose value is missing or of another type
    /// does not match. Filtering by value reads at most 10,000 stored events per query.
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    pub where_: Option<String>,
    /// Only events stored after this event id (a cursor: [`Event::id`] or [`EventWait::cursor`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_id: Option<i64>,
}

/// One stored event, with the pid and name of the process it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its id: increases in the order events were stored and is never reused, so it is a
    /// gap-free cursor ([`EventFilter::after_id`]).
    pub id: i64,
    /// The store row id of its process.
    pub process_id: i64,
    /// What produced it: `probe`, `log`, `trace`, `crash`, ...
    pub kind: String,
    /// What it belongs to: a probe id, a trace id, a logger.
    pub source: Option<String>,
    /// When it happened in the target, seconds since the epoch.
    pub t_hit: f64,
    /// When the daemon stored it, seconds since the epoch.
    pub t_recv: f64,
    /// Its payload, as the agent sent it (see the module docs).
    pub data: Value,
    /// The pid of its process (None when the process is no longer known).
    pub pid: Option<u32>,
    /// The name of its process, if it has one.
    pub name: Option<String>,
}

impl Event {
    /// The captured value of `expr` in a probe hit (`{"t": ..., "v": ...}`), if it has one.
    pub fn value(&self, expr: &str) -> Option<&Value> {
        self.data.get("values")?.get(expr)
    }
}

/// How complete an answer is: what was read, what matched, what was returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Events in the answer.
    pub returned: usize,
    /// Events that matched every filter among those scanned.
    pub matched: usize,
    /// Events read from the store.
    pub scanned: usize,
    /// The store held more events in the window than one scan reads (10,000), so more may
    /// match than `matched` says; narrow the window with `since`/`until`.
    pub scan_truncated: bool,
}

/// `GET /api/v1/events`: a page of events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    /// The events, newest first (`order=newest`, the default) or oldest first.
    pub events: Vec<Event>,
    /// More events match than the page holds (cut by its limit or the scan window).
    pub truncated: bool,
    /// The counts behind `truncated`.
    pub counts: EventCounts,
}

/// `GET /api/v1/events/stats`: statistics of the captured values of matching probe hits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventStats {
    /// The probe asked for, as it was written.
    pub probe: Option<String>,
    /// Probe hits summarized (the newest 10,000 at most).
    pub count: usize,
    /// More hits matched than were summarized.
    pub truncated: bool,
    /// How complete the summary is.
    pub counts: EventCounts,
    /// Per probe expression, what its values were.
    pub expressions: BTreeMap<String, ExpressionStats>,
}

/// What one expression's captured values were.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExpressionStats {
    /// Hits that captured it.
    pub count: u64,
    /// Over its numeric values (`int`, `float`, `bool`), when it had some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric: Option<NumericStats>,
    /// Over its other values (strings, None, errors, objects), when it had some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<ValueCounts>,
}

/// Statistics of numeric values; percentiles by nearest rank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NumericStats {
    /// Numeric values seen.
    pub count: usize,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// The mean.
    pub mean: f64,
    /// The median.
    pub p50: f64,
    /// The 95th percentile.
    pub p95: f64,
    /// The 99th percentile.
    pub p99: f64,
}

/// The most frequent non-numeric values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueCounts {
    /// Distinct values seen.
    pub distinct: usize,
    /// The ten most frequent, as `[label, count]`, most frequent first: a string as itself,
    /// `None`, and `<Type>` for errors and objects.
    pub top: Vec<(String, u64)>,
}

/// `GET /api/v1/events/wait`: what arrived while waiting for new matching events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EventWait {
    /// `wanted` events arrived.
    pub reached: bool,
    /// The timeout passed first.
    pub timed_out: bool,
    /// How many events were waited for.
    pub wanted: usize,
    /// How many arrived (`events.len()`).
    pub count: usize,
    /// The id of the last event read: give it as `after_id` to wait again from here.
    pub cursor: i64,
    /// The events that arrived, oldest first.
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_reads_where_and_refuses_unknown_fields() {
        let f: EventFilter =
            serde_json::from_str(r#"{"probe":"p1","where":"x>1"}"#).expect("filter");
        assert_eq!(f.where_.as_deref(), Some("x>1"));
        assert!(serde_json::from_str::<EventFilter>(r#"{"prob":"p1"}"#).is_err());
    }

    #[test]
    fn stats_leave_out_what_was_not_seen() {
        let s = ExpressionStats {
            count: 2,
            numeric: None,
            values: Some(ValueCounts {
                distinct: 1,
                top: vec![("a".into(), 2)],
            }),
        };
        assert_eq!(
            serde_json::to_value(&s).expect("json"),
            serde_json::json!({"count": 2, "values": {"distinct": 1, "top": [["a", 2]]}})
        );
    }
}
