//! Probe expressions that try to act (issue 12, items 5 and 6), replayed through `scry probe
//! add` and through MCP (`scry mcp`, stdio), with no agent connected and against a real running
//! target: every escape is refused at add time by the daemon's checker with its reason and a
//! hint, nothing is stored, and its side-effect file never appears. The unbounded operators are
//! accepted (they are well-formed) and refused by the agent's guards before computing: the
//! probe goes to `error` with the reason, the target keeps running and does not grow.
//!
//! The attacker here is whoever writes the expression (an MCP client, a pasted command), not
//! another uid: the owner's own daemon must refuse it, so these run as the owner.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::assert_absent;
use crate::support::{pythons, text, wait_for, Ctx};

/// The escapes of issue 12 (and friends), each trying to create `P`; the reason expected.
const ESCAPES: &[(&str, &str)] = &[
    (
        "min(['touch P'], key=__import__('os').system)",
        "names that start and end with __",
    ),
    ("min(['touch P'], key=os.system)", "keyword argument key="),
    (
        "sorted([\"open('P', 'w')\"], key=eval)",
        "keyword argument key=",
    ),
    (
        "max([\"open('P', 'w')\"], key=exec)",
        "keyword argument key=",
    ),
    (
        "__import__('os').system('touch P')",
        "names that start and end with __",
    ),
    ("os.system('touch P')", "calls are not allowed: os.system()"),
    ("open('P', 'w')", "calls are not allowed: open()"),
    ("exec(\"open('P', 'w')\")", "calls are not allowed: exec()"),
    ("[open('P', 'w') for _ in 'x']", "comprehensions"),
    ("(lambda: open('P', 'w'))()", "lambda is not allowed"),
    (
        "x.__class__.__base__.__subclasses__()",
        "attributes that start and end with __",
    ),
    ("getattr(os, 'system')('touch P')", "calls are not allowed"),
    ("f'{open(\"P\", \"w\")}'", "f-strings"),
];

fn line_of(script: &str, tag: &str) -> u32 {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(script);
    let src = std::fs::read_to_string(path).expect("script");
    src.lines()
        .position(|l| l.contains(&format!("# PROBE: {tag}")))
        .map(|i| i as u32 + 1)
        .expect("marker")
}

fn escapes(side_effect: &Path) -> Vec<(String, &'static str)> {
    let p = side_effect.display().to_string();
    ESCAPES
        .iter()
        .map(|(e, why)| (e.replace('P', &p), *why))
        .collect()
}

