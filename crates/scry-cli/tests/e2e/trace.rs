//! Call tracing through the CLI: a real asyncio service with a CPU-loop thread is traced, the
//! trace is shown (summary and tree) and exported to Perfetto protobuf and Chrome JSON, and the
//! files are read back with strict parsers (protobuf: every field number and wire type checked
//! against the Perfetto messages used; tracks declared before use, slices balanced and nested per
//! track; JSON: required fields and X-event nesting per thread).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use crate::support::{pythons, text, wait_for, Ctx};

// -- a strict decoder of the Perfetto subset scry writes ----------------------------------------

#[derive(Debug, Clone)]
enum Field {
    Varint(u64),
    Bytes(Vec<u8>),
}

fn read_varint(data: &[u8], pos: &mut usize) -> u64 {
    let mut out = 0u64;
    for shift in (0..70).step_by(7) {
        assert!(*pos < data.len(), "truncated varint");
        let b = data[*pos];
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return out;
        }
    }
    panic!("varint longer than 10 bytes");
}

/// Decodes one message, checking each field against `schema` (field -> wire type 0 or 2).
fn decode(data: &[u8], message: &str, schema: &[(u64, u64)]) -> Vec<(u64, Field)> {
    let allowed: HashMap<u64, u64> = schema.iter().copied().collect();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < data.len() {
        let key = read_varint(data, &mut pos);
        let (field, wire) = (key >> 3, key & 7);
        let expected = allowed
            .get(&field)
            .unwrap_or_else(|| panic!("{message}: unexpected field {field}"));
        assert_eq!(wire, *expected, "{message}.{field}: wrong wire type");
        match wire {
            0 => out.push((field, Field::Varint(read_varint(data, &mut pos)))),
            2 => {
                let len = read_varint(data, &mut pos) as usize;
                assert!(
                    pos + len <= data.len(),
                    "{message}.{field}: length past the end"
                );
                out.push((field, Field::Bytes(data[pos..pos + len].to_vec())));
                pos += len;
            }
            _ => unreachable!(),
        }
    }
    out
}

fn string(f: &Field) -> String {
    match f {
        Field::Bytes(b) => String::from_utf8(b.clone()).expect("a string field is UTF-8"),
        Field::Varint(_) => panic!("not a string"),
    }
}

fn uint(f: &Field) -> u64 {
    match f {
        Field::Varint(v) => *v,
        Field::Bytes(_) => panic!("not a varint"),
    }
}

fn bytes(f: &Field) -> &[u8] {
    match f {
        Field::Bytes(b) => b,
        Field::Varint(_) => panic!("not a message"),
    }
}

/// What a Perfetto file holds, checked: slice names per track and annotation texts.
struct Checked {
    slice_names: HashSet<String>,
    annotations: Vec<String>,
    threads: usize,
    processes: usize,
    slices: usize,
}

