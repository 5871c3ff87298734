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
    /// Stop the running daemon (its injected agents and follows end with it).
    #[command(
        after_help = "Agents injected by `scry attach` detach when their daemon stops, and follows end. \
`scry stop` says how many first and asks on a terminal (--yes skips the question); the daemon \
saves them in $SCRY_HOME/restore.json, and `scry serve --restore` attaches them again.\n\n\
Examples:\n  scry stop\n  scry stop --yes"
    )]
    Stop(StopArgs),
    /// Is the daemon up? Its version, uptime, processes, probes and events stored.
    #[command(after_help = "Examples:\n  scry status\n  scry status --json | jq .events_stored")]
    Status(Output),
    /// List the processes scry knows (awake agents, sleeping embedded clients, recently gone).
    #[command(
        after_help = "Examples:\n  scry ps\n  scry ps --gone --json\n  scry ps --tree 4242       the tree under 4242, Python processes marked\n  scry ps --all             every Python process on this host, prepared or not"
    )]
    Ps(PsArgs),
    /// Wake an embedded client: it connects to the daemon and can be observed.
    #[command(
        after_help = "A name means every process registered under it (all the workers of a service).\n\nExamples:\n  scry wake checkout\n  scry wake checkout --pid 4242\n  scry wake 4242"
    )]
    Wake(TargetArgs),
    /// Put an awake agent back to sleep: every hook removed, connection closed.
    #[command(
        after_help = "A name means every process registered under it.\n\nExamples:\n  scry sleep checkout\n  scry sleep checkout --pid 4242\n  scry sleep 4242"
    )]
    Sleep(TargetArgs),
    /// Observation points on lines of running processes: add, list, remove, enable, disable.
    #[command(subcommand)]
    Probe(ProbeCmd),
    /// Captured events: query, follow live, or summarize.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  scry events --probe totals --since 5m\n  scry events --probe totals --where 'total>100' --order oldest\n  scry events --follow\n  scry events stats totals --since 1h\n  scry events wait totals --count 5 --timeout 30s"
    )]
    Events(EventsCmd),
    /// Log records of the agents and the daemon's own events, in one time-ordered view.
    #[command(
        after_help = "Each line: time, process name[pid], thread, level, message. Agents forward \
what their `scry` logger emits; the daemon adds its system events (connections, probes, errors).\n\n\
Examples:\n  scry logs --since 10m\n  scry logs --follow --level warn\n  scry logs --pid 4242 --json"
    )]
    Logs(LogsArgs),
    /// Open the web UI: processes, probes, live events and the live call-flow view.
    #[command(
        after_help = "Prints the UI's URL (starting the daemon if needed) and opens it in a browser \
when one is available ($BROWSER, else xdg-open on a desktop). When the daemon listens on a \
non-loopback address the URL carries the token after `#` (never sent to the server; the page \
keeps it for this tab).\n\n\
Examples:\n  scry ui\n  scry ui --no-open        only print the URL\n  scry ui --json           {\"url\", \"opened\", \"browser\"}"
    )]
    Ui(UiArgs),
    /// Start a sample service, wake it, and show what scry sees.
    #[command(
        after_help = "Examples:\n  scry demo          start (or reuse) the sample service and wake it\n  scry demo --stop   stop the sample service"
    )]
    Demo(DemoArgs),
    /// The Python stacks of every thread of a process (and its tree), read from outside.
    #[command(
        after_help = "Works on any process, hung ones too, with no preparation and no daemon: the \
stacks are read from the process's memory (it is paused only while read). Frames are shown \
innermost first (the running frame on top).\n\nExamples:\n  scry dump 4242\n  scry dump --tree 4242          every process below 4242 too, parent before child\n  scry dump --tree --json 4242 > dump.json\n  scry dump --locals --out incident.json 4242\n  scry dump shop                 every process named `shop` (with --json: {\"name\", \"dumps\": [...]})"
    )]
    Dump(DumpArgs),
    /// The stack dumps kept by the daemon (every `scry dump` taken while it runs), or one of them.
    #[command(
        after_help = "Examples:\n  scry dumps\n  scry dumps 3            show dump 3\n  scry dumps 3 --json"
    )]
    Dumps(DumpsArgs),
    /// End a process tree politely: SIGINT, wait, SIGTERM, wait, SIGKILL; says what ended when.
    #[command(
        after_help = "Every process of the tree (collected once, children included) is signalled \
at once at each step; each step waits up to --grace seconds for them to end. Processes of other \
users are never touched. --orphans PATTERN matches processes whose parent died (reparented to \
init or a subreaper; their process group's leader is gone) by a plain substring of their \
command line; they are listed and confirmed on a terminal (--yes skips the question).\n\n\
Examples:\n  scry reap 4242\n  scry reap 4242 --grace 10 --json\n  scry reap --orphans worker.py --dry-run\n  scry reap --orphans worker.py --yes"
    )]
    Reap(ReapArgs),
    /// The process tree under PID (or every Python process) refreshed live; `q` quits.
    #[command(
        after_help = "The columns of `scry ps --tree`: CPU % since the previous refresh, RSS, age, \
Python version, scry state and what each process waits on (state and kernel wait channel). \
Python processes are highlighted. q, Esc or ctrl-c quits.\n\nExamples:\n  scry top 4242\n  scry top                  every Python process\n  scry top 4242 --interval 0.5"
    )]
    Top(TopArgs),
    /// Find the line to probe: a file's or function's executable lines, and where a variable is
    /// bound and read, as loaded in the running process.
    #[command(
        after_help = "Asked in the target process: the answer comes from the code it has loaded \
(its line tables and the source it was compiled from), so it holds even when the file on disk \
was edited since (the answer then says so). For a binding, `after` is the first line at which \
the new value can be seen: probe there to capture it.\n\n\
Examples:\n  scry lines app/orders.py --pid 4242\n  scry lines orders:checkout --var total\n  \
scry lines orders:Cart.add --var self.total --json"
    )]
    Lines(LinesArgs),
    /// Start debugpy in a running Python process (loopback only) and print the VS Code and
    /// nvim-dap attach configurations.
    #[command(
        after_help = "Python 3.14+ is injected natively (PEP 768); 3.8-3.13 through gdb, which stops the \
process briefly. debugpy must be importable by the target (`python -m pip install debugpy` for its \
interpreter); scry says so when it is not.\n\n\
Examples:\n  scry debug 4242\n  scry debug 4242 --port 5679\n  scry debug 4200 --follow   4200 runs `uvicorn --reload`: debug its worker, again after each reload\n  scry debug 4242 --json | jq .vscode"
    )]
    Debug(DebugArgs),
    /// Call tracing: watch selected functions run (calls, returns, exceptions, durations).
    #[command(subcommand)]
    Trace(TraceCmd),
    /// Run a command with every Python process of its tree debuggable from this terminal.
    #[command(
        after_help = "breakpoint() (or scry.pause()) in any process or thread of the tree opens a pdb \
REPL here, one at a time in arrival order; `c` hands the terminal to the next, `q` detaches the \
debugger and lets the process run on. With --debug an uncaught exception anywhere opens a \
post-mortem REPL before the process dies. ctrl-c goes to the open REPL, else to the program. \
The exit status is the command's.\n\nExamples:\n  scry run -- python app.py\n  scry run --debug -- python -m myapp --workers 4\n  scry run --debug --debug-filter ValueError -- pytest -x"
    )]
    Run(RunArgs),
    /// Break into a running Python process and open a REPL here (attached first if needed).
    #[command(
        after_help = "The chosen thread (main by default) stops at its next Python line. `c` lets it \
run on and ends the command. A process that never loaded scry is attached first, as by \
`scry attach` (3.14+ natively; 3.8-3.13 through gdb, which stops it briefly); it stays attached \
until `scry detach PID`.\n\nExamples:\n  scry repl 4242\n  scry repl 4242 --thread worker-1"
    )]
    Repl(ReplArgs),
    /// MCP for AI agents over stdio (starts the daemon when needed; tools run in the daemon).
    #[command(
        after_help = "Register it with an agent as one command, e.g. for Claude Code:\n  \
claude mcp add scry -- scry mcp\nor in a JSON MCP configuration:\n  \
{\"mcpServers\": {\"scry\": {\"command\": \"scry\", \"args\": [\"mcp\"]}}}\n\n\
stdout carries only MCP messages; notes go to stderr. The same tools are served over \
streamable HTTP at /mcp on the daemon. See docs/agents.md."
    )]
    Mcp,
    /// Attach to a running Python process that was never prepared: it becomes an awake agent.
    #[command(
        after_help = "Python 3.14+: natively through PEP 768 remote debugging (nothing is \
paused; the process runs the agent's bootstrap at its next bytecode). The agent and a one-time \
bootstrap are placed inside the process's own root (containers and chroots work) and removed \
once it is connected. Attaching to a process that already has an agent connected does nothing \
and says so. `scry detach PID` removes everything again.\n\n\
Examples:\n  scry attach 4242\n  scry attach 4242 --timeout 10 --json\n  scry attach 4242 && scry probe add app.py:42 'order.total' --pid 4242"
    )]
    Attach(AttachArgs),
    /// Detach scry from a process: every hook removed, threads ended, connection closed.
    #[command(after_help = "Examples:\n  scry detach 4242\n  scry detach 4242 --json")]
    Detach(DetachArgs),
}

