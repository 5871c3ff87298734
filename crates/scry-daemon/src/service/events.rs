//! Events: queries shared by the REST API, the CLI (through REST) and MCP: time windows, filters
//! on process and on captured values (`where`), statistics, and waiting for new hits.
//!
//! A `where` is one or more comparisons joined by `&&`: `EXPR OP VALUE`, where `EXPR` is a
//! probe's expression exactly as it was added (`total`, `order['id']`), `OP` one of `==` (or
//! `=`), `!=`, `<`, `<=`, `>`, `>=`, and `VALUE` a number, `true`/`false`, `None`, a quoted
//! string or a bare word (a string). It is parsed here, never evaluated: numbers compare with
//! numeric values (`int`, `float`, `bool`), strings with `str` values; an event whose value is
//! missing or of another type does not match.
//!
//! Value filters run on the daemon over at most [`scry_store::MAX_QUERY_LIMIT`] stored events
//! per query (the newest or oldest, as asked); every answer says how many events it scanned
//! and matched and whether it was cut by its limit or the scan window.
//!
//! Not for: SQL (the store's queries) or presentation (the CLI prints, MCP shapes tables).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use super::{blocking, Error, Result};
use crate::Shared;

/// A comparison operator of a `where`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==` or `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// The literal on the right of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A number.
    Num(f64),
    /// A string (quoted, or a bare word that is not a number).
    Str(String),
    /// `true` / `false` (also `True` / `False`).
    Bool(bool),
    /// `None` / `null`.
    None,
}

/// One comparison: `expr op value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The probe expression whose captured value is compared.
    pub expr: String,
    /// The operator.
    pub op: Op,
    /// The literal.
    pub value: Literal,
}

const OP_CHARS: &[char] = &['<', '>', '=', '!'];

/// Parses a `where`: comparisons joined by `&&`.
pub fn parse_where(text: &str) -> Result<Vec<Condition>, String> {
    let mut out = Vec::new();
    for part in text.split("&&") {
        out.push(parse_condition(part)?);
    }
    Ok(out)
}

fn parse_condition(text: &str) -> Result<Condition, String> {
    let t = text.trim();
    let example = "write EXPR OP VALUE, e.g. `total>100`, `customer=='c1'`, `ok==true` (OP: == != < <= > >=; join several with &&)";
    if t.is_empty() {
        return Err(format!("an empty condition: {example}"));
    }
    // The value: a trailing quoted string, else what follows the last operator character.
    let (before_value, value) =
        if let Some(q) = t.chars().last().filter(|c| *c == '\'' || *c == '"') {
            let body = &t[..t.len() - 1];
            let open = body
                .rfind(q)
                .ok_or_else(|| format!("`{t}`: a string that is not closed: {example}"))?;
            (&t[..open], Literal::Str(body[open + 1..].to_owned()))
        } else {
            let last = t
                .rfind(OP_CHARS)
                .ok_or_else(|| format!("`{t}` has no comparison: {example}"))?;
            let raw = t[last + 1..].trim();
            if raw.is_empty() {
                return Err(format!("`{t}` has nothing to compare with: {example}"));
            }
            if raw.starts_with(['\'', '"']) {
                return Err(format!("`{t}`: a string that is not closed: {example}"));
            }
            (&t[..=last], literal(raw))
        };
    let before = before_value.trim_end();
    let op_start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| OP_CHARS.contains(c))
        .last()
        .map(|(i, _)| i)
        .ok_or_else(|| format!("`{t}` has no comparison before its value: {example}"))?;
    let op = match &before[op_start..] {
        "==" | "=" => Op::Eq,
        "!=" => Op::Ne,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        other => return Err(format!("`{other}` in `{t}` is not an operator: {example}")),
    };
    let expr = before[..op_start].trim();
    if expr.is_empty() {
        return Err(format!("`{t}` names no expression: {example}"));
    }
    if matches!(value, Literal::None | Literal::Bool(_)) && !matches!(op, Op::Eq | Op::Ne) {
        return Err(format!(
            "`{t}`: only == and != compare with true, false or None"
        ));
    }
    Ok(Condition {
        expr: expr.to_owned(),
        op,
        value,
    })
}

