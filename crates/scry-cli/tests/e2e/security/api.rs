//! The daemon's HTTP API as another local user (issue 12, item 1): before, any local user could
//! wake a root client, add an `unsafe` probe that ran `id` as root, attach to a root process,
//! open REPLs and call MCP tools, all over tokenless loopback. Now the local API is a unix socket
//! in the 0700 run directory whose peer uid is checked, and TCP wants the token on every request.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{assert_absent, attacker};
use crate::support::{pythons, repo, text, wait_for, Ctx};

fn attempts<'a>(report: &'a Value, key: &str) -> Vec<(&'a str, &'a Value)> {
    report[key]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|pair| (pair[0].as_str().expect("name"), &pair[1]))
        .collect()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn another_user_cannot_command_a_root_daemon() {
    let Some(attacker) = attacker() else { return };
    let py = pythons().into_iter().next().expect("an interpreter");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let target = ctx.python(&py, "orders_loop.py", &["root-target"]);
    let pid = target.pid();
    wait_for("the root target awake", Duration::from_secs(30), || {
        (ctx.state_of(pid).as_deref() == Some("awake")).then_some(())
    });
    let scratch = attacker.scratch_dir();
    let side_effect = scratch.path().join("pwned");
    let script = repo().join("crates/scry-cli/tests/scripts/attacker_http.py");
    let script = std::fs::read_to_string(script).expect("script");
    let api = ctx.http();
    let token_file = ctx.home().join("token");
    let run = |label: &str| -> Value {
        let out = attacker.python(
            &script,
            &[
                &ctx.tcp(),
                &api,
                &side_effect.display().to_string(),
                &pid.to_string(),
                &token_file.display().to_string(),
            ],
        );
        assert!(out.status.success(), "{label}: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{label}: {e}: {}", text(&out)))
    };

    let report = run("as another user");
    // TCP: loopback is no identity; every request without the token is refused, and so is a
    // wrong token.
    for key in ["tcp", "tcp_wrong_token"] {
        for (what, got) in attempts(&report, key) {
            assert_eq!(got["status"], 401, "{key} {what}: {got}");
            let body = got["body"].as_str().unwrap_or_default();
            assert!(
                body.contains("token") || body.contains("scry ui"),
                "{key} {what}: the refusal says what is needed: {body}"
            );
        }
    }
    // The socket lives in the 0700 run directory: not even a connection.
    for (what, got) in attempts(&report, "socket") {
        assert!(
            got["error"]
                .as_str()
                .unwrap_or_default()
                .contains("PermissionError"),
            "socket {what}: {got}"
        );
    }
    assert_eq!(report["token_read_error"], "PermissionError", "{report}");

    // Second lock: with the directory and socket opened to everyone (as a careless chmod
    // would), the daemon still refuses the peer by its uid.
    let run_dir = ctx.home().join("run");
    chmod(ctx.home(), 0o711);
    chmod(&run_dir, 0o711);
    chmod(Path::new(&api), 0o666);
    let report = run("as another user, socket reachable");
    chmod(Path::new(&api), 0o600);
    chmod(&run_dir, 0o700);
    chmod(ctx.home(), 0o700);
    for (what, got) in attempts(&report, "socket") {
        assert_eq!(got["status"], 403, "socket {what}: {got}");
        let body = got["body"].as_str().unwrap_or_default();
        assert!(
            body.contains("takes commands from uid 0 and root only")
                && body.contains(&format!("not uid {}", attacker.uid)),
            "socket {what}: {body}"
        );
    }

    // Nothing happened: no file, no probe, no REPL, the daemon and the target as they were.
    assert_absent(&side_effect, "the attacker's probe ran");
    let probes = ctx.get("/api/v1/probes");
    assert_eq!(
        probes["probes"].as_array().map(Vec::len),
        Some(0),
        "{probes}"
    );
    assert_eq!(ctx.state_of(pid).as_deref(), Some("awake"));
    let status = ctx.get("/api/v1/status");
    let daemon_pid = ctx.daemon.as_ref().map(|d| d.pid()).expect("daemon");
    assert_eq!(status["pid"], Value::from(daemon_pid));
    // The owner's CLI is unaffected.
    let out = ctx.scry(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// What a caller learns without any proof: only where an agent's link goes.
#[test]
fn the_agent_endpoint_is_all_that_answers_without_proof() {
    let Some(attacker) = attacker() else { return };
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let tcp = ctx.tcp();
    let (host, port) = tcp.rsplit_once(':').expect("addr");
    let out = attacker.python(
        "import http.client, sys\n\
         c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)\n\
         c.request('GET', '/api/v1/agent-endpoint')\n\
         r = c.getresponse()\n\
         print(r.status, r.read().decode())",
        &[host, port],
    );
    let got = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(got.starts_with("200 "), "{}", text(&out));
    let body: Value = serde_json::from_str(got.trim_start_matches("200 ").trim()).expect("json");
    let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["unix", "tcp"], "{body}");
}
