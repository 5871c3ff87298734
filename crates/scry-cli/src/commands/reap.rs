//! `scry reap`: presents what `scry_proc::reap` does (collect a tree or orphans, confirm,
//! signal step by step) and reports which step ended each process.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use scry_proc::reap::{self, Outcome, ReapError, ReapReport, ReapReporter, Step, Target};

use super::CmdResult;
use crate::cli::ReapArgs;
use crate::error::{CliError, ExitStatus};
use crate::printer::{table, Printer};

/// Collects the processes, shows or confirms them, and reaps them.
pub fn reap(args: &ReapArgs, printer: &mut Printer) -> CmdResult {
    if !(args.grace.is_finite() && args.grace >= 0.0) {
        return Err(CliError::new(format!(
            "invalid --grace {}: expected seconds, 0 or more",
            args.grace
        )));
    }
    let targets = match (&args.orphans, args.pid) {
        (Some(pattern), _) => reap::orphans(pattern).map_err(reap_error)?,
        (None, Some(pid)) => reap::tree(pid).map_err(reap_error)?,
        (None, None) => return Err(CliError::new("give a PID or --orphans PATTERN")),
    };
    if args.dry_run {
        return dry_run(&targets, printer);
    }
    if targets.is_empty() {
        printer.note("scry: no orphaned process matches; nothing to reap");
        if printer.json {
            printer.json_value(&ReapReport {
                grace_seconds: args.grace,
                processes: Vec::new(),
            })?;
        }
        return Ok(ExitStatus::Success);
    }
    if args.orphans.is_some() && !args.yes {
        confirm(&targets, printer)?;
    }
    let grace = Duration::from_secs_f64(args.grace);
    let report = if printer.json {
        reap::reap(&targets, grace, &mut reap::Silent)
    } else {
        let mut live = Live { printer };
        reap::reap(&targets, grace, &mut live)
    };
    if printer.json {
        printer.json_value(&report)?;
    } else {
        let mut buf = Vec::new();
        render(&report, &mut buf)?;
        printer.line(String::from_utf8_lossy(&buf).trim_end())?;
    }
    Ok(if report.all_gone() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

/// Prints each step and each process as it ends.
struct Live<'a> {
    printer: &'a mut Printer,
}

impl ReapReporter for Live<'_> {
    fn step(&mut self, step: Step, pids: &[u32]) {
        let _ = self.printer.line(format!(
            "{} to {} process{}",
            step.name(),
            pids.len(),
            if pids.len() == 1 { "" } else { "es" }
        ));
    }

    fn outcome(&mut self, target: &Target, outcome: Outcome) {
        let _ = self.printer.line(format!(
            "  {} {}: {}",
            target.pid,
            target.comm,
            outcome_text(outcome)
        ));
    }
}

fn outcome_text(outcome: Outcome) -> String {
    match outcome {
        Outcome::AlreadyGone => "already gone".into(),
        Outcome::Ended(step) => format!("ended after {}", step.name()),
        Outcome::Survived => "still alive after SIGKILL".into(),
        Outcome::OtherUser => "left alone (another user's)".into(),
        Outcome::Refused => "signal refused (permission denied)".into(),
    }
}

fn command(t: &Target) -> String {
    if t.cmdline.is_empty() {
        format!("[{}]", t.comm)
    } else {
        t.cmdline.join(" ")
    }
}

fn rows(targets: &[Target]) -> Vec<String> {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            vec![
                t.pid.to_string(),
                t.ppid.to_string(),
                format!("{}{}", "  ".repeat(t.depth as usize), command(t)),
            ]
        })
        .collect();
    table(&["PID", "PPID", "COMMAND"], &rows)
}

