//! `scry debug PID`: debugpy injected into a running process (issue 4, point 6). A small DAP
//! client (plain socket, Content-Length framing) connects to the printed port, initializes,
//! attaches, sets a breakpoint on a line the target runs in a loop, sends configurationDone and
//! sees the `stopped` event; after it disconnects the target runs on. On 3.14+ (PEP 768); the
//! gdb path (3.8–3.13) is covered by the same test when such an interpreter is in the matrix.
//! Also: a target that cannot import debugpy gets an error that says how to install it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{minor_of, pythons, skipped, text, wait_for, Ctx, Proc};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/debug_loop.py")
}

fn start(ctx: &Ctx, python: &str, extra: &[&str], counter: &std::path::Path) -> Proc {
    let child = Command::new(python)
        .args(extra)
        .arg(script())
        .arg(counter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("target");
    let proc = Proc {
        child,
        label: "debug target".into(),
    };
    // Started when it has written its counter once.
    wait_for("the target to run", Duration::from_secs(30), || {
        std::fs::read_to_string(counter)
            .ok()
            .filter(|s| !s.is_empty())
    });
    let _ = ctx;
    proc
}

/// A DAP connection: requests with sequence numbers, messages read with Content-Length framing.
pub struct Dap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    seq: i64,
    seen: Vec<Value>,
}

impl Dap {
    pub fn connect(port: u16) -> Dap {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to debugpy");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        Dap {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
            seq: 0,
            seen: Vec::new(),
        }
    }

    pub fn send(&mut self, command: &str, arguments: Value) -> i64 {
        self.seq += 1;
        let body =
            json!({"seq": self.seq, "type": "request", "command": command, "arguments": arguments})
                .to_string();
        write!(self.writer, "Content-Length: {}\r\n\r\n{body}", body.len()).expect("send");
        self.seq
    }

    fn read(&mut self) -> Value {
        let mut length = None;
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read header");
            assert!(
                n > 0,
                "debugpy closed the connection; seen: {:#?}",
                self.seen
            );
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("Content-Length:") {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0u8; length.expect("Content-Length")];
        self.reader.read_exact(&mut body).expect("read body");
        let v: Value = serde_json::from_slice(&body).expect("json");
        self.seen.push(v.clone());
        v
    }

    /// Reads until a message matches (earlier ones are kept in `seen`).
    fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        while Instant::now() < deadline {
            let v = self.read();
            if pred(&v) {
                return v;
            }
        }
        panic!("no {what}; seen: {:#?}", self.seen);
    }

    pub fn response(&mut self, seq: i64) -> Value {
        let v = self.until(&format!("response to {seq}"), |v| {
            v["type"] == "response" && v["request_seq"] == seq
        });
        assert_eq!(v["success"], true, "{v:#}");
        v
    }
}

