//! `scry wake` and `scry sleep`: a name means every process registered under it (the workers of
//! a service share one), `--pid` narrows it to one.

use scry_api::{ProcessFailure, Slept, WakeTarget, Woken};
use scry_daemon::Home;

use super::CmdResult;
use crate::cli::TargetArgs;
use crate::client::DaemonClient;
use crate::error::ExitStatus;
use crate::printer::Printer;

/// Wakes embedded clients through the daemon.
pub async fn wake(home: &Home, args: &TargetArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let answer: Woken = client.post_as("/api/v1/wake", &target(args)).await?;
    if printer.json {
        printer.json_value(&answer)?;
    } else {
        for line in woken_lines(&args.target, &answer) {
            printer.line(line)?;
        }
    }
    Ok(report_failures(printer, "wake", &answer.failed))
}

/// Puts awake agents to sleep through the daemon.
pub async fn sleep(home: &Home, args: &TargetArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let answer: Slept = client.post_as("/api/v1/sleep", &target(args)).await?;
    if printer.json {
        printer.json_value(&answer)?;
    } else {
        for line in slept_lines(&args.target, &answer) {
            printer.line(line)?;
        }
    }
    Ok(report_failures(printer, "put to sleep", &answer.failed))
}

fn target(args: &TargetArgs) -> WakeTarget {
    WakeTarget {
        target: args.target.clone().into(),
        pid: args.pid,
    }
}

/// Says on stderr which processes failed; any failure fails the command.
fn report_failures(printer: &mut Printer, verb: &str, failed: &[ProcessFailure]) -> ExitStatus {
    for f in failed {
        printer.note(format!(
            "error: could not {verb} pid {}: {}",
            f.pid, f.error.message
        ));
        if let Some(hint) = &f.error.hint {
            printer.note(format!("hint: {hint}"));
        }
    }
    if failed.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    }
}

fn pids(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| format!("pid {p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn processes(n: usize) -> String {
    if n == 1 {
        "1 process".into()
    } else {
        format!("{n} processes")
    }
}

/// What `scry wake` says: one process by its name and pid, several by count and pids.
fn woken_lines(target: &str, answer: &Woken) -> Vec<String> {
    if let [one] = answer.processes.as_slice() {
        let name = one.process.name.as_deref().unwrap_or("unnamed");
        let pid = one.process.pid;
        return vec![if one.already_awake {
            format!("{name} (pid {pid}) is already awake")
        } else {
            format!("{name} (pid {pid}) is awake and connected")
        }];
    }
    let (already, woke): (Vec<_>, Vec<_>) = answer.processes.iter().partition(|p| p.already_awake);
    let woke: Vec<u32> = woke.iter().map(|p| p.process.pid).collect();
    let already: Vec<u32> = already.iter().map(|p| p.process.pid).collect();
    let mut out = Vec::new();
    if !woke.is_empty() {
        out.push(format!(
            "woke {} named {target}: {}",
            processes(woke.len()),
            pids(&woke)
        ));
    }
    if !already.is_empty() {
        let verb = if already.len() == 1 { "was" } else { "were" };
        out.push(format!(
            "{} named {target} {verb} already awake: {}",
            processes(already.len()),
            pids(&already)
        ));
    }
    out
}

/// What `scry sleep` says: one process by its pid, several by count and pids.
fn slept_lines(target: &str, answer: &Slept) -> Vec<String> {
    if let [one] = answer.processes.as_slice() {
        let pid = one.pid;
        return vec![if one.already_sleeping {
            format!("pid {pid} is already sleeping")
        } else {
            format!("pid {pid} is asleep: hooks removed, connection closed")
        }];
    }
    let (already, slept): (Vec<_>, Vec<_>) =
        answer.processes.iter().partition(|p| p.already_sleeping);
    let slept: Vec<u32> = slept.iter().map(|p| p.pid).collect();
    let already: Vec<u32> = already.iter().map(|p| p.pid).collect();
    let mut out = Vec::new();
    if !slept.is_empty() {
        out.push(format!(
            "put {} named {target} to sleep: {} (hooks removed, connections closed)",
            processes(slept.len()),
            pids(&slept)
        ));
    }
    if !already.is_empty() {
        let verb = if already.len() == 1 { "was" } else { "were" };
        out.push(format!(
            "{} named {target} {verb} already sleeping: {}",
            processes(already.len()),
            pids(&already)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use scry_api::{SleptProcess, WokenProcess};

    fn view(pid: u32) -> scry_api::ProcessView {
        serde_json::from_value(serde_json::json!({
            "id": 1, "key": format!("h:{pid}:1"), "pid": pid, "ppid": 1, "host": "h",
            "name": "shop", "python_version": "3.11", "executable": "python3", "argv": [],
            "cwd": "/", "origin": "embedded", "state": "awake", "first_seen": 0.0,
            "last_heard": 0.0,
        }))
        .expect("a process view")
    }

    fn woken(list: &[(u32, bool)]) -> Woken {
        let processes: Vec<WokenProcess> = list
            .iter()
            .map(|&(pid, already_awake)| WokenProcess {
                already_awake,
                process: view(pid),
            })
            .collect();
        Woken {
            already_awake: processes.iter().all(|p| p.already_awake),
            process: processes[0].process.clone(),
            processes,
            failed: Vec::new(),
        }
    }

    #[test]
    fn one_process_is_named_and_several_are_counted_with_their_pids() {
        assert_eq!(
            woken_lines("shop", &woken(&[(10, false)])),
            ["shop (pid 10) is awake and connected"]
        );
        assert_eq!(
            woken_lines("shop", &woken(&[(10, false), (11, false)])),
            ["woke 2 processes named shop: pid 10, pid 11"]
        );
        assert_eq!(
            woken_lines("shop", &woken(&[(10, true), (11, false), (12, true)])),
            [
                "woke 1 process named shop: pid 11",
                "2 processes named shop were already awake: pid 10, pid 12"
            ]
        );
    }

    #[test]
    fn sleeping_several_says_each_pid() {
        let slept = |list: &[(u32, bool)]| {
            let processes: Vec<SleptProcess> = list
                .iter()
                .map(|&(pid, already_sleeping)| SleptProcess {
                    pid,
                    name: Some("shop".into()),
                    already_sleeping,
                })
                .collect();
            Slept {
                already_sleeping: processes.iter().all(|p| p.already_sleeping),
                pid: processes[0].pid,
                processes,
                failed: Vec::new(),
            }
        };
        assert_eq!(
            slept_lines("shop", &slept(&[(10, false)])),
            ["pid 10 is asleep: hooks removed, connection closed"]
        );
        assert_eq!(
            slept_lines("shop", &slept(&[(10, false), (11, true)])),
            [
                "put 1 process named shop to sleep: pid 10 (hooks removed, connections closed)",
                "1 process named shop was already sleeping: pid 11"
            ]
        );
    }
}
