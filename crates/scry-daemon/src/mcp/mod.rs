//! MCP (Model Context Protocol) for AI agents: the tools an agent needs to find a line, watch
//! it live and reason from real values, served over streamable HTTP at `/mcp` (and over stdio by
//! `scry mcp`, which relays to this endpoint).
//!
//! Built on the official Rust SDK (`rmcp`): each tool is a method with a description that tells
//! an agent when and how to use it, and typed parameters ([`args`]) whose JSON schema the SDK
//! publishes and enforces (a bad argument is refused with serde's message before the tool runs).
//! Every tool calls [`crate::service`] functions directly, as the REST API does ([`TOOLS`] says
//! which), and fails with the same [`scry_api::Error`]; [`shape`] makes their answers compact.
//!
//! Answers are compact JSON: lists of records are tables (`columns` + `rows`), captured values
//! are plain JSON where they are scalars, and every list says when it was cut (`truncated`).
//!
//! Not for: anything the REST API does not also offer (MCP is one more face of the same daemon).

use std::sync::Arc;
use std::time::Duration;

pub mod args;
pub mod shape;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_handler, tool_router, ServerHandler};
use scry_api::{AttachRequest, Error, LinesRequest, NewProbe, NewTrace};
use serde_json::{json, Value};

use crate::service::{attach, dumps, events, lines, probes, processes, traces};
use crate::Shared;
use args::*;
use scry_api::EventFilter;
use shape::{choose_line, compact_dump, compact_probe, events_table, summarize_trace};

/// The longest `timeout_s` of `attach` (as `scry attach --timeout`): the whole attach runs
/// within one tool call.
const ATTACH_MAX_TIMEOUT_S: f64 = 30.0;

/// Every tool, with the service functions it calls (a test checks that they exist and that
/// every tool of the router is listed here).
pub const TOOLS: &[(&str, &[&str])] = &[
    ("list_processes", &["processes::list"]),
    ("wake", &["processes::wake"]),
    ("attach", &["attach::attach_request"]),
    ("detach", &["attach::detach"]),
    ("sleep", &["processes::sleep"]),
    ("find_lines", &["lines::find_lines"]),
    ("add_probe", &["probes::add"]),
    ("list_probes", &["probes::list"]),
    ("remove_probe", &["probes::remove"]),
    ("enable_probe", &["probes::enable"]),
    ("disable_probe", &["probes::disable"]),
    (
        "observe",
        &[
            "lines::find_lines",
            "events::newest_id",
            "probes::add",
            "events::wait_for",
            "probes::get",
            "probes::remove",
        ],
    ),
    ("query_events", &["events::page"]),
    ("event_stats", &["events::stats_of"]),
    ("wait_for_hits", &["events::wait_for"]),
    ("dump_stacks", &["dumps::take"]),
    ("trace_start", &["traces::start"]),
    ("trace_stop", &["traces::stop"]),
    ("trace_summary", &["traces::get", "traces::batches"]),
];

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

fn invalid(message: impl Into<String>) -> Error {
    Error::bad_request(message)
}

fn value_of(v: impl serde::Serialize) -> ToolResult {
    serde_json::to_value(v).map_err(|e| Error::internal(e.to_string()))
}

/// A tool's answer, or its failure for the agent: what went wrong and what to do.
type ToolResult = Result<Value, Error>;