fn check_perfetto(data: &[u8]) -> Checked {
    // Field numbers: perfetto protos/perfetto/trace/{trace,trace_packet}.proto,
    // track_event/{track_descriptor,process_descriptor,thread_descriptor,track_event,
    // debug_annotation}.proto.
    let mut processes = HashSet::new();
    let mut threads = HashMap::new(); // uuid -> parent
    let mut stacks: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut last_ts: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out = Checked {
        slice_names: HashSet::new(),
        annotations: Vec::new(),
        threads: 0,
        processes: 0,
        slices: 0,
    };
    for (_, packet) in decode(data, "Trace", &[(1, 2)]) {
        let fields = decode(
            bytes(&packet),
            "TracePacket",
            &[(8, 0), (10, 0), (11, 2), (60, 2)],
        );
        let get = |n: u64| fields.iter().find(|(f, _)| *f == n).map(|(_, v)| v.clone());
        assert_eq!(
            get(10).map(|f| uint(&f)),
            Some(1),
            "trusted_packet_sequence_id"
        );
        if let Some(td) = get(60) {
            let td = decode(
                bytes(&td),
                "TrackDescriptor",
                &[(1, 0), (2, 2), (3, 2), (4, 2), (5, 0)],
            );
            let f = |n: u64| td.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
            let uuid = uint(&f(1).expect("uuid"));
            if let Some(p) = f(3) {
                let pd = decode(bytes(&p), "ProcessDescriptor", &[(1, 0), (6, 2)]);
                assert!(pd.iter().any(|(k, _)| *k == 1), "process pid");
                processes.insert(uuid);
            } else {
                let t = f(4).expect("a track is a process or a thread");
                let thd = decode(bytes(&t), "ThreadDescriptor", &[(1, 0), (2, 0), (5, 2)]);
                assert!(thd.iter().any(|(k, _)| *k == 2), "thread tid");
                let parent = uint(&f(5).expect("parent_uuid"));
                assert!(
                    processes.contains(&parent),
                    "thread track under a declared process"
                );
                threads.insert(uuid, parent);
            }
            continue;
        }
        let ts = uint(&get(8).expect("a track event has a timestamp"));
        let te = decode(
            bytes(&get(11).expect("track_event")),
            "TrackEvent",
            &[(4, 2), (9, 0), (11, 0), (22, 2), (23, 2)],
        );
        let f = |n: u64| te.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        let track = uint(&f(11).expect("track_uuid"));
        assert!(threads.contains_key(&track), "event on an undeclared track");
        let prev = last_ts.insert(track, ts).unwrap_or(0);
        assert!(ts >= prev, "timestamps go back on a track");
        for (k, a) in &te {
            if *k == 4 {
                let da = decode(bytes(a), "DebugAnnotation", &[(6, 2), (10, 2)]);
                let name = da.iter().find(|(k, _)| *k == 10).map(|(_, v)| string(v));
                let value = da.iter().find(|(k, _)| *k == 6).map(|(_, v)| string(v));
                out.annotations
                    .push(format!("{}={}", name.expect("name"), value.expect("value")));
            }
        }
        let stack = stacks.entry(track).or_default();
        match uint(&f(9).expect("type")) {
            1 => {
                let name = string(&f(23).expect("a slice begin has a name"));
                out.slice_names.insert(name.clone());
                stack.push(name);
                out.slices += 1;
            }
            2 => {
                assert!(stack.pop().is_some(), "slice end without a begin");
            }
            3 => {
                assert!(f(23).is_some(), "an instant has a name");
            }
            other => panic!("unexpected TrackEvent.type {other}"),
        }
    }
    for (track, stack) in stacks {
        assert!(
            stack.is_empty(),
            "track {track}: slices left open: {stack:?}"
        );
    }
    out.threads = threads.len();
    out.processes = processes.len();
    out
}

fn check_chrome(doc: &Value) -> HashSet<String> {
    let events = doc["traceEvents"].as_array().expect("traceEvents");
    let mut names = HashSet::new();
    let mut per_thread: BTreeMap<(u64, u64), Vec<(f64, f64)>> = BTreeMap::new();
    for e in events {
        let ph = e["ph"].as_str().expect("ph");
        assert!(e["pid"].is_u64() && e["tid"].is_u64(), "pid/tid: {e}");
        assert!(e["name"].is_string(), "name: {e}");
        match ph {
            "M" => assert!(e["args"]["name"].is_string()),
            "X" => {
                let ts = e["ts"].as_f64().expect("ts");
                let dur = e["dur"].as_f64().expect("dur");
                assert!(dur >= 0.0);
                names.insert(e["name"].as_str().unwrap_or("").to_owned());
                per_thread
                    .entry((
                        e["pid"].as_u64().unwrap_or(0),
                        e["tid"].as_u64().unwrap_or(0),
                    ))
                    .or_default()
                    .push((ts, ts + dur));
            }
            "i" => assert!(e["ts"].is_f64() || e["ts"].is_u64()),
            other => panic!("unexpected phase {other}"),
        }
    }
    // X events of one thread nest: each starts after the previous ended or ends within it.
    for spans in per_thread.values_mut() {
        spans.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut open: Vec<f64> = Vec::new();
        for (start, end) in spans.iter() {
            while open.last().is_some_and(|e| *e <= *start + 1e-6) {
                open.pop();
            }
            if let Some(parent_end) = open.last() {
                assert!(*end <= *parent_end + 1e-6, "overlapping X events");
            }
            open.push(*end);
        }
    }
    names
}

