//! `scry lines TARGET [--var NAME]`: where to probe, as the target process sees its code.

use scry_api::{FoundLines, LineTable, LinesRequest};
use scry_daemon::Home;
use serde_json::Value;

use super::CmdResult;
use crate::cli::LinesArgs;
use crate::client::DaemonClient;
use crate::error::ExitStatus;
use crate::printer::{table, Printer};

/// Runs `scry lines`.
pub async fn lines(home: &Home, a: &LinesArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let request = LinesRequest {
        target: a.target.clone(),
        var: a.var.clone(),
        pid: a.pid,
        limit: Some(a.limit),
    };
    let found: FoundLines = client.post_as("/api/v1/lines", &request).await?;
    if printer.json {
        printer.json_value(&found)?;
        return Ok(ExitStatus::Success);
    }
    let what = match &found.function {
        Some(f) => format!("{f} in {}", found.file),
        None => found.file.clone(),
    };
    printer.line(format!("{what} (pid {}, as loaded)", found.pid))?;
    if let Some(note) = &found.note {
        printer.note(format!("note: {note}"));
    }
    if a.var.is_none() {
        show_table(printer, &found.lines, &["line", "function", "source"])?;
        return Ok(ExitStatus::Success);
    }
    let empty = LineTable::default();
    printer.line(format!("bound ({}):", a.var.as_deref().unwrap_or("")))?;
    show_table(
        printer,
        found.bindings.as_ref().unwrap_or(&empty),
        &["line", "after_line", "how", "function", "scope", "source"],
    )?;
    printer.line("read:")?;
    show_table(
        printer,
        found.reads.as_ref().unwrap_or(&empty),
        &["line", "function", "scope", "source"],
    )?;
    if let Some(h) = &found.hint {
        printer.note(h);
    }
    Ok(ExitStatus::Success)
}

/// Prints the chosen `columns` of a table.
fn show_table(printer: &mut Printer, t: &LineTable, columns: &[&str]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = t
        .rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|c| match t.cell(r, c) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => "-".into(),
                    Some(v) => v.to_string(),
                })
                .collect()
        })
        .collect();
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
    if t.truncated {
        printer.note(format!(
            "(showing {} of {}; --limit shows more)",
            rows.len(),
            t.total
        ));
    }
    Ok(())
}