/// `scry attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The process id.
    pub pid: u32,
    /// Seconds the process has to pick the bootstrap up (a process blocked in a system call
    /// does not run Python code; after this nothing is left armed in it).
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    pub timeout: f64,
    /// Which injector: `auto` (the best for the target's Python), `pep768` (3.14+ only) or
    /// `gdb` (3.8-3.13; stops the process briefly).
    #[arg(long, value_name = "NAME", default_value = "auto")]
    pub injector: String,
    /// Also attach to every Python process below PID, now and as they appear (a reload worker
    /// that restarts, a pool that spawns), until PID exits or `scry detach PID`. The daemon
    /// follows; this command returns after attaching to PID.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub output: Output,
}

/// `scry detach`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// The process id.
    pub pid: u32,
    #[command(flatten)]
    pub output: Output,
}

/// `scry lines`.
#[derive(Debug, Args)]
pub struct LinesArgs {
    /// A file (app/orders.py) or a function (module:function, module:Class.method,
    /// path.py:function).
    pub target: String,
    /// Where this variable (or attribute path such as order.total) is bound and read.
    #[arg(long, value_name = "NAME")]
    pub var: Option<String>,
    /// The process (default: the only awake one).
    #[arg(long)]
    pub pid: Option<u32>,
    /// At most this many rows per table.
    #[arg(long, default_value_t = 400)]
    pub limit: u32,
    #[command(flatten)]
    pub output: Output,
}

