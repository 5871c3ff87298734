//! `scry logs`: the agents' forwarded log records (events of kind `log`) and the daemon's own
//! system events, merged into one time-ordered view, so that a flow across processes reads in
//! one place.

use std::time::Duration;

use scry_api::{DaemonStatus, Event, EventPage, SystemEvent, SystemEventList};
use scry_daemon::Home;
use serde::Serialize;
use serde_json::{json, Value};

use super::events::parse_time;
use super::CmdResult;
use crate::cli::LogsArgs;
use crate::client::DaemonClient;
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;
use crate::render;

/// Severity order of the levels agents and the daemon use.
fn rank(level: &str) -> u8 {
    match level {
        "debug" => 0,
        "info" => 1,
        "warn" | "warning" => 2,
        "error" | "critical" => 3,
        _ => 1,
    }
}

fn parse_level(text: &str) -> Result<u8, CliError> {
    match text.to_ascii_lowercase().as_str() {
        "debug" => Ok(0),
        "info" => Ok(1),
        "warn" | "warning" => Ok(2),
        "error" => Ok(3),
        _ => Err(CliError::new(format!("`{text}` is not a log level"))
            .hint("use debug, info, warn or error")),
    }
}

/// One line of the merged view (`--json` prints these).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    /// When, seconds since the epoch.
    pub t: f64,
    /// `agent` (a forwarded log record) or `daemon` (a system event).
    pub origin: &'static str,
    /// The process's name (`scry-daemon` for the daemon).
    pub name: Option<String>,
    /// The process's pid.
    pub pid: Option<u64>,
    /// The thread that logged.
    pub thread: Option<Value>,
    /// Its level.
    pub level: String,
    /// The logger (for the daemon: the system event's kind).
    pub logger: Option<Value>,
    /// The message.
    pub message: Option<Value>,
    /// A formatted exception, if the record had one.
    pub exc: Option<Value>,
    /// The event's id (in its own source).
    pub id: i64,
    /// The system event's details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// One line of the view, from an agent's `log` event.
fn from_agent(e: &Event) -> LogLine {
    let d = &e.data;
    let field = |k: &str| d.get(k).filter(|v| !v.is_null()).cloned();
    LogLine {
        t: e.t_hit,
        origin: "agent",
        name: e.name.clone(),
        pid: d["pid"].as_u64().or(e.pid.map(u64::from)),
        thread: field("thread"),
        level: d["level"].as_str().unwrap_or("info").to_owned(),
        logger: field("logger"),
        message: field("message"),
        exc: field("exc"),
        id: e.id,
        data: None,
    }
}

/// One line of the view, from one of the daemon's system events.
fn from_daemon(e: &SystemEvent, daemon_pid: u32) -> LogLine {
    LogLine {
        t: e.t,
        origin: "daemon",
        name: Some("scry-daemon".to_owned()),
        pid: Some(u64::from(daemon_pid)),
        thread: None,
        level: e.level.clone(),
        logger: Some(Value::String(e.kind.clone())),
        message: Some(Value::String(e.message.clone())),
        exc: None,
        id: e.id,
        data: Some(e.data.clone()),
    }
}

/// Whether a system event concerns process `pid` (its data names it).
fn about_pid(e: &SystemEvent, pid: u32) -> bool {
    e.data["pid"].as_u64() == Some(u64::from(pid))
}

/// Sorts by time (ties: daemon before agent, then id) and drops lines under `min`.
fn merge(mut lines: Vec<LogLine>, min: u8) -> Vec<LogLine> {
    lines.retain(|l| rank(&l.level) >= min);
    lines.sort_by(|a, b| {
        a.t.total_cmp(&b.t)
            .then_with(|| b.origin.cmp(a.origin))
            .then_with(|| a.id.cmp(&b.id))
    });
    lines
}

/// `HH:MM:SS.mmm  name[pid]  thread  LEVEL  message`.
pub fn line(l: &LogLine) -> String {
    let name = l.name.as_deref().unwrap_or("-");
    let pid = l.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    let thread = l.thread.as_ref().and_then(Value::as_str).unwrap_or("-");
    let level = l.level.to_ascii_uppercase();
    let mut text = format!(
        "{}  {name}[{pid}]  {thread}  {level:<5}  {}",
        render::time_of_day(l.t),
        l.message.as_ref().and_then(Value::as_str).unwrap_or("")
    );
    if let Some(exc) = l.exc.as_ref().and_then(Value::as_str) {
        text.push('\n');
        text.push_str(exc.trim_end());
    }
    text
}

fn show(printer: &mut Printer, l: &LogLine) -> std::io::Result<()> {
    if printer.json {
        printer.line(serde_json::to_string(l).unwrap_or_default())
    } else {
        printer.line(line(l))
    }
}