fn literal(raw: &str) -> Literal {
    match raw {
        "true" | "True" => Literal::Bool(true),
        "false" | "False" => Literal::Bool(false),
        "None" | "null" | "none" => Literal::None,
        _ => match raw.parse::<f64>() {
            Ok(n) if n.is_finite() => Literal::Num(n),
            _ => Literal::Str(raw.to_owned()),
        },
    }
}

fn compare<T: PartialOrd>(a: T, op: Op, b: T) -> bool {
    match op {
        Op::Eq => a == b,
        Op::Ne => a != b,
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
    }
}

impl Condition {
    /// Whether the `values` object of a probe event satisfies this condition.
    pub fn matches(&self, values: &Value) -> bool {
        let typed = &values[self.expr.as_str()];
        let t = typed["t"].as_str();
        match &self.value {
            Literal::Num(n) => crate::stats::number(typed).is_some_and(|v| compare(v, self.op, *n)),
            Literal::Str(s) => {
                t == Some("str")
                    && typed["v"]
                        .as_str()
                        .is_some_and(|v| compare(v, self.op, s.as_str()))
            }
            Literal::Bool(b) => {
                t == Some("bool")
                    && typed["v"]
                        .as_bool()
                        .is_some_and(|v| compare(v, self.op, *b))
            }
            Literal::None => match self.op {
                Op::Eq => t == Some("none"),
                Op::Ne => t.is_some() && t != Some("none"),
                _ => false,
            },
        }
    }
}

/// Parses a time: a duration ago (`30s`, `5m`, `2h`: a unit is required), an RFC 3339 time
/// (`2026-11-21T12:00:00Z`), or epoch seconds (a bare number).
pub fn parse_time(text: &str) -> Result<f64, String> {
    let t = text.trim();
    // A bare number is epoch seconds; a duration always has a unit.
    if let Ok(secs) = t.parse::<f64>() {
        return if secs.is_finite() {
            Ok(secs)
        } else {
            Err(format!("`{text}` is not a time"))
        };
    }
    if let Ok(d) = crate::config::parse_duration(t) {
        return Ok(crate::now() - d.as_secs_f64());
    }
    humantime::parse_rfc3339_weak(t)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .ok_or_else(|| {
            format!("`{text}` is neither a duration ago (30s, 5m, 2h), a time (2026-11-21T12:00:00Z) nor epoch seconds")
        })
}

/// Which events: the filters every query shares.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// A probe id or name.
    pub probe: Option<String>,
    /// A pid (every process that had it).
    pub pid: Option<u32>,
    /// A registered process name.
    pub process: Option<String>,
    /// A store row id of a process.
    pub process_id: Option<i64>,
    /// An event source (a probe id for probe events).
    pub source: Option<String>,
    /// An event kind (`probe`, `log`, …).
    pub kind: Option<String>,
    /// From this time (see [`parse_time`]).
    pub since: Option<String>,
    /// Until this time (exclusive).
    pub until: Option<String>,
    /// Value conditions (see the module docs).
    #[serde(rename = "where")]
    pub where_: Option<String>,
    /// Only events stored after this event id (a cursor).
    pub after_id: Option<i64>,
}

/// A filter checked and resolved against the daemon's probes and processes.
#[derive(Debug, Clone)]
pub struct Selection {
    query: scry_store::EventQuery,
    process_ids: Option<Vec<i64>>,
    conditions: Vec<Condition>,
}

fn bad(message: impl Into<String>) -> Error {
    Error::bad_request(message)
}

