//! The daemon's life: status, auto-start, --daemon, stop, configuration.

use std::time::Duration;

use crate::support::{text, wait_for, Ctx};

#[test]
fn status_when_not_running_says_so_with_exit_3() {
    let ctx = Ctx::new();
    let out = ctx
        .cmd(&["status"])
        .env("SCRY_DAEMON", "http://127.0.0.1:1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not running"),
        "{}",
        text(&out)
    );
}

#[test]
fn commands_start_the_daemon_and_say_so_then_stop_stops_it() {
    let ctx = Ctx::new();
    let port = ctx.config_free_port();

    let out = ctx.scry(&["ps"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("started the daemon"), "{}", text(&out));

    // Files of a running daemon: socket dir 0700, pid file, config kept as written.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ctx.home().join("run"))
        .expect("run dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(ctx.home().join("run/agent.sock").exists());
    let status = ctx.scry_json(&["status"]);
    assert_eq!(status["running"], true);
    assert_eq!(status["http"], format!("127.0.0.1:{port}"));
    let pid = status["pid"].as_u64().expect("pid") as u32;

    // A second daemon for the same home is refused with a hint.
    let out = ctx.scry(&["serve", "--daemon"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already running") && err.contains("hint:"),
        "{}",
        text(&out)
    );

    let out = ctx.scry(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!scry_alive(pid), "daemon still alive after stop");
    assert!(
        !ctx.home().join("run/agent.sock").exists(),
        "socket left behind"
    );
    assert!(
        !ctx.home().join("run/daemon.json").exists(),
        "daemon.json left behind"
    );
    // The daemon is not our child's zombie either: it was reparented away.
    let out = ctx.scry(&["stop"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("no scry daemon is running"));
}

fn scry_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn config_file_is_created_with_commented_defaults_and_bad_config_is_a_clear_error() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let cfg = std::fs::read_to_string(ctx.home().join("config.toml")).expect("config written");
    assert!(cfg.contains("# addr = \"127.0.0.1:7390\""), "{cfg}");
    ctx.kill_daemon();

    std::fs::write(
        ctx.home().join("config.toml"),
        "[retention]\nmax_age = \"forever\"\n",
    )
    .expect("write");
    let out = ctx.cmd(&["serve", "--port", "0"]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("max_age") && err.contains("hint:"),
        "{}",
        text(&out)
    );
}

#[test]
fn port_in_use_is_a_clear_error() {
    let ctx = Ctx::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    let out = ctx.cmd(&["serve", "--port", &port]).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen") && err.contains("hint:"),
        "{}",
        text(&out)
    );
    // It left nothing that makes the next start fail.
    let mut ctx = ctx;
    ctx.start_daemon();
    wait_for("health", Duration::from_secs(5), || {
        Some(ctx.get("/api/v1/health"))
    });
}

#[test]
fn a_background_start_that_fails_says_why_at_once() {
    // A command that starts the daemon in the background, whose port another program holds:
    // the error is the daemon's own (the port, the hint), not "did not start within 15 s".
    let ctx = Ctx::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    std::fs::write(
        ctx.home().join("config.toml"),
        format!("[http]\naddr = \"127.0.0.1:{port}\"\n"),
    )
    .expect("config");
    let out = ctx.scry(&["ps"]);
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains("could not start")
            && shown.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && shown.contains("hint: another program listens"),
        "{shown}"
    );
    assert!(!shown.contains("within"), "{shown}");

    // SCRY_DAEMON naming another home's daemon: the refusal says so.
    let mut other = Ctx::new();
    other.start_daemon();
    let out = ctx
        .cmd(&["ps"])
        .env("SCRY_DAEMON", format!("http://{}", other.tcp()))
        .output()
        .expect("ps");
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains("from SCRY_DAEMON") && shown.contains("not the one of this SCRY_HOME"),
        "{shown}"
    );
}

#[test]
fn scry_daemon_on_loopback_is_where_the_daemon_is_started_and_found() {
    let ctx = Ctx::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = ctx
        .cmd(&["ps"])
        .env("SCRY_DAEMON", &url)
        .output()
        .expect("ps");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("127.0.0.1:{port}")),
        "{}",
        text(&out)
    );
    let status = ctx
        .cmd(&["status", "--json"])
        .env("SCRY_DAEMON", &url)
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(v["http"], format!("127.0.0.1:{port}"));
    let out = ctx
        .cmd(&["stop"])
        .env("SCRY_DAEMON", &url)
        .output()
        .expect("stop");
    assert!(out.status.success(), "{}", text(&out));
    // Another host is never started, only reported.
    let out = ctx
        .cmd(&["ps"])
        .env("SCRY_DAEMON", "http://192.0.2.99:7390")
        .output()
        .expect("ps");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no scry daemon answers"),
        "{}",
        text(&out)
    );
}
