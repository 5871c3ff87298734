//! One module per subcommand. Each takes its parsed arguments and a [`Printer`] and returns
//! the exit status or a [`CliError`].

pub mod attach;
pub mod debug;
pub mod demo;
pub mod dump;
pub mod events;
pub mod lines;
pub mod logs;
pub mod mcp;
pub mod probe;
pub mod ps;
pub mod reap;
pub mod run;
pub mod serve;
pub mod status;
pub mod top;
pub mod trace;
pub mod trace_export;
pub mod ui;
pub mod wake;

use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;

/// What every command returns.
pub type CmdResult = Result<ExitStatus, CliError>;

/// A short age such as `12s`, `3m`, `2h`, `4d`.
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        format!("{}s", s as u64)
    } else if s < 3600.0 {
        format!("{}m", (s / 60.0) as u64)
    } else if s < 86400.0 {
        format!("{}h", (s / 3600.0) as u64)
    } else {
        format!("{}d", (s / 86400.0) as u64)
    }
}

/// Prints `value` as JSON when asked, else runs `text`.
pub fn emit(
    printer: &mut Printer,
    value: &impl serde::Serialize,
    text: impl FnOnce(&mut Printer) -> std::io::Result<()>,
) -> CmdResult {
    if printer.json {
        printer.json_value(value)?;
    } else {
        text(printer)?;
    }
    Ok(ExitStatus::Success)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages() {
        assert_eq!(super::age(5.2), "5s");
        assert_eq!(super::age(125.0), "2m");
        assert_eq!(super::age(7300.0), "2h");
        assert_eq!(super::age(-3.0), "0s");
    }
}