#[test]
fn trace_a_service_show_it_and_export_it() {
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let name = format!("svc-{}", std::process::id());
        let target = ctx.python(&py, "trace_service.py", &[&name]);
        let pid = target.pid();
        wait_for(
            &format!("{py}: target awake"),
            Duration::from_secs(20),
            || (ctx.state_of(pid).as_deref() == Some("awake")).then_some(()),
        );
        let started = ctx.scry_json(&[
            "trace",
            "start",
            &name,
            "--include",
            "__main__",
            "--args",
            "--returns",
            "--max-rate",
            "100000/s",
        ]);
        let id = started["id"].as_str().expect("trace id").to_owned();
        assert_eq!(started["processes"][0]["pid"], pid, "{started}");
        let functions = started["processes"][0]["status"]["functions"]
            .as_u64()
            .unwrap_or(0);
        assert!(functions >= 6, "{py}: selected {functions}: {started}");

        // Wait for calls of each kind: the CPU loop (recursion), the handlers (coroutines that
        // resume, one in five raising) and a pulse.
        wait_for(
            &format!("{py}: traced calls"),
            Duration::from_secs(30),
            || {
                let shown = ctx.scry_json(&["trace", "show", &id]);
                let fns = shown["functions"].as_array()?.clone();
                let get = |f: &str| fns.iter().find(|r| r["function"] == f).cloned();
                let handle = get("handle")?;
                (get("fold")?["calls"].as_u64()? > 20
                    && handle["exceptions"].as_u64()? >= 1
                    && handle["resumptions"].as_u64()? >= 1
                    && !shown["pulses"].as_array()?.is_empty())
                .then_some(())
            },
        );
        let list = ctx.scry_json(&["trace", "list"]);
        assert_eq!(list["traces"][0]["id"], id.as_str());
        assert_eq!(list["traces"][0]["state"], "running");

        let stopped = ctx.scry_json(&["trace", "stop", &id]);
        assert_eq!(stopped["stopped"][0]["state"], "stopped", "{stopped}");

        // The whole tree: how many serve records come before the CPU loop depends on the machine.
        let tree = ctx.scry(&["trace", "show", &id, "--tree", "--max-lines", "100000"]);
        let tree_text = text(&tree);
        assert!(tree.status.success(), "{tree_text}");
        assert!(tree_text.contains("fold(values=["), "{py}: {tree_text}");
        assert!(tree_text.contains("checksum(n="), "{py}: {tree_text}");
        let json_tree = ctx.scry_json(&["trace", "show", &id, "--tree"]);
        let threads = json_tree["threads"].as_array().expect("threads");
        assert!(threads.len() >= 2, "{py}: main thread and cpu thread");
        // A recursive fold nests under checksum.
        let cpu = threads
            .iter()
            .find(|t| t["thread"] == "cpu")
            .expect("cpu thread");
        let first = cpu["calls"]
            .as_array()
            .and_then(|c| c.iter().find(|n| n["function"] == "checksum"))
            .expect("a checksum call");
        assert_eq!(first["children"][0]["function"], "fold");
        assert!(first["duration_ns"].as_i64() >= first["children"][0]["duration_ns"].as_i64());

        let dir = ctx.home().to_path_buf();
        let pf = dir.join("t.pftrace");
        let cj = dir.join("t.json");
        let out = ctx.scry_json(&[
            "trace",
            "export",
            &id,
            "--format",
            "perfetto",
            "-o",
            pf.to_str().unwrap_or(""),
        ]);
        assert!(out["slices"].as_u64().unwrap_or(0) > 0, "{out}");
        ctx.scry_json(&[
            "trace",
            "export",
            &id,
            "--format",
            "chrome",
            "-o",
            cj.to_str().unwrap_or(""),
        ]);

        let checked = check_perfetto(&std::fs::read(&pf).expect("perfetto file"));
        assert_eq!(checked.processes, 1);
        assert!(
            checked.threads >= 2,
            "{py}: {} thread tracks",
            checked.threads
        );
        assert!(checked.slices > 20);
        for name in [
            "fold",
            "checksum",
            "handle",
            "handle (resumed)",
            "lookup (resumed)",
        ] {
            assert!(
                checked.slice_names.contains(name),
                "{py}: no slice {name}: {:?}",
                checked.slice_names
            );
        }
        assert!(
            checked
                .annotations
                .iter()
                .any(|a| a.starts_with("outcome=exception")),
            "{py}: an exception outcome"
        );
        let chrome: Value =
            serde_json::from_slice(&std::fs::read(&cj).expect("chrome file")).expect("JSON");
        let names = check_chrome(&chrome);
        assert!(
            names.contains("fold") && names.contains("handle (resumed)"),
            "{names:?}"
        );

        // Bad input: clear errors, no crash.
        let bad = ctx.scry(&["trace", "start", &name, "--max-rate", "fast"]);
        assert!(
            !bad.status.success() && text(&bad).contains("is not a rate"),
            "{}",
            text(&bad)
        );
        let unknown = ctx.scry(&["trace", "show", "tr-nope"]);
        assert!(
            !unknown.status.success() && text(&unknown).contains("no trace"),
            "{}",
            text(&unknown)
        );
        drop(target);
    }
}

