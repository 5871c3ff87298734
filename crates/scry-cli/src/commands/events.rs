//! `scry events` (query and follow) and `scry events stats`.

use std::time::Duration;

use scry_daemon::Home;
use serde_json::Value;

use super::CmdResult;
use crate::cli::{EventFilterArgs, EventsArgs, EventsCmd, EventsSub, StatsArgs, WaitArgs};
use crate::client::enc;
use crate::client::DaemonClient;
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;
use crate::render;

/// Parses `--since`/`--until`: a duration ago (`5m`) or an RFC 3339 time (the daemon's own
/// parser, so that the CLI and the API agree).
pub fn parse_time(text: &str) -> Result<f64, CliError> {
    scry_daemon::service::events::parse_time(text).map_err(|e| {
        CliError::new(e)
            .hint("use a duration ago such as 30s, 5m, 2h, or a time such as 2026-11-21T12:00:00Z")
    })
}

/// Runs `scry events`.
pub async fn events(home: &Home, cmd: &EventsCmd, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    match &cmd.sub {
        Some(EventsSub::Stats(a)) => stats(&client, a, printer).await,
        Some(EventsSub::Wait(a)) => wait(&client, a, printer).await,
        None => query(&client, &cmd.query, printer).await,
    }
}

/// The query string of the shared filters (times checked here, so that a typo fails early).
fn filters(probe: Option<&str>, f: &EventFilterArgs) -> Result<String, CliError> {
    let mut q = Vec::new();
    if let Some(p) = probe {
        q.push(format!("probe={}", enc(p)));
    }
    if let Some(p) = f.pid {
        q.push(format!("pid={p}"));
    }
    if let Some(p) = &f.process {
        q.push(format!("process={}", enc(p)));
    }
    if let Some(s) = &f.since {
        q.push(format!("since={}", parse_time(s)?));
    }
    if let Some(u) = &f.until {
        q.push(format!("until={}", parse_time(u)?));
    }
    if !f.where_.is_empty() {
        let joined = f.where_.join(" && ");
        scry_daemon::service::events::parse_where(&joined).map_err(|e| {
            CliError::new(format!("--where: {e}"))
                .hint("quote the condition for the shell: --where 'total>100'")
        })?;
        q.push(format!("where={}", enc(&joined)));
    }
    Ok(q.join("&"))
}

async fn query(client: &DaemonClient, a: &EventsArgs, printer: &mut Printer) -> CmdResult {
    let base = filters(a.probe.as_deref(), &a.filter)?;
    let page = client
        .get(&format!(
            "/api/v1/events?{base}&limit={}&order={}",
            a.limit.clamp(1, 10_000),
            a.order
        ))
        .await?;
    let mut events: Vec<Value> = page["events"].as_array().cloned().unwrap_or_default();
    if a.order == "newest" {
        events.reverse(); // oldest first on screen
    }
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
            "(showing the {} {} of {} matching{}; --limit shows more)",
            a.order,
            events.len(),
            page["counts"]["matched"],
            if page["counts"]["scan_truncated"] == true {
                " in the 10000 events scanned"
            } else {
                ""
            }
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
    let q = filters(a.probe.as_deref(), &a.filter)?;
    let s = client.get(&format!("/api/v1/events/stats?{q}")).await?;
    if printer.json {
        printer.json_value(&s)?;
        return Ok(ExitStatus::Success);
    }
    printer.line(format!(
        "{}: {} events{}",
        a.probe
            .as_deref()
            .map(|p| format!("probe {p}"))
            .unwrap_or_else(|| "every probe".into()),
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

async fn wait(client: &DaemonClient, a: &WaitArgs, printer: &mut Printer) -> CmdResult {
    let timeout = scry_daemon::config::parse_duration(&a.timeout)
        .map_err(|e| CliError::new(format!("--timeout: {e}")))?;
    let mut q = filters(a.probe.as_deref(), &a.filter)?;
    if let Some(after) = a.after {
        q.push_str(&format!("&after_id={after}"));
    }
    let answer = client
        .get_with_timeout(
            &format!(
                "/api/v1/events/wait?{q}&count={}&timeout={}",
                a.count.max(1),
                timeout.as_secs_f64()
            ),
            timeout + Duration::from_secs(30),
        )
        .await?;
    if printer.json {
        printer.json_value(&answer)?;
    } else {
        for e in answer["events"].as_array().into_iter().flatten() {
            show(printer, e)?;
        }
        if answer["reached"] != true {
            printer.note(format!(
                "timed out: {} of {} hits arrived",
                answer["count"], answer["wanted"]
            ));
        }
    }
    Ok(if answer["reached"] == true {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