/// `scry trace ...`.
#[derive(Debug, Subcommand)]
pub enum TraceCmd {
    /// Start tracing selected functions in a live process (awake agent).
    #[command(
        after_help = "Patterns: a module (`myapp`, also its submodules; globs like `myapp.*`), a file \
(`app/*.py`, anything with a `/` or ending in .py) or a function (`module:qualname`, globs allowed, \
e.g. `myapp.jobs:Worker.*`). With no --include/--function the main script's functions are traced. \
Only selected functions pay anything (Python 3.12+: sys.monitoring events on their code only).\n\n\
Examples:\n  scry trace start 4242 --include myapp\n  scry trace start checkout --function shop.cart:total --args --returns\n  \
scry trace start 4242 --include myapp --exclude myapp.vendor --max-rate 5000/s --duration 30s"
    )]
    Start(TraceStartArgs),
    /// Stop a trace, or the traces running in a process (every running trace when none is named).
    #[command(
        after_help = "Examples:\n  scry trace stop\n  scry trace stop tr-3f2a9c0d1e\n  scry trace stop 4242\n  scry trace stop checkout"
    )]
    Stop(TraceStopArgs),
    /// List the traces the daemon keeps.
    #[command(after_help = "Examples:\n  scry trace list\n  scry trace list --json")]
    List(Output),
    /// Show a trace: per-function summary, or the call tree with durations (--tree).
    #[command(
        after_help = "Examples:\n  scry trace show tr-3f2a9c0d1e\n  scry trace show tr-3f2a9c0d1e --tree\n  scry trace show last --json"
    )]
    Show(TraceShowArgs),
    /// Write a trace for the Perfetto UI (protobuf) or chrome://tracing (JSON).
    #[command(
        after_help = "Open a Perfetto file at https://ui.perfetto.dev (it is loaded in the browser, nothing is uploaded).\n\n\
Examples:\n  scry trace export tr-3f2a9c0d1e --format perfetto -o trace.pftrace\n  scry trace export last --format chrome -o trace.json"
    )]
    Export(TraceExportArgs),
}

