//! `scry events` (query and follow) and `scry events stats`.

use std::time::Duration;

use scry_daemon::Home;
use serde_json::Value;

use super::probe::enc;
use super::CmdResult;
use crate::cli::{EventsArgs, EventsCmd, EventsSub, StatsArgs};
use crate::client::DaemonClient;
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;
use crate::render;

/// Parses `--since`/`--until`: a duration ago (`5m`) or an RFC 3339 time.
pub fn parse_time(text: &str) -> Result<f64, CliError> {
    if let Ok(d) = scry_daemon::config::parse_duration(text) {
        return Ok(scry_daemon::now() - d.as_secs_f64());
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .ok_or_else(|| {
            CliError::new(format!("`{text}` is neither a duration nor a time")).hint(
                "use a duration ago such as 30s, 5m, 2h, or a time such as 2026-11-21T12:00:00Z",
            )
        })
}

/// Runs `scry events`.
pub async fn events(home: &Home, cmd: &EventsCmd, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    match &cmd.sub {
        Some(EventsSub::Stats(a)) => stats(&client, a, printer).await,
        None => query(&client, &cmd.query, printer).await,
    }
}

fn filters(
    probe: &Option<String>,
    pid: Option<u32>,
    since: &Option<String>,
    until: &Option<String>,
) -> Result<String, CliError> {
    let mut q = Vec::new();
    if let Some(p) = probe {
        q.push(format!("probe={}", enc(p)));
    }
    if let Some(p) = pid {
        q.push(format!("pid={p}"));
    }
    if let Some(s) = since {
        q.push(format!("since={}", parse_time(s)?));
    }
    if let Some(u) = until {
        q.push(format!("until={}", parse_time(u)?));
    }
    Ok(q.join("&"))
}

async fn query(client: &DaemonClient, a: &EventsArgs, printer: &mut Printer) -> CmdResult {
    let base = filters(&a.probe, a.pid, &a.since, &a.until)?;
    let page = client
        .get(&format!(
            "/api/v1/events?{base}&limit={}&order=newest",
            a.limit.clamp(1, 10_000)
        ))
        .await?;
    let mut events: Vec<Value> = page["events"].as_array().cloned().unwrap_or_default();
    events.reverse(); // oldest first on screen
    if printer.json && !a.follow {
        printer.json_value(&page)?;
        return Ok(ExitStatus::Success);
    }
    let mut last_id = events.last().and_then(|e| e["id"].as_i64()).unwrap_or(0);
    for e in &events {
        show(printer, e)?;
    }
    if page["truncated"] == true && !printer.json {
        printer.note(format!(
            "(showing the newest {}; --limit shows more)",
            events.len()
        ));
    }
    if !a.follow {
        if events.is_empty() && !printer.json {
            printer.note("no events match; `scry probe list` shows what is armed and where");
        }
        return Ok(ExitStatus::Success);
    }
    // Follow by polling the store with the event id as a cursor: every stored event is shown
    // exactly once, whatever the timing.
    if last_id == 0 {
        let newest = client
            .get(&format!("/api/v1/events?{base}&limit=1&order=newest"))
            .await?;
        last_id = newest["events"][0]["id"].as_i64().unwrap_or(0);
    }
    loop {
        let page = client
            .get(&format!(
                "/api/v1/events?{base}&after_id={last_id}&limit=1000&order=oldest"
            ))
            .await?;
        let batch = page["events"].as_array().cloned().unwrap_or_default();
        for e in &batch {
            show(printer, e)?;
            last_id = e["id"].as_i64().unwrap_or(last_id);
        }
        if batch.len() < 1000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn show(printer: &mut Printer, e: &Value) -> std::io::Result<()> {
    if printer.json {
        printer.line(e.to_string())
    } else {
        printer.line(render::event_line(e))
    }
}

async fn stats(client: &DaemonClient, a: &StatsArgs, printer: &mut Printer) -> CmdResult {
    let q = filters(&Some(a.probe.clone()), a.pid, &a.since, &a.until)?;
    let s = client.get(&format!("/api/v1/events/stats?{q}")).await?;
    if printer.json {
        printer.json_value(&s)?;
        return Ok(ExitStatus::Success);
    }
    printer.line(format!(
        "probe {}: {} events{}",
        a.probe,
        s["count"],
        if s["truncated"] == true {
            " (the newest 10000)"
        } else {
            ""
        }
    ))?;
    let Some(exprs) = s["expressions"].as_object() else {
        return Ok(ExitStatus::Success);
    };
    for (expr, st) in exprs {
        let n = &st["numeric"];
        if n.is_object() {
            let f = |v: &Value| {
                v.as_f64()
                    .map(|x| {
                        format!("{x:.6}")
                            .trim_end_matches('0')
                            .trim_end_matches('.')
                            .to_owned()
                    })
                    .unwrap_or_else(|| "-".into())
            };
            printer.line(format!(
                "  {expr}: n={} min={} max={} mean={} p50={} p95={} p99={}",
                n["count"],
                f(&n["min"]),
                f(&n["max"]),
                f(&n["mean"]),
                f(&n["p50"]),
                f(&n["p95"]),
                f(&n["p99"])
            ))?;
        }
        if let Some(top) = st["values"]["top"].as_array() {
            let shown: Vec<String> = top
                .iter()
                .map(|kv| format!("{}×{}", kv[0].as_str().unwrap_or("?"), kv[1]))
                .collect();
            printer.line(format!(
                "  {expr}: {} distinct: {}",
                st["values"]["distinct"],
                shown.join(", ")
            ))?;
        }
    }
    Ok(ExitStatus::Success)
}
