//! `scry lines TARGET [--var NAME]`: where to probe, as the target process sees its code.

use scry_daemon::Home;
use serde_json::{json, Value};

use super::CmdResult;
use crate::cli::LinesArgs;
use crate::client::DaemonClient;
use crate::error::ExitStatus;
use crate::printer::{table, Printer};

/// Runs `scry lines`.
pub async fn lines(home: &Home, a: &LinesArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let mut body = json!({"target": a.target, "limit": a.limit});
    if let Some(v) = &a.var {
        body["var"] = json!(v);
    }
    if let Some(p) = a.pid {
        body["pid"] = json!(p);
    }
    let answer = client.post("/api/v1/lines", &body).await?;
    if printer.json {
        printer.json_value(&answer)?;
        return Ok(ExitStatus::Success);
    }
    let what = answer["function"]
        .as_str()
        .map(|f| format!("{f} in {}", answer["file"].as_str().unwrap_or("?")))
        .unwrap_or_else(|| answer["file"].as_str().unwrap_or("?").to_owned());
    printer.line(format!("{what} (pid {}, as loaded)", answer["pid"]))?;
    if let Some(note) = answer["note"].as_str() {
        printer.note(format!("note: {note}"));
    }
    if a.var.is_none() {
        show_table(printer, &answer["lines"], &["line", "function", "source"])?;
        return Ok(ExitStatus::Success);
    }
    printer.line(format!("bound ({}):", a.var.as_deref().unwrap_or("")))?;
    show_table(
        printer,
        &answer["bindings"],
        &["line", "after_line", "how", "function", "scope", "source"],
    )?;
    printer.line("read:")?;
    show_table(
        printer,
        &answer["reads"],
        &["line", "function", "scope", "source"],
    )?;
    if let Some(h) = answer["hint"].as_str() {
        printer.note(h);
    }
    Ok(ExitStatus::Success)
}

/// Prints the chosen `columns` of a `{columns, rows, total, truncated}` table.
fn show_table(printer: &mut Printer, t: &Value, columns: &[&str]) -> std::io::Result<()> {
    let all: Vec<&str> = t["columns"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let idx: Vec<Option<usize>> = columns
        .iter()
        .map(|c| all.iter().position(|a| a == c))
        .collect();
    let rows: Vec<Vec<String>> = t["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    idx.iter()
                        .map(|i| match i.and_then(|i| r.get(i)) {
                            Some(Value::String(s)) => s.clone(),
                            Some(Value::Null) | None => "-".into(),
                            Some(v) => v.to_string(),
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return printer.line("  (none)");
    }
    let header: Vec<&str> = columns
        .iter()
        .map(|c| if *c == "after_line" { "after" } else { c })
        .collect();
    for line in table(&header, &rows) {
        printer.line(format!("  {line}"))?;
    }
    if t["truncated"] == true {
        printer.note(format!(
            "(showing {} of {}; --limit shows more)",
            rows.len(),
            t["total"]
        ));
    }
    Ok(())
}
