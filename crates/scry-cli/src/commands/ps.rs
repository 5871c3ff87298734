//! `scry ps`.

use scry_daemon::Home;
use serde_json::Value;

use super::{age, CmdResult};
use crate::cli::PsArgs;
use crate::client::DaemonClient;
use crate::error::ExitStatus;
use crate::printer::{table, Printer};

/// Lists the processes the daemon knows and the sleeping embedded clients.
pub async fn ps(home: &Home, args: &PsArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let path = if args.gone {
        "/api/v1/processes?gone=true"
    } else {
        "/api/v1/processes"
    };
    let answer = client.get(path).await?;
    if printer.json {
        printer.json_value(&answer)?;
        return Ok(ExitStatus::Success);
    }
    let list = answer["processes"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        printer.line("no processes yet")?;
        printer.note(
            "hint: a program that calls `import scry; scry.init()` shows up here; try `scry demo`",
        );
        return Ok(ExitStatus::Success);
    }
    let now = scry_daemon::now();
    let rows: Vec<Vec<String>> = list.iter().map(|p| row(p, now)).collect();
    for line in table(
        &[
            "PID", "NAME", "STATE", "PYTHON", "ORIGIN", "SINCE", "COMMAND",
        ],
        &rows,
    ) {
        printer.line(line)?;
    }
    Ok(ExitStatus::Success)
}

fn row(p: &Value, now: f64) -> Vec<String> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let state = text(&p["state"]).unwrap_or_else(|| "?".into());
    let since = match state.as_str() {
        "awake" => p["connected_since"].as_f64(),
        "gone" => p["last_heard"].as_f64(),
        _ => p["last_heard"].as_f64().or(p["first_seen"].as_f64()),
    };
    let command = p["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| text(&p["executable"]).unwrap_or_default());
    vec![
        p["pid"].as_u64().map(|v| v.to_string()).unwrap_or_default(),
        text(&p["name"]).unwrap_or_else(|| "-".into()),
        state,
        text(&p["python_version"]).unwrap_or_else(|| "-".into()),
        text(&p["origin"]).unwrap_or_else(|| "embedded".into()),
        since.map(|t| age(now - t)).unwrap_or_else(|| "-".into()),
        command,
    ]
}
