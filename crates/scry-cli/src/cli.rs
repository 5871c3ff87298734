//! The command-line grammar (clap types only; no behaviour here).

use clap::{Args, Parser, Subcommand};

/// scry: debug-on-demand observability for live Python processes and process trees.
#[derive(Debug, Parser)]
#[command(name = "scry", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  scry demo                 start a sample service and watch it (the quickest tour)
  scry ps                   processes scry knows: awake agents and sleeping clients
  scry wake checkout        wake the embedded client named `checkout`
  scry status --json        the daemon's state, for scripts

Environment: SCRY_HOME (default ~/.scry), SCRY_DAEMON (daemon URL), SCRY_LOG (e.g. daemon=debug)";

/// Options shared by commands that print data.
#[derive(Debug, Clone, Copy, Args)]
pub struct Output {
    /// Print JSON instead of text (one document on stdout).
    #[arg(long)]
    pub json: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (in the foreground unless --daemon).
    #[command(
        after_help = "Examples:\n  scry serve --daemon        start it in the background\n  scry serve --port 7400     serve HTTP on 127.0.0.1:7400"
    )]
    Serve(ServeArgs),
    /// Stop the running daemon.
    #[command(after_help = "Example:\n  scry stop")]
    Stop(Output),
    /// Is the daemon up? Its version, uptime, processes, probes and events stored.
    #[command(after_help = "Examples:\n  scry status\n  scry status --json | jq .events_stored")]
    Status(Output),
    /// List the processes scry knows (awake agents, sleeping embedded clients, recently gone).
    #[command(after_help = "Examples:\n  scry ps\n  scry ps --gone --json")]
    Ps(PsArgs),
    /// Wake an embedded client: it connects to the daemon and can be observed.
    #[command(after_help = "Examples:\n  scry wake checkout\n  scry wake 4242")]
    Wake(TargetArgs),
    /// Put an awake agent back to sleep: every hook removed, connection closed.
    #[command(after_help = "Examples:\n  scry sleep checkout\n  scry sleep 4242")]
    Sleep(TargetArgs),
    /// Start a sample service, wake it, and show what scry sees.
    #[command(
        after_help = "Examples:\n  scry demo          start (or reuse) the sample service and wake it\n  scry demo --stop   stop the sample service"
    )]
    Demo(DemoArgs),
}

/// `scry serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Detach: run in the background, log to $SCRY_HOME/daemon.log.
    #[arg(long)]
    pub daemon: bool,
    /// HTTP port on 127.0.0.1 (0 picks a free one); overrides http.addr of config.toml.
    #[arg(long, conflicts_with = "http")]
    pub port: Option<u16>,
    /// HTTP address (HOST:PORT); non-loopback callers will need the token.
    #[arg(long)]
    pub http: Option<String>,
    /// Also accept agents over TCP at HOST:PORT (they must present the token).
    #[arg(long)]
    pub agent_tcp: Option<String>,
    #[command(flatten)]
    pub output: Output,
}

/// `scry ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Include every gone process, not only those of the last 15 minutes.
    #[arg(long)]
    pub gone: bool,
    #[command(flatten)]
    pub output: Output,
}

/// A process named by pid or by name.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// A pid, or the name given to `scry.init(name=...)` / SCRY_NAME.
    pub target: String,
    #[command(flatten)]
    pub output: Output,
}

/// `scry demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop the sample service instead of starting it.
    #[arg(long)]
    pub stop: bool,
    /// The Python interpreter to run the sample service with.
    #[arg(long, default_value = "python3")]
    pub python: String,
    #[command(flatten)]
    pub output: Output,
}
