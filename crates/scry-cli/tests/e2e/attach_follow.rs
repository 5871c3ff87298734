//! `scry attach` through gdb on Python 3.8–3.13 (issue 4, point 3) and `scry attach --follow`
//! (point 5): a reloading server's worker is killed, its supervisor starts a new one, and the
//! follow attaches to it so that the probe reports from the new pid within 30 s (the bound: a
//! 200 ms tree poll, then the attach itself, ~0.1 s natively and 1–3 s through gdb on a loaded
//! machine, then the probe sync on hello).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::discovery::{reload_starts, start_reload_server};
use crate::support::{minor_of, pythons, skipped, text, wait_for, Ctx, Proc};

fn line_of(script: &str, marker: &str) -> usize {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(script);
    std::fs::read_to_string(path)
        .expect("script")
        .lines()
        .position(|l| l.contains(marker))
        .expect("marked line")
        + 1
}

/// Probe values of `name` from process `pid`.
fn values_from(ctx: &Ctx, name: &str, pid: u64) -> Vec<i64> {
    let events = ctx.scry_json(&["events", "--probe", name, "--limit", "50"]);
    events["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["pid"] == pid)
                .filter_map(|e| e["data"]["values"]["i"]["v"].as_i64())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn attach_through_gdb_then_probe_and_detach() {
    let Some(python) = pythons().into_iter().find(|p| {
        (8..=13).contains(&minor_of(p))
            && std::fs::read_to_string(p).map_or(true, |t| !t.contains("exec chroot"))
    }) else {
        skipped::<()>(
            "no host interpreter from 3.8 to 3.13 in SCRY_TEST_PYTHONS for gdb to attach to",
        );
        return;
    };
    assert!(
        std::path::Path::new("/usr/bin/gdb").exists() || which_gdb(),
        "the test set-up installs gdb (scripts/provision-matrix)"
    );
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let counter = ctx.home().join("counter");
    let target = Proc {
        child: Command::new(&python)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/debug_loop.py"))
            .arg(&counter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("target"),
        label: "gdb target".into(),
    };
    wait_for("the target to run", Duration::from_secs(30), || {
        std::fs::read_to_string(&counter)
            .ok()
            .filter(|s| !s.is_empty())
    });
    let pid = target.pid();
    let out = ctx.scry(&["attach", &pid.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("gdb"), "{}", text(&out));
    assert!(
        stderr.contains("stops the process briefly"),
        "{}",
        text(&out)
    );
    let loc = format!(
        "debug_loop.py:{}",
        line_of("debug_loop.py", "the breakpoint line")
    );
    let out = ctx.scry(&[
        "probe",
        "add",
        &loc,
        "i",
        "--name",
        "gdb-i",
        "--pid",
        &pid.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(
        "a probe value through the gdb-attached agent",
        Duration::from_secs(30),
        || (!values_from(&ctx, "gdb-i", pid.into()).is_empty()).then_some(()),
    );
    let out = ctx.scry(&["detach", &pid.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let before = std::fs::read_to_string(&counter).unwrap_or_default();
    wait_for(
        "the target to run on after detach",
        Duration::from_secs(30),
        || (std::fs::read_to_string(&counter).unwrap_or_default() != before).then_some(()),
    );
}

fn which_gdb() -> bool {
    Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits for probe values from `pid`; on timeout, panics with what the daemon knows.
fn wait_values(ctx: &Ctx, name: &str, pid: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while values_from(ctx, name, pid).is_empty() {
        if std::time::Instant::now() > deadline {
            let ps = ctx.scry(&["ps"]);
            let log =
                std::fs::read_to_string(ctx.home().join("test-daemon.log")).unwrap_or_default();
            let events = ctx.scry(&["events", "--probe", name, "--limit", "5", "--json"]);
            panic!(
                "timed out waiting for {what} (pid {pid})\nps: {}\nevents: {}\nfollow: {}\ndaemon log:\n{log}",
                text(&ps),
                text(&events),
                ctx.get("/api/v1/follow")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn follow_attaches_the_restarted_worker_of_a_reloading_server() {
    let Some(python) = pythons().into_iter().find(|p| minor_of(p) >= 14) else {
        skipped::<()>(
            "no Python 3.14+ in SCRY_TEST_PYTHONS (the follow logic is the same for gdb targets)",
        );
        return;
    };
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let (_server, status) = start_reload_server(&ctx, &python);
    let (supervisor, first) = wait_for("the first worker", Duration::from_secs(30), || {
        reload_starts(&status).first().copied()
    });
    let out = ctx.scry_json(&["attach", "--follow", &supervisor.to_string()]);
    assert_eq!(out["following"], true, "{out}");
    // The worker runs the script under the name it was started by: the `uvicorn` symlink.
    let loc = format!(
        "reload/uvicorn:{}",
        line_of("reload_server.py", "doubled = i * 2")
    );
    let out = ctx.scry(&["probe", "add", &loc, "i", "--name", "handle-i"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_values(
        &ctx,
        "handle-i",
        first,
        "probe values from the first worker",
    );

    // The supervisor replaces a killed worker; the follow attaches the new one.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let second = wait_for("a new worker", Duration::from_secs(30), || {
        reload_starts(&status).get(1).map(|s| s.1)
    });
    assert_ne!(second, first);
    wait_values(&ctx, "handle-i", second, "probe values from the new worker");
    let follows = ctx.get("/api/v1/follow");
    let f = &follows["follows"][0];
    assert_eq!(f["root"], supervisor, "{follows:#}");
    let restarts = f["restarts"].as_array().cloned().unwrap_or_default();
    assert!(
        restarts
            .iter()
            .any(|r| r["old_pid"] == first && r["new_pid"] == second && r["parent"] == supervisor),
        "{follows:#}"
    );

    // Detach stops the follow.
    let out = ctx.scry(&["detach", &supervisor.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let follows: Value = ctx.get("/api/v1/follow");
    assert_eq!(
        follows["follows"].as_array().map(Vec::len),
        Some(0),
        "{follows:#}"
    );
}