/// Every escape through `scry probe add`: refused with the reason and a hint, nothing stored.
fn refused_by_cli(ctx: &Ctx, location: &str, extra: &[&str], side_effect: &Path) {
    for (expr, why) in escapes(side_effect) {
        let mut args = vec!["probe", "add", location, expr.as_str()];
        args.extend_from_slice(extra);
        let out = ctx.scry(&args);
        let shown = text(&out);
        assert!(!out.status.success(), "`{expr}` was accepted: {shown}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("error: expression `") && err.contains(why),
            "`{expr}`: {shown}"
        );
        assert!(err.contains("hint:"), "`{expr}`: no hint: {shown}");
    }
    let list = ctx.scry_json(&["probe", "list"]);
    assert_eq!(list["probes"], json!([]), "nothing is stored: {list}");
    assert_absent(side_effect, "an escape's side effect");
}

/// A `scry mcp` session (JSON-RPC over its stdio).
struct Mcp {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    next: u64,
}

impl Mcp {
    fn start(ctx: &Ctx) -> Mcp {
        let mut child = ctx
            .cmd(&["mcp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("scry mcp");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut mcp = Mcp {
            child,
            lines,
            next: 1,
        };
        mcp.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "0"}}),
        );
        mcp.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        mcp
    }

    fn send(&mut self, msg: &Value) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{msg}").expect("write to scry mcp");
        stdin.flush().expect("flush");
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer from scry mcp to {method}"));
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["id"] == id {
                return v;
            }
        }
    }

    /// `add_probe`: (is_error, the tool's text).
    fn add_probe(&mut self, args: Value) -> (bool, String) {
        let v = self.request(
            "tools/call",
            json!({"name": "add_probe", "arguments": args}),
        );
        let result = &v["result"];
        let body = result["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (result["isError"] == true, body)
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every escape through MCP's `add_probe`: an error result with the reason.
fn refused_by_mcp(ctx: &Ctx, location: &str, pid: Option<u32>, side_effect: &Path) {
    let mut mcp = Mcp::start(ctx);
    for (expr, why) in escapes(side_effect) {
        let mut args = json!({"location": location, "expressions": [expr]});
        if let Some(pid) = pid {
            args["pid"] = json!(pid);
        }
        let (is_error, body) = mcp.add_probe(args);
        assert!(is_error, "MCP accepted `{expr}`: {body}");
        let err: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(
            err["error"]["kind"], "invalid_expression",
            "`{expr}`: {body}"
        );
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "`{expr}`: {body}");
        assert!(err["error"]["hint"].is_string(), "`{expr}`: {body}");
    }
    // `observe` adds its probe through the same path.
    let v = mcp.request(
        "tools/call",
        json!({"name": "observe", "arguments": {"target": location.rsplit_once(':').map(|p| p.0).unwrap_or(location), "line": 1, "expression": "min(['x'], key=eval)", "pid": pid, "timeout_s": 1}}),
    );
    assert_eq!(v["result"]["isError"], true, "{v}");
    if pid.is_some() {
        // With a process to find the line in, it is the expression that is refused.
        let body = v["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(
            body.contains("invalid_expression") && body.contains("keyword argument key="),
            "{v}"
        );
    }
    let list = ctx.scry_json(&["probe", "list"]);
    assert_eq!(list["probes"], json!([]), "nothing is stored: {list}");
    assert_absent(side_effect, "an escape's side effect (MCP)");
}

#[test]
fn escapes_are_refused_at_add_time_with_no_agent_connected() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
    let side_effect = dir.path().join("p");
    // Issue 12 item 6: with nobody connected, these used to be stored (exit 0).
    refused_by_cli(&ctx, "f.py:1", &[], &side_effect);
    refused_by_mcp(&ctx, "f.py:1", None, &side_effect);
    // Stored probes are re-sent to every process that connects: none may be there.
    let stored = ctx.get("/api/v1/probes");
    assert_eq!(stored["probes"], json!([]));
}

/// RSS of a process in kB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn ticks(ctx: &Ctx) -> usize {
    ctx.script_log("expr_target.py")
        .lines()
        .filter(|l| l.starts_with("tick "))
        .count()
}

#[test]
fn escapes_and_unbounded_operators_against_a_running_target() {
    let line = line_of("expr_target.py", "work");
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let mut target = ctx.python(&py, "expr_target.py", &["expr-target"]);
        let pid = target.pid();
        wait_for(
            &format!("{py}: target awake"),
            Duration::from_secs(30),
            || (ctx.state_of(pid).as_deref() == Some("awake")).then_some(()),
        );
        let location = format!("expr_target.py:{line}");
        let pid_s = pid.to_string();
        let dir = tempfile::tempdir_in("/tmp").expect("tempdir");
        let side_effect = dir.path().join("p");
        refused_by_cli(&ctx, &location, &["--pid", &pid_s], &side_effect);
        refused_by_mcp(&ctx, &location, Some(pid), &side_effect);

        // Well-formed but unbounded: the agent's guards refuse them before computing.
        let rss_before = rss_kb(pid);
        for (name, expr, why) in [
            ("pow", "9**9**9", "would have about"),
            (
                "repeat",
                "len('a'*(500*1000*1000))",
                "repeating a str of 1 items 500000000 times",
            ),
        ] {
            let out = ctx.scry(&[
                "probe", "add", &location, expr, "--name", name, "--pid", &pid_s,
            ]);
            assert!(out.status.success(), "{py}: `{expr}`: {}", text(&out));
            let status = wait_for(
                &format!("{py}: `{expr}` refused in the target"),
                Duration::from_secs(30),
                || {
                    let p = ctx.scry_json(&["probe", "show", name]);
                    let s = p["processes"]
                        .as_array()?
                        .iter()
                        .find(|s| s["pid"] == pid)?
                        .clone();
                    (s["state"] == "error").then_some(s)
                },
            );
            assert_eq!(status["error_kind"], "refused", "{py}: {status}");
            let reason = status["reason"].as_str().unwrap_or_default();
            assert!(
                reason.starts_with("refused: ") && reason.contains(why),
                "{py}: {status}"
            );
            // The target goes on: more ticks come.
            let seen = ticks(&ctx);
            wait_for(
                &format!("{py}: the target still ticks after `{expr}`"),
                Duration::from_secs(20),
                || (ticks(&ctx) > seen + 10).then_some(()),
            );
        }
        let grown = rss_kb(pid).saturating_sub(rss_before);
        assert!(grown < 100 * 1024, "{py}: the target grew by {grown} kB");
        assert_absent(&side_effect, "an escape's side effect");
        target.kill();
    }
}

#[test]
fn unsafe_is_stored_and_shown() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let out = ctx.scry(&[
        "probe",
        "add",
        "f.py:3",
        "x.conjugate()",
        "--unsafe",
        "--name",
        "u",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ctx.scry(&["probe", "add", "f.py:3", "x", "--name", "s"]);
    assert!(out.status.success(), "{}", text(&out));
    let list = ctx.scry_json(&["probe", "list"]);
    let unsafe_of = |name: &str| {
        list["probes"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .map(|p| p["unsafe"].clone())
    };
    assert_eq!(unsafe_of("u"), Some(json!(true)), "{list}");
    assert_eq!(unsafe_of("s"), Some(json!(false)), "{list}");
    let out = ctx.scry(&["probe", "list"]);
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    let row = |name: &str| {
        shown
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(row("u").contains("UNSAFE"), "{shown}");
    assert!(!row("s").contains("UNSAFE"), "{shown}");
    let out = ctx.scry(&["probe", "show", "u"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unsafe    yes"),
        "{}",
        text(&out)
    );
    // Stored with the probe: a restarted daemon still knows.
    ctx.kill_daemon();
    ctx.start_daemon();
    assert_eq!(ctx.scry_json(&["probe", "show", "u"])["unsafe"], true);
}

#[test]
fn locations_are_checked_against_connected_processes() {
    let line = line_of("expr_target.py", "work");
    let py = pythons().into_iter().next().expect("a python");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    // Nobody connected: accepted, pending, and the answer says it could not be checked.
    let out = ctx.scry(&["probe", "add", "expr_target.py:9999", "text"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("could not be checked"), "{shown}");
    assert!(
        shown.contains("hint: check the path with `scry lines"),
        "{shown}"
    );
    let list = ctx.scry_json(&["probe", "list"]);
    for p in list["probes"].as_array().into_iter().flatten() {
        let id = p["id"].as_str().expect("id");
        assert!(ctx.scry(&["probe", "rm", id]).status.success());
    }

    let mut target = ctx.python(&py, "expr_target.py", &["expr-target"]);
    let pid = target.pid();
    wait_for("target awake", Duration::from_secs(30), || {
        (ctx.state_of(pid).as_deref() == Some("awake")).then_some(())
    });
    let last = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/expr_target.py"),
    )
    .expect("script")
    .lines()
    .count();
    // Past the end of a file the process loaded: refused, naming the file and its last line.
    let past = format!("expr_target.py:{}", last + 1);
    let out = ctx.scry(&["probe", "add", &past, "text"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(&format!("line {} is past the end of", last + 1))
            && err.contains("expr_target.py")
            && err.contains(&format!("its last line is {last}")),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    let out = ctx.scry(&["probe", "add", "expr_target.py:9999", "text"]);
    assert!(!out.status.success(), "{}", text(&out));
    // Inside it: fine.
    let out = ctx.scry(&[
        "probe",
        "add",
        &format!("expr_target.py:{line}"),
        "text",
        "--name",
        "in",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // A file no connected process has loaded: pending, with a hint.
    let out = ctx.scry(&[
        "probe",
        "add",
        "not_loaded_anywhere.py:3",
        "x",
        "--name",
        "later",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("no connected process has loaded not_loaded_anywhere.py")
            && shown.contains("pending"),
        "{shown}"
    );
    assert!(
        shown.contains("hint: check the path with `scry lines"),
        "{shown}"
    );
    let list = ctx.scry_json(&["probe", "list"]);
    let names: Vec<&str> = list["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["in", "later"],
        "only the accepted ones are kept: {list}"
    );
    target.kill();
}
