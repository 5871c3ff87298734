//! `scry trace start|stop|list|show|export`.

use std::collections::BTreeMap;

use scry_api::{Event, NewTrace, StopTraces, TraceEvents, TraceList, TraceState, TraceView};
use scry_daemon::Home;
use serde::Serialize;
use serde_json::{json, Value};

use super::trace_export::{self, Model};
use super::CmdResult;
use crate::cli::{TraceCmd, TraceExportArgs, TraceShowArgs, TraceStartArgs, TraceStopArgs};
use crate::client::DaemonClient;
use crate::error::{CliError, ExitStatus};
use crate::printer::{table, Printer};

/// Whether the subcommand prints JSON.
pub fn json_flag(cmd: &TraceCmd) -> bool {
    match cmd {
        TraceCmd::Start(a) => a.output.json,
        TraceCmd::Stop(a) => a.output.json,
        TraceCmd::List(o) => o.json,
        TraceCmd::Show(a) => a.output.json,
        TraceCmd::Export(a) => a.output.json,
    }
}

/// Runs a trace subcommand.
pub async fn trace(home: &Home, cmd: &TraceCmd, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    match cmd {
        TraceCmd::Start(a) => start(&client, a, printer).await,
        TraceCmd::Stop(a) => stop(&client, a, printer).await,
        TraceCmd::List(_) => list(&client, printer).await,
        TraceCmd::Show(a) => show(&client, a, printer).await,
        TraceCmd::Export(a) => export(&client, a, printer).await,
    }
}

/// `30s`, `5m`, `1h`, `250ms` or plain seconds.
pub fn parse_duration(text: &str) -> Result<f64, CliError> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v * mult),
        _ => Err(CliError::new(format!("`{text}` is not a duration"))
            .hint("write e.g. `30s`, `5m`, `1h` or a number of seconds")),
    }
}

/// `5000/s`, `5000` or `300/m`.
pub fn parse_rate(text: &str) -> Result<f64, CliError> {
    let t = text.trim();
    let (num, per) = match t.split_once('/') {
        Some((n, "s")) => (n, 1.0),
        Some((n, "m")) => (n, 60.0),
        Some(_) => ("", 1.0),
        None => (t, 1.0),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v / per),
        _ => Err(CliError::new(format!("`{text}` is not a rate"))
            .hint("write e.g. `5000/s` (events a second per process)")),
    }
}

async fn start(client: &DaemonClient, a: &TraceStartArgs, printer: &mut Printer) -> CmdResult {
    let max_rate = a.max_rate.as_deref().map(parse_rate).transpose()?;
    let duration = a.duration.as_deref().map(parse_duration).transpose()?;
    let body = NewTrace {
        target: a.target.clone(),
        pid: a.pid,
        include: a.include.clone(),
        exclude: a.exclude.clone(),
        functions: a.function.clone(),
        args: a.args,
        returns: a.returns,
        max_rate,
        duration,
    };
    let doc: TraceView = client.post_as("/api/v1/traces", &body).await?;
    if printer.json {
        printer.json_value(&doc)?;
        return Ok(ExitStatus::Success);
    }
    let id = &doc.id;
    let n = doc.processes.len();
    printer.line(format!(
        "trace {id} started in {n} process{}",
        if n == 1 { "" } else { "es" }
    ))?;
    for p in &doc.processes {
        let pid = p.pid;
        if let Some(err) = &p.error {
            printer.line(format!("  pid {pid}: not traced: {}", err.message))?;
        } else {
            let s = p.status.clone().unwrap_or_default();
            printer.line(format!(
                "  pid {pid}: {} functions selected ({}){}",
                s.functions,
                s.backend.as_deref().unwrap_or("?"),
                s.note.map(|n| format!("; note: {n}")).unwrap_or_default()
            ))?;
        }
    }
    for n in &doc.notes {
        printer.line(format!("note: {n}"))?;
    }
    printer.line(format!(
        "see it: scry trace show {id} --tree   stop it: scry trace stop {id}"
    ))?;
    if let Some(h) = &doc.hint {
        printer.note(format!("hint: {h}"));
    }
    Ok(ExitStatus::Success)
}

