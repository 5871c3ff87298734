//! An embedded client's life through the daemon: sleeping in ps, woken, surviving a daemon
//! restart, put to sleep, gone when killed.

use std::time::Duration;

use serde_json::Value;

use crate::support::{pythons, text, wait_for, Ctx};

fn process_rows(ctx: &Ctx, pid: u32) -> Vec<Value> {
    ctx.ps().into_iter().filter(|p| p["pid"] == pid).collect()
}

#[test]
fn embedded_client_sleeps_wakes_survives_daemon_restart_and_goes() {
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let mut client = ctx.python(&py, "embedded_client.py", &["e2e-client"]);
        let pid = client.pid();

        // Sleeping: found through its discovery file, not connected.
        wait_for(
            &format!("{py}: client sleeping in ps"),
            Duration::from_secs(20),
            || (ctx.state_of(pid).as_deref() == Some("sleeping")).then_some(()),
        );

        let out = ctx.scry(&["wake", "e2e-client"]);
        assert!(
            out.status.success(),
            "{py}: {}\n{}",
            text(&out),
            ctx.script_log("embedded_client.py")
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("awake"),
            "{}",
            text(&out)
        );
        let row = process_rows(&ctx, pid)
            .into_iter()
            .find(|p| p["state"] == "awake")
            .expect("awake row");
        assert_eq!(row["name"], "e2e-client");
        assert_eq!(row["origin"], "embedded");
        assert!(
            row["python_version"]
                .as_str()
                .is_some_and(|v| v.starts_with('3')),
            "{row}"
        );
        let first_seen = row["first_seen"].clone();
        let id = row["id"].clone();

        // Waking twice is a no-op that says so.
        let again = ctx.scry_json(&["wake", &pid.to_string()]);
        assert_eq!(again["already_awake"], true);

        // The daemon dies hard and comes back: the client reconnects by itself and the stored
        // record of the process is the same one.
        ctx.kill_daemon();
        ctx.start_daemon();
        wait_for(
            &format!("{py}: client reconnects after daemon restart"),
            Duration::from_secs(20),
            || (ctx.state_of(pid).as_deref() == Some("awake")).then_some(()),
        );
        let row = process_rows(&ctx, pid)
            .into_iter()
            .find(|p| p["state"] == "awake")
            .expect("awake row");
        assert_eq!(row["id"], id, "same stored process after restart");
        assert_eq!(row["first_seen"], first_seen, "history kept across restart");
        let system = ctx.get("/api/v1/system-events?limit=100");
        let started = system["system_events"]
            .as_array()
            .expect("array")
            .iter()
            .filter(|e| e["kind"] == "daemon_started")
            .count();
        assert!(
            started >= 2,
            "system events of both daemon runs are stored: {system}"
        );

        // Sleep: disconnected, still alive, still listed.
        let out = ctx.scry(&["sleep", "e2e-client"]);
        assert!(out.status.success(), "{}", text(&out));
        wait_for(
            &format!("{py}: sleeping after sleep"),
            Duration::from_secs(10),
            || (ctx.state_of(pid).as_deref() == Some("sleeping")).then_some(()),
        );

        // Wake again, then kill the client: it is shown as gone, not forgotten.
        let out = ctx.scry(&["wake", "e2e-client"]);
        assert!(out.status.success(), "{}", text(&out));
        client.kill();
        wait_for(
            &format!("{py}: gone after kill"),
            Duration::from_secs(10),
            || (ctx.state_of(pid).as_deref() == Some("gone")).then_some(()),
        );
    }
}

#[test]
fn wake_of_unknown_target_is_a_clear_error() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let out = ctx.scry(&["wake", "no-such-client"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no embedded scry client named `no-such-client`") && err.contains("hint:"),
        "{}",
        text(&out)
    );
}
