//! MCP (Model Context Protocol) for AI agents: the tools an agent needs to find a line, watch
//! it live and reason from real values, served over streamable HTTP at `/mcp` (and over stdio by
//! `scry mcp`, which relays to this endpoint).
//!
//! Built on the official Rust SDK (`rmcp`): each tool is a method with a description that tells
//! an agent when and how to use it, and typed parameters whose JSON schema the SDK publishes and
//! enforces (a bad argument is refused with serde's message before the tool runs). Tools call
//! the daemon's shared functions ([`crate::lines`], [`crate::query`], [`crate::attach`]) or, for the rest, its own
//! REST router in process (no socket; the same validation and errors as the API).
//!
//! Answers are compact JSON: lists of records are tables (`columns` + `rows`), captured values
//! are plain JSON where they are scalars, and every list says when it was cut (`truncated`).
//!
//! Not for: anything the REST API does not also offer (MCP is one more face of the same daemon).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::query::EventFilter;
use crate::Shared;

/// The longest `timeout_s` of `attach` (as `scry attach --timeout`): the whole attach runs
/// within one tool call.
const ATTACH_MAX_TIMEOUT_S: f64 = 30.0;

/// The `/mcp` service (streamable HTTP, one session per client), ended with the daemon.
pub fn service(shared: Arc<Shared>) -> StreamableHttpService<ScryMcp, LocalSessionManager> {
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut stop = shared.shutdown_signal();
    let child = cancel.clone();
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
            child.cancel();
        });
    }
    let mut config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_cancellation_token(cancel);
    // The SDK accepts only loopback Host headers by default (DNS rebinding); a daemon bound
    // elsewhere is reached by other names and already requires the token for those callers.
    if !shared.http_addr.ip().is_loopback() {
        config = config.disable_allowed_hosts();
    }
    StreamableHttpService::new(
        move || Ok(ScryMcp::new(shared.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

/// The MCP server: one per session, all sharing the daemon.
#[derive(Clone)]
pub struct ScryMcp {
    shared: Arc<Shared>,
    tool_router: ToolRouter<ScryMcp>,
}

/// A tool's failure, for the agent: what went wrong and what to do.
struct ToolError {
    kind: String,
    message: String,
    hint: Option<String>,
}

impl From<crate::http::ApiError> for ToolError {
    fn from(e: crate::http::ApiError) -> Self {
        let (kind, message, hint) = e.parts();
        ToolError {
            kind: kind.to_owned(),
            message: message.to_owned(),
            hint: hint.map(str::to_owned),
        }
    }
}

fn invalid(message: impl Into<String>) -> ToolError {
    ToolError {
        kind: "bad_request".into(),
        message: message.into(),
        hint: None,
    }
}

type ToolResult = Result<Value, ToolError>;

fn answer(r: ToolResult) -> CallToolResult {
    match r {
        Ok(v) => CallToolResult::success(vec![ContentBlock::text(v.to_string())]),
        Err(e) => CallToolResult::error(vec![ContentBlock::text(
            json!({"error": {"kind": e.kind, "message": e.message, "hint": e.hint}}).to_string(),
        )]),
    }
}

// -- parameters ----------------------------------------------------------------------------------

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
    /// A pid (e.g. "4242") or the name the program registered with scry.init(name=...).
    pub target: String,
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
    fn filter(&self) -> EventFilter {
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
    /// A pid, a process name, or "all" (every connected process).
    pub target: String,
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

// -- tools ---------------------------------------------------------------------------------------

#[tool_router]
impl ScryMcp {
    /// A server for one session.
    pub fn new(shared: Arc<Shared>) -> ScryMcp {
        ScryMcp {
            shared,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "List the Python processes scry knows: pid, parent pid (the tree), name, Python version and scry state (awake: observable now; sleeping: an embedded client to wake first; gone). Start here to pick a pid."
    )]
    async fn list_processes(&self, Parameters(a): Parameters<ListProcessesArgs>) -> CallToolResult {
        let list = crate::http::process_list(&self.shared, a.include_gone);
        let rows: Vec<Value> = list
            .iter()
            .map(|p| {
                json!([
                    p["pid"],
                    p["ppid"],
                    p["name"],
                    p["state"],
                    p["python_version"],
                    p["origin"],
                    p["argv"].as_array().map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" "))
                ])
            })
            .collect();
        answer(Ok(json!({
            "columns": ["pid", "ppid", "name", "state", "python", "origin", "command"],
            "rows": rows,
        })))
    }

    #[tool(
        description = "Wake a sleeping embedded scry client (by pid or name) so that it connects and can be probed. Needed when list_processes shows state=sleeping."
    )]
    async fn wake(&self, Parameters(a): Parameters<TargetArgs>) -> CallToolResult {
        answer(
            self.local(
                Method::POST,
                "/api/v1/wake",
                Some(json!({"target": a.target})),
            )
            .await,
        )
    }

    #[tool(
        description = "Load scry's agent into a running Python process that was never prepared for it (it never imported scry and was not started by `scry run`), so that find_lines, observe, add_probe and the other tools work on it; list_processes then shows it awake (origin injected). Use it when list_processes does not list the process, or lists it without an agent; a process already awake is left alone (already_attached: true), and a sleeping embedded client wants wake instead. CPython 3.14+ is attached natively (PEP 768) without stopping it; 3.8-3.13 through gdb, which stops the whole process briefly (usually under 2 s) while the agent starts. The process must be yours (or scry must have CAP_SYS_PTRACE). Failures (not Python, unsupported version, remote debugging disabled, no permission, gdb missing, main thread blocked in a system call so nothing ran before `timeout_s`, process exited) come back as an error result whose `hint` says what to do; nothing is left in the process then. Undo with detach."
    )]
    async fn attach(&self, Parameters(a): Parameters<AttachArgs>) -> CallToolResult {
        answer(self.attach_impl(a).await)
    }

    #[tool(
        description = "Remove the agent that attach loaded (or any connected agent) from a process: every probe and trace hook removed, its threads ended, its connection closed; the process runs on as if scry had never been there. Use it when done with a process you attached to. An embedded client (scry.init) is better put to sleep, so that it can be woken again."
    )]
    async fn detach(&self, Parameters(a): Parameters<DetachArgs>) -> CallToolResult {
        answer(
            crate::attach::detach(&self.shared, a.pid)
                .await
                .map_err(|e| ToolError::from(crate::http::ApiError::from(e))),
        )
    }

    #[tool(
        description = "Put an awake agent back to sleep (by pid or name): every probe hook is removed and the connection closed; the process then costs nothing."
    )]
    async fn sleep(&self, Parameters(a): Parameters<TargetArgs>) -> CallToolResult {
        answer(
            self.local(
                Method::POST,
                "/api/v1/sleep",
                Some(json!({"target": a.target})),
            )
            .await,
        )
    }

    #[tool(
        description = "Find the line to probe, from the code loaded in the live process (not a file on disk). For a function or file: its executable lines with source. With `var`: where the variable is bound (with `after_line`, the first line where the new value is visible: probe there to see it) and where it is read, per function scope (nested functions, comprehensions and shadowed names are told apart). Says `file_differs` when the file was edited after it was loaded. Use before add_probe; observe does this for you."
    )]
    async fn find_lines(
        &self,
        Parameters(req): Parameters<crate::lines::LinesRequest>,
    ) -> CallToolResult {
        answer(
            crate::lines::find_lines(&self.shared, req)
                .await
                .map_err(ToolError::from),
        )
    }

    #[tool(
        description = "Add a probe: evaluate Python expressions each time a line runs in live processes, without pausing them. Prefer a line from find_lines. Returns the probe id and its state per process (armed, pending until the module is imported, or error with the reason). Read its values with query_events / wait_for_hits / event_stats; remove it when done."
    )]
    async fn add_probe(&self, Parameters(a): Parameters<AddProbeArgs>) -> CallToolResult {
        let rate = match (a.first, a.max_per_second) {
            (Some(_), Some(_)) => {
                return answer(Err(invalid("give `first` or `max_per_second`, not both")))
            }
            (Some(n), None) => Some(scry_api::RateMode::First { n }),
            (None, Some(per_second)) => Some(scry_api::RateMode::Rate { per_second }),
            (None, None) => None,
        };
        let request = scry_api::NewProbe {
            location: a.location,
            expressions: a.expressions,
            stack: a.stack,
            pid: a.pid,
            name: a.name,
            condition: a.condition,
            ttl: a.ttl.map(scry_api::Ttl::Duration),
            rate,
            ..scry_api::NewProbe::default()
        };
        let body = match serde_json::to_value(&request) {
            Ok(body) => body,
            Err(e) => return answer(Err(invalid(format!("cannot encode the probe: {e}")))),
        };
        answer(
            self.local(Method::POST, "/api/v1/probes", Some(body))
                .await
                .map(compact_probe),
        )
    }

    #[tool(
        description = "List every probe with its location, expressions and its state and counters (hits, dropped) in each process."
    )]
    async fn list_probes(&self, Parameters(_a): Parameters<NoArgs>) -> CallToolResult {
        answer(
            self.local(Method::GET, "/api/v1/probes", None)
                .await
                .map(|v| {
                    let probes: Vec<Value> = v["probes"]
                        .as_array()
                        .map(|a| a.iter().cloned().map(compact_probe).collect())
                        .unwrap_or_default();
                    json!({"probes": probes})
                }),
        )
    }

    #[tool(
        description = "Remove a probe (by id or name) from every process; its stored events stay queryable by its id."
    )]
    async fn remove_probe(&self, Parameters(a): Parameters<ProbeArgs>) -> CallToolResult {
        answer(
            self.local(
                Method::DELETE,
                &format!("/api/v1/probes/{}", enc(&a.probe)),
                None,
            )
            .await,
        )
    }

    #[tool(description = "Enable a disabled probe again (by id or name).")]
    async fn enable_probe(&self, Parameters(a): Parameters<ProbeArgs>) -> CallToolResult {
        answer(
            self.local(
                Method::POST,
                &format!("/api/v1/probes/{}/enable", enc(&a.probe)),
                None,
            )
            .await
            .map(compact_probe),
        )
    }

    #[tool(
        description = "Disable a probe (by id or name): kept, but not armed in any process until enabled."
    )]
    async fn disable_probe(&self, Parameters(a): Parameters<ProbeArgs>) -> CallToolResult {
        answer(
            self.local(
                Method::POST,
                &format!("/api/v1/probes/{}/disable", enc(&a.probe)),
                None,
            )
            .await
            .map(compact_probe),
        )
    }

    #[tool(
        description = "One call to watch a variable live: resolves `var` in the function `target` to a line (by default just after it is assigned, from find_lines), adds a temporary probe there capturing `expression` (default: the variable), waits for `hits` hits or `timeout_s`, returns the typed values, and removes the probe unless keep=true. Give `line` to skip the resolution."
    )]
    async fn observe(&self, Parameters(a): Parameters<ObserveArgs>) -> CallToolResult {
        answer(self.observe_impl(a).await)
    }

    #[tool(
        description = "Read stored probe events (hits): filter by probe, process, time window (since/until: \"5m\" or ISO) and captured values (where: \"total>100\"), newest or oldest first. Returns a table: one row per hit with its time, pid, probe, line and one column per expression (plain values; `types` gives each column's Python type). Says truncated when more matched than `limit`."
    )]
    async fn query_events(&self, Parameters(a): Parameters<QueryArgs>) -> CallToolResult {
        answer(self.query_impl(a).await)
    }

    #[tool(
        description = "Summarize probe values instead of reading rows: per expression the count, min, max, mean, p50, p95 and p99 of numeric values and the most frequent values of the others (strings, None, errors). Same filters as query_events."
    )]
    async fn event_stats(&self, Parameters(a): Parameters<FilterArgs>) -> CallToolResult {
        let r = async {
            let sel = a.filter().select(&self.shared)?;
            crate::query::stats(&self.shared, &sel).await
        }
        .await;
        answer(r.map_err(ToolError::from))
    }

    #[tool(
        description = "Block until `count` new hits (matching the filters) are stored, or `timeout_s` passes, then return them as a table; `reached` says which. Use after add_probe instead of polling query_events; pass the answer's `cursor` as `after_id` to continue without missing or repeating hits."
    )]
    async fn wait_for_hits(&self, Parameters(a): Parameters<WaitArgs>) -> CallToolResult {
        let r = async {
            let timeout = crate::query::wait_timeout(a.timeout_s)?;
            let sel = a.filter.filter().select(&self.shared)?;
            crate::query::wait(
                &self.shared,
                &sel,
                a.after_id,
                a.count.unwrap_or(1),
                timeout,
            )
            .await
        }
        .await;
        answer(r.map_err(ToolError::from).map(|mut v| {
            let events = v["events"].take();
            v["events"] = events_table(events.as_array().map(Vec::as_slice).unwrap_or(&[]));
            v
        }))
    }

    #[tool(
        description = "The Python stacks of every thread of a process (tree=true: and of every process below it), read from outside: works on hung processes and ones without scry. Shows which thread holds the GIL and, for other processes, their kernel state. Frames are innermost first."
    )]
    async fn dump_stacks(&self, Parameters(a): Parameters<DumpArgs>) -> CallToolResult {
        let options = scry_proc::stacks::DumpOptions {
            native: false,
            tree: a.tree,
            locals: a.locals,
        };
        let pid = a.pid;
        let r = tokio::task::spawn_blocking(move || scry_proc::stacks::dump(pid, options)).await;
        answer(match r {
            Ok(Ok(dump)) => Ok(compact_dump(&dump)),
            Ok(Err(e)) => Err(ToolError {
                kind: "dump".into(),
                message: scry_proc::stacks::error_text(&e),
                hint: Some(
                    "the process must exist and be yours (or ptrace must be allowed)".into(),
                ),
            }),
            Err(e) => Err(ToolError {
                kind: "internal".into(),
                message: e.to_string(),
                hint: None,
            }),
        })
    }

    #[tool(
        description = "Start tracing calls of selected functions (functions, or module prefixes in include) in a process: every call, return and exception with its duration, at a small cost only in the traced functions. Returns the trace id; stop it with trace_stop and read trace_summary."
    )]
    async fn trace_start(&self, Parameters(a): Parameters<TraceStartArgs>) -> CallToolResult {
        if a.functions.is_empty() && a.include.is_empty() {
            return answer(Err(invalid("give `functions` (module:function) or `include` (module prefixes): tracing everything is refused")));
        }
        let mut body = json!({"target": a.target, "functions": a.functions, "include": a.include,
                              "exclude": a.exclude, "args": a.args, "returns": a.returns});
        if let Some(d) = a.duration_s {
            body["duration"] = json!(d);
        }
        answer(self.local(Method::POST, "/api/v1/traces", Some(body)).await)
    }

    #[tool(
        description = "Stop a trace (by id) in every process it runs in; its records stay for trace_summary."
    )]
    async fn trace_stop(&self, Parameters(a): Parameters<TraceArgs>) -> CallToolResult {
        answer(
            self.local(
                Method::POST,
                &format!("/api/v1/traces/{}/stop", enc(&a.trace)),
                None,
            )
            .await,
        )
    }

    #[tool(
        description = "Summarize a trace (running or stopped): per function the call count, total, mean and max duration and exceptions; the slowest calls; the exceptions by type. Read this instead of raw trace records."
    )]
    async fn trace_summary(&self, Parameters(a): Parameters<TraceArgs>) -> CallToolResult {
        answer(self.trace_summary_impl(&a.trace, a.top.unwrap_or(10)).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ScryMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("scry", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "scry observes live Python processes without pausing or restarting them. Typical \
session: list_processes -> find_lines(target='module:function', var='name') -> observe (or \
add_probe + wait_for_hits) -> event_stats -> remove_probe. dump_stacks shows where a hung \
process is stuck. A Python process that never imported scry is made observable with attach \
(and left again with detach).",
            )
    }
}