fn answer<T: serde::Serialize>(r: Result<T, Error>) -> CallToolResult {
    match r.and_then(value_of) {
        Ok(v) => CallToolResult::success(vec![ContentBlock::text(v.to_string())]),
        Err(e) => {
            CallToolResult::error(vec![ContentBlock::text(json!({ "error": e }).to_string())])
        }
    }
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
        let list = processes::list(&self.shared, a.include_gone)
            .await
            .processes;
        let rows: Vec<Value> = list
            .iter()
            .map(|p| match p {
                scry_api::ProcessEntry::Agent(v) => json!([
                    v.pid,
                    v.ppid,
                    v.name,
                    v.state,
                    v.python_version,
                    v.origin,
                    v.argv.join(" ")
                ]),
                scry_api::ProcessEntry::Discovery(c) => json!([
                    c.pid,
                    Value::Null,
                    c.name,
                    c.state,
                    c.python_version,
                    Value::Null,
                    Value::Null
                ]),
            })
            .collect();
        answer(Ok(json!({
            "columns": ["pid", "ppid", "name", "state", "python", "origin", "command"],
            "rows": rows,
        })))
    }

    #[tool(
        description = "Wake a sleeping embedded scry client (by pid or name) so that it connects and can be probed. Needed when list_processes shows state=sleeping. A name wakes every process registered under it (the workers of a service share one); `pid` narrows it to one of them. The answer lists each process acted on (`processes`) and any that failed (`failed`)."
    )]
    async fn wake(&self, Parameters(a): Parameters<TargetArgs>) -> CallToolResult {
        answer(processes::wake(&self.shared, a.target.trim(), a.pid).await)
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
        answer(attach::detach(&self.shared, a.pid).await)
    }

    #[tool(
        description = "Put an awake agent back to sleep (by pid or name): every probe hook is removed and the connection closed; the process then costs nothing. A name puts every process registered under it to sleep; `pid` narrows it to one of them. The answer lists each process acted on (`processes`)."
    )]
    async fn sleep(&self, Parameters(a): Parameters<TargetArgs>) -> CallToolResult {
        answer(processes::sleep(&self.shared, a.target.trim(), a.pid).await)
    }

    #[tool(
        description = "Find the line to probe, from the code loaded in the live process (not a file on disk). For a function or file: its executable lines with source. With `var`: where the variable is bound (with `after_line`, the first line where the new value is visible: probe there to see it) and where it is read, per function scope (nested functions, comprehensions and shadowed names are told apart). Says `file_differs` when the file was edited after it was loaded. Use before add_probe; observe does this for you."
    )]
    async fn find_lines(&self, Parameters(req): Parameters<LinesRequest>) -> CallToolResult {
        answer(lines::find_lines(&self.shared, req).await)
    }

    #[tool(
        description = "Add a probe: evaluate Python expressions each time a line runs in live processes, without pausing them. Prefer a line from find_lines. Returns the probe id and its state per process (armed, pending until the module is imported, or error with the reason). Read its values with query_events / wait_for_hits / event_stats; remove it when done."
    )]
    async fn add_probe(&self, Parameters(a): Parameters<AddProbeArgs>) -> CallToolResult {
        let rate = match (a.first, a.max_per_second) {
            (Some(_), Some(_)) => {
                return answer::<Value>(Err(invalid("give `first` or `max_per_second`, not both")))
            }
            (Some(n), None) => Some(scry_api::RateMode::First { n }),
            (None, Some(per_second)) => Some(scry_api::RateMode::Rate { per_second }),
            (None, None) => None,
        };
        let request = NewProbe {
            location: a.location,
            expressions: a.expressions,
            stack: a.stack,
            pid: a.pid,
            name: a.name,
            condition: a.condition,
            ttl: a.ttl.map(scry_api::Ttl::Duration),
            rate,
            ..NewProbe::default()
        };
        answer(
            probes::add(&self.shared, request)
                .await
                .and_then(value_of)
                .map(compact_probe),
        )
    }

    #[tool(
        description = "List every probe with its location, expressions and its state and counters (hits, dropped) in each process."
    )]
    async fn list_probes(&self, Parameters(_a): Parameters<NoArgs>) -> CallToolResult {
        answer(value_of(probes::list(&self.shared)).map(|v| {
            let probes: Vec<Value> = v["probes"]
                .as_array()
                .map(|a| a.iter().cloned().map(compact_probe).collect())
                .unwrap_or_default();
            json!({"probes": probes})
        }))
    }

    #[tool(
        description = "Remove a probe (by id or name) from every process; its stored events stay queryable by its id."
    )]
    async fn remove_probe(&self, Parameters(a): Parameters<ProbeArgs>) -> CallToolResult {
        answer(
            probes::remove(&self.shared, &a.probe)
                .await
                .and_then(value_of),
        )
    }

    #[tool(description = "Enable a disabled probe again (by id or name).")]
    async fn enable_probe(&self, Parameters(a): Parameters<ProbeArgs>) -> CallToolResult {
        answer(
            probes::enable(&self.shared, &a.probe)
                .await
                .and_then(value_of)
                .map(compact_probe),
        )
    }

    #[tool(
        description = "Disable a probe (by id or name): kept, but not armed in any process until enabled."
    )]
    async fn disable_probe(&self, Parameters(a): Parameters<ProbeArgs>) -> CallToolResult {
        answer(
            probes::disable(&self.shared, &a.probe)
                .await
                .and_then(value_of)
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
        answer(events::stats_of(&self.shared, &a.filter()).await)
    }

    #[tool(
        description = "Block until `count` new hits (matching the filters) are stored, or `timeout_s` passes, then return them as a table; `reached` says which. Use after add_probe instead of polling query_events; pass the answer's `cursor` as `after_id` to continue without missing or repeating hits."
    )]
    async fn wait_for_hits(&self, Parameters(a): Parameters<WaitArgs>) -> CallToolResult {
        let filter = EventFilter {
            after_id: a.after_id,
            ..a.filter.filter()
        };
        let r = events::wait_for(&self.shared, filter, a.count, a.timeout_s).await;
        answer(r.and_then(|mut waited| {
            let table = events_table(&std::mem::take(&mut waited.events));
            let mut v = value_of(waited)?;
            v["events"] = table;
            Ok(v)
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
        answer(dumps::take(a.pid, options).await.map(|d| compact_dump(&d)))
    }

    #[tool(
        description = "Start tracing calls of selected functions (functions, or module prefixes in include) in a process: every call, return and exception with its duration, at a small cost only in the traced functions. Returns the trace id; stop it with trace_stop and read trace_summary."
    )]
    async fn trace_start(&self, Parameters(a): Parameters<TraceStartArgs>) -> CallToolResult {
        if a.functions.is_empty() && a.include.is_empty() {
            return answer::<Value>(Err(invalid("give `functions` (module:function) or `include` (module prefixes): tracing everything is refused")));
        }
        let request = NewTrace {
            target: a.target,
            pid: a.pid,
            functions: a.functions,
            include: a.include,
            exclude: a.exclude,
            args: a.args,
            returns: a.returns,
            duration: a.duration_s,
            max_rate: None,
        };
        answer(
            traces::start(&self.shared, request)
                .await
                .and_then(value_of),
        )
    }

    #[tool(
        description = "Stop a trace (by id) in every process it runs in; its records stay for trace_summary."
    )]
    async fn trace_stop(&self, Parameters(a): Parameters<TraceArgs>) -> CallToolResult {
        answer(
            traces::stop(&self.shared, &a.trace)
                .await
                .and_then(value_of),
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
    /// The names of the tools this server offers.
    pub fn tool_names() -> Vec<String> {
        Self::tool_router()
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect()
    }

    async fn attach_impl(&self, a: AttachArgs) -> ToolResult {
        let timeout_ms = match a.timeout_s {
            None => None,
            Some(t) if t > 0.0 && t <= ATTACH_MAX_TIMEOUT_S => Some(t * 1e3),
            Some(t) => {
                return Err(invalid(format!(
                    "`timeout_s` must be more than 0 and at most {ATTACH_MAX_TIMEOUT_S} seconds, not {t}"
                )))
            }
        };
        let injector = match a.injector {
            InjectorArg::Auto => None,
            InjectorArg::Pep768 => Some("pep768".to_owned()),
            InjectorArg::Gdb => Some("gdb".to_owned()),
        };
        let request = AttachRequest {
            pid: a.pid,
            timeout_ms,
            injector,
        };
        value_of(attach::attach_request(&self.shared, &request).await?)
    }

    async fn query_impl(&self, a: QueryArgs) -> ToolResult {
        let order = match a.order {
            OrderArg::Newest => "newest",
            OrderArg::Oldest => "oldest",
        };
        let mut page = events::page(
            &self.shared,
            &a.filter.filter(),
            Some(a.limit.unwrap_or(50)),
            Some(order),
        )
        .await?;
        let table = events_table(&std::mem::take(&mut page.events));
        let mut v = value_of(page)?;
        v["events"] = table;
        Ok(v)
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
        let timeout_s = a.timeout_s.unwrap_or(10.0);
        events::wait_timeout(Some(timeout_s))?;
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
        let found = lines::find_lines(
            &self.shared,
            LinesRequest {
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
        let pid = Some(found.pid);
        let file = found.file.clone();
        let (line, why) = match a.line {
            Some(l) => (l as u64, format!("line {l} as given")),
            None => choose_line(&found, after).ok_or_else(|| {
                Error::not_found(format!(
                    "`{}` is neither bound nor read in {} as loaded",
                    a.var.as_deref().unwrap_or(""),
                    a.target
                ))
                .hint("check the name with find_lines (without var it lists the function's lines), or give `line`")
            })?,
        };
        let location = format!("{file}:{line}");
        let cursor = events::newest_id(&self.shared).await?;
        let request = NewProbe {
            location: location.clone(),
            expressions: vec![expression.clone()],
            rate: Some(scry_api::RateMode::First { n: hits as u64 }),
            pid,
            condition: a.condition.clone(),
            ..NewProbe::default()
        };
        let probe = probes::add(&self.shared, request).await?;
        let id = probe.def.spec.id.clone();
        let filter = EventFilter {
            probe: Some(id.clone()),
            after_id: Some(cursor),
            ..Default::default()
        };
        let waited = events::wait_for(&self.shared, filter, Some(hits), Some(timeout_s)).await;
        let status = probes::get(&self.shared, &id)
            .and_then(value_of)
            .map(compact_probe)
            .ok();
        if !a.keep {
            let _ = probes::remove(&self.shared, &id).await;
        }
        let waited = waited?;
        Ok(json!({
            "location": location,
            "line": line,
            "chosen": why,
            "expression": expression,
            "probe": id,
            "kept": a.keep,
            "reached": waited.reached,
            "wanted": hits,
            "hits": events_table(&waited.events),
            "probe_state": status.map(|s| s["processes"].clone()),
            "file_differs": found.file_differs,
        }))
    }
}

impl ScryMcp {
    async fn trace_summary_impl(&self, id: &str, top: usize) -> ToolResult {
        let meta = traces::get(&self.shared, id).await?;
        let page = traces::batches(&self.shared, id).await?;
        let pids: std::collections::HashMap<i64, u32> = self
            .shared
            .registry()
            .views()
            .into_iter()
            .map(|v| (v.id, v.pid))
            .collect();
        Ok(summarize_trace(
            &meta,
            &page.events,
            page.truncated,
            top,
            &pids,
        ))
    }
}
