//! The `scry` binary: argument parsing and presentation only. The work is done by
//! `scry-daemon` (and the crates below it); this crate turns arguments into calls and results
//! into text or JSON.

mod cli;
mod client;
mod commands;
mod error;
mod logsink;
mod printer;
mod ready_pipe;
mod render;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};
use error::{CliError, ExitStatus};
use printer::Printer;
use scry_daemon::Home;

/// Logs through a [`logsink::LogSink`]: to `log_file` when given (a `--daemon` daemon, rotated),
/// else to stderr; rate-limited per call site and never fatal when the write fails.
fn init_logging(default: &str, log_file: Option<&std::path::Path>) {
    let spec =
        scry_daemon::env::var(scry_daemon::env::SCRY_LOG).unwrap_or_else(|| default.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let sink = match log_file {
        Some(path) => logsink::LogSink::file(path, logsink::MAX_LOG_BYTES),
        None => logsink::LogSink::stderr(),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        // Its fallback is `eprintln!`, which panics when stderr cannot be written (full disk).
        .log_internal_errors(false)
        .with_ansi(
            log_file.is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr())
                && scry_daemon::env::var("NO_COLOR").is_none(),
        )
        .with_target(true)
        .try_init();
}

fn json_flag(cmd: &Command) -> bool {
    match cmd {
        Command::Serve(a) => a.output.json,
        Command::Stop(a) => a.output.json,
        Command::Status(o) => o.json,
        Command::Ps(a) => a.output.json,
        Command::Wake(a) | Command::Sleep(a) => a.output.json,
        Command::Demo(a) => a.output.json,
        Command::Dump(a) => a.output.json,
        Command::Dumps(a) => a.output.json,
        Command::Trace(c) => commands::trace::json_flag(c),
        Command::Reap(a) => a.output.json,
        Command::Top(_) => false,
        Command::Attach(a) => a.output.json,
        Command::Detach(a) => a.output.json,
        Command::Lines(a) => a.output.json,
        Command::Debug(a) => a.output.json,
        Command::Run(_) | Command::Repl(_) => false,
        Command::Mcp => false,
        Command::Logs(a) => a.output.json,
        Command::Ui(a) => a.output.json,
        Command::Probe(p) => match p {
            cli::ProbeCmd::Add(a) => a.output.json,
            cli::ProbeCmd::List(o) => o.json,
            cli::ProbeCmd::Show(s) => s.output.json,
            cli::ProbeCmd::Rm(k) | cli::ProbeCmd::Enable(k) | cli::ProbeCmd::Disable(k) => {
                k.output.json
            }
        },
        Command::Events(e) => match &e.sub {
            Some(cli::EventsSub::Stats(s)) => s.output.json,
            Some(cli::EventsSub::Wait(w)) => w.output.json,
            None => e.query.output.json,
        },
    }
}

fn run(cli: Cli, printer: &mut Printer) -> Result<ExitStatus, CliError> {
    let home = Home::from_env();
    if let Command::Serve(args) = &cli.command {
        // py-spy (and the crates under it) log an INFO line for every stack read: at info the
        // daemon's log would fill with them on every dump. SCRY_LOG still turns them on.
        init_logging(
            "info,py_spy=warn,remoteprocess=warn",
            args.log_file.as_deref(),
        );
        return commands::serve::serve(&home, args, printer);
    }
    init_logging("warn", None);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        match &cli.command {
            Command::Serve(_) => unreachable!("handled above"),
            Command::Dump(a) => commands::dump::dump(&home, a, printer).await,
            Command::Dumps(a) => commands::dump::dumps(&home, a, printer).await,
            Command::Trace(c) => commands::trace::trace(&home, c, printer).await,
            Command::Reap(a) => commands::reap::reap(a, printer),
            Command::Top(a) => commands::top::top(&home, a, printer).await,
            Command::Stop(a) => commands::serve::stop(&home, a, printer).await,
            Command::Status(_) => commands::status::status(&home, printer).await,
            Command::Ps(a) => commands::ps::ps(&home, a, printer).await,
            Command::Wake(a) => commands::wake::wake(&home, a, printer).await,
            Command::Sleep(a) => commands::wake::sleep(&home, a, printer).await,
            Command::Demo(a) => commands::demo::demo(&home, a, printer).await,
            Command::Probe(p) => commands::probe::probe(&home, p, printer).await,
            Command::Events(e) => commands::events::events(&home, e, printer).await,
            Command::Logs(a) => commands::logs::logs(&home, a, printer).await,
            Command::Attach(a) => commands::attach::attach(&home, a, printer).await,
            Command::Detach(a) => commands::attach::detach(&home, a, printer).await,
            Command::Lines(a) => commands::lines::lines(&home, a, printer).await,
            Command::Debug(a) => commands::debug::debug(&home, a, printer).await,
            Command::Mcp => commands::mcp::mcp(&home, printer).await,
            Command::Ui(a) => commands::ui::ui(&home, a, printer).await,
            Command::Run(_) | Command::Repl(_) => unreachable!("handled in run_with_status"),
        }
    })
}

/// `scry run` and `scry repl` exit with the status of what they ran.
fn run_with_status(cli: &Cli, printer: &mut Printer) -> Option<ExitCode> {
    let home = Home::from_env();
    init_logging("warn", None);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            printer.note(format!("error: cannot start the async runtime: {e}"));
            return Some(ExitCode::FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Run(a) => Some(commands::run::run(&home, a, printer).await),
            Command::Repl(a) => Some(commands::run::repl(&home, a, printer).await),
            _ => None,
        }
    })?;
    Some(match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            printer.note(e.render());
            ExitCode::FAILURE
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut printer = Printer::stdio(json_flag(&cli.command));
    if matches!(cli.command, Command::Run(_) | Command::Repl(_)) {
        if let Some(code) = run_with_status(&cli, &mut printer) {
            return code;
        }
    }
    match run(cli, &mut printer) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) if e.message.contains("Broken pipe") => ExitCode::SUCCESS,
        Err(e) => {
            printer.note(e.render());
            ExitCode::from(e.status as u8)
        }
    }
}
