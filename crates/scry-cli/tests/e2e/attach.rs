//! `scry attach` / `scry detach` (issue 4, points 2 and 4): zero-preparation attach to Python
//! 3.14 through PEP 768, written natively; every failure produced for real.
//!
//! Targets never import scry (no PYTHONPATH): `tests/scripts/attach_target.py`. The 3.14
//! interpreter of the test matrix runs in a chroot, so every attach here also crosses a root.
//! A test whose precondition is missing (no 3.14, not root) says so on stderr and passes.
#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::support::{http_post_json, pythons, skipped, text, wait_for, Ctx};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/attach_target.py")
}

fn probe_line() -> u32 {
    let src = std::fs::read_to_string(script()).expect("script");
    src.lines()
        .position(|l| l.contains("# PROBE: total"))
        .expect("marked line") as u32
        + 1
}

fn minor(py: &str) -> Option<(u32, u32)> {
    let out = Command::new(py)
        .args(["-c", "import sys; print(*sys.version_info[:2])"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace().map(|x| x.parse().ok());
    Some((it.next()??, it.next()??))
}

fn python_of(want: (u32, u32)) -> Option<String> {
    pythons().into_iter().find(|p| minor(p) == Some(want))
}

/// Every interpreter of the matrix that PEP 768 attaches to (3.14 and later).
fn pep768_pythons() -> Vec<String> {
    let found: Vec<String> = pythons()
        .into_iter()
        .filter(|p| minor(p).is_some_and(|v| v >= (3, 14)))
        .collect();
    assert!(
        !found.is_empty() || std::env::var_os("CI").is_none(),
        "no Python 3.14+ in SCRY_TEST_PYTHONS under CI"
    );
    found
}

fn py314() -> Option<String> {
    python_of((3, 14)).or_else(|| {
        skipped("no Python 3.14 in SCRY_TEST_PYTHONS: the PEP 768 attach tests have nothing to attach to")
    })
}

/// A target process: its stdout lines arrive on a channel; killed on drop.
struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Target {
    fn spawn(mut cmd: Command) -> Target {
        cmd.env_remove("PYTHONPATH")
            .env_remove("SCRY_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn target");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Target {
            child,
            stdin,
            lines,
        }
    }

    fn python(py: &str, mode: &str) -> Target {
        let mut cmd = Command::new(py);
        cmd.arg(script()).arg(mode);
        Target::spawn(cmd)
    }

    /// The next line starting with `prefix` (others are skipped).
    fn line(&self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(e) => panic!("no `{prefix}` line from the target: {e}"),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Threads and sockets of `pid` when quiet: the fewest seen over a second. The threaded server
/// target has a thread and two sockets per request in flight (one every 50 ms), so a single
/// sample may catch one; what an attach leaves behind would stay in every sample.
fn quiet_counts(pid: u32) -> (usize, usize) {
    let mut least = (usize::MAX, usize::MAX);
    for _ in 0..20 {
        least = (least.0.min(threads(pid)), least.1.min(sockets(pid)));
        std::thread::sleep(Duration::from_millis(50));
    }
    least
}

fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

fn attach_dirs(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/root/tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("scry-attach-"))
                .collect()
        })
        .unwrap_or_default()
}

fn agent_state(ctx: &Ctx, pid: u32) -> Value {
    let (status, body) = http_post_json(
        &ctx.http(),
        &format!("/api/v1/processes/{pid}/call/agent.state"),
        "{}",
    )
    .expect("call");
    assert_eq!(status, 200, "agent.state: {body}");
    serde_json::from_str(&body).expect("json")
}

fn scry_tools(state: &Value) -> usize {
    state["monitoring_tools"]
        .as_object()
        .map(|m| m.values().filter(|v| *v == "scry").count())
        .unwrap_or(0)
}

fn attach_ok(ctx: &Ctx, pid: u32) -> Value {
    let report = ctx.scry_json(&["attach", &pid.to_string(), "--timeout", "10"]);
    assert_eq!(report["already_attached"], false, "{report}");
    assert_eq!(report["injector"], "pep768", "{report}");
    let placed = report["placed_in"].as_str().expect("placed_in").to_owned();
    let host = format!("/proc/{pid}/root{placed}");
    assert!(
        !Path::new(&host).exists(),
        "the placement {host} must be gone once the agent is connected"
    );
    report
}

/// Attach, probe, detach with nothing left, attach again: on one target.
fn full_cycle(ctx: &Ctx, pid: u32, label: &str) {
    let base = quiet_counts(pid);
    let pid_s = pid.to_string();

    attach_ok(ctx, pid);
    let again = ctx.scry(&["attach", &pid_s]);
    assert!(again.status.success(), "{label}: {}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already has a scry agent connected"),
        "{label}: {}",
        text(&again)
    );
    let ps = ctx.ps();
    let me = ps
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("{label}: not in ps: {ps:?}"));
    assert_eq!(me["state"], "awake");
    assert_eq!(me["origin"], "injected");
    // `inspect` is imported on its first call, after the placed files were removed: from the
    // sources the agent kept in memory.
    let (status, body) = http_post_json(
        &ctx.http(),
        &format!("/api/v1/processes/{pid}/call/inspect"),
        "{}",
    )
    .expect("call inspect");
    assert_eq!(status, 200, "{label}: inspect: {body}");
    assert!(body.contains("scry-link"), "{label}: inspect: {body}");

    let loc = format!("attach_target.py:{}", probe_line());
    let name = format!("total-{pid}");
    let out = ctx.scry(&[
        "probe", "add", &loc, "total", "--name", &name, "--pid", &pid_s,
    ]);
    assert!(out.status.success(), "{label}: {}", text(&out));
    let value = wait_for(
        &format!("{label}: a probe value"),
        Duration::from_secs(20),
        || {
            let events = ctx.scry_json(&["events", "--probe", &name, "--limit", "5"]);
            events["events"].as_array()?.iter().find_map(|e| {
                let v = &e["data"]["values"]["total"];
                (v["t"] == "int").then(|| v["v"].as_i64()).flatten()
            })
        },
    );
    assert_eq!(value % 3, 0, "{label}: total is i*3, got {value}");
    let state = agent_state(ctx, pid);
    assert_eq!(state["origin"], "injected");
    assert_eq!(
        scry_tools(&state),
        1,
        "{label}: one sys.monitoring tool: {state}"
    );

    let out = ctx.scry(&["detach", &pid_s]);
    assert!(out.status.success(), "{label}: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("detached from pid"));
    assert!(
        ctx.ps().iter().all(|p| p["pid"] != pid),
        "{label}: a detached process is not listed"
    );
    wait_for(
        &format!("{label}: threads and sockets back to before the attach"),
        Duration::from_secs(10),
        || (quiet_counts(pid) == base).then_some(()),
    );

    // Again: the old tool id was freed (one scry tool, not two), one link thread.
    attach_ok(ctx, pid);
    let state = wait_for(
        &format!("{label}: the probe re-armed after the second attach"),
        Duration::from_secs(20),
        || {
            let s = agent_state(ctx, pid);
            (scry_tools(&s) == 1).then_some(s)
        },
    );
    let links = state["threads"]
        .as_array()
        .map(|t| t.iter().filter(|n| *n == "scry-link").count());
    assert_eq!(links, Some(1), "{label}: {state}");
    let out = ctx.scry(&["probe", "rm", &name]);
    assert!(out.status.success(), "{label}: {}", text(&out));
    let out = ctx.scry(&["detach", &pid_s]);
    assert!(out.status.success(), "{label}: {}", text(&out));
    wait_for(
        &format!("{label}: nothing left after the second detach"),
        Duration::from_secs(10),
        || (quiet_counts(pid) == base).then_some(()),
    );
    assert!(attach_dirs(pid).iter().all(|d| !d.is_empty()));
}

