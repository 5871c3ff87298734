//! `scry events` (query and follow) and `scry events stats`.

use std::time::Duration;

use scry_api::{Event, EventPage, EventStats, EventWait, NumericStats};
use scry_daemon::Home;

use super::CmdResult;
use crate::cli::{EventFilterArgs, EventsArgs, EventsCmd, EventsSub, StatsArgs, WaitArgs};
use crate::client::enc;
use crate::client::DaemonClient;
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;
use crate::render;

/// Parses `--since`/`--until`: a duration ago (`5m`) or an RFC 3339 time (the daemon's own
/// parser, so that the CLI and the API agree). The CLI sends epoch seconds, so that a follow
/// keeps the window it started with.
pub fn parse_time(text: &str) -> Result<f64, CliError> {
    scry_daemon::config::parse_time(text).map_err(|e| {
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

/// The query string of the shared filters (times resolved here; the daemon checks `where`).
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
        q.push(format!("where={}", enc(&f.where_.join(" && "))));
    }
    Ok(q.join("&"))
}

async fn query(client: &DaemonClient, a: &EventsArgs, printer: &mut Printer) -> CmdResult {
    let base = filters(a.probe.as_deref(), &a.filter)?;
    let page: EventPage = client
        .get_as(&format!(
            "/api/v1/events?{base}&limit={}&order={}",
            a.limit.clamp(1, 10_000),
            a.order
        ))
        .await
        .map_err(where_hint)?;
    if printer.json && !a.follow {
        printer.json_value(&page)?;
        return Ok(ExitStatus::Success);
    }
    let mut events = page.events;
    if a.order == "newest" {
        events.reverse(); // oldest first on screen
    }
    let mut last_id = events.iter().map(|e| e.id).max().unwrap_or(0);
    for e in &events {
        show(printer, e)?;
    }
    if page.truncated && !printer.json {
        // `matched` counts what the daemon read: more than shown only when it filtered after
        // reading (values, several processes); else the store stopped at the limit.
        let of = if page.counts.matched > events.len() {
            format!(
                " of {} matching{}",
                page.counts.matched,
                if page.counts.scan_truncated {
                    " in the 10000 events scanned"
                } else {
                    ""
                }
            )
        } else {
            "; more match".to_owned()
        };
        printer.note(format!(
            "(showing the {} {}{of}; --limit shows more)",
            a.order,
            events.len(),
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
        let newest: EventPage = client
            .get_as(&format!("/api/v1/events?{base}&limit=1&order=newest"))
            .await?;
        last_id = newest.events.first().map_or(0, |e| e.id);
    }
    loop {
        let page: EventPage = client
            .get_as(&format!(
                "/api/v1/events?{base}&after_id={last_id}&limit=1000&order=oldest"
            ))
            .await?;
        for e in &page.events {
            show(printer, e)?;
            last_id = last_id.max(e.id);
        }
        if page.events.len() < 1000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A `--where` the daemon refused gets the shell's usual culprit as its hint: an unquoted `>`
/// is a redirection, so the daemon sees only what came before it.
fn where_hint(e: CliError) -> CliError {
    if e.message.starts_with("where:") {
        e.hint("quote the condition for the shell: --where 'total>100'")
    } else {
        e
    }
}

fn show(printer: &mut Printer, e: &Event) -> std::io::Result<()> {
    if printer.json {
        printer.line(serde_json::to_string(e).unwrap_or_default())
    } else {
        for line in render::event_lines(e) {
            printer.line(line)?;
        }
        Ok(())
    }
}

async fn stats(client: &DaemonClient, a: &StatsArgs, printer: &mut Printer) -> CmdResult {
    let q = filters(a.probe.as_deref(), &a.filter)?;
    let s: EventStats = client
        .get_as(&format!("/api/v1/events/stats?{q}"))
        .await
        .map_err(where_hint)?;
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
        s.count,
        if s.truncated {
            " (the newest 10000)"
        } else {
            ""
        }
    ))?;
    for (expr, st) in &s.expressions {
        if let Some(n) = &st.numeric {
            printer.line(format!("  {expr}: {}", numeric_line(n)))?;
        }
        if let Some(v) = &st.values {
            let shown: Vec<String> = v.top.iter().map(|(k, n)| format!("{k}×{n}")).collect();
            printer.line(format!(
                "  {expr}: {} distinct: {}",
                v.distinct,
                shown.join(", ")
            ))?;
        }
    }
    Ok(ExitStatus::Success)
}

/// `n=… min=… max=… mean=… p50=… p95=… p99=…`, numbers without trailing zeros.
fn numeric_line(n: &NumericStats) -> String {
    let f = |x: f64| {
        format!("{x:.6}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    };
    format!(
        "n={} min={} max={} mean={} p50={} p95={} p99={}",
        n.count,
        f(n.min),
        f(n.max),
        f(n.mean),
        f(n.p50),
        f(n.p95),
        f(n.p99)
    )
}

async fn wait(client: &DaemonClient, a: &WaitArgs, printer: &mut Printer) -> CmdResult {
    let timeout = scry_daemon::config::parse_duration(&a.timeout)
        .map_err(|e| CliError::new(format!("--timeout: {e}")))?;
    let mut q = filters(a.probe.as_deref(), &a.filter)?;
    if let Some(after) = a.after {
        q.push_str(&format!("&after_id={after}"));
    }
    let answer: EventWait = client
        .get_as_within(
            &format!(
                "/api/v1/events/wait?{q}&count={}&timeout={}",
                a.count.max(1),
                timeout.as_secs_f64()
            ),
            timeout + Duration::from_secs(30),
        )
        .await
        .map_err(where_hint)?;
    if printer.json {
        printer.json_value(&answer)?;
    } else {
        for e in &answer.events {
            show(printer, e)?;
        }
        if !answer.reached {
            printer.note(format!(
                "timed out: {} of {} hits arrived",
                answer.count, answer.wanted
            ));
        }
    }
    Ok(if answer.reached {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
