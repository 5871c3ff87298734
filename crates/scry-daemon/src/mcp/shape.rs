//! Compact answers for agents: lists as tables (`columns` + `rows`), captured values as plain JSON
//! where they are scalars, probes without what an agent never needs, trace batches summarized.

use scry_api::{Event, FoundLines};
use serde_json::{json, Value};

#[derive(Default)]
struct FnStats {
    calls: u64,
    total_ns: f64,
    max_ns: f64,
    exceptions: u64,
}

/// Per-function counts and durations, the slowest calls and the exceptions of trace batches.
pub fn summarize_trace(
    meta: &scry_api::TraceView,
    batches: &[scry_store::EventRow],
    truncated: bool,
    top: usize,
    pids: &std::collections::HashMap<i64, u32>,
) -> Value {
    use std::collections::BTreeMap;
    let mut per_fn: BTreeMap<String, FnStats> = BTreeMap::new();
    let mut slowest: Vec<(f64, String, i64, String)> = Vec::new();
    let mut exceptions: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    let mut records = 0u64;
    for batch in batches {
        let d = &batch.data;
        let names: Vec<String> = d["functions"]
            .as_array()
            .map(|f| {
                f.iter()
                    .map(|f| {
                        format!(
                            "{}:{}",
                            f["module"].as_str().unwrap_or("?"),
                            f["function"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        for r in d["records"].as_array().into_iter().flatten() {
            records += 1;
            let Some(name) = r["f"].as_u64().and_then(|i| names.get(i as usize)) else {
                continue;
            };
            let s = per_fn.entry(name.clone()).or_default();
            match r["e"].as_str() {
                Some("call") => s.calls += 1,
                Some(e @ ("return" | "exception")) => {
                    let dur = r["dur"].as_f64().unwrap_or(0.0);
                    s.total_ns += dur;
                    s.max_ns = s.max_ns.max(dur);
                    let thread = d["threads"][r["tid"].to_string().as_str()]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    slowest.push((dur, name.clone(), batch.process_id, thread));
                    if e == "exception" {
                        s.exceptions += 1;
                        let ty = r["exc"]["type"].as_str().unwrap_or("exception").to_owned();
                        let entry = exceptions
                            .entry((name.clone(), ty))
                            .or_insert((0, String::new()));
                        entry.0 += 1;
                        if entry.1.is_empty() {
                            entry.1 = r["exc"]["message"]
                                .as_str()
                                .unwrap_or("")
                                .chars()
                                .take(200)
                                .collect();
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let ms = |ns: f64| (ns / 1e4).round() / 100.0;
    let mut fns: Vec<(&String, &FnStats)> = per_fn.iter().collect();
    fns.sort_by(|a, b| b.1.total_ns.total_cmp(&a.1.total_ns));
    let fn_rows: Vec<Value> = fns
        .iter()
        .take(top)
        .map(|(n, s)| {
            let ended = s.calls.max(1) as f64;
            json!([
                n,
                s.calls,
                ms(s.total_ns),
                ms(s.total_ns / ended),
                ms(s.max_ns),
                s.exceptions
            ])
        })
        .collect();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    let slow_rows: Vec<Value> = slowest
        .iter()
        .take(top)
        .map(|(d, n, p, t)| json!([n, ms(*d), pids.get(p).copied(), t]))
        .collect();
    let exc_rows: Vec<Value> = exceptions
        .iter()
        .take(top)
        .map(|((n, t), (c, m))| json!([n, t, c, m]))
        .collect();
    json!({
        "trace": meta.id, "state": meta.state,
        "records": records, "batches_truncated": truncated,
        "functions": {"columns": ["function", "calls", "total_ms", "mean_ms", "max_ms", "exceptions"], "rows": fn_rows, "total": per_fn.len(), "truncated": per_fn.len() > top},
        "slowest_calls": {"columns": ["function", "ms", "pid", "thread"], "rows": slow_rows, "truncated": slowest.len() > top},
        "exceptions": {"columns": ["function", "type", "count", "first_message"], "rows": exc_rows, "truncated": exceptions.len() > top},
    })
}

/// The line for `observe`: after the first binding (or at it), else at the first read.
pub fn choose_line(found: &FoundLines, after: bool) -> Option<(u64, String)> {
    if let Some(b) = &found.bindings {
        if let Some(row) = b.rows.first() {
            let at = |n: &str| b.cell(row, n).cloned().unwrap_or(Value::Null);
            let bound = at("line");
            let src = at("source");
            if after {
                if let Some(l) = at("after_line").as_u64() {
                    return Some((
                        l,
                        format!(
                            "just after `{}` (line {bound}) assigns it",
                            src.as_str().unwrap_or("?")
                        ),
                    ));
                }
            }
            if let Some(l) = at("probe_line").as_u64() {
                return Some((
                    l,
                    format!(
                        "at the line that assigns it: `{}`",
                        src.as_str().unwrap_or("?")
                    ),
                ));
            }
        }
    }
    let r = found.reads.as_ref()?;
    let row = r.rows.first()?;
    let l = r.cell(row, "probe_line").and_then(Value::as_u64)?;
    Some((l, "at its first read".into()))
}

/// A probe without the fields an agent never needs (`{"probes": [one]}` answers too).
pub fn compact_probe(v: Value) -> Value {
    if let Some([one]) = v["probes"].as_array().map(Vec::as_slice) {
        return compact_probe(one.clone());
    }
    if v.get("id").is_none() {
        return v;
    }
    let processes: Vec<Value> = v["processes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| json!({"pid": p["pid"], "state": p["state"], "line": p["line"], "reason": p["reason"], "hits": p["hits"], "dropped": p["dropped"]}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": v["id"], "name": v["name"], "location": v["location"], "expressions": v["expressions"],
        "condition": v["condition"], "enabled": v["enabled"], "unsafe": v["unsafe"], "totals": v["totals"], "processes": processes,
        "notes": v.get("notes"), "hint": v.get("hint"),
    })
}

/// A typed capture as plain JSON when it is a scalar; the typed object otherwise.
fn plain(typed: &Value) -> Value {
    match typed["t"].as_str() {
        Some("int" | "float" | "str" | "bool") => typed["v"].clone(),
        Some("none") => Value::Null,
        _ => typed.clone(),
    }
}

/// Events as one table: a column per expression, plain values, their Python types apart.
pub fn events_table(events: &[Event]) -> Value {
    let mut exprs: Vec<String> = Vec::new();
    let mut types = serde_json::Map::new();
    for e in events {
        if let Some(values) = e.data["values"].as_object() {
            for (k, v) in values {
                if !exprs.contains(k) {
                    exprs.push(k.clone());
                }
                if let Some(t) = v["t"].as_str() {
                    types.entry(k.clone()).or_insert_with(|| json!(t));
                }
            }
        }
    }
    let mut columns = vec![
        "id".to_owned(),
        "t".into(),
        "pid".into(),
        "probe".into(),
        "line".into(),
    ];
    columns.extend(exprs.iter().cloned());
    let rows: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut row = vec![
                json!(e.id),
                json!(e.t_hit),
                json!(e.pid),
                json!(e.source),
                e.data["line"].clone(),
            ];
            for x in &exprs {
                let v = &e.data["values"][x.as_str()];
                row.push(if v.is_null() { Value::Null } else { plain(v) });
            }
            Value::Array(row)
        })
        .collect();
    json!({"columns": columns, "rows": rows, "types": types})
}

/// A dump with one line per frame.
pub fn compact_dump(d: &scry_proc::stacks::Dump) -> Value {
    let processes: Vec<Value> = d
        .processes
        .iter()
        .map(|p| {
            let threads: Vec<Value> = p
                .threads
                .iter()
                .map(|t| {
                    let frames: Vec<String> = t.frames.iter().map(|f| format!("{} ({}:{})", f.function, f.file, f.line)).collect();
                    json!({"thread": t.name.clone().unwrap_or_else(|| t.python_thread_id.to_string()), "os_id": t.os_thread_id,
                           "holds_gil": t.holds_gil, "status": t.status, "frames": frames,
                           "locals": if t.frames.iter().any(|f| f.locals.is_some()) { json!(t.frames.iter().map(|f| &f.locals).collect::<Vec<_>>()) } else { Value::Null }})
                })
                .collect();
            json!({"pid": p.pid, "ppid": p.ppid, "kind": p.kind, "python": p.python_version, "command": p.cmdline.join(" "),
                   "state": p.state, "wchan": p.wchan, "error": p.error, "threads": threads})
        })
        .collect();
    json!({"root_pid": d.root_pid, "tree": d.tree, "frame_order": "innermost_first", "processes": processes})
}