impl EventFilter {
    /// Checks and resolves the filter; every mistake is a `bad_request` or `not_found` that
    /// says what to write instead.
    pub fn select(&self, shared: &Shared) -> Result<Selection> {
        let source = match &self.probe {
            Some(p) => super::probes::resolve_source(shared, Some(p.clone()))?,
            None => self.source.clone(),
        };
        let mut process_ids: Option<Vec<i64>> = self.process_id.map(|id| vec![id]);
        if let Some(pid) = self.pid {
            let ids = super::processes::row_ids_for_pid(shared, pid);
            if ids.is_empty() {
                return Err(
                    Error::not_found(format!("scry knows no process {pid}")).hint("see `scry ps`")
                );
            }
            process_ids = Some(ids);
        }
        if let Some(name) = &self.process {
            let ids: Vec<i64> = shared
                .registry()
                .views()
                .into_iter()
                .filter(|v| v.name.as_deref() == Some(name.as_str()))
                .map(|v| v.id)
                .collect();
            if ids.is_empty() {
                return Err(
                    Error::not_found(format!("scry knows no process named `{name}`"))
                        .hint("see `scry ps` for names"),
                );
            }
            process_ids = Some(match process_ids {
                Some(prev) => prev.into_iter().filter(|i| ids.contains(i)).collect(),
                None => ids,
            });
        }
        let since = self
            .since
            .as_deref()
            .map(parse_time)
            .transpose()
            .map_err(bad)?;
        let until = self
            .until
            .as_deref()
            .map(parse_time)
            .transpose()
            .map_err(bad)?;
        let conditions = match self.where_.as_deref() {
            Some(w) if !w.trim().is_empty() => {
                parse_where(w).map_err(|e| bad(format!("where: {e}")))?
            }
            _ => Vec::new(),
        };
        let kind = match (&self.kind, conditions.is_empty(), &self.probe) {
            (Some(k), _, _) => Some(k.clone()),
            // Values exist on probe events only.
            (None, false, _) | (None, _, Some(_)) => Some("probe".to_owned()),
            (None, true, None) => None,
        };
        let store_process = match process_ids.as_deref() {
            Some([one]) => Some(*one),
            _ => None,
        };
        Ok(Selection {
            query: scry_store::EventQuery {
                source,
                process_id: store_process,
                kind,
                since,
                until,
                after_id: self.after_id,
                limit: scry_store::MAX_QUERY_LIMIT,
                order: scry_store::Order::Newest,
            },
            process_ids,
            conditions,
        })
    }
}

impl Selection {
    fn keeps(&self, e: &scry_store::EventRow) -> bool {
        self.process_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&e.process_id))
            && self.conditions.iter().all(|c| c.matches(&e.data["values"]))
    }

    /// Whether the daemon filters after reading (then it scans a window, not just a page).
    fn filters_after_read(&self) -> bool {
        !self.conditions.is_empty() || self.process_ids.as_ref().is_some_and(|ids| ids.len() != 1)
    }
}

/// Events found, with the counts that say whether the answer is complete.
#[derive(Debug)]
pub struct Found {
    /// The events kept, in the requested order, at most the limit.
    pub events: Vec<scry_store::EventRow>,
    /// Events read from the store.
    pub scanned: usize,
    /// Of those, events that matched every filter.
    pub matched: usize,
    /// More events may match than are returned (cut by the limit or by the scan window).
    pub truncated: bool,
    /// The store held more events in the window than one scan reads.
    pub scan_truncated: bool,
}

/// Reads the events of `sel`, `limit` of them from the `order` end.
pub async fn find(
    shared: &Shared,
    sel: &Selection,
    limit: usize,
    order: scry_store::Order,
) -> Result<Found> {
    let limit = limit.clamp(1, scry_store::MAX_QUERY_LIMIT);
    let mut query = sel.query.clone();
    query.order = order;
    if !sel.filters_after_read() {
        query.limit = limit;
    }
    let store = shared.store.clone();
    let page = blocking(move || store.events(&query)).await?;
    let scanned = page.events.len();
    let mut kept: Vec<scry_store::EventRow> =
        page.events.into_iter().filter(|e| sel.keeps(e)).collect();
    let matched = kept.len();
    let cut = kept.len() > limit;
    kept.truncate(limit);
    let filtered = sel.filters_after_read();
    Ok(Found {
        events: kept,
        scanned,
        matched,
        truncated: cut || page.truncated,
        scan_truncated: filtered && page.truncated,
    })
}

/// An event as the API shows it: the stored row plus its process's pid and name.
pub fn event_json(shared: &Shared, events: Vec<scry_store::EventRow>) -> Vec<Value> {
    let procs: std::collections::HashMap<i64, (u32, Option<String>)> = shared
        .registry()
        .views()
        .into_iter()
        .map(|v| (v.id, (v.pid, v.name)))
        .collect();
    events
        .into_iter()
        .map(|e| {
            let found = procs.get(&e.process_id);
            let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
            v["pid"] = json!(found.map(|p| p.0));
            v["name"] = json!(found.and_then(|p| p.1.clone()));
            v
        })
        .collect()
}