/// `scry trace start`.
#[derive(Debug, Args)]
pub struct TraceStartArgs {
    /// A pid, a process name (`scry.init(name=...)` or the script's name), `all`, `run` (every
    /// process started by `scry run`) or `run:SESSION` (those of one `scry run` session). A name
    /// means every connected process of the name.
    pub target: String,
    /// Only this pid among the processes TARGET means.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Trace these modules, files or functions (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Leave these out (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Trace this function, `module:qualname` (repeatable).
    #[arg(long, value_name = "MODULE:FUNCTION")]
    pub function: Vec<String>,
    /// Record the arguments of each call (bounded, typed; secret-looking names redacted).
    #[arg(long)]
    pub args: bool,
    /// Record return (and yielded) values.
    #[arg(long)]
    pub returns: bool,
    /// At most this many events a second per process (`5000/s` or `5000`); more are counted as dropped.
    #[arg(long, value_name = "N/s")]
    pub max_rate: Option<String>,
    /// Stop by itself after this long (`30s`, `5m`, `1h`, or seconds).
    #[arg(long, value_name = "D")]
    pub duration: Option<String>,
    #[command(flatten)]
    pub output: Output,
}

/// `scry trace stop`.
#[derive(Debug, Args)]
pub struct TraceStopArgs {
    /// The trace (`tr-…`, `last`), or a pid or process name: the traces running there
    /// (default: every running trace).
    pub trace: Option<String>,
    #[command(flatten)]
    pub output: Output,
}

/// `scry trace show`.
#[derive(Debug, Args)]
pub struct TraceShowArgs {
    /// The trace id, or `last`.
    pub trace: String,
    /// The call tree of each thread, with durations.
    #[arg(long)]
    pub tree: bool,
    /// At most this many lines of tree.
    #[arg(long, default_value_t = 2000)]
    pub max_lines: usize,
    #[command(flatten)]
    pub output: Output,
}

/// `scry trace export`.
#[derive(Debug, Args)]
pub struct TraceExportArgs {
    /// The trace id, or `last`.
    pub trace: String,
    /// `perfetto` (protobuf, for ui.perfetto.dev) or `chrome` (JSON trace event format).
    #[arg(long, value_parser = ["perfetto", "chrome"])]
    pub format: String,
    /// The file to write.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub file: std::path::PathBuf,
    #[command(flatten)]
    pub output: Output,
}

/// `scry top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The root of the tree (default: every Python process).
    pub pid: Option<u32>,
    /// Seconds between refreshes.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub interval: f64,
}

/// `scry reap`.
#[derive(Debug, Args)]
pub struct ReapArgs {
    /// The root of the tree to end.
    #[arg(required_unless_present = "orphans", conflicts_with = "orphans")]
    pub pid: Option<u32>,
    /// Instead of a tree: your orphaned processes whose command line contains PATTERN.
    #[arg(long, value_name = "PATTERN")]
    pub orphans: Option<String>,
    /// Seconds to wait after each signal for the processes to end.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    pub grace: f64,
    /// List what would be reaped; signal nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (--orphans).
    #[arg(long, short)]
    pub yes: bool,
    #[command(flatten)]
    pub output: Output,
}

/// `scry dumps`.
#[derive(Debug, Args)]
pub struct DumpsArgs {
    /// Show this dump instead of listing them.
    pub id: Option<i64>,
    #[command(flatten)]
    pub output: Output,
}