fn counter_value(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn scry_debug_starts_debugpy_and_a_dap_client_hits_a_breakpoint() {
    let ctx = Ctx::new();
    let line = std::fs::read_to_string(script())
        .expect("script")
        .lines()
        .position(|l| l.contains("the breakpoint line"))
        .expect("breakpoint line")
        + 1;
    let mut ran = 0;
    for python in pythons() {
        let minor = minor_of(&python);
        let gdb = std::path::Path::new("/usr/bin/gdb").exists();
        if minor < 14 && !(gdb && (8..=13).contains(&minor) && python.ends_with("3.11")) {
            continue; // 3.14+ natively; gdb once, on the host interpreter
        }
        ran += 1;
        let counter = ctx.home().join(format!("counter-{minor}"));
        let _target = start(&ctx, &python, &[], &counter);
        let pid = _target.pid();
        let answer = ctx.scry_json(&["debug", &pid.to_string(), "--port", "0"]);
        let port = answer["port"].as_u64().expect("port") as u16;
        assert_eq!(answer["host"], "127.0.0.1");
        assert_eq!(
            answer["vscode"]["configurations"][0]["connect"]["port"],
            port
        );
        assert!(answer["vscode"]["configurations"][0]["pathMappings"][0]["remoteRoot"].is_string());
        assert!(answer["nvim_dap"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("port = {port}")));
        // No leftover placement in the target's root.
        let leftovers: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root/tmp"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("scry-debug-"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Injecting again reports the same port.
        let again = ctx.scry_json(&["debug", &pid.to_string(), "--port", "0"]);
        assert_eq!(again["port"], port);
        assert_eq!(again["already"], true);

        let mut dap = Dap::connect(port);
        let init = dap.send(
            "initialize",
            json!({"clientID": "scry-test", "adapterID": "python", "linesStartAt1": true,
                   "columnsStartAt1": true, "pathFormat": "path"}),
        );
        dap.response(init);
        let attach = dap.send("attach", json!({"justMyCode": false}));
        dap.until("initialized", |v| {
            v["type"] == "event" && v["event"] == "initialized"
        });
        let set = dap.send(
            "setBreakpoints",
            json!({"source": {"path": script()}, "breakpoints": [{"line": line}]}),
        );
        let bps = dap.response(set);
        assert_eq!(bps["body"]["breakpoints"][0]["verified"], true, "{bps:#}");
        let done = dap.send("configurationDone", json!({}));
        dap.response(done);
        dap.response(attach);
        let stopped = dap.until("stopped", |v| {
            v["type"] == "event" && v["event"] == "stopped"
        });
        assert_eq!(stopped["body"]["reason"], "breakpoint", "{stopped:#}");
        let disconnect = dap.send("disconnect", json!({"terminateDebuggee": false}));
        dap.response(disconnect);
        drop(dap);
        // The target runs on.
        let before = counter_value(&counter);
        wait_for("the target to run on", Duration::from_secs(30), || {
            (counter_value(&counter) > before + 10).then_some(())
        });
    }
    assert!(
        ran > 0 || pythons().iter().all(|p| minor_of(p) < 14),
        "no interpreter ran"
    );
}

#[test]
fn scry_debug_says_how_to_install_debugpy() {
    let ctx = Ctx::new();
    let Some(python) = pythons().into_iter().find(|p| minor_of(p) >= 14) else {
        skipped::<()>("no Python 3.14+ in SCRY_TEST_PYTHONS for the native injector");
        return;
    };
    let counter = ctx.home().join("counter-nosite");
    // -S: no site-packages, so debugpy cannot be imported.
    let target = start(&ctx, &python, &["-S"], &counter);
    let out = ctx.scry(&["debug", &target.pid().to_string()]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot import debugpy"), "{err}");
    assert!(err.contains("-m pip install debugpy"), "{err}");
    // Not Python at all.
    let mut sleep = Command::new("sleep").arg("30").spawn().expect("sleep");
    let out = ctx.scry(&["debug", &sleep.id().to_string()]);
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a Python process"),
        "{}",
        text(&out)
    );
}

#[test]
fn scry_debug_follow_starts_debugpy_again_in_a_restarted_worker() {
    let ctx = Ctx::new();
    let Some(python) = pythons().into_iter().find(|p| minor_of(p) >= 14) else {
        skipped::<()>("no Python 3.14+ in SCRY_TEST_PYTHONS");
        return;
    };
    let (_server, status) = crate::discovery::start_reload_server(&ctx, &python);
    let (supervisor, first) = wait_for("the first worker", Duration::from_secs(30), || {
        crate::discovery::reload_starts(&status).first().copied()
    });
    let mut follower = Proc {
        child: ctx
            .cmd(&[
                "debug",
                &supervisor.to_string(),
                "--follow",
                "--port",
                "0",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("scry debug --follow"),
        label: "scry debug --follow".into(),
    };
    let stdout = follower.child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let one = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("debugpy in the first worker");
    assert_eq!(one["pid"], first, "{one}");
    let port = one["port"].as_u64().expect("port") as u16;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let second = wait_for("a new worker", Duration::from_secs(30), || {
        crate::discovery::reload_starts(&status).get(1).map(|s| s.1)
    });
    let two = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("debugpy in the new worker");
    assert_eq!(two["pid"], second, "{two}");
    assert_eq!(two["port"], port, "the same port: {two}");
    let mut dap = Dap::connect(port);
    let init = dap.send(
        "initialize",
        json!({"clientID": "scry-test", "adapterID": "python", "pathFormat": "path"}),
    );
    dap.response(init);
    drop(dap);
    follower.kill();
}
