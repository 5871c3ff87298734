//! `scry demo`: the quickest tour. Starts a small bundled sample service (a Python program
//! that keeps processing orders and embeds the scry client), wakes it, shows it in `ps`, and
//! says what to try next.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scry_daemon::{bundle, clients, Home};
use serde_json::json;

use super::CmdResult;
use crate::cli::{DemoArgs, PsArgs};
use crate::client::{spawn_detached, DaemonClient};
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;

/// The name the sample service registers under.
pub const DEMO_NAME: &str = "scry-demo";

fn demo_pid(home: &Home) -> Option<u32> {
    clients::discover(home)
        .into_iter()
        .find(|c| c.name.as_deref() == Some(DEMO_NAME))
        .map(|c| c.pid)
}

/// Runs the demo.
pub async fn demo(home: &Home, args: &DemoArgs, printer: &mut Printer) -> CmdResult {
    if args.stop {
        return stop(home, printer).await;
    }
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;

    let pid = match demo_pid(home) {
        Some(pid) => {
            printer.note(format!(
                "scry: the sample service is already running (pid {pid})"
            ));
            pid
        }
        None => start_service(home, &args.python, printer)?,
    };
    if !printer.json {
        printer.line(format!("1. the sample service `{DEMO_NAME}` runs as pid {pid}; it embeds `scry.init()` and sleeps at zero cost:"))?;
        let mut quiet = Printer::stdio(false);
        super::ps::ps(
            home,
            &PsArgs {
                gone: false,
                output: crate::cli::Output { json: false },
            },
            &mut quiet,
        )
        .await?;
        printer.line("")?;
    }
    let woke = client.post("/api/v1/wake", &json!({"target": pid})).await?;
    if printer.json {
        let procs = client.get("/api/v1/processes").await?;
        printer
            .json_value(&json!({"demo_pid": pid, "wake": woke, "processes": procs["processes"]}))?;
        return Ok(ExitStatus::Success);
    }
    printer.line(format!(
        "2. `scry wake {DEMO_NAME}` connected it to the daemon:"
    ))?;
    let mut quiet = Printer::stdio(false);
    super::ps::ps(
        home,
        &PsArgs {
            gone: false,
            output: crate::cli::Output { json: false },
        },
        &mut quiet,
    )
    .await?;
    printer.line("")?;
    printer.line("Try next:")?;
    for (cmd, what) in [
        ("scry ps", "every process scry knows"),
        (
            &format!("scry sleep {DEMO_NAME}") as &str,
            "detach: every hook removed, the process runs as before",
        ),
        (&format!("scry wake {DEMO_NAME}"), "connect it again"),
        (
            "scry status",
            "the daemon: uptime, processes, events stored",
        ),
        ("scry demo --stop", "stop the sample service"),
        ("scry stop", "stop the daemon"),
    ] {
        printer.line(format!("  {cmd:<24} {what}"))?;
    }
    Ok(ExitStatus::Success)
}

fn start_service(home: &Home, python: &str, printer: &mut Printer) -> Result<u32, CliError> {
    let agent_dir = bundle::unpack(home).map_err(CliError::from_daemon)?;
    let log_path = home.root().join("demo.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| CliError::new(format!("cannot open {}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| CliError::new(format!("cannot open {}: {e}", log_path.display())))?;
    let mut pythonpath = agent_dir.display().to_string();
    if let Some(old) = std::env::var_os("PYTHONPATH").filter(|v| !v.is_empty()) {
        pythonpath = format!("{pythonpath}:{}", old.to_string_lossy());
    }
    let mut cmd = Command::new(python);
    cmd.args(["-m", "scry._demo"])
        .env("PYTHONPATH", pythonpath)
        .env(scry_daemon::env::SCRY_HOME, home.root())
        .env(scry_daemon::env::SCRY_NAME, DEMO_NAME)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    spawn_detached(&mut cmd).map_err(|e| {
        CliError::new(format!("cannot run `{python}`: {e}"))
            .hint("the demo needs Python 3.8+; install python3, or name an interpreter with `scry demo --python PATH`")
    })?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(pid) = demo_pid(home) {
            printer.note(format!(
                "scry: started the sample service (pid {pid}, log {})",
                log_path.display()
            ));
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(
        CliError::new("the sample service did not start within 15 s")
            .hint(format!("its output is in {}", log_path.display())),
    )
}

async fn stop(home: &Home, printer: &mut Printer) -> CmdResult {
    let Some(pid) = demo_pid(home) else {
        if printer.json {
            printer.json_value(&json!({"stopped": false}))?;
        } else {
            printer.line("the sample service is not running")?;
        }
        return Ok(ExitStatus::Success);
    };
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while scry_proc::alive(pid, None) {
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if printer.json {
        printer.json_value(&json!({"stopped": true, "pid": pid}))?;
    } else {
        printer.line(format!("stopped the sample service (pid {pid})"))?;
    }
    Ok(ExitStatus::Success)
}