/// `scry dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The process: a pid, or a name given to `scry.init(name=...)` (every live process of the
    /// name, one dump each).
    pub target: String,
    /// Only this pid among the processes the name means.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Every process below PID too (non-Python ones with their kernel state).
    #[arg(long)]
    pub tree: bool,
    /// Local variables of each frame (values bounded).
    #[arg(long)]
    pub locals: bool,
    /// Native (C) frames too, merged with the Python frames (pauses each process while read;
    /// needs a scry built with the `native` feature).
    #[arg(long)]
    pub native: bool,
    /// Also write the dump, as JSON, to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub output: Output,
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
    /// Attach again to the processes whose injected agents the last `scry stop` ended, and
    /// follow again the trees it stopped following (those still running).
    #[arg(long)]
    pub restore: bool,
    /// Log to this file (rotated at 10 MB, two old files kept) instead of stderr; what
    /// `--daemon` passes to the daemon it starts.
    #[arg(long, hide = true, value_name = "PATH")]
    pub log_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub output: Output,
}

/// `scry stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Do not ask before ending injected agents and follows.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub output: Output,
}

/// `scry ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Include every gone process, not only those of the last 15 minutes.
    #[arg(long)]
    pub gone: bool,
    /// Instead: the process tree under PID, read from /proc (Python version, scry state, CPU %,
    /// RSS, age, what each process waits on). Needs no daemon; never starts one.
    #[arg(long, value_name = "PID", conflicts_with = "gone")]
    pub tree: Option<u32>,
    /// Instead: every Python process on this host that you may see, recognised from its memory
    /// image (not its name), prepared for scry or not: version, build, user, CPU %, RSS,
    /// container, scry state, role (reload supervisor/worker, multiprocessing helper).
    #[arg(long, conflicts_with_all = ["gone", "tree"])]
    pub all: bool,
    #[command(flatten)]
    pub output: Output,
}

/// `scry ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// Only print the URL; do not start a browser.
    #[arg(long)]
    pub no_open: bool,
    #[command(flatten)]
    pub output: Output,
}

/// A process named by pid or by name.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// A pid, or the name given to `scry.init(name=...)` / SCRY_NAME (every process registered
    /// under it).
    pub target: String,
    /// Only this pid among the processes the name means.
    #[arg(long)]
    pub pid: Option<u32>,
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

/// `scry probe ...`.
#[derive(Debug, Subcommand)]
pub enum ProbeCmd {
    /// Add a probe: evaluate expressions each time a line runs, without pausing the process.
    #[command(
        after_help = "Locations: path.py:LINE, @path.py#LINE, module.sub:function (entry), path.py:function.\nPaths match by suffix against the code loaded in the target.\n\nExamples:\n  scry probe add app/orders.py:127 'order.total' --pid 4242\n  scry probe add orders:price 'order.id' 'len(order.items)' --name prices --sample 10\n  scry probe add app/orders.py:127 'order.total' --if 'order.total > 100' --ttl 10m\n  scry probe add app/orders.py:127 'order.total' --metric histogram --label 'region=order.region' --name order_total\n    (a metric: scry_metric_order_total on the daemon's /metrics, no event a hit)"
    )]
    Add(Box<ProbeAddArgs>),
    /// List probes with their status and counters in every process.
    #[command(after_help = "Example:\n  scry probe list --json")]
    List(Output),
    /// Show one probe: its definition (expressions, condition, whether it is unsafe) and its
    /// state in every process.
    #[command(after_help = "Example:\n  scry probe show prices --json")]
    Show(ProbeShowArgs),
    /// Remove probes (every hook goes with them).
    #[command(after_help = "Examples:\n  scry probe rm prices\n  scry probe rm --group checkout")]
    Rm(ProbeKeyArgs),
    /// Enable probes again.
    #[command(after_help = "Example:\n  scry probe enable prices")]
    Enable(ProbeKeyArgs),
    /// Disable probes (kept, not armed).
    #[command(after_help = "Example:\n  scry probe disable --group checkout")]
    Disable(ProbeKeyArgs),
}