#[test]
fn attach_busy_sleeping_and_threaded_server_on_314() {
    for py in pep768_pythons() {
        attach_busy_sleeping_and_threaded_server(&py);
    }
}

fn attach_busy_sleeping_and_threaded_server(py: &str) {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    for mode in ["busy", "sleep", "server"] {
        let target = Target::python(py, mode);
        target.line("ready");
        full_cycle(&ctx, target.pid(), mode);
        if mode == "busy" {
            // A detached process is no sleeping client, also for a daemon started afresh.
            ctx.kill_daemon();
            ctx.start_daemon();
            let ps = ctx.ps();
            assert!(
                ps.iter()
                    .filter(|p| p["pid"] == target.pid())
                    .all(|p| p["state"] == "gone"),
                "a detached process is listed as gone or not at all after a restart: {ps:?}"
            );
        }
    }
}

/// The host pid of the python below `root` (a process in its own PID namespace).
fn python_below(root: u32) -> Option<u32> {
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(p) {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                if exe.to_string_lossy().contains("python3") {
                    return Some(pid);
                }
                frontier.push(pid);
            }
        }
    }
    None
}

#[test]
fn attach_in_own_pid_namespace_on_314() {
    let Some(py) = py314() else { return };
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc", "--"])
        .arg(&py)
        .arg(script())
        .arg("sleep");
    let wrapper = Target::spawn(cmd);
    let ready = wrapper.line("ready");
    let pid = wait_for("the namespaced python", Duration::from_secs(10), || {
        python_below(wrapper.pid())
    });
    assert_ne!(
        ready,
        format!("ready {pid}"),
        "the target sees another pid than the host: it is in its own PID namespace"
    );
    full_cycle(&ctx, pid, "pid-namespace");
}

