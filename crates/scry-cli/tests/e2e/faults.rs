//! Faults and limits (issue 13): a full disk under a real daemon (foreground and `--daemon`),
//! a flood of half-sent HTTP requests against a lowered fd limit, bounded TTLs, and
//! `events/wait?count=0`.
//!
//! The full disk is a real 20 MB tmpfs mounted over the test's `SCRY_HOME` (these tests run as
//! root), filled by a real agent whose probe records every hit.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{http_get, pythons, text, wait_for, Ctx, Proc};

/// A tmpfs mounted over a directory, lazily unmounted on drop (even if a test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs on {} failed (these tests need root)",
            dir.display()
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn flood_line() -> u32 {
    let src = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/flood_client.py"),
    )
    .expect("script");
    src.lines()
        .position(|l| l.contains("# flood-line"))
        .expect("marked line") as u32
        + 1
}

fn status(ctx: &Ctx) -> Value {
    ctx.scry_json(&["status"])
}

fn awake(ctx: &Ctx, pid: u32) -> bool {
    ctx.state_of(pid).as_deref() == Some("awake")
}

/// Fills a 20 MB home with a real agent's events and checks that the daemon stays up, says
/// so, counts what it could not store, still registers agents and recovers when space frees.
fn full_disk(detached: bool) {
    let py = pythons().into_iter().next().expect("an interpreter");
    let mut ctx = Ctx::new();
    let _fs = Tmpfs::mount(ctx.home(), "20m");
    // Room that the test gives back later.
    let ballast = ctx.home().join("ballast");
    std::fs::write(&ballast, vec![0u8; 4 * 1024 * 1024]).expect("ballast");

    let daemon_pid = if detached {
        ctx.config_free_port();
        let out = ctx.scry(&["serve", "--daemon", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let info: Value = serde_json::from_slice(&out.stdout).expect("json");
        info["pid"].as_u64().expect("pid") as u32
    } else {
        ctx.start_daemon();
        ctx.daemon.as_ref().expect("daemon").pid()
    };
    let alive = || scry_proc::alive(daemon_pid, None);

    // Outside the home: the pause file must not take room on the full disk.
    let pause = ctx.home().with_extension("pause");
    let _ = std::fs::remove_file(&pause);
    let pause_arg = pause.display().to_string();
    let flood = ctx.python(&py, "flood_client.py", &["flood", "flood", &pause_arg]);
    wait_for(
        "the flooding agent to register",
        Duration::from_secs(30),
        || awake(&ctx, flood.pid()).then_some(()),
    );
    let loc = format!("flood_client.py:{}", flood_line());
    let out = ctx.scry(&[
        "probe", "add", &loc, "i", "pad", "--every", "--stack", "--locals", "--name", "flood",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // The disk fills: the daemon says so, and counts what it did not store.
    let full = wait_for(
        "the store to report a full disk",
        Duration::from_secs(180),
        || {
            assert!(alive(), "the daemon died: {}", daemon_log(&ctx));
            let s = status(&ctx);
            (s["store"]["state"] == "full").then_some(s)
        },
    );
    assert!(full["store"]["since"].as_f64().is_some(), "{full}");
    wait_for(
        "events counted as not stored",
        Duration::from_secs(30),
        || (status(&ctx)["store"]["not_stored"].as_u64().unwrap_or(0) > 0).then_some(()),
    );
    let out = ctx.scry(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DISK FULL"),
        "{}",
        text(&out)
    );

    // A new agent still registers while the disk is full.
    let late = ctx.python(&py, "flood_client.py", &["late", "idle"]);
    wait_logged(&ctx, "a new agent to register on a full disk", 30, || {
        awake(&ctx, late.pid()).then_some(())
    });
    assert!(alive(), "the daemon died: {}", daemon_log(&ctx));

    // The flood pauses: every hit is stored or counted, per probe, with its reason.
    std::fs::write(&pause, b"").expect("pause the flood");
    let probe = || ctx.get("/api/v1/probes/flood");
    let balanced = |t: &Value| {
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        n("hits") > 0
            && n("hits")
                == n("stored")
                    + n("not_stored_disk_full")
                    + n("removed_by_retention")
                    + n("dropped")
                    + n("dropped_by_daemon")
    };
    let totals = wait_for(
        "the flood's hits to be stored or counted",
        Duration::from_secs(60),
        || {
            let t = probe()["totals"].clone();
            balanced(&t).then_some(t)
        },
    );
    assert!(
        totals["not_stored_disk_full"].as_u64().unwrap_or(0)
            + totals["dropped_by_daemon"].as_u64().unwrap_or(0)
            > 0,
        "nothing counted as not stored: {totals}"
    );

    // Space returns: the store recovers by itself.
    std::fs::remove_file(&ballast).expect("free space");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ok = loop {
        let last = status(&ctx);
        if last["store"]["state"] == "ok" {
            break last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not recover within 30 s; last status: {}\nhome: {:?}\n{}",
            last["store"],
            std::fs::read_dir(ctx.home())
                .map(|d| d
                    .filter_map(|e| e.ok())
                    .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                    .collect::<Vec<_>>())
                .unwrap_or_default(),
            daemon_log(&ctx)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let not_stored = ok["store"]["not_stored"].as_u64().unwrap_or(0);
    assert!(not_stored > 0, "{ok}");

    // The agent that flooded through it all ships again: its link was not left waiting for
    // acks of reports the full disk kept out. (Stored or counted: on this small disk the
    // flood may fill it again at once.)
    let settled = |t: &Value| {
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        n("stored") + n("not_stored_disk_full") + n("removed_by_retention") + n("dropped_by_daemon")
    };
    let before = settled(&totals);
    std::fs::remove_file(&pause).expect("resume the flood");
    wait_logged(&ctx, "the flood's new hits to reach the daemon", 30, || {
        (settled(&probe()["totals"]) > before).then_some(())
    });
    std::fs::write(&pause, b"").expect("pause the flood");
    drop(flood);
    let _ = std::fs::remove_file(&pause);
    drop(late);

    // The log did not grow without bound (one line per failed report would be megabytes).
    let log_len = std::fs::metadata(ctx.home().join("daemon.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(log_len < 2 * 1024 * 1024, "daemon.log is {log_len} bytes");

    // It stops cleanly and leaves no run files behind.
    let out = ctx.scry(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    if let Some(mut d) = ctx.daemon.take() {
        let code = d.child.wait().expect("wait");
        assert!(
            code.success(),
            "the daemon exited with {code:?}: {}",
            daemon_log(&ctx)
        );
    }
    wait_for("the daemon to exit", Duration::from_secs(15), || {
        (!alive()).then_some(())
    });
    let run = ctx.home().join("run");
    for f in ["daemon.json", "daemon.pid", "api.sock", "agent.sock"] {
        assert!(!run.join(f).exists(), "run/{f} left behind");
    }
}

/// [`wait_for`], with the daemon's log in the failure message.
fn wait_logged<T>(ctx: &Ctx, what: &str, secs: u64, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}\nstatus: {}\n{}",
            status(ctx)["store"],
            daemon_log(ctx)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn daemon_log(ctx: &Ctx) -> String {
    let mut s = String::new();
    for f in ["test-daemon.log", "daemon.log"] {
        if let Ok(t) = std::fs::read_to_string(ctx.home().join(f)) {
            let tail: Vec<&str> = t.lines().rev().take(20).collect();
            s.push_str(&format!("--- {f}\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
    }
    s
}

#[test]
fn full_disk_foreground_daemon_stays_up_counts_and_recovers() {
    full_disk(false);
}

#[test]
fn full_disk_detached_daemon_stays_up_counts_and_recovers() {
    full_disk(true);
}

/// Starts a foreground daemon whose open-files limit is 1,024 (soft and hard: it cannot raise it).
fn daemon_with_fd_limit(ctx: &mut Ctx, limit: u64) {
    use std::os::unix::process::CommandExt;
    let daemon_file = ctx.home().join("run/daemon.json");
    let mut cmd = ctx.cmd(&["serve", "--port", "0"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::from(
        std::fs::File::create(ctx.home().join("test-daemon.log")).expect("log"),
    ));
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().expect("spawn daemon");
    ctx.daemon = Some(Proc {
        child,
        label: "daemon".into(),
    });
    wait_for("the daemon to serve", Duration::from_secs(20), || {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&daemon_file).ok()?).ok()?;
        http_get(v["api_socket"].as_str()?, "/api/v1/health")
            .ok()
            .map(|_| ())
    });
}

#[test]
fn half_sent_requests_never_make_the_cli_say_not_running() {
    let mut ctx = Ctx::new();
    daemon_with_fd_limit(&mut ctx, 1024);
    let api = ctx.http();
    // 1,135 connections that send half a request and then nothing, more than the daemon has
    // descriptors for.
    let mut held = Vec::new();
    for _ in 0..1135 {
        match UnixStream::connect(&api) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n");
                held.push(s);
            }
            // The backlog is full: that is the flood doing its worst.
            Err(_) => break,
        }
    }
    assert!(
        held.len() > 300,
        "only {} connections were made",
        held.len()
    );

    // The CLI answers at once: the status, or that the daemon is busy, never "not running".
    let started = Instant::now();
    let out = ctx.scry(&["status", "--json"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "scry status took {:?}",
        started.elapsed()
    );
    assert_ne!(
        out.status.code(),
        Some(3),
        "said not running: {}",
        text(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["running"], true, "{}", text(&out));

    // The header timeout frees the slots: the daemon answers again while the flood is held.
    let s = wait_for(
        "the daemon to answer during the flood",
        Duration::from_secs(60),
        || {
            let out = ctx.scry(&["status", "--json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (out.status.success() && v["busy"] != true).then_some(v)
        },
    );
    assert_eq!(s["running"], true);
    assert!(ctx
        .daemon
        .as_mut()
        .expect("daemon")
        .child
        .try_wait()
        .expect("wait")
        .is_none());
    drop(held);
}

#[test]
fn ttls_and_durations_are_bounded() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let api = ctx.http();
    for ttl in ["1e308", "18446744073709551616", "\"4000d\""] {
        let body =
            format!("{{\"location\": \"a.py:3\", \"expressions\": [\"x\"], \"ttl\": {ttl}}}");
        let (status, answer) =
            crate::support::http_post_json(&api, "/api/v1/probes", &body).expect("POST");
        assert_eq!(status, 400, "ttl {ttl}: {answer}");
        assert!(answer.contains("maximum"), "ttl {ttl}: {answer}");
    }
    let out = ctx.scry(&["probe", "add", "a.py:3", "x", "--ttl", "99999999999d"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("maximum"),
        "{}",
        text(&out)
    );
    // Nothing was kept.
    assert_eq!(
        ctx.get("/api/v1/probes")["probes"].as_array().map(Vec::len),
        Some(0)
    );
}

#[test]
fn waiting_for_zero_events_answers_at_once() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let started = Instant::now();
    let v = ctx.get("/api/v1/events/wait?count=0&timeout=30");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(v["reached"], true, "{v}");
    assert_eq!(v["count"], 0, "{v}");
}

#[test]
fn a_flood_of_bad_agent_lines_costs_a_few_log_lines() {
    use std::io::{BufRead, BufReader};
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let sock = ctx.home().join("run/agent.sock");
    let hello = serde_json::json!({"type":"hello","protocol":1,"agent_version":"test",
        "pid":std::process::id(),"ppid":1,"host":"test","name":"bad-lines","origin":"embedded",
        "python":{"version":"3.0.0","implementation":"cpython","executable":"/bin/false"},
        "argv":["flood"],"cwd":"/","started_at":1.0});
    let s = UnixStream::connect(&sock).expect("connect");
    let reader = s.try_clone().expect("clone");
    // Replies are drained on another thread, counted.
    let drain = std::thread::spawn(move || {
        BufReader::new(reader)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("\"error\""))
            .count()
    });
    let n = 200_000;
    let mut w = std::io::BufWriter::new(s.try_clone().expect("clone"));
    writeln!(w, "{hello}").expect("hello");
    for i in 0..n {
        writeln!(w, "not json {i}").expect("bad line");
    }
    w.flush().expect("flush");
    drop(w);
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let errors = drain.join().expect("drain");
    // Every bad line is answered, or (when replies pile up faster than the peer reads them:
    // the reply queue is bounded) counted as an error not sent.
    let not_sent = ctx.scry_json(&["status"])["backpressure"]["errors_not_sent"]
        .as_u64()
        .expect("status.backpressure.errors_not_sent");
    assert!(errors > 0, "no error was answered");
    assert_eq!(
        errors as u64 + not_sent,
        n as u64,
        "{errors} errors answered, {not_sent} counted as not sent"
    );

    // The daemon still answers, and its log holds a handful of lines, not one per bad line.
    assert_eq!(ctx.get("/api/v1/health")["ok"], true);
    let log = std::fs::read_to_string(ctx.home().join("test-daemon.log")).expect("log");
    let bad = log.matches("bad message from agent").count();
    assert!(
        bad <= 2 * crate_burst(),
        "{bad} log lines for {n} bad lines"
    );
    assert!(
        log.len() < 256 * 1024,
        "the log grew to {} bytes",
        log.len()
    );
}

/// Lines one log call site may write per 10 s (`logsink::BURST`).
fn crate_burst() -> usize {
    10
}

#[test]
fn max_db_mb_bounds_the_database_whatever_the_per_probe_cap() {
    let py = pythons().into_iter().next().expect("an interpreter");
    let mut ctx = Ctx::new();
    let port = ctx.config_free_port();
    // No cap per probe: only the size cap (1 MiB of pages) holds the database.
    std::fs::write(
        ctx.home().join("config.toml"),
        format!("[http]\naddr = \"127.0.0.1:{port}\"\n[retention]\nmax_events_per_probe = 0\nmax_db_mb = 1\n"),
    )
    .expect("config");
    ctx.start_daemon();
    let flood = ctx.python(&py, "flood_client.py", &["sized", "flood"]);
    wait_for("the agent to register", Duration::from_secs(30), || {
        awake(&ctx, flood.pid()).then_some(())
    });
    let loc = format!("flood_client.py:{}", flood_line());
    let out = ctx.scry(&[
        "probe", "add", &loc, "i", "pad", "--every", "--name", "sized",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // Retention runs every 30 s; it deletes the oldest events and counts them.
    let s = wait_for("retention by size", Duration::from_secs(90), || {
        let s = status(&ctx);
        (s["store"]["retention_deleted"].as_u64().unwrap_or(0) > 0).then_some(s)
    });
    assert_eq!(s["store"]["max_db_mb"], 1, "{s}");
    drop(flood);
    // Once the flood stops, the next pass leaves at most 1 MiB of pages: each event here is
    // well over 100 bytes, so that is fewer than 10,486 events, from the newest.
    let s = wait_for(
        "the database under its cap",
        Duration::from_secs(90),
        || {
            let s = status(&ctx);
            (s["events_stored"].as_u64().unwrap_or(u64::MAX) < 1024 * 1024 / 100).then_some(s)
        },
    );
    assert!(s["events_stored"].as_u64().unwrap_or(0) > 0, "{s}");
}