/// `scry probe add`.
#[derive(Debug, Args)]
pub struct ProbeAddArgs {
    /// Where: path.py:LINE, @path.py#LINE, module.sub:function or path.py:function.
    pub location: String,
    /// Expressions to capture at each hit, e.g. `order.total` `len(items)` (a `--metric gauge`
    /// or `histogram`: its one value; `--metric count`: none).
    #[arg(required_unless_present = "metric")]
    pub expressions: Vec<String>,
    /// A metric instead of events, aggregated in the process and exposed on the daemon's
    /// `GET /metrics` (Prometheus) as `scry_metric_NAME`: `count` (hits), `gauge` (the last
    /// value), `histogram` (values in buckets).
    #[arg(long, value_name = "KIND", value_parser = ["count", "gauge", "histogram"])]
    pub metric: Option<String>,
    /// A metric's label, NAME=EXPRESSION (repeatable), e.g. `--label region=order.region`; at
    /// most 100 label sets per process, the rest counted under `__overflow__`.
    #[arg(long = "label", value_name = "NAME=EXPR", requires = "metric")]
    pub labels: Vec<String>,
    /// A histogram's bucket upper bounds, increasing, e.g. `--buckets 0.1,0.5,1,5`.
    #[arg(
        long,
        value_name = "BOUNDS",
        value_delimiter = ',',
        requires = "metric"
    )]
    pub buckets: Option<Vec<f64>>,
    /// A unique name to refer to the probe by.
    #[arg(long)]
    pub name: Option<String>,
    /// Record only hits where this expression is true.
    #[arg(long = "if", value_name = "COND")]
    pub condition: Option<String>,
    /// Only this process (with `--process`: that one of the processes of the name).
    #[arg(long, conflicts_with = "all")]
    pub pid: Option<u32>,
    /// Only processes registered under this name (every one of them).
    #[arg(long, conflicts_with = "all")]
    pub process: Option<String>,
    /// Every process (the default).
    #[arg(long)]
    pub all: bool,
    /// Record every hit (the default).
    #[arg(long, group = "rate_mode")]
    pub every: bool,
    /// Record every Nth hit.
    #[arg(long, value_name = "N", group = "rate_mode")]
    pub sample: Option<u64>,
    /// Record at most R hits a second.
    #[arg(long, value_name = "R", group = "rate_mode")]
    pub rate: Option<f64>,
    /// Record the first N hits, then remove the probe.
    #[arg(long, value_name = "N", group = "rate_mode")]
    pub first: Option<u64>,
    /// Remove the probe after this long (e.g. 30s, 10m, 2h).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Also capture the Python stack at each hit.
    #[arg(long)]
    pub stack: bool,
    /// Also capture a bounded snapshot of the local variables (secret-looking names redacted).
    #[arg(long)]
    pub locals: bool,
    /// Call user-defined __repr__ for objects of unknown types.
    #[arg(long)]
    pub repr: bool,
    /// Allow any call in expressions (by default only pure builtins such as len, min, max).
    #[arg(long = "unsafe")]
    pub unsafe_calls: bool,
    /// A group, to enable, disable or remove several probes at once.
    #[arg(long)]
    pub group: Option<String>,
    #[command(flatten)]
    pub output: Output,
}

/// A probe named by id or name, or a group.
#[derive(Debug, Args)]
pub struct ProbeKeyArgs {
    /// The probe's id or name.
    #[arg(required_unless_present = "group", conflicts_with = "group")]
    pub probe: Option<String>,
    /// Every probe of this group.
    #[arg(long)]
    pub group: Option<String>,
    #[command(flatten)]
    pub output: Output,
}

/// `scry probe show`.
#[derive(Debug, Args)]
pub struct ProbeShowArgs {
    /// The probe's id or name.
    pub probe: String,
    #[command(flatten)]
    pub output: Output,
}

/// `scry events`.
#[derive(Debug, Args)]
pub struct EventsCmd {
    /// `stats PROBE`: a summary instead of the events.
    #[command(subcommand)]
    pub sub: Option<EventsSub>,
    #[command(flatten)]
    pub query: EventsArgs,
}