fn attach_fails(ctx: &Ctx, args: &[&str], wants: &[&str]) -> String {
    let out = ctx.scry(args);
    assert!(
        !out.status.success(),
        "scry {args:?} must fail: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    for want in wants {
        assert!(err.contains(want), "scry {args:?}: `{want}` not in:\n{err}");
    }
    err
}

#[test]
fn attach_failures_are_clear() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    for injector in ["auto", "pep768", "gdb"] {
        attach_fails(
            &ctx,
            &["attach", "999999999", "--injector", injector],
            &["no process with pid 999999999", "scry ps --all"],
        );
    }

    let mut sleep = Command::new("sleep").arg("60").spawn().expect("sleep");
    let pid = sleep.id().to_string();
    attach_fails(
        &ctx,
        &["attach", &pid],
        &["is not a Python process", "/usr/bin/sleep"],
    );
    let _ = sleep.kill();
    let _ = sleep.wait();

    for (version, label) in [((3, 11), "3.11"), ((3, 13), "3.13")] {
        let Some(py) = python_of(version).or_else(|| {
            skipped(&format!(
                "no Python {label} in SCRY_TEST_PYTHONS for the gdb-only refusal"
            ))
        }) else {
            continue;
        };
        let target = Target::python(&py, "sleep");
        target.line("ready");
        attach_fails(
            &ctx,
            &["attach", &target.pid().to_string(), "--injector", "pep768"],
            &[
                &format!("runs Python {label}"),
                "supports CPython 3.14 and 3.15 final releases",
                "install gdb",
                "scry.init()",
            ],
        );
    }

    let Some(py) = py314() else { return };
    // A private /tmp (when root) shows exactly what this attach placed: nothing.
    let private = is_root();
    let mut env_off = private_tmp_command(&py, &[], "sleep", private);
    env_off.env("PYTHON_DISABLE_REMOTE_DEBUG", "1");
    let x_off = private_tmp_command(&py, &["-X", "disable-remote-debug"], "sleep", private);
    for cmd in [env_off, x_off] {
        let target = Target::spawn(cmd);
        target.line("ready");
        attach_fails(
            &ctx,
            &["attach", &target.pid().to_string()],
            &[
                "remote debugging is disabled in process",
                "PYTHON_DISABLE_REMOTE_DEBUG",
                "-X disable-remote-debug",
            ],
        );
        if private {
            assert!(attach_dirs(target.pid()).is_empty(), "nothing placed");
        }
    }
}

/// `py ARGS script MODE`, in a private mount namespace with its own empty /tmp (the chroot
/// wrapper binds it) when `private`, so that the test sees exactly what an attach placed there.
fn private_tmp_command(py: &str, args: &[&str], mode: &str, private: bool) -> Command {
    let mut cmd;
    if private {
        // A fresh /tmp hides the repository when it lives under /tmp (a CI clone): keep the
        // old directory open as the cwd and bind it back at its path inside the new /tmp.
        cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "R=$1; shift; cd \"$R\" && mount -t tmpfs scry-attach-test /tmp \
                 && mkdir -p \"$R\" && mount -c --bind /proc/self/cwd \"$R\" && cd \"$R\" \
                 && exec \"$0\" \"$@\"",
            )
            .arg(py)
            .arg(crate::support::repo());
    } else {
        cmd = Command::new(py);
    }
    cmd.args(args).arg(script()).arg(mode);
    cmd
}

