//! `GET /metrics`: the Prometheus exposition, checked by `promtool` and scraped by a real
//! Prometheus (Debian's, started here on a free loopback port) that answers PromQL about it.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::probes::{marked_line, wait_awake};
use crate::support::{http_request, pythons, skipped, text, wait_for, Ctx, Proc};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn prometheus_scrapes_the_daemon_with_its_token_and_answers_promql() {
    if !(have("prometheus") && have("promtool")) {
        let _: Option<()> = skipped(
            "no prometheus/promtool (Debian's `prometheus`; scripts/provision-matrix installs it)",
        );
        return;
    }
    let py = pythons().into_iter().next().expect("an interpreter");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let target = ctx.python(&py, "orders_loop.py", &["metrics-e2e"]);
    let pid = target.pid();
    wait_awake(&ctx, pid, &py);
    let loc = format!("orders_loop.py:{}", marked_line("orders_loop.py", "total"));
    let out = ctx.scry(&["probe", "add", &loc, "subtotal", "--name", "totals"]);
    assert!(out.status.success(), "{}", text(&out));
    // A metric probe on the same line: subtotals in buckets, by customer, aggregated in the
    // process (no event a hit).
    let out = ctx.scry(&[
        "probe",
        "add",
        &loc,
        "subtotal",
        "--metric",
        "histogram",
        "--label",
        "customer=order['customer']",
        "--buckets",
        "3,6,9",
        "--name",
        "subtotals",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let metric_probe: Value = serde_json::from_slice(&out.stdout).expect("json");
    let metric_id = metric_probe["id"].as_str().expect("id").to_owned();

    // Over TCP the token is needed, as for every request; with it, the exposition.
    let tcp = ctx.tcp();
    let (status, _) = http_request(&tcp, "GET", "/metrics", None, "").expect("GET");
    assert_eq!(status, 401, "/metrics without the token");
    let bearer = format!("Authorization: Bearer {}\r\n", ctx.token());
    wait_for(
        "the probe's hits in /metrics",
        Duration::from_secs(30),
        || {
            let (status, body) = http_request(&tcp, "GET", "/metrics", None, &bearer).ok()?;
            assert_eq!(status, 200, "{body}");
            body.lines()
                .any(|l| {
                    l.starts_with("scry_probe_hits_total{")
                        && l.contains("name=\"totals\"")
                        && !l.ends_with(" 0")
                })
                .then_some(())
        },
    );
    let body = wait_for(
        "the metric probe's histogram in /metrics",
        Duration::from_secs(30),
        || {
            let (_, body) = http_request(&tcp, "GET", "/metrics", None, &bearer).ok()?;
            body.contains("scry_metric_subtotals_bucket{customer=\"c1\"")
                .then_some(body)
        },
    );
    for family in [
        "# TYPE scry_metric_subtotals histogram",
        "scry_metric_subtotals_count{customer=\"c0\"",
        "le=\"+Inf\"",
        "scry_agents_connected 1",
        "scry_processes{state=\"awake\"} 1",
        "# TYPE scry_events_ingested_total counter",
        "scry_events_lost_total{reason=\"not_stored\"}",
        "scry_store_state{state=\"ok\"} 1",
        "# TYPE scry_attach_duration_seconds histogram",
        "scry_store_bytes ",
    ] {
        assert!(body.contains(family), "no `{family}` in:\n{body}");
    }

    // The metric probe shipped aggregates, never an event a hit.
    let (_, events) = http_request(
        &ctx.http(),
        "GET",
        &format!("/api/v1/events?source={metric_id}&limit=5"),
        None,
        "",
    )
    .expect("events");
    let events: Value = serde_json::from_str(&events).expect("json");
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(0),
        "{events}"
    );

    // promtool finds nothing wrong in the exposition.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(check.stdin.as_mut().expect("stdin"), body.as_bytes())
        .expect("write");
    drop(check.stdin.take());
    let checked = check.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // A real Prometheus scrapes the daemon every second with the token file.
    let dir = ctx.home().join("prometheus");
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: scry\n    scrape_interval: 1s\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['{tcp}']\n",
            ctx.home().join("token").display()
        ),
    )
    .expect("config");
    let web = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("prometheus");
    let _prometheus = Proc {
        child,
        label: "prometheus".into(),
    };
    let query = |promql: &str| -> Option<Value> {
        let path = format!("/api/v1/query?query={}", scry_cli_enc(promql));
        let (status, body) = http_request(&web, "GET", &path, None, "").ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let first_value =
        |v: &Value| -> Option<f64> { v["data"]["result"][0]["value"][1].as_str()?.parse().ok() };
    let prom_log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    wait_for(
        "Prometheus to scrape scry (up == 1)",
        Duration::from_secs(60),
        || {
            query("up{job=\"scry\"}")
                .as_ref()
                .and_then(first_value)
                .filter(|v| *v == 1.0)
        },
    );
    let hits = wait_for(
        "Prometheus to answer for the probe's hits",
        Duration::from_secs(60),
        || {
            query("sum(scry_probe_hits_total{name=\"totals\"})")
                .as_ref()
                .and_then(first_value)
                .filter(|v| *v > 0.0)
        },
    );
    assert!(hits > 0.0, "{}", prom_log());
    // The metric probe's histogram answers PromQL: subtotals are 2.5, 5 or 7.5, so the
    // median over every customer and pid is under the 6 bound.
    let median = wait_for(
        "Prometheus to answer a quantile of the metric probe",
        Duration::from_secs(60),
        || {
            query("histogram_quantile(0.5, sum by (le) (scry_metric_subtotals_bucket))")
                .as_ref()
                .and_then(first_value)
                .filter(|v| v.is_finite())
        },
    );
    assert!(
        (3.0..=9.0).contains(&median),
        "median {median}: {}",
        prom_log()
    );
    // The attach histogram's buckets are queryable as a histogram (no attach here: zero).
    let buckets = query("sum by (le) (scry_attach_duration_seconds_bucket{outcome=\"ok\"})")
        .expect("a PromQL answer");
    assert_eq!(
        buckets["data"]["result"].as_array().map(Vec::len),
        Some(10),
        "nine bounds and +Inf: {buckets}"
    );
}

/// Percent-encodes a query value.
fn scry_cli_enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