/// `--include pipeline.load` (a function written where a module is expected) selects nothing:
/// the start says so and names the `--function` meant; `trace stop` takes the pid (or the name)
/// a trace was started on, says which trace it stopped, and refuses when none runs there.
#[test]
fn a_dotted_include_says_it_selected_nothing_and_stop_takes_a_pid() {
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let name = format!("dotted-{}", std::process::id());
        let target = ctx.python(&py, "values_service.py", &[&name]);
        let pid = target.pid();
        let pid_s = pid.to_string();
        crate::probes::wait_awake(&ctx, pid, &py);

        let out = ctx.scry(&["trace", "start", &pid_s, "--include", "pipeline.load"]);
        let all = text(&out);
        assert!(out.status.success(), "{py}: {all}");
        assert!(
            all.contains(&format!("pid {pid}: 0 functions selected")),
            "{py}: {all}"
        );
        assert!(
            all.contains(&format!("note: no function selected in pid {pid}")),
            "{py}: {all}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("`--function pipeline:load`"),
            "{py}: {all}"
        );
        let listed = ctx.scry_json(&["trace", "list"]);
        let first = listed["traces"][0].clone();
        let id = first["id"].as_str().expect("trace id").to_owned();
        assert_eq!(first["state"], "running", "{py}: {first}");
        assert_eq!(first["processes"][0]["status"]["functions"], 0, "{first}");
        assert!(
            first["hint"]
                .as_str()
                .is_some_and(|h| h.contains("pipeline:load")),
            "{py}: {first}"
        );

        // Stopped by the pid it was started on.
        let stop = ctx.scry(&["trace", "stop", &pid_s]);
        let said = text(&stop);
        assert!(stop.status.success(), "{py}: {said}");
        assert!(
            said.contains(&format!("trace {id} stopped (pid {pid})")),
            "{py}: {said}"
        );
        let again = ctx.scry(&["trace", "stop", &pid_s]);
        let said = text(&again);
        assert!(!again.status.success(), "{py}: {said}");
        assert!(
            said.contains(&format!("no trace is running in `{pid}`")),
            "{py}: {said}"
        );

        // The function it meant selects it; stopped by the process's name.
        let meant = ctx.scry_json(&["trace", "start", &pid_s, "--function", "pipeline:load"]);
        assert_eq!(
            meant["processes"][0]["status"]["functions"], 1,
            "{py}: {meant}"
        );
        assert!(meant.get("notes").is_none(), "{py}: {meant}");
        let stopped = ctx.scry_json(&["trace", "stop", &name]);
        assert_eq!(stopped["stopped"][0]["id"], meant["id"], "{py}: {stopped}");
        assert_eq!(stopped["stopped"][0]["state"], "stopped", "{py}: {stopped}");
        drop(target);
    }
}