async fn stop(client: &DaemonClient, a: &TraceStopArgs, printer: &mut Printer) -> CmdResult {
    let ids: Vec<String> = match a.trace.as_deref() {
        Some(t) if is_trace_id(t) => vec![resolve(client, t).await?],
        // A pid or a process name, as `trace start` takes it: the daemon stops what runs there.
        Some(target) => {
            let body = StopTraces {
                target: target.to_owned(),
            };
            let stopped: TraceList = client.post_as("/api/v1/traces/stop", &body).await?;
            return said_stopped(&stopped.traces, printer);
        }
        None => client
            .get_as::<TraceList>("/api/v1/traces")
            .await?
            .traces
            .into_iter()
            .filter(|t| t.state == TraceState::Running)
            .map(|t| t.id)
            .collect(),
    };
    let mut docs: Vec<TraceView> = Vec::new();
    for id in &ids {
        docs.push(
            client
                .post_as(&format!("/api/v1/traces/{id}/stop"), &json!({}))
                .await?,
        );
    }
    said_stopped(&docs, printer)
}

/// What `scry trace stop` prints of the traces it stopped.
fn said_stopped(docs: &[TraceView], printer: &mut Printer) -> CmdResult {
    if printer.json {
        printer.json_value(&Stopped { stopped: docs })?;
        return Ok(ExitStatus::Success);
    }
    if docs.is_empty() {
        printer.line("no trace is running")?;
    }
    for d in docs {
        let (recorded, dropped) = d
            .processes
            .iter()
            .filter_map(|p| p.status.as_ref())
            .fold((0, 0), |(r, x), s| (r + s.recorded, x + s.dropped));
        let pids: Vec<String> = d.processes.iter().map(|p| p.pid.to_string()).collect();
        printer.line(format!(
            "trace {} {} (pid {}): {recorded} events recorded, {dropped} dropped",
            d.id,
            d.state.as_str(),
            pids.join(", "),
        ))?;
    }
    Ok(ExitStatus::Success)
}

/// `scry trace stop --json`: every trace it stopped, as the daemon answered.
#[derive(Serialize)]
struct Stopped<'a> {
    stopped: &'a [TraceView],
}

async fn list(client: &DaemonClient, printer: &mut Printer) -> CmdResult {
    let doc: TraceList = client.get_as("/api/v1/traces").await?;
    if printer.json {
        printer.json_value(&doc)?;
        return Ok(ExitStatus::Success);
    }
    let traces = doc.traces;
    if traces.is_empty() {
        printer.line("no traces yet: scry trace start PID --include MODULE")?;
        return Ok(ExitStatus::Success);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let rows: Vec<Vec<String>> = traces
        .iter()
        .map(|t| {
            let pids: Vec<String> = t.processes.iter().map(|p| p.pid.to_string()).collect();
            let mut what: Vec<String> = t
                .spec
                .include
                .iter()
                .chain(&t.spec.functions)
                .cloned()
                .collect();
            if what.is_empty() {
                what.push("__main__".into());
            }
            vec![
                t.id.clone(),
                t.state.as_str().to_owned(),
                super::age(now - t.started_at),
                pids.join(","),
                what.join(" "),
            ]
        })
        .collect();
    for line in table(&["TRACE", "STATE", "AGE", "PIDS", "SELECTION"], &rows) {
        printer.line(line)?;
    }
    Ok(ExitStatus::Success)
}

/// Whether `scry trace stop X` names a trace (`tr-…` or `last`) rather than a process.
fn is_trace_id(text: &str) -> bool {
    text == "last" || text.starts_with("tr-")
}

/// A trace id, `last` meaning the newest.
async fn resolve(client: &DaemonClient, text: &str) -> Result<String, CliError> {
    if text != "last" {
        return Ok(text.to_owned());
    }
    let doc: TraceList = client.get_as("/api/v1/traces?limit=1").await?;
    doc.traces
        .into_iter()
        .next()
        .map(|t| t.id)
        .ok_or_else(|| CliError::new("there is no trace yet").hint("scry trace start PID"))
}

/// Every stored event of the trace, oldest first.
async fn all_events(client: &DaemonClient, id: &str) -> Result<Vec<Event>, CliError> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page: TraceEvents = client
            .get_as(&format!(
                "/api/v1/traces/{id}/events?after_id={after}&limit=1000"
            ))
            .await?;
        let Some(last) = page.events.last() else {
            break;
        };
        after = last.id;
        let n = page.events.len();
        out.extend(page.events);
        if n < 1000 && !page.truncated {
            break;
        }
    }
    Ok(out)
}

fn human_ns(ns: i64) -> String {
    let ns = ns.max(0) as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.3} s", ns / 1e9)
    }
}

/// `name=value, …` of a call's arguments or a pulse's values, bounded as a whole to twice a
/// value (so that the duration and the result after them stay on the line).
fn typed_args(args: &Value) -> String {
    crate::render::bounded(
        &crate::render::named_values(args, ", "),
        2 * crate::render::VALUE_CHARS,
    )
}