/// The counts part of an answer.
pub fn counts(found: &Found) -> Value {
    json!({
        "returned": found.events.len(),
        "matched": found.matched,
        "scanned": found.scanned,
        "scan_truncated": found.scan_truncated,
    })
}

/// Statistics of the probe values of `sel` (the newest [`scry_store::MAX_QUERY_LIMIT`]).
pub async fn stats(shared: &Shared, sel: &Selection) -> Result<Value> {
    let found = find(
        shared,
        sel,
        scry_store::MAX_QUERY_LIMIT,
        scry_store::Order::Newest,
    )
    .await?;
    let values = found.events.iter().map(|e| &e.data["values"]);
    Ok(json!({
        "count": found.events.len(),
        "truncated": found.truncated,
        "counts": counts(&found),
        "expressions": crate::stats::summarize(values),
    }))
}

/// The id of the newest stored event (0 when none): a cursor for "from now on".
pub async fn newest_id(shared: &Shared) -> Result<i64> {
    let store = shared.store.clone();
    let q = scry_store::EventQuery {
        limit: 1,
        order: scry_store::Order::Newest,
        after_id: Some(0),
        ..Default::default()
    };
    let page = blocking(move || store.events(&q)).await?;
    Ok(page.events.first().map(|e| e.id).unwrap_or(0))
}

