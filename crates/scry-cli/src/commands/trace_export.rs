//! A trace's events turned into slices (one per call or resumption, nested per thread), and
//! those slices written as a Perfetto protobuf trace or a Chrome JSON trace.
//!
//! The Perfetto writer is a small hand-written protobuf encoder for the few messages used
//! (`Trace`, `TracePacket`, `TrackDescriptor`, `ProcessDescriptor`, `ThreadDescriptor`,
//! `TrackEvent`, `DebugAnnotation`; field numbers from perfetto's `protos/perfetto/trace/`):
//! one track per process, one per thread under it, slices as BEGIN/END events in nesting
//! order, pulses as instants. A coroutine's or generator's resumptions are separate slices
//! named `name (resumed)`. Both carry values (arguments, results, pulse values) as natural JSON
//! (`render::plain`), not in the typed encoding of the events.

use std::collections::BTreeMap;

use scry_api::Event;
use serde_json::{json, Value};

use crate::render;

/// One call (or resumption) of a traced function on one thread.
#[derive(Debug, Clone)]
pub struct Slice {
    /// Process id.
    pub pid: u32,
    /// Python thread ident.
    pub tid: u64,
    /// Qualified name.
    pub name: String,
    /// Module, when known.
    pub module: Option<String>,
    /// Source file.
    pub file: String,
    /// First line.
    pub line: u64,
    /// Start, ns since the earliest trace start.
    pub start: i64,
    /// End (same clock).
    pub end: i64,
    /// Nesting depth among traced frames of its thread.
    pub depth: usize,
    /// A resumption of a generator or coroutine.
    pub resumed: bool,
    /// `return`, `yield`, `exception`, or `open` (still running or its end was not recorded).
    pub outcome: &'static str,
    /// Typed arguments.
    pub args: Option<Value>,
    /// Typed return or yielded value.
    pub value: Option<Value>,
    /// `{type, message}` of the exception that ended it.
    pub exc: Option<Value>,
    /// Exceptions raised inside (caught or not).
    pub raised: Vec<Value>,
}

/// A pulse (`scry.pulse`).
#[derive(Debug, Clone)]
pub struct Pulse {
    /// Process id.
    pub pid: u32,
    /// Python thread ident.
    pub tid: u64,
    /// Its name.
    pub name: String,
    /// When (ns since the earliest trace start).
    pub ts: i64,
    /// Typed values.
    pub values: Value,
}

/// Everything a trace recorded, rebuilt.
#[derive(Debug, Default)]
pub struct Model {
    /// Slices, per thread in start order (threads in first-seen order).
    pub slices: Vec<Slice>,
    /// Pulses.
    pub pulses: Vec<Pulse>,
    /// (pid, tid) -> thread name.
    pub threads: BTreeMap<(u32, u64), String>,
    /// Records received.
    pub records: u64,
    /// Events the agents dropped (budget).
    pub dropped: u64,
    /// Why each process's part ended, when it did.
    pub ended: Vec<(u32, Value)>,
}

struct Open {
    slice: usize,
    key: (String, u64, String),
}