/// Per function: calls, resumptions, total/mean/max time, exceptions.
fn summary(m: &Model) -> Vec<Value> {
    // (module, function) -> (calls, resumptions, total ns, max ns, exceptions, location)
    type Row = (u64, u64, i64, i64, u64, String);
    let mut by: BTreeMap<(String, String), Row> = BTreeMap::new();
    for s in &m.slices {
        let key = (s.module.clone().unwrap_or_default(), s.name.clone());
        let e = by
            .entry(key)
            .or_insert_with(|| (0, 0, 0, 0, 0, format!("{}:{}", s.file, s.line)));
        if s.resumed {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
        let d = s.end - s.start;
        e.2 += d;
        e.3 = e.3.max(d);
        if s.outcome == "exception" {
            e.4 += 1;
        }
    }
    let mut rows: Vec<Value> = by
        .into_iter()
        .map(
            |((module, function), (calls, resumes, total, max, exc, loc))| {
                json!({"module": module, "function": function, "location": loc, "calls": calls,
                   "resumptions": resumes, "total_ns": total, "max_ns": max, "exceptions": exc})
            },
        )
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r["total_ns"].as_i64().unwrap_or(0)));
    rows
}

fn tree_json(m: &Model) -> Vec<Value> {
    let mut threads: Vec<Value> = Vec::new();
    let mut current: Option<(u32, u64)> = None;
    // Each thread's slices in start order with their depth: nest them with a stack.
    let mut roots: Vec<Value> = Vec::new();
    let mut stack: Vec<Value> = Vec::new();
    let flush = |stack: &mut Vec<Value>, roots: &mut Vec<Value>, depth: usize| {
        while stack.len() > depth {
            let Some(done) = stack.pop() else { break };
            match stack.last_mut() {
                Some(parent) => {
                    if let Some(c) = parent["children"].as_array_mut() {
                        c.push(done);
                    }
                }
                None => roots.push(done),
            }
        }
    };
    for s in &m.slices {
        let key = (s.pid, s.tid);
        if current != Some(key) {
            flush(&mut stack, &mut roots, 0);
            if let Some((pid, tid)) = current {
                threads.push(
                    json!({"pid": pid, "tid": tid, "thread": m.threads.get(&(pid, tid)),
                                    "calls": std::mem::take(&mut roots)}),
                );
            }
            current = Some(key);
        }
        let depth = s.depth.min(stack.len());
        flush(&mut stack, &mut roots, depth);
        stack.push(json!({
            "function": s.name, "module": s.module, "file": s.file, "line": s.line,
            "resumed": s.resumed, "start_ns": s.start, "duration_ns": s.end - s.start,
            "outcome": s.outcome, "args": s.args, "value": s.value, "exception": s.exc,
            "raised": s.raised, "children": [],
        }));
    }
    flush(&mut stack, &mut roots, 0);
    if let Some((pid, tid)) = current {
        threads.push(
            json!({"pid": pid, "tid": tid, "thread": m.threads.get(&(pid, tid)),
                            "calls": roots}),
        );
    }
    threads
}

