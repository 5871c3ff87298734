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

use scry_api::{Event, EventCounts, EventFilter, EventPage, EventStats, EventWait};
use serde_json::Value;

use super::{blocking, Error, Result};
use crate::config::parse_time;
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

/// Checks and resolves a filter; every mistake is a `bad_request` or `not_found` that says what
/// to write instead.
pub fn select(shared: &Shared, filter: &EventFilter) -> Result<Selection> {
    let source = match &filter.probe {
        Some(p) => super::probes::resolve_source(shared, Some(p.clone()))?,
        None => filter.source.clone(),
    };
    let mut process_ids: Option<Vec<i64>> = filter.process_id.map(|id| vec![id]);
    if let Some(pid) = filter.pid {
        let ids = super::processes::row_ids_for_pid(shared, pid);
        if ids.is_empty() {
            return Err(
                Error::not_found(format!("scry knows no process {pid}")).hint("see `scry ps`")
            );
        }
        process_ids = Some(ids);
    }
    if let Some(name) = &filter.process {
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
    let time = |text: &Option<String>, name: &str| {
        text.as_deref().map(parse_time).transpose().map_err(|e| {
            bad(format!("{name}: {e}")).hint(
                "use a duration ago such as 30s, 5m, 2h, or a time such as 2026-11-21T12:00:00Z",
            )
        })
    };
    let since = time(&filter.since, "since")?;
    let until = time(&filter.until, "until")?;
    let conditions = match filter.where_.as_deref() {
        Some(w) if !w.trim().is_empty() => {
            parse_where(w).map_err(|e| bad(format!("where: {e}")))?
        }
        _ => Vec::new(),
    };
    let kind = match (&filter.kind, conditions.is_empty(), &filter.probe) {
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
            after_id: filter.after_id,
            limit: scry_store::MAX_QUERY_LIMIT,
            order: scry_store::Order::Newest,
        },
        process_ids,
        conditions,
    })
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

/// Events as the API shows them: the stored rows plus their processes' pids and names.
pub fn events_of(shared: &Shared, rows: Vec<scry_store::EventRow>) -> Vec<Event> {
    let procs: std::collections::HashMap<i64, (u32, Option<String>)> = shared
        .registry()
        .views()
        .into_iter()
        .map(|v| (v.id, (v.pid, v.name)))
        .collect();
    rows.into_iter()
        .map(|e| {
            let found = procs.get(&e.process_id);
            Event {
                id: e.id,
                process_id: e.process_id,
                kind: e.kind,
                source: e.source,
                t_hit: e.t_hit,
                t_recv: e.t_recv,
                data: e.data,
                pid: found.map(|p| p.0),
                name: found.and_then(|p| p.1.clone()),
            }
        })
        .collect()
}

/// The counts part of an answer.
pub fn counts(found: &Found) -> EventCounts {
    EventCounts {
        returned: found.events.len(),
        matched: found.matched,
        scanned: found.scanned,
        scan_truncated: found.scan_truncated,
    }
}

/// Statistics of the probe values of `sel` (the newest [`scry_store::MAX_QUERY_LIMIT`]).
pub async fn stats(shared: &Shared, sel: &Selection, probe: Option<String>) -> Result<EventStats> {
    let found = find(
        shared,
        sel,
        scry_store::MAX_QUERY_LIMIT,
        scry_store::Order::Newest,
    )
    .await?;
    let values = found.events.iter().map(|e| &e.data["values"]);
    Ok(EventStats {
        probe,
        count: found.events.len(),
        truncated: found.truncated,
        counts: counts(&found),
        expressions: crate::stats::summarize(values),
    })
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
) -> Result<EventWait> {
    let start_after = match after_id {
        Some(id) => id,
        None => newest_id(shared).await?,
    };
    // Zero events are always already there: answer at once instead of waiting for nothing.
    if count == 0 {
        return Ok(EventWait {
            reached: true,
            timed_out: false,
            wanted: 0,
            count: 0,
            cursor: start_after,
            events: Vec::new(),
        });
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
            return Ok(EventWait {
                reached,
                timed_out: !reached,
                wanted: count,
                count: got.len(),
                cursor,
                events: events_of(shared, got),
            });
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

/// A page of events (`GET /api/v1/events`, `query_events`).
pub async fn page(
    shared: &Shared,
    filter: &EventFilter,
    limit: Option<usize>,
    order: Option<&str>,
) -> Result<EventPage> {
    let order = parse_order(order)?;
    let sel = select(shared, filter)?;
    let found = find(shared, &sel, limit.unwrap_or(100), order).await?;
    let counts = counts(&found);
    Ok(EventPage {
        truncated: found.truncated,
        events: events_of(shared, found.events),
        counts,
    })
}

/// Statistics of the matching probe values (`GET /api/v1/events/stats`, `event_stats`).
pub async fn stats_of(shared: &Shared, filter: &EventFilter) -> Result<EventStats> {
    let sel = select(shared, filter)?;
    stats(shared, &sel, filter.probe.clone()).await
}

/// Waits for `count` (default 1) new matching events after the filter's `after_id` (default:
/// now), at most `timeout` seconds (default 30).
pub async fn wait_for(
    shared: &Shared,
    mut filter: EventFilter,
    count: Option<usize>,
    timeout: Option<f64>,
) -> Result<EventWait> {
    let timeout = wait_timeout(timeout)?;
    let after = filter.after_id.take();
    let sel = select(shared, &filter)?;
    wait(shared, &sel, after, count.unwrap_or(1), timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
