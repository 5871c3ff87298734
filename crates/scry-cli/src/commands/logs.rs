//! `scry logs`: the agents' forwarded log records (events of kind `log`) and the daemon's own
//! system events, merged into one time-ordered view, so that a flow across processes reads in
//! one place.

use std::time::Duration;

use scry_daemon::Home;
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

/// One line of the view, from an agent's `log` event.
fn from_agent(e: &Value) -> Value {
    let d = &e["data"];
    json!({
        "t": e["t_hit"],
        "origin": "agent",
        "name": e["name"],
        "pid": d["pid"].as_u64().or_else(|| e["pid"].as_u64()),
        "thread": d["thread"],
        "level": d["level"].as_str().unwrap_or("info"),
        "logger": d["logger"],
        "message": d["message"],
        "exc": d.get("exc").cloned().unwrap_or(Value::Null),
        "id": e["id"],
    })
}

/// One line of the view, from one of the daemon's system events.
fn from_daemon(e: &Value, daemon_pid: &Value) -> Value {
    json!({
        "t": e["t"],
        "origin": "daemon",
        "name": "scry-daemon",
        "pid": daemon_pid,
        "thread": Value::Null,
        "level": e["level"],
        "logger": e["kind"],
        "message": e["message"],
        "exc": Value::Null,
        "id": e["id"],
        "data": e["data"],
    })
}

/// Whether a system event concerns process `pid` (its data names it).
fn about_pid(e: &Value, pid: u32) -> bool {
    e["data"]["pid"].as_u64() == Some(u64::from(pid))
}

/// Sorts by time (ties: daemon before agent, then id) and drops lines under `min`.
fn merge(mut lines: Vec<Value>, min: u8) -> Vec<Value> {
    lines.retain(|l| rank(l["level"].as_str().unwrap_or("info")) >= min);
    lines.sort_by(|a, b| {
        let ta = a["t"].as_f64().unwrap_or(0.0);
        let tb = b["t"].as_f64().unwrap_or(0.0);
        ta.total_cmp(&tb)
            .then_with(|| b["origin"].as_str().cmp(&a["origin"].as_str()))
            .then_with(|| a["id"].as_i64().cmp(&b["id"].as_i64()))
    });
    lines
}

/// `HH:MM:SS.mmm  name[pid]  thread  LEVEL  message`.
pub fn line(l: &Value) -> String {
    let t = l["t"].as_f64().unwrap_or(0.0);
    let name = l["name"].as_str().unwrap_or("-");
    let pid = l["pid"]
        .as_u64()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "?".into());
    let thread = l["thread"].as_str().unwrap_or("-");
    let level = l["level"].as_str().unwrap_or("info").to_ascii_uppercase();
    let mut text = format!(
        "{}  {name}[{pid}]  {thread}  {level:<5}  {}",
        render::time_of_day(t),
        l["message"].as_str().unwrap_or("")
    );
    if let Some(exc) = l["exc"].as_str() {
        text.push('\n');
        text.push_str(exc.trim_end());
    }
    text
}

fn show(printer: &mut Printer, l: &Value) -> std::io::Result<()> {
    if printer.json {
        printer.line(l.to_string())
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
    let daemon_pid = client.get("/api/v1/status").await?["pid"].clone();

    let page = client
        .get(&format!(
            "/api/v1/events?{base}{since_q}&limit={limit}&order=newest"
        ))
        .await?;
    let agent: Vec<Value> = page["events"].as_array().cloned().unwrap_or_default();
    let mut last_event = agent.iter().filter_map(|e| e["id"].as_i64()).max();
    let system = client
        .get(&format!(
            "/api/v1/system-events?limit={limit}{}",
            since.map(|s| format!("&since={s}")).unwrap_or_default()
        ))
        .await?;
    let system: Vec<Value> = system["system_events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut last_system = system.iter().filter_map(|e| e["id"].as_i64()).max();
    let mut last_system_t = system
        .iter()
        .filter_map(|e| e["t"].as_f64())
        .fold(0.0, f64::max);

    let mut lines: Vec<Value> = agent.iter().map(from_agent).collect();
    lines.extend(
        system
            .iter()
            .filter(|e| a.pid.is_none_or(|p| about_pid(e, p)))
            .map(|e| from_daemon(e, &daemon_pid)),
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
        let newest = client
            .get(&format!("/api/v1/events?{base}&limit=1&order=newest"))
            .await?;
        last_event = newest["events"][0]["id"].as_i64();
    }
    loop {
        let page = client
            .get(&format!(
                "/api/v1/events?{base}&after_id={}&limit=1000&order=oldest",
                last_event.unwrap_or(0)
            ))
            .await?;
        let agent: Vec<Value> = page["events"].as_array().cloned().unwrap_or_default();
        if let Some(id) = agent.iter().filter_map(|e| e["id"].as_i64()).max() {
            last_event = Some(id);
        }
        let system = client
            .get(&format!(
                "/api/v1/system-events?since={last_system_t}&limit=1000"
            ))
            .await?;
        let system: Vec<Value> = system["system_events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["id"].as_i64() > last_system)
            .collect();
        for e in &system {
            last_system = last_system.max(e["id"].as_i64());
            last_system_t = last_system_t.max(e["t"].as_f64().unwrap_or(0.0));
        }
        let mut batch: Vec<Value> = agent.iter().map(from_agent).collect();
        batch.extend(
            system
                .iter()
                .filter(|e| a.pid.is_none_or(|p| about_pid(e, p)))
                .map(|e| from_daemon(e, &daemon_pid)),
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

    fn agent_event(id: i64, t: f64, level: &str, msg: &str) -> Value {
        json!({"id": id, "t_hit": t, "kind": "log", "name": "worker", "pid": 7,
               "data": {"level": level, "logger": "scry", "message": msg,
                        "thread": "MainThread", "pid": 7}})
    }

    #[test]
    fn merges_both_sources_in_time_order_and_filters_by_level() {
        let daemon = json!({"id": 1, "t": 2.0, "level": "info", "kind": "process_connected",
                            "message": "pid 7 connected", "data": {"pid": 7}});
        let lines = vec![
            from_agent(&agent_event(10, 3.0, "warn", "late")),
            from_agent(&agent_event(9, 1.0, "debug", "early")),
            from_daemon(&daemon, &json!(99)),
        ];
        let all = merge(lines.clone(), 0);
        let msgs: Vec<&str> = all
            .iter()
            .map(|l| l["message"].as_str().expect("message"))
            .collect();
        assert_eq!(msgs, ["early", "pid 7 connected", "late"]);
        let warn = merge(lines, parse_level("warning").expect("a level"));
        assert_eq!(warn.len(), 1);
        assert_eq!(warn[0]["message"], "late");
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