fn dry_run(targets: &[Target], printer: &mut Printer) -> CmdResult {
    if printer.json {
        printer.json_value(&serde_json::json!({ "dry_run": true, "processes": targets }))?;
    } else if targets.is_empty() {
        printer.line("no process matches; nothing would be reaped")?;
    } else {
        printer.line(format!(
            "would reap {} process{} (SIGINT, then SIGTERM, then SIGKILL):",
            targets.len(),
            if targets.len() == 1 { "" } else { "es" }
        ))?;
        for line in rows(targets) {
            printer.line(line)?;
        }
    }
    Ok(ExitStatus::Success)
}

/// Shows the orphans and asks on the terminal; without a terminal, `--yes` is required.
fn confirm(targets: &[Target], printer: &mut Printer) -> Result<(), CliError> {
    let mut text = format!(
        "scry: these {} orphaned process{} match:",
        targets.len(),
        if targets.len() == 1 { "" } else { "es" }
    );
    for line in rows(targets) {
        text.push_str("\n  ");
        text.push_str(&line);
    }
    printer.note(text);
    if !std::io::stdin().is_terminal() {
        return Err(CliError::new(
            "not reaping orphans without confirmation (stdin is not a terminal)",
        )
        .hint("check the list with --dry-run, then pass --yes"));
    }
    printer.note("reap them? [y/N]");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::new("not confirmed: nothing was reaped"))
    }
}

/// The final report: one line per process with the step that ended it.
pub fn render(report: &ReapReport, mut w: impl Write) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = report
        .processes
        .iter()
        .map(|e| {
            vec![
                e.target.pid.to_string(),
                match e.outcome {
                    Outcome::Ended(step) => step.name().to_owned(),
                    Outcome::AlreadyGone => "gone".into(),
                    Outcome::Survived => "SURVIVED".into(),
                    Outcome::OtherUser => "other-user".into(),
                    Outcome::Refused => "refused".into(),
                },
                format!(
                    "{}{}",
                    "  ".repeat(e.target.depth as usize),
                    command(&e.target)
                ),
            ]
        })
        .collect();
    writeln!(w)?;
    for line in table(&["PID", "ENDED BY", "COMMAND"], &rows) {
        writeln!(w, "{line}")?;
    }
    Ok(())
}

fn reap_error(e: ReapError) -> CliError {
    let hint = match &e {
        ReapError::NoSuchProcess { .. } => {
            Some("list processes with `scry ps --tree 1` or `ps -ef`")
        }
        ReapError::OtherUser { .. } => Some("scry reap only ends your own processes"),
        ReapError::EmptyPattern => {
            Some("give part of the orphans' command line, e.g. `--orphans worker.py`")
        }
        _ => None,
    };
    let err = CliError::new(e.to_string());
    match hint {
        Some(h) => err.hint(h),
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_step_that_ended_each_process() {
        let t = |pid, depth, cmd: &str| Target {
            pid,
            ppid: 1,
            depth,
            comm: "python3".into(),
            cmdline: cmd.split(' ').map(str::to_owned).collect(),
            start_ticks: 0,
            uid: 0,
        };
        let report = ReapReport {
            grace_seconds: 3.0,
            processes: vec![
                reap::ReapEntry {
                    target: t(10, 0, "python3 main.py"),
                    outcome: Outcome::Ended(Step::Sigint),
                },
                reap::ReapEntry {
                    target: t(11, 1, "python3 stubborn.py"),
                    outcome: Outcome::Ended(Step::Sigkill),
                },
                reap::ReapEntry {
                    target: t(12, 1, "sleep 5"),
                    outcome: Outcome::AlreadyGone,
                },
            ],
        };
        let mut buf = Vec::new();
        render(&report, &mut buf).expect("render");
        let text = String::from_utf8(buf).expect("utf-8");
        assert_eq!(
            text,
            "\nPID  ENDED BY  COMMAND\n10   SIGINT    python3 main.py\n11   SIGKILL     python3 stubborn.py\n12   gone        sleep 5\n"
        );
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["processes"][1]["outcome"], "ended");
        assert_eq!(json["processes"][1]["step"], "sigkill");
        assert_eq!(json["processes"][2]["outcome"], "already_gone");
    }
}