/// Which events: the filters `scry events`, `events stats` and `events wait` share.
#[derive(Debug, Clone, Args)]
pub struct EventFilterArgs {
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Only processes registered under this name.
    #[arg(long, value_name = "NAME")]
    pub process: Option<String>,
    /// From this time: a duration ago (5m, 2h) or an ISO time (2026-11-21T12:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only events whose captured value satisfies EXPR OP VALUE, e.g. 'total>100',
    /// "customer=='c1'" (OP: == != < <= > >=); repeat to require several.
    #[arg(long = "where", value_name = "COND")]
    pub where_: Vec<String>,
}

/// `scry events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this probe (id or name).
    #[arg(long)]
    pub probe: Option<String>,
    #[command(flatten)]
    pub filter: EventFilterArgs,
    /// At most this many events (default 50).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Which end to take: the newest (default) or the oldest events of the window.
    #[arg(long, value_parser = ["newest", "oldest"], default_value = "newest")]
    pub order: String,
    /// Keep printing new events as they arrive (ctrl-c stops).
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub output: Output,
}

/// The filters of `scry logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Only this process (and the daemon events about it).
    #[arg(long)]
    pub pid: Option<u32>,
    /// From this time: a duration ago (5m, 2h) or an ISO time (2026-11-21T12:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records at this level or above: debug, info, warn, error.
    #[arg(long)]
    pub level: Option<String>,
    /// At most this many lines (the newest; default 200).
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Keep printing new records as they arrive (ctrl-c stops).
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub output: Output,
}

/// `scry events stats` and `scry events wait`.
#[derive(Debug, Subcommand)]
pub enum EventsSub {
    /// Count, min, max, mean, p50, p95 and p99 of each numeric expression; value counts of the rest.
    #[command(
        after_help = "Examples:\n  scry events stats totals --since 10m\n  scry events stats totals --where 'total>100' --json"
    )]
    Stats(StatsArgs),
    /// Block until new hits arrive (or the timeout passes), then print them.
    #[command(
        after_help = "Examples:\n  scry events wait totals --count 5 --timeout 30s\n  scry events wait --pid 4242 --where 'total>100'"
    )]
    Wait(WaitArgs),
}

/// `scry events stats [PROBE]`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The probe's id or name (default: every probe's events).
    pub probe: Option<String>,
    #[command(flatten)]
    pub filter: EventFilterArgs,
    #[command(flatten)]
    pub output: Output,
}

/// `scry events wait [PROBE]`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The probe's id or name (default: any probe).
    pub probe: Option<String>,
    /// How many new hits to wait for.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// The longest to wait (e.g. 30s, 2m; at most 10m).
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    /// Count hits stored after this event id (an `id` or a previous wait's `cursor`) instead
    /// of from now.
    #[arg(long, value_name = "EVENT_ID")]
    pub after: Option<i64>,
    #[command(flatten)]
    pub filter: EventFilterArgs,
    #[command(flatten)]
    pub output: Output,
}

/// `scry run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Open a post-mortem REPL on an uncaught exception in any process of the tree.
    #[arg(long)]
    pub debug: bool,
    /// With --debug: exception class names (or module.Class) that never open a REPL.
    #[arg(long, value_name = "EXC")]
    pub debug_filter: Vec<String>,
    /// A name for the processes of the tree (SCRY_NAME).
    #[arg(long)]
    pub name: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// `scry repl`.
#[derive(Debug, Args)]
pub struct ReplArgs {
    /// The process.
    pub pid: u32,
    /// The thread to stop (name or id; default: the main thread).
    #[arg(long)]
    pub thread: Option<String>,
}

/// `scry debug`.
#[derive(Debug, Args)]
pub struct DebugArgs {
    /// The Python process.
    pub pid: u32,
    /// The loopback port debugpy listens on (0: any free port).
    #[arg(long, default_value_t = 5678)]
    pub port: u16,
    /// Seconds to wait for the target to pick the script up.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Keep going: when the worker restarts (a reload), start debugpy in the new one on the
    /// same port. PID may be the reload supervisor (its worker is debugged) or the worker.
    /// Runs until the supervisor exits or ctrl-c; with --json, one JSON line per worker.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub output: Output,
}
