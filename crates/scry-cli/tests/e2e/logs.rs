//! `scry logs`: an agent's log record reaches the daemon and is shown with the process name,
//! pid and thread, next to the daemon's own events; `SCRY_LOG` selects per-target levels.

use std::time::Duration;

use serde_json::Value;

use crate::support::{pythons, text, wait_for, Ctx};

#[test]
fn an_agent_warning_appears_in_scry_logs_with_name_pid_and_thread() {
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let client = ctx.python(&py, "log_client.py", &["e2e-logger"]);
        let pid = client.pid();
        let line: Value = wait_for(
            &format!("{py}: the agent's warning in scry logs"),
            Duration::from_secs(20),
            || {
                // Until the agent registered, `--pid` names no known process (an error).
                let out = ctx.scry(&["logs", "--pid", &pid.to_string(), "--json"]);
                let logs: Value = serde_json::from_slice(&out.stdout).ok()?;
                logs["logs"]
                    .as_array()?
                    .iter()
                    .find(|l| {
                        l["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("e2e warning: disk 93% full"))
                    })
                    .cloned()
            },
        );
        assert_eq!(line["origin"], "agent", "{line}");
        assert_eq!(line["name"], "e2e-logger", "{line}");
        assert_eq!(line["pid"], pid, "{line}");
        assert_eq!(line["thread"], "log-worker", "{line}");
        assert_eq!(line["level"], "warn", "{line}");

        // The daemon's own events are in the same view, in time order.
        let all = ctx.scry_json(&["logs"]);
        let lines = all["logs"].as_array().expect("logs array");
        assert!(
            lines.iter().any(|l| l["origin"] == "daemon"),
            "no daemon event in {all}"
        );
        let times: Vec<f64> = lines.iter().filter_map(|l| l["t"].as_f64()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{all}");

        // --level filters, the text view names the process, pid and thread.
        let errors = ctx.scry_json(&["logs", "--pid", &pid.to_string(), "--level", "error"]);
        assert_eq!(errors["logs"].as_array().map(Vec::len), Some(0), "{errors}");
        let out = ctx.scry(&["logs", "--pid", &pid.to_string()]);
        assert!(out.status.success(), "{}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains(&format!("e2e-logger[{pid}]  log-worker  WARN")),
            "{shown}"
        );
    }
}

/// Runs `scry serve` with `SCRY_LOG` set to `spec` (or unset) until it serves, stops it, and
/// returns what it wrote to stderr.
fn serve_log(spec: Option<&str>) -> String {
    let ctx = Ctx::new();
    let daemon_file = ctx.home().join("run/daemon.json");
    let log_path = ctx.home().join("serve.log");
    std::fs::create_dir_all(ctx.home()).expect("home");
    let mut cmd = ctx.cmd(&["serve", "--port", "0"]);
    if let Some(spec) = spec {
        cmd.env("SCRY_LOG", spec);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("spawn scry serve");
    wait_for("the daemon to serve", Duration::from_secs(20), || {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&daemon_file).ok()?).ok()?;
        v["http"].as_str().map(|_| ())
    });
    let out = ctx.scry(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    let _ = child.wait();
    std::fs::read_to_string(&log_path).expect("serve log")
}

#[test]
fn scry_log_selects_levels_per_target() {
    // Default (`info`): the daemon's info lines, no store debug line.
    let plain = serve_log(None);
    assert!(plain.contains(" INFO daemon:"), "{plain}");
    assert!(!plain.contains("store opened"), "{plain}");
    // `store=debug,daemon=warn`: the store's debug line, none of the daemon's info lines.
    let chosen = serve_log(Some("store=debug,daemon=warn"));
    assert!(chosen.contains("DEBUG store: store opened"), "{chosen}");
    assert!(!chosen.contains(" INFO daemon:"), "{chosen}");
}

/// `scry logs --follow --json` streams records that arrive after it started, one JSON object
/// per line, as they arrive.
#[test]
fn logs_follow_streams_new_agent_records_as_json_lines() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let py = pythons().into_iter().next().expect("a python");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let mut follower = ctx
        .cmd(&["logs", "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scry logs --follow");
    let stdout = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Started after the follower: only --follow can show its record.
    let mut client = ctx.python(&py, "log_client.py", &["e2e-follow"]);
    let pid = client.pid();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "no record of {pid} within 30 s; saw {seen:#?}"
        );
        let Ok(line) = rx.recv_timeout(left) else {
            continue;
        };
        let record: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        if record["pid"] == pid
            && record["message"]
                .as_str()
                .is_some_and(|m| m.contains("e2e warning: disk 93% full"))
        {
            break record;
        }
        seen.push(line);
    };
    assert_eq!(found["name"], "e2e-follow", "{found}");
    assert_eq!(found["thread"], "log-worker", "{found}");
    assert_eq!(found["origin"], "agent", "{found}");
    let _ = follower.kill();
    let _ = follower.wait();
    let _ = reader.join();
    client.kill();
}