/// Waits until `count` events of `sel` newer than `after_id` (default: now) are stored, or
/// `timeout` passes; the answer says which.
pub async fn wait(
    shared: &Shared,
    sel: &Selection,
    after_id: Option<i64>,
    count: usize,
    timeout: Duration,
) -> Result<Value> {
    let start_after = match after_id {
        Some(id) => id,
        None => newest_id(shared).await?,
    };
    // Zero events are always already there: answer at once instead of waiting for nothing.
    if count == 0 {
        return Ok(json!({
            "reached": true,
            "timed_out": false,
            "wanted": 0,
            "count": 0,
            "cursor": start_after,
            "events": [],
        }));
    }
    let count = count.min(scry_store::MAX_QUERY_LIMIT);
    let deadline = Instant::now() + timeout;
    let mut stop = shared.shutdown_signal();
    let mut got: Vec<scry_store::EventRow> = Vec::new();
    let mut cursor = start_after;
    loop {
        // Walk the store from the cursor in the order events were stored; the cursor moves
        // over every event read, matching or not, so none is read twice.
        let mut q = sel.query.clone();
        q.after_id = Some(cursor);
        q.order = scry_store::Order::Oldest;
        q.limit = scry_store::MAX_QUERY_LIMIT;
        let store = shared.store.clone();
        let page = blocking(move || store.events(&q)).await?;
        for e in page.events {
            cursor = e.id;
            if got.len() < count && sel.keeps(&e) {
                got.push(e);
            }
        }
        let reached = got.len() >= count;
        if reached || Instant::now() >= deadline || *stop.borrow() {
            return Ok(json!({
                "reached": reached,
                "timed_out": !reached,
                "wanted": count,
                "count": got.len(),
                "cursor": cursor,
                "events": event_json(shared, got),
            }));
        }
        let pause =
            Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Parses `newest` / `oldest`.
pub fn parse_order(order: Option<&str>) -> Result<scry_store::Order> {
    match order {
        None | Some("newest") => Ok(scry_store::Order::Newest),
        Some("oldest") => Ok(scry_store::Order::Oldest),
        Some(o) => Err(bad(format!(
            "order must be `newest` or `oldest`, not `{o}`"
        ))),
    }
}

/// The longest a wait may block.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// Checks a wait's timeout (seconds).
pub fn wait_timeout(seconds: Option<f64>) -> Result<Duration> {
    let s = seconds.unwrap_or(30.0);
    if !s.is_finite() || s < 0.0 || s > MAX_WAIT.as_secs_f64() {
        return Err(bad(format!(
            "timeout must be 0 to {} seconds",
            MAX_WAIT.as_secs()
        )));
    }
    Ok(Duration::from_secs_f64(s))
}

/// A page of events (`GET /api/v1/events`, `query_events`): `{"events", "truncated", "counts"}`.
pub async fn page(
    shared: &Shared,
    filter: &EventFilter,
    limit: Option<usize>,
    order: Option<&str>,
) -> Result<Value> {
    let order = parse_order(order)?;
    let sel = filter.select(shared)?;
    let found = find(shared, &sel, limit.unwrap_or(100), order).await?;
    let c = counts(&found);
    let truncated = found.truncated;
    Ok(json!({"events": event_json(shared, found.events), "truncated": truncated, "counts": c}))
}

/// Statistics of the matching probe values (`GET /api/v1/events/stats`, `event_stats`).
pub async fn stats_of(shared: &Shared, filter: &EventFilter) -> Result<Value> {
    let sel = filter.select(shared)?;
    let mut s = stats(shared, &sel).await?;
    s["probe"] = json!(filter.probe);
    Ok(s)
}

/// Waits for `count` (default 1) new matching events after the filter's `after_id` (default:
/// now), at most `timeout` seconds (default 30).
pub async fn wait_for(
    shared: &Shared,
    mut filter: EventFilter,
    count: Option<usize>,
    timeout: Option<f64>,
) -> Result<Value> {
    let timeout = wait_timeout(timeout)?;
    let after = filter.after_id.take();
    let sel = filter.select(shared)?;
    wait(shared, &sel, after, count.unwrap_or(1), timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(text: &str) -> Condition {
        let mut v = parse_where(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn parses_comparisons() {
        assert_eq!(
            cond("total>100"),
            Condition {
                expr: "total".into(),
                op: Op::Gt,
                value: Literal::Num(100.0)
            }
        );
        assert_eq!(cond(" total >= 2.5 ").op, Op::Ge);
        assert_eq!(cond("x=3").op, Op::Eq);
        assert_eq!(cond("order['id'] != 7").expr, "order['id']");
        assert_eq!(cond("customer=='c>1'").value, Literal::Str("c>1".into()));
        assert_eq!(cond("customer==c1").value, Literal::Str("c1".into()));
        assert_eq!(cond("ok == true").value, Literal::Bool(true));
        assert_eq!(cond("x==None").value, Literal::None);
        assert_eq!(cond("a > b < 3").expr, "a > b");
        assert_eq!(parse_where("a>1 && b=='x'").map(|v| v.len()), Ok(2));
    }

    #[test]
    fn refuses_bad_syntax_with_a_reason() {
        for bad in [
            "", "total", "total>", ">3", "x => 3", "x <> 3", "x=='open", "x < None", "a>1 &&",
        ] {
            let err = parse_where(bad).expect_err(bad);
            assert!(
                err.contains("EXPR OP VALUE") || err.contains("only =="),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn matches_typed_values() {
        let v = json!({
            "total": {"t": "float", "v": 150.5},
            "n": {"t": "int", "v": 3},
            "customer": {"t": "str", "v": "c1"},
            "ok": {"t": "bool", "v": true},
            "none": {"t": "none"},
            "err": {"t": "error", "type": "KeyError"},
        });
        assert!(cond("total>100").matches(&v));
        assert!(!cond("total<100").matches(&v));
        assert!(cond("n==3").matches(&v));
        assert!(cond("n<=3").matches(&v));
        assert!(cond("customer=='c1'").matches(&v));
        assert!(cond("customer<'c2'").matches(&v));
        assert!(
            !cond("customer>5").matches(&v),
            "a string never compares with a number"
        );
        assert!(cond("ok==true").matches(&v));
        assert!(cond("ok==1").matches(&v), "bools are numbers too");
        assert!(cond("none==None").matches(&v));
        assert!(cond("n!=None").matches(&v));
        assert!(!cond("err>0").matches(&v));
        assert!(!cond("missing==1").matches(&v));
    }

    #[test]
    fn times() {
        let now = crate::now();
        let five_min = parse_time("5m").expect("5m");
        assert!((now - 300.0 - five_min).abs() < 5.0);
        assert_eq!(parse_time("2026-11-21T12:00:00Z"), Ok(1_795_262_400.0));
        assert_eq!(parse_time("1795262400.5"), Ok(1_795_262_400.5));
        assert!(parse_time("yesterday").is_err());
    }
}