/// Builds the model from the trace's stored events (oldest first). The batches are read
/// leniently: records lost or malformed are skipped (docs/protocol.md "Trace events").
pub fn build(events: &[Event]) -> Model {
    let mut m = Model::default();
    let base = events
        .iter()
        .filter_map(|e| e.data["start"].as_f64())
        .fold(f64::INFINITY, f64::min);
    let mut stacks: BTreeMap<(u32, u64), Vec<Open>> = BTreeMap::new();
    let mut last_ts: BTreeMap<(u32, u64), i64> = BTreeMap::new();
    let mut per_thread: BTreeMap<(u32, u64), Vec<usize>> = BTreeMap::new();
    let mut order: Vec<(u32, u64)> = Vec::new();
    let mut all: Vec<Slice> = Vec::new();
    for e in events {
        let pid = e.pid.unwrap_or(0);
        let d = &e.data;
        m.dropped += d["dropped"].as_u64().unwrap_or(0);
        if !d["ended"].is_null() {
            m.ended.push((pid, d["ended"].clone()));
        }
        let offset = d["start"]
            .as_f64()
            .map(|s| ((s - base) * 1e9).round() as i64)
            .unwrap_or(0);
        let functions = d["functions"].as_array().cloned().unwrap_or_default();
        if let Some(threads) = d["threads"].as_object() {
            for (tid, name) in threads {
                if let (Ok(tid), Some(name)) = (tid.parse::<u64>(), name.as_str()) {
                    m.threads.insert((pid, tid), name.to_owned());
                }
            }
        }
        for r in d["records"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            m.records += 1;
            let tid = r["tid"].as_u64().unwrap_or(0);
            let ts = offset + r["ts"].as_i64().unwrap_or(0);
            let key = (pid, tid);
            if let std::collections::btree_map::Entry::Vacant(v) = per_thread.entry(key) {
                order.push(key);
                v.insert(Vec::new());
            }
            last_ts.insert(key, ts);
            let kind = r["e"].as_str().unwrap_or("");
            if kind == "pulse" {
                m.pulses.push(Pulse {
                    pid,
                    tid,
                    name: r["name"].as_str().unwrap_or("pulse").to_owned(),
                    ts,
                    values: r["values"].clone(),
                });
                continue;
            }
            let f = r["f"]
                .as_u64()
                .and_then(|i| functions.get(i as usize))
                .cloned()
                .unwrap_or(Value::Null);
            let name = f["function"].as_str().unwrap_or("?").to_owned();
            let file = f["file"].as_str().unwrap_or("?").to_owned();
            let line = f["line"].as_u64().unwrap_or(0);
            let fkey = (file.clone(), line, name.clone());
            let stack = stacks.entry(key).or_default();
            match kind {
                "call" | "resume" => {
                    let idx = all.len();
                    all.push(Slice {
                        pid,
                        tid,
                        name,
                        module: f["module"].as_str().map(str::to_owned),
                        file,
                        line,
                        start: ts,
                        end: ts,
                        depth: stack.len(),
                        resumed: kind == "resume",
                        outcome: "open",
                        args: r.get("args").cloned(),
                        value: None,
                        exc: None,
                        raised: Vec::new(),
                    });
                    stack.push(Open {
                        slice: idx,
                        key: fkey,
                    });
                    if let Some(v) = per_thread.get_mut(&key) {
                        v.push(idx);
                    }
                }
                "raise" => {
                    if let Some(top) = stack.last() {
                        if top.key == fkey {
                            all[top.slice].raised.push(r["exc"].clone());
                        }
                    }
                }
                "return" | "yield" | "exception" => {
                    if let Some(pos) = stack.iter().rposition(|o| o.key == fkey) {
                        for o in stack.drain(pos..).rev() {
                            let s = &mut all[o.slice];
                            s.end = ts;
                            if o.key == fkey && s.outcome == "open" {
                                s.outcome = match kind {
                                    "return" => "return",
                                    "yield" => "yield",
                                    _ => "exception",
                                };
                                s.value = r.get("value").cloned();
                                s.exc = r.get("exc").cloned();
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // What is still open ends at the last record of its thread.
    for (key, stack) in stacks {
        let end = last_ts.get(&key).copied().unwrap_or(0);
        for o in stack {
            all[o.slice].end = end;
        }
    }
    for key in order {
        for idx in per_thread.remove(&key).unwrap_or_default() {
            m.slices.push(all[idx].clone());
        }
    }
    m
}

fn thread_name(m: &Model, pid: u32, tid: u64) -> String {
    m.threads
        .get(&(pid, tid))
        .cloned()
        .unwrap_or_else(|| format!("thread-{tid}"))
}

/// Small thread numbers for the formats that want an int32 tid (1, 2, … in first-seen order).
fn thread_numbers(m: &Model) -> BTreeMap<(u32, u64), i64> {
    let mut out = BTreeMap::new();
    let mut next = 1;
    for s in &m.slices {
        out.entry((s.pid, s.tid)).or_insert_with(|| {
            next += 1;
            next - 1
        });
    }
    for p in &m.pulses {
        out.entry((p.pid, p.tid)).or_insert_with(|| {
            next += 1;
            next - 1
        });
    }
    out
}

fn slice_name(s: &Slice) -> String {
    if s.resumed {
        format!("{} (resumed)", s.name)
    } else {
        s.name.clone()
    }
}

/// The Chrome JSON trace event format: `X` (complete) events, `i` instants, `M` names.
pub fn chrome(m: &Model) -> Value {
    let numbers = thread_numbers(m);
    let mut events = Vec::new();
    let mut pids: Vec<u32> = numbers.keys().map(|k| k.0).collect();
    pids.dedup();
    for pid in pids {
        events.push(
            json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                           "args": {"name": format!("python {pid}")}}),
        );
    }
    for ((pid, tid), n) in &numbers {
        events.push(
            json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": n,
                           "args": {"name": thread_name(m, *pid, *tid)}}),
        );
    }
    for s in &m.slices {
        let mut args = json!({"module": s.module, "location": format!("{}:{}", s.file, s.line),
                              "outcome": s.outcome});
        if let Some(a) = &s.args {
            args["args"] = render::plain_map(a);
        }
        if let Some(v) = &s.value {
            args["value"] = render::plain(v);
        }
        if let Some(x) = &s.exc {
            args["exception"] = x.clone();
        }
        events.push(json!({
            "name": slice_name(s), "cat": if s.resumed { "resumed" } else { "call" }, "ph": "X",
            "ts": s.start as f64 / 1000.0, "dur": (s.end - s.start) as f64 / 1000.0,
            "pid": s.pid, "tid": numbers.get(&(s.pid, s.tid)).copied().unwrap_or(0), "args": args,
        }));
    }
    for p in &m.pulses {
        events.push(json!({
            "name": p.name, "cat": "pulse", "ph": "i", "s": "t", "ts": p.ts as f64 / 1000.0,
            "pid": p.pid, "tid": numbers.get(&(p.pid, p.tid)).copied().unwrap_or(0),
            "args": {"values": render::plain_map(&p.values)},
        }));
    }
    json!({"traceEvents": events, "displayTimeUnit": "ns",
           "otherData": {"producer": "scry", "records": m.records, "dropped": m.dropped}})
}

// -- protobuf ------------------------------------------------------------------------------------

const VARINT: u64 = 0;
const LEN: u64 = 2;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

fn tag(buf: &mut Vec<u8>, field: u64, wire: u64) {
    varint(buf, (field << 3) | wire);
}

fn uint(buf: &mut Vec<u8>, field: u64, v: u64) {
    tag(buf, field, VARINT);
    varint(buf, v);
}

fn int(buf: &mut Vec<u8>, field: u64, v: i64) {
    // int32/int64 fields: negative numbers are ten-byte two's complement varints.
    uint(buf, field, v as u64);
}

fn bytes(buf: &mut Vec<u8>, field: u64, data: &[u8]) {
    tag(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

// Field numbers (perfetto protos/perfetto/trace/...).
const TRACE_PACKET: u64 = 1; // Trace.packet
const PKT_TIMESTAMP: u64 = 8;
const PKT_SEQUENCE_ID: u64 = 10; // trusted_packet_sequence_id
const PKT_TRACK_EVENT: u64 = 11;
const PKT_TRACK_DESCRIPTOR: u64 = 60;
const TD_UUID: u64 = 1;
const TD_NAME: u64 = 2;
const TD_PROCESS: u64 = 3;
const TD_THREAD: u64 = 4;
const TD_PARENT_UUID: u64 = 5;
const PD_PID: u64 = 1;
const PD_PROCESS_NAME: u64 = 6;
const THD_PID: u64 = 1;
const THD_TID: u64 = 2;
const THD_THREAD_NAME: u64 = 5;
const TE_DEBUG_ANNOTATIONS: u64 = 4;
const TE_TYPE: u64 = 9;
const TE_TRACK_UUID: u64 = 11;
const TE_CATEGORIES: u64 = 22;
const TE_NAME: u64 = 23;
const DA_STRING_VALUE: u64 = 6;
const DA_NAME: u64 = 10;
/// TrackEvent.Type.
pub const TYPE_SLICE_BEGIN: u64 = 1;
/// TrackEvent.Type.
pub const TYPE_SLICE_END: u64 = 2;
/// TrackEvent.Type.
pub const TYPE_INSTANT: u64 = 3;

const SEQUENCE: u64 = 1;

fn packet(out: &mut Vec<u8>, timestamp: Option<u64>, field: u64, body: &[u8]) {
    let mut p = Vec::with_capacity(body.len() + 16);
    if let Some(ts) = timestamp {
        uint(&mut p, PKT_TIMESTAMP, ts);
    }
    uint(&mut p, PKT_SEQUENCE_ID, SEQUENCE);
    bytes(&mut p, field, body);
    bytes(out, TRACE_PACKET, &p);
}

fn annotation(buf: &mut Vec<u8>, name: &str, value: &str) {
    let mut a = Vec::new();
    bytes(&mut a, DA_NAME, name.as_bytes());
    bytes(&mut a, DA_STRING_VALUE, value.as_bytes());
    bytes(buf, TE_DEBUG_ANNOTATIONS, &a);
}

fn track_event(kind: u64, track: u64, name: Option<&str>, category: Option<&str>) -> Vec<u8> {
    let mut e = Vec::new();
    uint(&mut e, TE_TYPE, kind);
    uint(&mut e, TE_TRACK_UUID, track);
    if let Some(c) = category {
        bytes(&mut e, TE_CATEGORIES, c.as_bytes());
    }
    if let Some(n) = name {
        bytes(&mut e, TE_NAME, n.as_bytes());
    }
    e
}

/// Timestamps are shifted so that the earliest is 1 s (Perfetto wants positive times).
const T0: i64 = 1_000_000_000;

/// The Perfetto protobuf trace (a `Trace` message: a sequence of `TracePacket`s).
pub fn perfetto(m: &Model) -> Vec<u8> {
    let numbers = thread_numbers(m);
    let mut out = Vec::new();
    let mut pids: Vec<u32> = numbers.keys().map(|k| k.0).collect();
    pids.dedup();
    let process_uuid = |pid: u32| 0x5000_0000_0000 + u64::from(pid);
    let thread_uuid = |n: i64| 0x7000_0000_0000 + n as u64;
    for pid in &pids {
        let mut pd = Vec::new();
        int(&mut pd, PD_PID, i64::from(*pid));
        bytes(&mut pd, PD_PROCESS_NAME, format!("python {pid}").as_bytes());
        let mut td = Vec::new();
        uint(&mut td, TD_UUID, process_uuid(*pid));
        bytes(&mut td, TD_PROCESS, &pd);
        packet(&mut out, None, PKT_TRACK_DESCRIPTOR, &td);
    }
    for ((pid, tid), n) in &numbers {
        let name = thread_name(m, *pid, *tid);
        let mut thd = Vec::new();
        int(&mut thd, THD_PID, i64::from(*pid));
        int(&mut thd, THD_TID, *n);
        bytes(&mut thd, THD_THREAD_NAME, name.as_bytes());
        let mut td = Vec::new();
        uint(&mut td, TD_UUID, thread_uuid(*n));
        bytes(&mut td, TD_NAME, name.as_bytes());
        uint(&mut td, TD_PARENT_UUID, process_uuid(*pid));
        bytes(&mut td, TD_THREAD, &thd);
        packet(&mut out, None, PKT_TRACK_DESCRIPTOR, &td);
    }
    // Per thread, BEGIN/END in nesting order; then all threads merged by time (stable).
    let mut timed: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut stack: Vec<&Slice> = Vec::new();
    let mut current: Option<(u32, u64)> = None;
    let end_of = |s: &Slice, track: u64| {
        let mut e = track_event(TYPE_SLICE_END, track, None, None);
        match s.outcome {
            "exception" => {
                let text = s
                    .exc
                    .as_ref()
                    .map(|x| {
                        format!(
                            "{}: {}",
                            x["type"].as_str().unwrap_or("?"),
                            x["message"].as_str().unwrap_or("")
                        )
                    })
                    .unwrap_or_default();
                annotation(&mut e, "exception", &text);
            }
            _ => {
                if let Some(v) = &s.value {
                    annotation(&mut e, "value", &render::plain(v).to_string());
                }
            }
        }
        annotation(&mut e, "outcome", s.outcome);
        (s.end, e)
    };
    for s in &m.slices {
        let key = (s.pid, s.tid);
        let track = thread_uuid(numbers.get(&key).copied().unwrap_or(0));
        if current != Some(key) {
            while let Some(top) = stack.pop() {
                let t = thread_uuid(numbers.get(&(top.pid, top.tid)).copied().unwrap_or(0));
                timed.push(end_of(top, t));
            }
            current = Some(key);
        }
        while stack.last().is_some_and(|top| top.depth >= s.depth) {
            if let Some(top) = stack.pop() {
                timed.push(end_of(top, track));
            }
        }
        let name = slice_name(s);
        let mut e = track_event(
            TYPE_SLICE_BEGIN,
            track,
            Some(&name),
            Some(if s.resumed { "resumed" } else { "call" }),
        );
        if let Some(module) = &s.module {
            annotation(&mut e, "module", module);
        }
        annotation(&mut e, "location", &format!("{}:{}", s.file, s.line));
        if let Some(a) = &s.args {
            annotation(&mut e, "args", &render::plain_map(a).to_string());
        }
        timed.push((s.start, e));
        stack.push(s);
    }
    while let Some(top) = stack.pop() {
        let t = thread_uuid(numbers.get(&(top.pid, top.tid)).copied().unwrap_or(0));
        timed.push(end_of(top, t));
    }
    for p in &m.pulses {
        let track = thread_uuid(numbers.get(&(p.pid, p.tid)).copied().unwrap_or(0));
        let mut e = track_event(TYPE_INSTANT, track, Some(&p.name), Some("pulse"));
        annotation(&mut e, "values", &render::plain_map(&p.values).to_string());
        timed.push((p.ts, e));
    }
    timed.sort_by_key(|(ts, _)| *ts);
    for (ts, e) in timed {
        packet(&mut out, Some((T0 + ts).max(0) as u64), PKT_TRACK_EVENT, &e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: Value) -> Event {
        Event {
            id: 1,
            process_id: 1,
            kind: "trace".into(),
            source: Some("tr-x".into()),
            t_hit: 100.0,
            t_recv: 100.0,
            data: json!({"trace": "tr-x", "start": 100.0,
            "functions": [{"function": "outer", "module": "m", "file": "m.py", "line": 1},
                          {"function": "inner", "module": "m", "file": "m.py", "line": 5}],
            "threads": {"1": "MainThread"}, "records": records, "dropped": 2}),
            pid: Some(7),
            name: None,
        }
    }

    #[test]
    fn slices_nest_and_tolerate_lost_records() {
        let events = vec![batch(json!([
            {"e": "call", "f": 0, "tid": 1, "ts": 0},
            {"e": "call", "f": 1, "tid": 1, "ts": 10,
             "args": {"key": {"t": "bytes", "v": "2f61"}, "n": {"t": "int", "v": 2}}},
            // inner's return was dropped by the budget: outer's return closes it too.
            {"e": "return", "f": 0, "tid": 1, "ts": 50, "value": {"t": "int", "v": 1}},
            {"e": "return", "f": 1, "tid": 1, "ts": 60},
            {"e": "call", "f": 1, "tid": 1, "ts": 70},
            {"e": "yield", "f": 1, "tid": 1, "ts": 80},
            {"e": "resume", "f": 1, "tid": 1, "ts": 90},
            {"e": "exception", "f": 1, "tid": 1, "ts": 95, "exc": {"type": "E", "message": "m"}},
            {"e": "call", "f": 0, "tid": 1, "ts": 100},
        ]))];
        let m = build(&events);
        assert_eq!(m.records, 9);
        assert_eq!(m.dropped, 2);
        let got: Vec<(&str, i64, i64, usize, &str)> = m
            .slices
            .iter()
            .map(|s| (s.name.as_str(), s.start, s.end, s.depth, s.outcome))
            .collect();
        assert_eq!(
            got,
            vec![
                ("outer", 0, 50, 0, "return"),
                ("inner", 10, 50, 1, "open"),
                ("inner", 70, 80, 0, "yield"),
                ("inner", 90, 95, 0, "exception"),
                ("outer", 100, 100, 0, "open"),
            ]
        );
        assert!(m.slices[3].resumed);
        let chrome = chrome(&m);
        let xs: Vec<&Value> = chrome["traceEvents"]
            .as_array()
            .map(|a| a.iter().filter(|e| e["ph"] == "X").collect())
            .unwrap_or_default();
        assert_eq!(xs.len(), 5);
        assert_eq!(xs[3]["name"], "inner (resumed)");
        assert_eq!(xs[3]["args"]["exception"]["type"], "E");
        assert_eq!(xs[0]["args"]["value"], json!(1));
        assert_eq!(xs[1]["args"]["args"], json!({"key": "b'/a'", "n": 2}));
    }

    #[test]
    fn perfetto_varints_and_packets() {
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        let m = build(&[batch(json!([
            {"e": "call", "f": 0, "tid": 1, "ts": 0},
            {"e": "return", "f": 0, "tid": 1, "ts": 5},
        ]))]);
        let data = perfetto(&m);
        // Trace.packet (field 1, length-delimited) repeated: 2 descriptors + begin + end.
        let mut pos = 0;
        let mut packets = 0;
        while pos < data.len() {
            assert_eq!(data[pos], 0x0a);
            pos += 1;
            let mut len = 0usize;
            let mut shift = 0;
            loop {
                let byte = data[pos];
                pos += 1;
                len |= usize::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            pos += len;
            packets += 1;
        }
        assert_eq!(pos, data.len());
        assert_eq!(packets, 4);
    }
}