fn private_tmp_python(py: &str, mode: &str) -> Target {
    Target::spawn(private_tmp_command(py, &[], mode, true))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn blocked_target_times_out_and_nothing_fires_later() {
    let Some(py) = py314() else { return };
    if !is_root() {
        skipped::<()>("needs root for a private /tmp (unshare --mount)");
        return;
    }
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let mut target = private_tmp_python(&py, "blocked");
    target.line("ready");
    let pid = target.pid();
    let err = attach_fails(
        &ctx,
        &["attach", &pid.to_string(), "--timeout", "1"],
        &[
            "did not pick the script up within",
            "blocked in",
            "nothing will run later",
            &format!("scry dump {pid}"),
        ],
    );
    assert!(attach_dirs(pid).is_empty(), "placement removed: {err}");
    // Unblock it: it runs bytecode again, and nothing of scry arrives.
    target
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"x")
        .expect("unblock");
    target.line("unblocked");
    for n in 0..30 {
        let tick = target.line("tick");
        assert_eq!(tick, format!("tick {n} -"), "no scry module may load later");
    }
    assert!(
        ctx.ps().iter().all(|p| p["pid"] != pid),
        "no agent connected"
    );
}

#[test]
fn target_exiting_during_attach() {
    let Some(py) = py314() else { return };
    if !is_root() {
        skipped::<()>("needs root for a private /tmp (unshare --mount)");
        return;
    }
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let mut target = private_tmp_python(&py, "blocked");
    target.line("ready");
    let pid = target.pid();
    let attach = ctx
        .cmd(&["attach", &pid.to_string(), "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scry attach");
    wait_for(
        "the attach to place its files",
        Duration::from_secs(20),
        || (!attach_dirs(pid).is_empty()).then_some(()),
    );
    let _ = target.child.kill();
    let _ = target.child.wait();
    let out = attach.wait_with_output().expect("attach result");
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("process {pid} exited during attach")),
        "{}",
        text(&out)
    );
}

#[test]
fn another_users_process_is_refused_with_the_cause() {
    if !is_root() {
        skipped::<()>("needs root to run processes as other users");
        return;
    }
    // A system interpreter that another user may run (the matrix's live under /root or need
    // root for their chroot).
    let py = "/usr/bin/python3";
    if !Path::new(py).exists() {
        skipped::<()>(&format!("no {py} for a target of another user"));
        return;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(py)
        .arg(script())
        .arg("sleep");
    let target = Target::spawn(cmd);
    target.line("ready");
    // The attacker: uid 1 (`daemon`), its own home and daemon.
    let ctx = Ctx::new();
    let port = ctx.config_free_port();
    let chown = Command::new("chown")
        .args(["-R", "1:1"])
        .arg(ctx.home())
        .status()
        .expect("chown");
    assert!(chown.success());
    let as_daemon = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=1", "--regid=1", "--clear-groups", "--"])
            .arg(crate::support::scry_bin())
            .args(args)
            .env("SCRY_HOME", ctx.home())
            .env_remove("SCRY_DAEMON")
            .env_remove("SCRY_TOKEN")
            .stdin(Stdio::null());
        c.output().expect("setpriv scry")
    };
    let out = as_daemon(&["attach", &target.pid().to_string()]);
    let stop = as_daemon(&["stop"]);
    assert!(stop.status.success(), "port {port}: {}", text(&stop));
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let wants = [
        format!("no permission to attach to process {}", target.pid()),
        "runs as another user (uid 65534, scry runs as uid 1)".to_owned(),
        "CAP_SYS_PTRACE".to_owned(),
    ];
    for want in &wants {
        assert!(
            err.contains(want.as_str()),
            "`{want}` not in {}",
            text(&out)
        );
    }
}

#[test]
fn a_killed_attached_process_is_gone_not_detached() {
    let Some(py) = py314() else { return };
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let mut target = Target::python(&py, "sleep");
    target.line("ready");
    let pid = target.pid();
    attach_ok(&ctx, pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let about_it = |kind: &str| {
        let events = ctx.get("/api/v1/system-events?limit=1000");
        events["system_events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["kind"] == kind && e["data"]["pid"] == pid)
    };
    wait_for(
        "the killed process to be gone",
        Duration::from_secs(20),
        || about_it("process_gone").then_some(()),
    );
    assert!(
        !about_it("detached"),
        "a SIGKILLed process was reported as detached"
    );
    let _ = target.child.wait();
}
