//! Event queries against known generated values: a target calls `record(i)` for i = 1..100
//! once; stats, value filters (`--where`), time windows, order, limits and the long-poll wait
//! must give exactly what those values imply.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{http_get, pythons, text, wait_for, Ctx};

fn marked_line(script: &str, tag: &str) -> u32 {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(script);
    let src = std::fs::read_to_string(&path).expect("script");
    src.lines()
        .position(|l| l.contains(&format!("# PROBE: {tag}")))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("no `# PROBE: {tag}` in {script}"))
}

fn is(events: &Value) -> Vec<i64> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["data"]["values"]["i"]["v"].as_i64())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn queries_windows_filters_stats_and_wait_on_known_values() {
    let line = marked_line("known_values.py", "record");
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let trigger = ctx.home().join("go");
        let trigger_arg = trigger.to_string_lossy().into_owned();
        let target = ctx.python(&py, "known_values.py", &["kv-e2e", &trigger_arg]);
        let pid = target.pid().to_string();
        wait_for(&format!("{py}: awake"), Duration::from_secs(20), || {
            (ctx.state_of(target.pid()).as_deref() == Some("awake")).then_some(())
        });
        let loc = format!("known_values.py:{line}");
        let out = ctx.scry(&[
            "probe", "add", &loc, "i", "label", "--name", "kv", "--pid", &pid,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        wait_for(&format!("{py}: armed"), Duration::from_secs(20), || {
            let list = ctx.scry_json(&["probe", "list"]);
            (list["probes"][0]["processes"][0]["state"] == "armed").then_some(())
        });

        // The long poll: started before the burst, it returns once all 100 hits are stored.
        let waited = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                ctx.scry_json(&[
                    "events",
                    "wait",
                    "kv",
                    "--count",
                    "100",
                    "--timeout",
                    "60s",
                    "--after",
                    "0",
                ])
            });
            std::fs::write(&trigger, b"go").expect("trigger");
            waiter.join().expect("wait thread")
        });
        assert_eq!(waited["reached"], true, "{py}: {waited}");
        assert_eq!(is(&waited["events"]), (1..=100).collect::<Vec<_>>(), "{py}");

        // Nothing new comes: a short wait times out and says so (exit status 1).
        let out = ctx.scry(&["events", "wait", "kv", "--timeout", "300ms", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(
            (v["reached"].clone(), v["count"].clone()),
            (json!(false), json!(0))
        );

        // Stats: known count, extremes, mean and nearest-rank percentiles; string value counts.
        let stats = ctx.scry_json(&["events", "stats", "kv"]);
        let n = &stats["expressions"]["i"]["numeric"];
        assert_eq!(stats["count"], 100, "{stats}");
        for (k, want) in [
            ("min", 1.0),
            ("max", 100.0),
            ("mean", 50.5),
            ("p50", 50.0),
            ("p95", 95.0),
            ("p99", 99.0),
        ] {
            assert_eq!(n[k], want, "{py}: {k} in {stats}");
        }
        assert_eq!(
            stats["expressions"]["label"]["values"]["top"],
            json!([["even", 50], ["odd", 50]])
        );
        let upper = ctx.scry_json(&["events", "stats", "kv", "--where", "i>50"]);
        assert_eq!(upper["count"], 50);
        assert_eq!(upper["expressions"]["i"]["numeric"]["min"], 51.0);

        // Value filters.
        let top = ctx.scry_json(&[
            "events", "--probe", "kv", "--where", "i>90", "--limit", "100",
        ]);
        let mut got = is(&top["events"]);
        got.sort_unstable();
        assert_eq!(got, (91..=100).collect::<Vec<_>>(), "{top}");
        assert_eq!(top["truncated"], false);
        let both = ctx.scry_json(&[
            "events",
            "--probe",
            "kv",
            "--where",
            "label=='even'",
            "--where",
            "i<=10",
            "--order",
            "oldest",
        ]);
        assert_eq!(is(&both["events"]), vec![2, 4, 6, 8, 10], "{both}");

        // Limits and order: the answer says it was cut, and by how much.
        let first = ctx.scry_json(&[
            "events", "--probe", "kv", "--limit", "3", "--order", "oldest",
        ]);
        assert_eq!(is(&first["events"]), vec![1, 2, 3]);
        assert_eq!(first["truncated"], true);
        let last = ctx.scry_json(&["events", "--probe", "kv", "--limit", "2", "--where", "i>0"]);
        assert_eq!(is(&last["events"]), vec![100, 99]);
        assert_eq!(
            (last["truncated"].clone(), last["counts"]["matched"].clone()),
            (json!(true), json!(100))
        );

        // Time windows: until is exclusive, since inclusive, at the 50th hit's time.
        let all = ctx.scry_json(&[
            "events", "--probe", "kv", "--limit", "100", "--order", "oldest",
        ]);
        let t50 = all["events"][49]["t_hit"].as_f64().expect("t_hit");
        let http = ctx.http();
        let before: Value = serde_json::from_str(
            &http_get(
                &http,
                &format!("/api/v1/events?probe=kv&limit=1000&until={t50}"),
            )
            .expect("get")
            .1,
        )
        .expect("json");
        assert_eq!(before["events"].as_array().map(Vec::len), Some(49));
        let after: Value = serde_json::from_str(
            &http_get(
                &http,
                &format!("/api/v1/events?probe=kv&limit=1000&since={t50}"),
            )
            .expect("get")
            .1,
        )
        .expect("json");
        assert_eq!(after["events"].as_array().map(Vec::len), Some(51));
        let recent = ctx.scry_json(&[
            "events", "--probe", "kv", "--since", "1h", "--limit", "1000",
        ]);
        assert_eq!(recent["events"].as_array().map(Vec::len), Some(100));
        let old = ctx.scry_json(&["events", "--probe", "kv", "--until", "1h"]);
        assert_eq!(old["events"].as_array().map(Vec::len), Some(0));

        // Process filters.
        let named = ctx.scry_json(&[
            "events",
            "--probe",
            "kv",
            "--process",
            "kv-e2e",
            "--limit",
            "1000",
        ]);
        assert_eq!(named["events"].as_array().map(Vec::len), Some(100));
        let out = ctx.scry(&["events", "--process", "nobody"]);
        assert!(
            !out.status.success() && text(&out).contains("no process named"),
            "{}",
            text(&out)
        );

        // Bad filters are refused with the reason.
        let out = ctx.scry(&["events", "--where", "total=>3"]);
        assert!(!out.status.success());
        assert!(text(&out).contains("EXPR OP VALUE"), "{}", text(&out));
        let (status, body) = http_get(&http, "/api/v1/events?where=total%3E").expect("get");
        assert_eq!(status, 400, "{body}");
    }
}