// -- implementations -----------------------------------------------------------------------------

impl ScryMcp {
    /// A request to the daemon's own REST router, in process.
    async fn local(&self, method: Method, path: &str, body: Option<Value>) -> ToolResult {
        let mut req = Request::builder().method(method).uri(path);
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let req = req.body(body).map_err(|e| invalid(e.to_string()))?;
        let resp = crate::http::local_api(self.shared.clone())
            .oneshot(req)
            .await
            .map_err(|e| ToolError {
                kind: "internal".into(),
                message: e.to_string(),
                hint: None,
            })?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .map_err(|e| ToolError {
                kind: "internal".into(),
                message: e.to_string(),
                hint: None,
            })?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        Err(ToolError {
            kind: v["error"]["kind"].as_str().unwrap_or("error").to_owned(),
            message: v["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("HTTP {status}")),
            hint: v["error"]["hint"].as_str().map(str::to_owned),
        })
    }

    async fn attach_impl(&self, a: AttachArgs) -> ToolResult {
        if a.pid == 0 {
            return Err(invalid("`pid` must be a positive process id"));
        }
        let timeout = match a.timeout_s {
            None => crate::attach::DEFAULT_TIMEOUT,
            Some(t) if t > 0.0 && t <= ATTACH_MAX_TIMEOUT_S => Duration::from_secs_f64(t),
            Some(t) => {
                return Err(invalid(format!(
                    "`timeout_s` must be more than 0 and at most {ATTACH_MAX_TIMEOUT_S} seconds, not {t}"
                )))
            }
        };
        let only = match a.injector {
            InjectorArg::Auto => None,
            InjectorArg::Pep768 => Some("pep768".to_owned()),
            InjectorArg::Gdb => Some("gdb".to_owned()),
        };
        let report = crate::attach::attach(&self.shared, a.pid, timeout, only)
            .await
            .map_err(|e| ToolError::from(crate::http::ApiError::from(e)))?;
        serde_json::to_value(&report).map_err(|e| ToolError {
            kind: "internal".into(),
            message: e.to_string(),
            hint: None,
        })
    }

    async fn query_impl(&self, a: QueryArgs) -> ToolResult {
        let sel = a.filter.filter().select(&self.shared)?;
        let order = match a.order {
            OrderArg::Newest => scry_store::Order::Newest,
            OrderArg::Oldest => scry_store::Order::Oldest,
        };
        let found = crate::query::find(&self.shared, &sel, a.limit.unwrap_or(50), order).await?;
        let counts = crate::query::counts(&found);
        let truncated = found.truncated;
        let events = crate::query::event_json(&self.shared, found.events);
        Ok(json!({"events": events_table(&events), "truncated": truncated, "counts": counts}))
    }

    async fn observe_impl(&self, a: ObserveArgs) -> ToolResult {
        let expression = match (&a.expression, &a.var) {
            (Some(e), _) => e.clone(),
            (None, Some(v)) => v.clone(),
            (None, None) => {
                return Err(invalid(
                    "give `var` (to find the line and capture it) or `expression` with `line`",
                ))
            }
        };
        let hits = a.hits.unwrap_or(5);
        if hits == 0 || hits > 1000 {
            return Err(invalid("`hits` must be 1 to 1000"));
        }
        let timeout = crate::query::wait_timeout(Some(a.timeout_s.unwrap_or(10.0)))?;
        let after = match a.at.as_deref() {
            None | Some("after") => true,
            Some("before") => false,
            Some(other) => {
                return Err(invalid(format!(
                    "`at` must be \"after\" or \"before\", not \"{other}\""
                )))
            }
        };
        // The line: given, or from find_lines in the process.
        let found = crate::lines::find_lines(
            &self.shared,
            crate::lines::LinesRequest {
                target: a.target.clone(),
                var: if a.line.is_some() {
                    None
                } else {
                    a.var.clone()
                },
                pid: a.pid,
                limit: Some(50),
            },
        )
        .await?;
        let pid = found["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
        let file = found["file"].as_str().unwrap_or_default().to_owned();
        let (line, why) = match a.line {
            Some(l) => (l as u64, format!("line {l} as given")),
            None => choose_line(&found, after).ok_or_else(|| ToolError {
                kind: "not_found".into(),
                message: format!("`{}` is neither bound nor read in {} as loaded", a.var.as_deref().unwrap_or(""), a.target),
                hint: Some("check the name with find_lines (without var it lists the function's lines), or give `line`".into()),
            })?,
        };
        let location = format!("{file}:{line}");
        let cursor = crate::query::newest_id(&self.shared).await?;
        let mut body = json!({"location": location, "expressions": [expression], "rate": {"mode": "first", "n": hits}});
        if let Some(p) = pid {
            body["pid"] = json!(p);
        }
        if let Some(c) = &a.condition {
            body["condition"] = json!(c);
        }
        let probe = self
            .local(Method::POST, "/api/v1/probes", Some(body))
            .await?;
        let id = probe["id"].as_str().unwrap_or_default().to_owned();
        let filter = EventFilter {
            probe: Some(id.clone()),
            ..Default::default()
        };
        let waited = async {
            let sel = filter.select(&self.shared)?;
            crate::query::wait(&self.shared, &sel, Some(cursor), hits, timeout).await
        }
        .await;
        let status = self
            .local(Method::GET, &format!("/api/v1/probes/{id}"), None)
            .await
            .map(compact_probe)
            .ok();
        if !a.keep {
            let _ = self
                .local(Method::DELETE, &format!("/api/v1/probes/{id}"), None)
                .await;
        }
        let waited = waited?;
        let events = waited["events"].as_array().cloned().unwrap_or_default();
        Ok(json!({
            "location": location,
            "line": line,
            "chosen": why,
            "expression": expression,
            "probe": id,
            "kept": a.keep,
            "reached": waited["reached"],
            "wanted": hits,
            "hits": events_table(&events),
            "probe_state": status.map(|s| s["processes"].clone()),
            "file_differs": found["file_differs"],
        }))
    }
}

impl ScryMcp {
    async fn trace_summary_impl(&self, id: &str, top: usize) -> ToolResult {
        let meta = self
            .local(Method::GET, &format!("/api/v1/traces/{}", enc(id)), None)
            .await?;
        let store = self.shared.store.clone();
        let q = scry_store::EventQuery {
            source: Some(id.to_owned()),
            kind: Some("trace".into()),
            limit: scry_store::MAX_QUERY_LIMIT,
            order: scry_store::Order::Oldest,
            after_id: Some(0),
            ..Default::default()
        };
        let page = crate::http::blocking(move || store.events(&q)).await?;
        let pids: std::collections::HashMap<i64, u32> = self
            .shared
            .registry()
            .views()
            .into_iter()
            .map(|v| (v.id, v.pid))
            .collect();
        Ok(summarize_trace(
            meta,
            &page.events,
            page.truncated,
            top,
            &pids,
        ))
    }
}

#[derive(Default)]
struct FnStats {
    calls: u64,
    total_ns: f64,
    max_ns: f64,
    exceptions: u64,
}

/// Per-function counts and durations, the slowest calls and the exceptions of trace batches.
fn summarize_trace(
    meta: Value,
    batches: &[scry_store::EventRow],
    truncated: bool,
    top: usize,
    pids: &std::collections::HashMap<i64, u32>,
) -> Value {
    use std::collections::BTreeMap;
    let mut per_fn: BTreeMap<String, FnStats> = BTreeMap::new();
    let mut slowest: Vec<(f64, String, i64, String)> = Vec::new();
    let mut exceptions: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    let mut records = 0u64;
    for batch in batches {
        let d = &batch.data;
        let names: Vec<String> = d["functions"]
            .as_array()
            .map(|f| {
                f.iter()
                    .map(|f| {
                        format!(
                            "{}:{}",
                            f["module"].as_str().unwrap_or("?"),
                            f["function"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        for r in d["records"].as_array().into_iter().flatten() {
            records += 1;
            let Some(name) = r["f"].as_u64().and_then(|i| names.get(i as usize)) else {
                continue;
            };
            let s = per_fn.entry(name.clone()).or_default();
            match r["e"].as_str() {
                Some("call") => s.calls += 1,
                Some(e @ ("return" | "exception")) => {
                    let dur = r["dur"].as_f64().unwrap_or(0.0);
                    s.total_ns += dur;
                    s.max_ns = s.max_ns.max(dur);
                    let thread = d["threads"][r["tid"].to_string().as_str()]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    slowest.push((dur, name.clone(), batch.process_id, thread));
                    if e == "exception" {
                        s.exceptions += 1;
                        let ty = r["exc"]["type"].as_str().unwrap_or("exception").to_owned();
                        let entry = exceptions
                            .entry((name.clone(), ty))
                            .or_insert((0, String::new()));
                        entry.0 += 1;
                        if entry.1.is_empty() {
                            entry.1 = r["exc"]["message"]
                                .as_str()
                                .unwrap_or("")
                                .chars()
                                .take(200)
                                .collect();
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let ms = |ns: f64| (ns / 1e4).round() / 100.0;
    let mut fns: Vec<(&String, &FnStats)> = per_fn.iter().collect();
    fns.sort_by(|a, b| b.1.total_ns.total_cmp(&a.1.total_ns));
    let fn_rows: Vec<Value> = fns
        .iter()
        .take(top)
        .map(|(n, s)| {
            let ended = s.calls.max(1) as f64;
            json!([
                n,
                s.calls,
                ms(s.total_ns),
                ms(s.total_ns / ended),
                ms(s.max_ns),
                s.exceptions
            ])
        })
        .collect();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    let slow_rows: Vec<Value> = slowest
        .iter()
        .take(top)
        .map(|(d, n, p, t)| json!([n, ms(*d), pids.get(p).copied(), t]))
        .collect();
    let exc_rows: Vec<Value> = exceptions
        .iter()
        .take(top)
        .map(|((n, t), (c, m))| json!([n, t, c, m]))
        .collect();
    json!({
        "trace": meta["id"], "state": meta["state"],
        "records": records, "batches_truncated": truncated,
        "functions": {"columns": ["function", "calls", "total_ms", "mean_ms", "max_ms", "exceptions"], "rows": fn_rows, "total": per_fn.len(), "truncated": per_fn.len() > top},
        "slowest_calls": {"columns": ["function", "ms", "pid", "thread"], "rows": slow_rows, "truncated": slowest.len() > top},
        "exceptions": {"columns": ["function", "type", "count", "first_message"], "rows": exc_rows, "truncated": exceptions.len() > top},
    })
}

/// The line for `observe`: after the first binding (or at it), else at the first read.
fn choose_line(found: &Value, after: bool) -> Option<(u64, String)> {
    let col = |t: &Value, name: &str| {
        t["columns"]
            .as_array()
            .and_then(|c| c.iter().position(|x| x == name))
    };
    let b = &found["bindings"];
    if let Some(row) = b["rows"].as_array().and_then(|r| r.first()) {
        let at = |n: &str| {
            col(b, n)
                .and_then(|i| row.get(i))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let bound = at("line");
        let src = at("source");
        if after {
            if let Some(l) = at("after_line").as_u64() {
                return Some((
                    l,
                    format!(
                        "just after `{}` (line {bound}) assigns it",
                        src.as_str().unwrap_or("?")
                    ),
                ));
            }
        }
        if let Some(l) = at("probe_line").as_u64() {
            return Some((
                l,
                format!(
                    "at the line that assigns it: `{}`",
                    src.as_str().unwrap_or("?")
                ),
            ));
        }
    }
    let r = &found["reads"];
    let row = r["rows"].as_array().and_then(|r| r.first())?;
    let l = col(r, "probe_line")
        .and_then(|i| row.get(i))
        .and_then(Value::as_u64)?;
    Some((l, "at its first read".into()))
}

/// A probe without the fields an agent never needs (`{"probes": [one]}` answers too).
fn compact_probe(v: Value) -> Value {
    if let Some([one]) = v["probes"].as_array().map(Vec::as_slice) {
        return compact_probe(one.clone());
    }
    if v.get("id").is_none() {
        return v;
    }
    let processes: Vec<Value> = v["processes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| json!({"pid": p["pid"], "state": p["state"], "line": p["line"], "reason": p["reason"], "hits": p["hits"], "dropped": p["dropped"]}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": v["id"], "name": v["name"], "location": v["location"], "expressions": v["expressions"],
        "condition": v["condition"], "enabled": v["enabled"], "unsafe": v["unsafe"], "totals": v["totals"], "processes": processes,
        "notes": v.get("notes"), "hint": v.get("hint"),
    })
}

/// A typed capture as plain JSON when it is a scalar; the typed object otherwise.
fn plain(typed: &Value) -> Value {
    match typed["t"].as_str() {
        Some("int" | "float" | "str" | "bool") => typed["v"].clone(),
        Some("none") => Value::Null,
        _ => typed.clone(),
    }
}

/// Events as one table: a column per expression, plain values, their Python types apart.
pub fn events_table(events: &[Value]) -> Value {
    let mut exprs: Vec<String> = Vec::new();
    let mut types = serde_json::Map::new();
    for e in events {
        if let Some(values) = e["data"]["values"].as_object() {
            for (k, v) in values {
                if !exprs.contains(k) {
                    exprs.push(k.clone());
                }
                if let Some(t) = v["t"].as_str() {
                    types.entry(k.clone()).or_insert_with(|| json!(t));
                }
            }
        }
    }
    let mut columns = vec![
        "id".to_owned(),
        "t".into(),
        "pid".into(),
        "probe".into(),
        "line".into(),
    ];
    columns.extend(exprs.iter().cloned());
    let rows: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut row = vec![
                e["id"].clone(),
                e["t_hit"].clone(),
                e["pid"].clone(),
                e["source"].clone(),
                e["data"]["line"].clone(),
            ];
            for x in &exprs {
                let v = &e["data"]["values"][x.as_str()];
                row.push(if v.is_null() { Value::Null } else { plain(v) });
            }
            Value::Array(row)
        })
        .collect();
    json!({"columns": columns, "rows": rows, "types": types})
}

/// A dump with one line per frame.
fn compact_dump(d: &scry_proc::stacks::Dump) -> Value {
    let processes: Vec<Value> = d
        .processes
        .iter()
        .map(|p| {
            let threads: Vec<Value> = p
                .threads
                .iter()
                .map(|t| {
                    let frames: Vec<String> = t.frames.iter().map(|f| format!("{} ({}:{})", f.function, f.file, f.line)).collect();
                    json!({"thread": t.name.clone().unwrap_or_else(|| t.python_thread_id.to_string()), "os_id": t.os_thread_id,
                           "holds_gil": t.holds_gil, "status": t.status, "frames": frames,
                           "locals": if t.frames.iter().any(|f| f.locals.is_some()) { json!(t.frames.iter().map(|f| &f.locals).collect::<Vec<_>>()) } else { Value::Null }})
                })
                .collect();
            json!({"pid": p.pid, "ppid": p.ppid, "kind": p.kind, "python": p.python_version, "command": p.cmdline.join(" "),
                   "state": p.state, "wchan": p.wchan, "error": p.error, "threads": threads})
        })
        .collect();
    json!({"root_pid": d.root_pid, "tree": d.tree, "frame_order": "innermost_first", "processes": processes})
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
