//! Probes end to end: added through the CLI and REST, values read back typed, surviving a
//! daemon restart and a target restart, pending until import, bad input refused clearly.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{http_post_json, http_request, minor_of, pythons, text, wait_for, Ctx};

/// The line of `tests/scripts/SCRIPT` marked `# PROBE: TAG`.
pub fn marked_line(script: &str, tag: &str) -> u32 {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(script);
    let src = std::fs::read_to_string(&path).expect("script");
    let idx = src
        .lines()
        .position(|l| l.contains(&format!("# PROBE: {tag}")))
        .unwrap_or_else(|| panic!("no `# PROBE: {tag}` in {script}"));
    idx as u32 + 1
}

fn probe_in(ctx: &Ctx, name: &str, pid: u32) -> Option<Value> {
    let list = ctx.scry_json(&["probe", "list"]);
    let probe = list["probes"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?
        .clone();
    probe["processes"]
        .as_array()?
        .iter()
        .find(|s| s["pid"] == pid)
        .cloned()
}

fn wait_armed(ctx: &Ctx, name: &str, pid: u32, what: &str) -> Value {
    wait_for(what, Duration::from_secs(20), || {
        probe_in(ctx, name, pid).filter(|s| s["state"] == "armed")
    })
}

pub fn wait_awake(ctx: &Ctx, pid: u32, python: &str) {
    wait_for(
        &format!("{python}: target awake"),
        Duration::from_secs(20),
        || (ctx.state_of(pid).as_deref() == Some("awake")).then_some(()),
    );
}

/// Adds the probe `name`, recording `n`, on the main loop of the `orders_loop.py` process `pid`.
fn add_loop_probe(ctx: &Ctx, pid: u32, name: &str) {
    let loc = format!("orders_loop.py:{}", marked_line("orders_loop.py", "loop"));
    let pid = pid.to_string();
    let out = ctx.scry(&["probe", "add", &loc, "n", "--name", name, "--pid", &pid]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A barrier on the link of an `orders_loop.py` process: adds a probe `name` on its loop counter
/// and waits until it has reported two iterations. Every hit made before it was added has then
/// been shipped (one link, one buffer, in order), and a probe that fires on every iteration would
/// have fired in between: negative checks wait on this rather than on a sleep.
fn barrier(ctx: &Ctx, pid: u32, name: &str) {
    add_loop_probe(ctx, pid, name);
    wait_for(&format!("barrier {name}"), Duration::from_secs(20), || {
        let seen: std::collections::BTreeSet<u64> = events_of(ctx, name, &[])
            .iter()
            .filter_map(|e| e["data"]["values"]["n"]["v"].as_u64())
            .collect();
        (seen.len() >= 2).then_some(())
    });
}

fn events_of(ctx: &Ctx, probe: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["events", "--probe", probe, "--limit", "1000"];
    args.extend_from_slice(extra);
    ctx.scry_json(&args)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn probe_through_cli_reads_typed_values_and_stats() {
    let line = marked_line("orders_loop.py", "total");
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let target = ctx.python(&py, "orders_loop.py", &["orders-e2e"]);
        let pid = target.pid();
        wait_awake(&ctx, pid, &py);

        let loc = format!("orders_loop.py:{line}");
        let out = ctx.scry(&[
            "probe",
            "add",
            &loc,
            "subtotal",
            "order['id']",
            "len(order['items'])",
            "--name",
            "totals",
            "--pid",
            &pid.to_string(),
        ]);
        assert!(
            out.status.success(),
            "{py}: {}\n{}",
            text(&out),
            ctx.script_log("orders_loop.py")
        );
        let status = wait_armed(&ctx, "totals", pid, &format!("{py}: probe armed"));
        assert_eq!(status["line"], line, "{status}");

        let events = wait_for(&format!("{py}: events"), Duration::from_secs(20), || {
            let ev = events_of(&ctx, "totals", &[]);
            (ev.len() >= 5).then_some(ev)
        });
        let v = &events[0]["data"]["values"];
        assert_eq!(v["subtotal"]["t"], "float", "{v}");
        assert_eq!(v["order['id']"]["t"], "int", "{v}");
        assert_eq!(v["len(order['items'])"], json!({"t": "int", "v": 1}), "{v}");
        assert_eq!(events[0]["data"]["line"], line);
        assert!(
            events[0]["data"]["function"]
                .as_str()
                .unwrap_or("")
                .contains("price"),
            "{}",
            events[0]
        );
        // The hit time comes from the target, close to now.
        let t = events[0]["t_hit"].as_f64().expect("t_hit");
        assert!((scry_daemon_now() - t).abs() < 120.0, "t_hit {t}");

        // Text output shows the values.
        let out = ctx.scry(&["events", "--probe", "totals", "--limit", "3"]);
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains("subtotal=") && shown.contains(&format!("orders_loop.py:{line}")),
            "{}",
            text(&out)
        );

        let stats = ctx.scry_json(&["events", "stats", "totals"]);
        let n = &stats["expressions"]["len(order['items'])"]["numeric"];
        assert_eq!(n["min"], 1.0);
        assert_eq!(n["max"], 1.0);
        let s = &stats["expressions"]["subtotal"]["numeric"];
        assert_eq!(s["min"], 2.5, "{stats}");
        assert_eq!(s["max"], 7.5, "{stats}");

        // Counters come with the agent's status reports (at most once a second).
        let list = wait_for("hit counters", Duration::from_secs(20), || {
            let list = ctx.scry_json(&["probe", "list"]);
            (list["probes"][0]["totals"]["hits"].as_u64().unwrap_or(0) > 0).then_some(list)
        });
        let id = list["probes"][0]["id"].as_str().expect("id").to_owned();

        // Removing it stops the events (which stay queryable by the probe's id).
        let out = ctx.scry(&["probe", "rm", "totals"]);
        assert!(out.status.success(), "{}", text(&out));
        barrier(&ctx, pid, "after-rm");
        let before = events_of(&ctx, &id, &[]).len();
        barrier(&ctx, pid, "later");
        assert_eq!(
            events_of(&ctx, &id, &[]).len(),
            before,
            "{py}: events after rm"
        );
    }
}

fn scry_daemon_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn probe_survives_daemon_restart_and_target_restart() {
    let line = marked_line("orders_loop.py", "total");
    let py = pythons().into_iter().next_back().expect("a python");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let mut target = ctx.python(&py, "orders_loop.py", &["restart-e2e"]);
    let pid = target.pid();
    let loc = format!("orders_loop.py:{line}");
    let out = ctx.scry(&[
        "probe",
        "add",
        &loc,
        "subtotal",
        "--name",
        "kept",
        "--process",
        "restart-e2e",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    wait_armed(&ctx, "kept", pid, "armed in the first target");

    ctx.kill_daemon();
    ctx.start_daemon();
    wait_armed(&ctx, "kept", pid, "armed again after the daemon restarted");
    let after_restart = events_of(&ctx, "kept", &["--since", "5s"]).len();
    wait_for(
        "new events after the daemon restart",
        Duration::from_secs(20),
        || {
            (events_of(&ctx, "kept", &["--pid", &pid.to_string()]).len() > after_restart)
                .then_some(())
        },
    );

    target.kill();
    let second = ctx.python(&py, "orders_loop.py", &["restart-e2e"]);
    let pid2 = second.pid();
    wait_armed(
        &ctx,
        "kept",
        pid2,
        "armed in the restarted target without anyone asking",
    );
    wait_for("events from the new pid", Duration::from_secs(20), || {
        (!events_of(&ctx, "kept", &["--pid", &pid2.to_string()]).is_empty()).then_some(())
    });
}

#[test]
fn probe_on_a_module_not_yet_imported_is_pending_then_armed() {
    let line = marked_line("late_module.py", "late");
    let py = pythons().into_iter().next_back().expect("a python");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let trigger = ctx.home().join("import-now");
    let target = ctx.python(
        &py,
        "orders_loop.py",
        &["late-e2e", trigger.to_str().expect("utf8")],
    );
    let pid = target.pid();
    wait_for("target awake", Duration::from_secs(20), || {
        (ctx.state_of(pid).as_deref() == Some("awake")).then_some(())
    });
    let loc = format!("late_module.py:{line}");
    let out = ctx.scry(&[
        "probe",
        "add",
        &loc,
        "n",
        "--name",
        "late",
        "--pid",
        &pid.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let s = wait_for("pending", Duration::from_secs(20), || {
        probe_in(&ctx, "late", pid)
    });
    assert_eq!(s["state"], "pending", "{s}");
    std::fs::write(&trigger, "").expect("trigger");
    wait_armed(&ctx, "late", pid, "armed after import");
    let events = wait_for("late events", Duration::from_secs(20), || {
        let ev = events_of(&ctx, "late", &[]);
        (!ev.is_empty()).then_some(ev)
    });
    let v = &events[0]["data"]["values"]["n"];
    assert_eq!(v["t"], "int", "{v}");
    assert!(v["v"].as_i64().unwrap_or(0) > 0, "{v}");
}

#[test]
fn bad_probe_requests_get_clear_errors_and_nothing_is_kept() {
    let line = marked_line("orders_loop.py", "total");
    let py = pythons().into_iter().next().expect("a python");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let target = ctx.python(&py, "orders_loop.py", &["bad-e2e"]);
    let pid = target.pid();
    wait_for("target awake", Duration::from_secs(20), || {
        (ctx.state_of(pid).as_deref() == Some("awake")).then_some(())
    });
    let http = ctx.http();
    let loc = format!("orders_loop.py:{line}");

    // An expression with a side effect is refused before anything is armed.
    let out = ctx.scry(&[
        "probe",
        "add",
        &loc,
        "open('/tmp/x', 'w')",
        "--pid",
        &pid.to_string(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("open") && err.contains("hint:"),
        "{}",
        text(&out)
    );
    for expr in [
        "x := 1",
        "__import__('os')",
        "order.__class__",
        "[i for i in range(10**9)]",
        "lambda: 1",
    ] {
        let out = ctx.scry(&["probe", "add", &loc, expr, "--pid", &pid.to_string()]);
        assert!(!out.status.success(), "{expr} was accepted: {}", text(&out));
    }
    assert_eq!(
        ctx.scry_json(&["probe", "list"])["probes"],
        json!([]),
        "rejected probes are not kept"
    );

    let cases: &[(&str, &str, u16)] = &[
        ("POST", "{not json", 400),
        ("POST", r#"{"location": "a.py:3"}"#, 400),
        ("POST", r#"{"location": "a.py", "expressions": ["x"]}"#, 400),
        (
            "POST",
            r#"{"location": "a.py:0", "expressions": ["x"]}"#,
            400,
        ),
        ("POST", r#"{"location": "a.py:3", "expressions": []}"#, 400),
        (
            "POST",
            r#"{"location": "a.py:3", "expressions": ["x"], "rate": {"mode": "sometimes"}}"#,
            400,
        ),
        (
            "POST",
            r#"{"location": "a.py:3", "expressions": ["x"], "ttl": "soon"}"#,
            400,
        ),
        // A pid narrows a name to one of its processes; pid 1 is none of `w`'s.
        (
            "POST",
            r#"{"location": "a.py:3", "expressions": ["x"], "pid": 1, "process": "w"}"#,
            404,
        ),
        (
            "POST",
            r#"{"location": "a.py:3", "expressions": ["x"], "pid": 1, "all": true}"#,
            400,
        ),
        (
            "POST",
            r#"{"location": "a.py:3", "expressions": ["x"], "colour": "red"}"#,
            400,
        ),
    ];
    for (method, body, want) in cases {
        let (status, resp) = http_request(
            &http,
            method,
            "/api/v1/probes",
            Some(body),
            "Content-Type: application/json\r\n",
        )
        .expect("request");
        assert_eq!(status, *want, "{body} -> {resp}");
        let v: Value = serde_json::from_str(&resp).unwrap_or(Value::Null);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body} -> {resp}"
        );
    }
    for (method, path, want) in [
        ("DELETE", "/api/v1/probes/nope", 404),
        ("POST", "/api/v1/probes/nope/enable", 404),
        ("GET", "/api/v1/events/stats?probe=nope", 404),
        ("GET", "/api/v1/events/stats?where=total", 400),
        ("GET", "/api/v1/events?where=x%3D%3D%27open", 400),
        ("GET", "/api/v1/events/wait?timeout=-1", 400),
        ("GET", "/api/v1/events?probe=nope", 404),
        ("GET", "/api/v1/events?since=yesterday", 400),
        ("GET", "/api/v1/events/stream?pid=abc", 400),
        ("DELETE", "/api/v1/probes", 400),
        ("POST", "/api/v1/groups/none/disable", 404),
    ] {
        let (status, resp) = http_request(&http, method, path, None, "").expect("request");
        assert_eq!(status, want, "{method} {path} -> {resp}");
    }
    let (status, _) = http_post_json(
        &http,
        "/api/v1/probes",
        &json!({"location": loc, "expressions": ["total"], "name": "ok"}).to_string(),
    )
    .expect("post");
    assert_eq!(status, 201);
    let (status, resp) = http_post_json(
        &http,
        "/api/v1/probes",
        &json!({"location": loc, "expressions": ["total"], "name": "ok"}).to_string(),
    )
    .expect("post");
    assert_eq!(status, 400, "duplicate name: {resp}");
    assert_eq!(ctx.get("/api/v1/health")["ok"], true);
}

#[test]
fn events_follow_prints_new_events_as_they_arrive() {
    use std::io::BufRead;
    let line = marked_line("orders_loop.py", "total");
    let py = pythons().into_iter().next_back().expect("a python");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let target = ctx.python(&py, "orders_loop.py", &["follow-e2e"]);
    let pid = target.pid();
    wait_for("target awake", Duration::from_secs(20), || {
        (ctx.state_of(pid).as_deref() == Some("awake")).then_some(())
    });
    let loc = format!("orders_loop.py:{line}");
    let out = ctx.scry(&["probe", "add", &loc, "order['id']", "--name", "followed"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut follower = ctx
        .cmd(&[
            "events", "--probe", "followed", "--follow", "--json", "--limit", "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("follow");
    let stdout = follower.stdout.take().expect("stdout");
    let mut ids = Vec::new();
    for l in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(20)
    {
        let v: Value = serde_json::from_str(&l).expect("one JSON event per line");
        assert_eq!(v["data"]["values"]["order['id']"]["t"], "int", "{v}");
        ids.push(
            v["data"]["values"]["order['id']"]["v"]
                .as_i64()
                .expect("id"),
        );
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(ids.len(), 20);
    // In order, none missing, none twice: the loop numbers its orders 1, 2, 3, ...
    for w in ids.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{ids:?}");
    }
}

#[test]
fn first_n_and_ttl_end_their_probes_for_good() {
    let line = marked_line("orders_loop.py", "total");
    let py = pythons().into_iter().next_back().expect("a python");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let target = ctx.python(&py, "orders_loop.py", &["spent-e2e"]);
    let pid = target.pid();
    wait_for("target awake", Duration::from_secs(20), || {
        (ctx.state_of(pid).as_deref() == Some("awake")).then_some(())
    });
    let loc = format!("orders_loop.py:{line}");
    let out = ctx.scry(&[
        "probe",
        "add",
        &loc,
        "order['id']",
        "--name",
        "three",
        "--first",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ctx.scry(&[
        "probe",
        "add",
        &loc,
        "order['id']",
        "--name",
        "brief",
        "--ttl",
        "1s",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // `first 3`: three events, then the probe is off everywhere.
    wait_for("first-3 probe disabled", Duration::from_secs(20), || {
        let list = ctx.scry_json(&["probe", "list"]);
        let p = list["probes"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "three")?
            .clone();
        (p["enabled"] == false).then_some(())
    });
    // Its status can arrive before the batch holding its hits is committed.
    wait_for("the three events", Duration::from_secs(10), || {
        (events_of(&ctx, "three", &[]).len() == 3).then_some(())
    });

    // `ttl 1s`: expired, and nothing recorded after it.
    let p = wait_for("ttl probe expired", Duration::from_secs(20), || {
        let list = ctx.scry_json(&["probe", "list"]);
        let p = list["probes"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "brief")?
            .clone();
        (p["expired"] == true && p["enabled"] == false).then_some(p)
    });
    assert_eq!(p["processes"][0]["state"], "expired", "{p}");
    barrier(&ctx, pid, "after-expiry");
    let settled = events_of(&ctx, "brief", &[]);
    let last = settled
        .iter()
        .filter_map(|e| e["t_hit"].as_f64())
        .fold(0.0, f64::max);
    let expires = p["expires_at"].as_f64().expect("expires_at");
    assert!(
        last <= expires + 0.05,
        "an event at {last} after expiry at {expires}"
    );

    // Neither comes back after a sleep and a wake of the process.
    assert!(ctx.scry(&["sleep", &pid.to_string()]).status.success());
    assert!(ctx.scry(&["wake", &pid.to_string()]).status.success());
    barrier(&ctx, pid, "after-wake");
    assert_eq!(events_of(&ctx, "three", &[]).len(), 3);
    assert_eq!(events_of(&ctx, "brief", &[]).len(), settled.len());
    let out = ctx.scry(&["probe", "enable", "brief"]);
    assert!(
        !out.status.success(),
        "an expired probe cannot be enabled: {}",
        text(&out)
    );
}

/// A probe on a loop that is already running in a function that never returns: it reports on
/// every interpreter. Before 3.12 (bytecode injection) that frame keeps the code it started with,
/// so it is followed by a trace function in its own thread, and `probe list` says so and what it
/// costs; on 3.12+ sys.monitoring instruments the running code itself.
#[test]
fn probe_on_a_loop_already_running_reports_and_says_how() {
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let target = ctx.python(&py, "orders_loop.py", &["loop-e2e"]);
        let pid = target.pid();
        wait_awake(&ctx, pid, &py);
        add_loop_probe(&ctx, pid, "loop");
        let status = wait_armed(&ctx, "loop", pid, &format!("{py}: probe armed"));
        let events = wait_for(&format!("{py}: events"), Duration::from_secs(20), || {
            let ev = events_of(&ctx, "loop", &[]);
            (ev.len() >= 3).then_some(ev)
        });
        assert_eq!(events[0]["data"]["function"], "main", "{}", events[0]);
        let reason = status["reason"].as_str();
        if minor_of(&py) < 12 {
            let reason = reason.unwrap_or_default();
            assert!(
                reason
                    .contains("frames running since before the probe (main in thread MainThread)")
                    && reason.contains("runs slower"),
                "{py}: {status}"
            );
            let out = ctx.scry(&["probe", "list"]);
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("report through a trace function"),
                "{py}: {}",
                text(&out)
            );
        } else {
            assert!(reason.is_none(), "{py}: {status}");
        }
    }
}