async fn show(client: &DaemonClient, a: &TraceShowArgs, printer: &mut Printer) -> CmdResult {
    let id = resolve(client, &a.trace).await?;
    let doc: TraceView = client.get_as(&format!("/api/v1/traces/{id}")).await?;
    let events = all_events(client, &id).await?;
    let m = trace_export::build(&events);
    if printer.json {
        let trace = serde_json::to_value(&doc)
            .map_err(|e| CliError::new(format!("cannot encode the trace: {e}")))?;
        let mut out = json!({"trace": trace, "records": m.records, "dropped": m.dropped,
                             "functions": summary(&m),
                             "pulses": m.pulses.iter().map(|p| json!({"pid": p.pid, "tid": p.tid,
                                 "name": p.name, "ts_ns": p.ts, "values": p.values})).collect::<Vec<_>>()});
        if a.tree {
            out["threads"] = json!(tree_json(&m));
        }
        printer.json_value(&out)?;
        return Ok(ExitStatus::Success);
    }
    printer.line(format!(
        "trace {id} ({}): {} records, {} calls, {} dropped{}",
        doc.state.as_str(),
        m.records,
        m.slices.iter().filter(|s| !s.resumed).count(),
        m.dropped,
        if m.dropped > 0 {
            " (over the --max-rate budget: some calls are missing)"
        } else {
            ""
        }
    ))?;
    if a.tree {
        let mut current = None;
        for (lines, s) in m.slices.iter().enumerate() {
            if lines >= a.max_lines {
                printer.line(format!(
                    "... (--max-lines {} reached; --json has everything)",
                    a.max_lines
                ))?;
                break;
            }
            if current != Some((s.pid, s.tid)) {
                current = Some((s.pid, s.tid));
                let name = m
                    .threads
                    .get(&(s.pid, s.tid))
                    .cloned()
                    .unwrap_or_else(|| format!("thread-{}", s.tid));
                printer.line(format!("process {} thread {name}", s.pid))?;
            }
            let mut text = format!(
                "{}{}{}({}) {}",
                "  ".repeat(s.depth + 1),
                s.name,
                if s.resumed { " [resumed]" } else { "" },
                s.args.as_ref().map(typed_args).unwrap_or_default(),
                human_ns(s.end - s.start)
            );
            match s.outcome {
                "exception" => {
                    let x = s.exc.clone().unwrap_or(Value::Null);
                    text.push_str(&format!(
                        " raised {}: {}",
                        x["type"].as_str().unwrap_or("an exception"),
                        x["message"].as_str().unwrap_or("")
                    ));
                }
                "yield" => {
                    text.push_str(" (suspended)");
                    if let Some(v) = &s.value {
                        text.push_str(&format!(" yielded {}", crate::render::value(v)));
                    }
                }
                "open" => text.push_str(" (running)"),
                _ => {
                    if let Some(v) = &s.value {
                        text.push_str(&format!(" -> {}", crate::render::value(v)));
                    }
                }
            }
            printer.line(crate::render::bounded(&text, crate::render::LINE_CHARS))?;
        }
        for p in m
            .pulses
            .iter()
            .take(a.max_lines.saturating_sub(m.slices.len()))
        {
            let text = format!(
                "pulse {} (pid {}) at +{}: {}",
                p.name,
                p.pid,
                human_ns(p.ts),
                typed_args(&p.values)
            );
            printer.line(crate::render::bounded(&text, crate::render::LINE_CHARS))?;
        }
        return Ok(ExitStatus::Success);
    }
    let rows: Vec<Vec<String>> = summary(&m)
        .iter()
        .map(|r| {
            let calls = r["calls"].as_u64().unwrap_or(0);
            let total = r["total_ns"].as_i64().unwrap_or(0);
            vec![
                format!(
                    "{}:{}",
                    r["module"].as_str().unwrap_or(""),
                    r["function"].as_str().unwrap_or("?")
                ),
                calls.to_string(),
                r["resumptions"].to_string(),
                human_ns(total),
                human_ns(if calls > 0 { total / calls as i64 } else { 0 }),
                human_ns(r["max_ns"].as_i64().unwrap_or(0)),
                r["exceptions"].to_string(),
            ]
        })
        .collect();
    for line in table(
        &[
            "FUNCTION", "CALLS", "RESUMED", "TOTAL", "MEAN", "MAX", "EXC",
        ],
        &rows,
    ) {
        printer.line(line)?;
    }
    Ok(ExitStatus::Success)
}

async fn export(client: &DaemonClient, a: &TraceExportArgs, printer: &mut Printer) -> CmdResult {
    let id = resolve(client, &a.trace).await?;
    // Asked first so that an unknown trace says so (its events would just be none).
    client
        .get_as::<TraceView>(&format!("/api/v1/traces/{id}"))
        .await?;
    let events = all_events(client, &id).await?;
    let m = trace_export::build(&events);
    let data = match a.format.as_str() {
        "chrome" => serde_json::to_vec(&trace_export::chrome(&m))
            .map_err(|e| CliError::new(format!("cannot encode the trace: {e}")))?,
        _ => trace_export::perfetto(&m),
    };
    std::fs::write(&a.file, &data).map_err(|e| {
        CliError::new(format!("cannot write {}: {e}", a.file.display()))
            .hint("check that the directory exists and is writable")
    })?;
    let summary = json!({"trace": id, "format": a.format, "file": a.file.display().to_string(),
                         "bytes": data.len(), "slices": m.slices.len(), "pulses": m.pulses.len()});
    if printer.json {
        printer.json_value(&summary)?;
    } else {
        printer.line(format!(
            "wrote {} ({} bytes, {} slices) for trace {id}{}",
            a.file.display(),
            data.len(),
            m.slices.len(),
            if a.format == "perfetto" {
                "; open it at https://ui.perfetto.dev"
            } else {
                "; open it in chrome://tracing or ui.perfetto.dev"
            }
        ))?;
    }
    Ok(ExitStatus::Success)
}