/// Runs `scry logs`.
pub async fn logs(home: &Home, a: &LogsArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let min = match &a.level {
        Some(l) => parse_level(l)?,
        None => 0,
    };
    let since = a.since.as_deref().map(parse_time).transpose()?;
    let limit = a.limit.clamp(1, 10_000);
    let mut base = String::from("kind=log");
    if let Some(p) = a.pid {
        base.push_str(&format!("&pid={p}"));
    }
    let since_q = since.map(|s| format!("&since={s}")).unwrap_or_default();
    let daemon_pid = client.get_as::<DaemonStatus>("/api/v1/status").await?.pid;

    let agent = client
        .get_as::<EventPage>(&format!(
            "/api/v1/events?{base}{since_q}&limit={limit}&order=newest"
        ))
        .await?
        .events;
    let mut last_event = agent.iter().map(|e| e.id).max();
    let system = client
        .get_as::<SystemEventList>(&format!(
            "/api/v1/system-events?limit={limit}{}",
            since.map(|s| format!("&since={s}")).unwrap_or_default()
        ))
        .await?
        .system_events;
    let mut last_system = system.iter().map(|e| e.id).max();
    let mut last_system_t = system.iter().map(|e| e.t).fold(0.0, f64::max);

    let mut lines: Vec<LogLine> = agent.iter().map(from_agent).collect();
    lines.extend(
        system
            .iter()
            .filter(|e| a.pid.is_none_or(|p| about_pid(e, p)))
            .map(|e| from_daemon(e, daemon_pid)),
    );
    let mut lines = merge(lines, min);
    // Both sources were limited to `limit`; show the newest `limit` of the merge.
    if lines.len() > limit {
        lines.drain(..lines.len() - limit);
    }
    if printer.json && !a.follow {
        printer.json_value(&json!({"logs": lines}))?;
        return Ok(ExitStatus::Success);
    }
    for l in &lines {
        show(printer, l)?;
    }
    if !a.follow {
        if lines.is_empty() && !printer.json {
            printer.note("no log records match; agents forward what their `scry` logger emits");
        }
        return Ok(ExitStatus::Success);
    }
    if last_event.is_none() {
        let newest: EventPage = client
            .get_as(&format!("/api/v1/events?{base}&limit=1&order=newest"))
            .await?;
        last_event = newest.events.first().map(|e| e.id);
    }
    loop {
        let agent = client
            .get_as::<EventPage>(&format!(
                "/api/v1/events?{base}&after_id={}&limit=1000&order=oldest",
                last_event.unwrap_or(0)
            ))
            .await?
            .events;
        if let Some(id) = agent.iter().map(|e| e.id).max() {
            last_event = Some(id);
        }
        let system: Vec<SystemEvent> = client
            .get_as::<SystemEventList>(&format!(
                "/api/v1/system-events?since={last_system_t}&limit=1000"
            ))
            .await?
            .system_events
            .into_iter()
            .filter(|e| Some(e.id) > last_system)
            .collect();
        for e in &system {
            last_system = last_system.max(Some(e.id));
            last_system_t = last_system_t.max(e.t);
        }
        let mut batch: Vec<LogLine> = agent.iter().map(from_agent).collect();
        batch.extend(
            system
                .iter()
                .filter(|e| a.pid.is_none_or(|p| about_pid(e, p)))
                .map(|e| from_daemon(e, daemon_pid)),
        );
        for l in &merge(batch, min) {
            show(printer, l)?;
        }
        if agent.len() < 1000 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_event(id: i64, t: f64, level: &str, msg: &str) -> Event {
        Event {
            id,
            process_id: 1,
            kind: "log".into(),
            source: None,
            t_hit: t,
            t_recv: t,
            data: json!({"level": level, "logger": "scry", "message": msg,
                         "thread": "MainThread", "pid": 7}),
            pid: Some(7),
            name: Some("worker".into()),
        }
    }

    #[test]
    fn merges_both_sources_in_time_order_and_filters_by_level() {
        let daemon = SystemEvent {
            id: 1,
            t: 2.0,
            level: "info".into(),
            kind: "process_connected".into(),
            message: "pid 7 connected".into(),
            data: json!({"pid": 7}),
        };
        let lines = vec![
            from_agent(&agent_event(10, 3.0, "warn", "late")),
            from_agent(&agent_event(9, 1.0, "debug", "early")),
            from_daemon(&daemon, 99),
        ];
        let all = merge(lines.clone(), 0);
        let msgs: Vec<&str> = all
            .iter()
            .map(|l| l.message.as_ref().and_then(Value::as_str).expect("message"))
            .collect();
        assert_eq!(msgs, ["early", "pid 7 connected", "late"]);
        let warn = merge(lines, parse_level("warning").expect("a level"));
        assert_eq!(warn.len(), 1);
        assert_eq!(warn[0].message, Some(json!("late")));
        assert!(about_pid(&daemon, 7) && !about_pid(&daemon, 8));
    }

    #[test]
    fn a_line_names_time_process_pid_thread_and_level() {
        let l = from_agent(&agent_event(1, 0.25, "warn", "disk almost full"));
        let text = line(&l);
        assert!(
            text.ends_with("worker[7]  MainThread  WARN   disk almost full"),
            "{text}"
        );
        assert!(parse_level("loud").is_err());
    }
}
