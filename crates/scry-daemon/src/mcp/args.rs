//! The tools' parameters: their doc comments are the descriptions agents read, their serde and
//! schemars attributes the schema the SDK publishes and enforces.

use rmcp::schemars;
use serde::Deserialize;

use scry_api::EventFilter;

/// `list_processes`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListProcessesArgs {
    /// Include every process that has exited, not only those of the last 15 minutes.
    #[serde(default)]
    pub include_gone: bool,
}

/// A process named by pid or registered name.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetArgs {
    /// A pid (e.g. "4242") or the name the program registered with scry.init(name=...); a
    /// name means every process registered under it.
    pub target: String,
    /// Only this pid among the processes the name means.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// `add_probe`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProbeArgs {
    /// Where: "path.py:LINE" (best: a line from find_lines), "module:function" (its entry) or
    /// "path.py:function".
    pub location: String,
    /// Python expressions evaluated at each hit, e.g. ["order.total", "len(items)"]. They may
    /// read names, attributes and items, use operators, and call pure builtins (len, min, max,
    /// sum, ...) and known-pure methods of builtin types (d.get("k"), s.startswith("x")); no
    /// key=, lambda, comprehension or f-string (docs/expressions.md).
    #[schemars(length(min = 1))]
    pub expressions: Vec<String>,
    /// Only this process (default: every process).
    #[serde(default)]
    pub pid: Option<u32>,
    /// A unique name to refer to the probe by.
    #[serde(default)]
    pub name: Option<String>,
    /// Record only hits where this Python expression is true.
    #[serde(default)]
    pub condition: Option<String>,
    /// Record only the first N hits, then the probe stops itself.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub first: Option<u64>,
    /// Record at most this many hits a second.
    #[serde(default)]
    pub max_per_second: Option<f64>,
    /// Remove the probe after this long: "30s", "10m", "2h".
    #[serde(default)]
    pub ttl: Option<String>,
    /// Also capture the Python stack at each hit.
    #[serde(default)]
    pub stack: bool,
}

/// A probe named by id or name.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeArgs {
    /// The probe's id ("p-...") or name.
    pub probe: String,
}

/// `list_probes`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// Which events: shared by query_events, event_stats and wait_for_hits.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterArgs {
    /// Only this probe (id or name).
    #[serde(default)]
    pub probe: Option<String>,
    /// Only this process (pid).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Only processes registered under this name.
    #[serde(default)]
    pub process: Option<String>,
    /// From this time: a duration ago ("5m", "2h") or an ISO time ("2026-11-21T12:00:00Z").
    #[serde(default)]
    pub since: Option<String>,
    /// Until this time (same forms).
    #[serde(default)]
    pub until: Option<String>,
    /// Value conditions on captured expressions: "EXPR OP VALUE" joined by "&&", e.g.
    /// "total>100 && customer=='c1'" (OP: == != < <= > >=).
    #[serde(default, rename = "where")]
    pub where_: Option<String>,
}

impl FilterArgs {
    pub(crate) fn filter(&self) -> EventFilter {
        EventFilter {
            probe: self.probe.clone(),
            pid: self.pid,
            process: self.process.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            where_: self.where_.clone(),
            ..Default::default()
        }
    }
}

/// Newest or oldest first.
#[derive(Debug, Clone, Copy, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderArg {
    /// The newest events of the window, newest first.
    #[default]
    Newest,
    /// The oldest events of the window, oldest first.
    Oldest,
}

/// `query_events`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryArgs {
    #[serde(flatten)]
    #[allow(missing_docs)]
    pub filter: FilterArgs,
    /// At most this many events (default 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub limit: Option<usize>,
    /// Which end of the window: "newest" (default) or "oldest".
    #[serde(default)]
    pub order: OrderArg,
}

/// `wait_for_hits`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitArgs {
    #[serde(flatten)]
    #[allow(missing_docs)]
    pub filter: FilterArgs,
    /// How many new hits to wait for (default 1).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub count: Option<usize>,
    /// The longest to wait, in seconds (default 30, at most 600).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Count hits stored after this event id (a previous answer's `cursor`) instead of from now.
    #[serde(default)]
    pub after_id: Option<i64>,
}

/// `observe`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObserveArgs {
    /// The function (or file) the variable lives in: "orders:checkout", "orders:Cart.add",
    /// "app/orders.py:checkout", or a file "app/orders.py" together with `line`.
    pub target: String,
    /// The variable or attribute path to watch ("total", "order.total"); used to find the line.
    #[serde(default)]
    pub var: Option<String>,
    /// What to capture (default: `var`), e.g. "round(total, 2)".
    #[serde(default)]
    pub expression: Option<String>,
    /// Probe this line instead of resolving `var` (a line of the file `target` names or holds).
    #[serde(default)]
    pub line: Option<u32>,
    /// "after" (default): where the value has just been assigned; "before": where it is
    /// assigned or first read (the old value).
    #[serde(default)]
    pub at: Option<String>,
    /// The process (default: the only awake one).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Hits to collect (default 5, at most 1000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub hits: Option<usize>,
    /// The longest to wait for them, in seconds (default 10, at most 600).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Record only hits where this Python expression is true.
    #[serde(default)]
    pub condition: Option<String>,
    /// Keep the probe afterwards (default: removed).
    #[serde(default)]
    pub keep: bool,
}

/// `dump_stacks`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DumpArgs {
    /// The process.
    pub pid: u32,
    /// Every process below it too.
    #[serde(default)]
    pub tree: bool,
    /// Local variables of each frame (bounded).
    #[serde(default)]
    pub locals: bool,
}

/// `trace_start`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceStartArgs {
    /// A pid, a process name (every connected process of the name), or "all" (every connected
    /// process).
    pub target: String,
    /// Only this pid among the processes the target means.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Functions to trace exactly: "module:function" or "module:Class.method".
    #[serde(default)]
    pub functions: Vec<String>,
    /// Module prefixes whose functions are traced, e.g. ["myapp."].
    #[serde(default)]
    pub include: Vec<String>,
    /// Module prefixes left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Capture the arguments of each call.
    #[serde(default)]
    pub args: bool,
    /// Capture return values.
    #[serde(default)]
    pub returns: bool,
    /// Stop by itself after this many seconds.
    #[serde(default)]
    pub duration_s: Option<f64>,
}

/// A trace named by id.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceArgs {
    /// The trace id ("tr-..."), as trace_start returned it.
    pub trace: String,
    /// Rows per table (default 10).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub top: Option<usize>,
}

/// `attach`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachArgs {
    /// The pid of a running Python process (as list_processes or `ps` shows it).
    #[schemars(range(min = 1))]
    pub pid: u32,
    /// How long the process has to pick the agent up, in seconds (default 5, at most 30).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// How to get in: "auto" (default: native for 3.14+, gdb for 3.8-3.13), "pep768" or "gdb".
    #[serde(default)]
    pub injector: InjectorArg,
}

/// The injector `attach` uses.
#[derive(Debug, Clone, Copy, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InjectorArg {
    /// Native PEP 768 for CPython 3.14+, gdb for 3.8-3.13.
    #[default]
    Auto,
    /// Only the native PEP 768 writer (CPython 3.14+; never stops the process).
    Pep768,
    /// Only gdb (any supported version; stops the process briefly).
    Gdb,
}

/// `detach`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetachArgs {
    /// The pid of a process whose agent to remove.
    #[schemars(range(min = 1))]
    pub pid: u32,
}
