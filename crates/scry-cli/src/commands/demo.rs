//! `scry demo`: the quickest tour. Starts a small bundled sample service (a Python program
//! that keeps processing orders and embeds the scry client), wakes it, shows it in `ps`, and
//! says what to try next.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scry_api::{Event, EventPage, NewProbe, ProbeView, WakeTarget, Woken};
use scry_daemon::{bundle, clients, Home};
use serde_json::json;

use super::CmdResult;
use crate::cli::{DemoArgs, PsArgs};
use crate::client::{enc, open_log, spawn_detached, DaemonClient};
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
    let ps_args = PsArgs {
        gone: false,
        tree: None,
        all: false,
        output: crate::cli::Output { json: false },
    };
    if !printer.json {
        printer.line(format!("1. the sample service `{DEMO_NAME}` runs as pid {pid}; it embeds `scry.init()` and sleeps at zero cost:"))?;
        super::ps::ps(home, &ps_args, printer).await?;
        printer.line("")?;
    }
    let woke: Woken = client
        .post_as(
            "/api/v1/wake",
            &WakeTarget {
                target: pid.into(),
                pid: None,
            },
        )
        .await?;
    if !printer.json {
        printer.line(format!(
            "2. `scry wake {DEMO_NAME}` connected it to the daemon:"
        ))?;
        super::ps::ps(home, &ps_args, printer).await?;
        printer.line("")?;
    }
    let (location, probe) = ensure_probe(&client, pid).await?;
    let events = watch(&client, &probe, printer, &location).await?;
    if printer.json {
        let procs: scry_api::ProcessList = client.get_as("/api/v1/processes").await?;
        printer.json_value(&json!({
            "demo_pid": pid, "wake": woke, "processes": procs.processes,
            "probe": probe, "events": events,
        }))?;
        return Ok(ExitStatus::Success);
    }
    printer.line("")?;
    printer.line("Try next:")?;
    let steps = [
        (
            format!("scry events --probe {DEMO_PROBE} --follow"),
            "values as the line runs (ctrl-c stops)",
        ),
        (
            format!("scry events stats {DEMO_PROBE}"),
            "count, min, max, mean, percentiles of each value",
        ),
        (
            "scry probe list".to_owned(),
            "probes, where they are armed, their counters",
        ),
        (
            format!("scry probe rm {DEMO_PROBE}"),
            "remove the probe: every hook goes with it",
        ),
        ("scry ps".to_owned(), "every process scry knows"),
        (
            format!("scry sleep {DEMO_NAME}"),
            "detach: every hook removed, the process runs as before",
        ),
        (format!("scry wake {DEMO_NAME}"), "connect it again"),
        (
            "scry status".to_owned(),
            "the daemon: uptime, processes, events stored",
        ),
        ("scry demo --stop".to_owned(), "stop the sample service"),
        ("scry stop".to_owned(), "stop the daemon"),
    ];
    for (cmd, what) in steps {
        printer.line(format!("  {cmd:<42} {what}"))?;
    }
    Ok(ExitStatus::Success)
}

/// The name of the probe the demo adds.
pub const DEMO_PROBE: &str = "demo-totals";

/// Adds the demo's probe (once) on the line of the sample service where an order's total is
/// known, and returns its location and description.
async fn ensure_probe(client: &DaemonClient, pid: u32) -> Result<(String, ProbeView), CliError> {
    let source = bundle::file("scry_demo.py").unwrap_or_default();
    let line = source
        .lines()
        .position(|l| l.trim() == "return order.total")
        .map(|i| i + 1)
        .ok_or_else(|| {
            CliError::new("the bundled sample service has no `return order.total` line")
        })?;
    let location = format!("scry_demo.py:{line}");
    let probes = client.probes().await?;
    if let Some(p) = probes
        .probes
        .into_iter()
        .find(|p| p.def.spec.name.as_deref() == Some(DEMO_PROBE))
    {
        return Ok((location, p));
    }
    let expressions = [
        "order.id",
        "order.customer",
        "len(order.items)",
        "order.total",
    ];
    let probe = client
        .add_probe(&NewProbe {
            location: location.clone(),
            name: Some(DEMO_PROBE.to_owned()),
            pid: Some(pid),
            expressions: expressions.map(str::to_owned).to_vec(),
            ..NewProbe::default()
        })
        .await?;
    Ok((location, probe))
}

/// Prints the probe's events for a few seconds and returns them.
async fn watch(
    client: &DaemonClient,
    probe: &ProbeView,
    printer: &mut Printer,
    location: &str,
) -> Result<Vec<Event>, CliError> {
    let id = enc(&probe.def.spec.id);
    if !printer.json {
        printer.line(format!("3. `scry probe add {location} 'order.id' 'order.customer' 'len(order.items)' 'order.total' --name {DEMO_PROBE}`"))?;
        printer.line(
            "   captures typed values each time the line runs, without pausing the service:",
        )?;
    }
    let start: EventPage = client
        .get_as(&format!("/api/v1/events?probe={id}&limit=1&order=newest"))
        .await?;
    let mut last_id = start.events.first().map_or(0, |e| e.id);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline && seen.len() < 8 {
        let page: EventPage = client
            .get_as(&format!(
                "/api/v1/events?probe={id}&after_id={last_id}&limit=100&order=oldest"
            ))
            .await?;
        for e in page.events {
            last_id = last_id.max(e.id);
            if seen.len() < 8 {
                if !printer.json {
                    for line in crate::render::event_lines(&e) {
                        printer.line(format!("   {line}"))?;
                    }
                }
                seen.push(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if seen.is_empty() && !printer.json {
        printer.line("   (no hits yet: `scry probe list` shows the probe's state)")?;
    }
    Ok(seen)
}

fn start_service(home: &Home, python: &str, printer: &mut Printer) -> Result<u32, CliError> {
    let agent_dir = bundle::unpack(home).map_err(CliError::from_daemon)?;
    let log_path = home.root().join("demo.log");
    let (log, log_err) = open_log(&log_path)?;
    let mut pythonpath = agent_dir.display().to_string();
    if let Some(old) = std::env::var_os("PYTHONPATH").filter(|v| !v.is_empty()) {
        pythonpath = format!("{pythonpath}:{}", old.to_string_lossy());
    }
    let mut cmd = Command::new(python);
    cmd.args(["-m", "scry_demo"])
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
