//! Finding the line: `POST /api/v1/lines` (and `find_lines`) asks a process's agent (the `find_lines` call) for
//! the executable lines of a file or function and, with `var`, where a variable is bound and
//! read. The answer comes from the code loaded in that process, never from a file on the
//! daemon's disk; the shape is described in `docs/agents.md`.
//!
//! Not for: arming probes (the caller adds one at a line it chose).

use std::time::Duration;

use scry_api::{FoundLines, LinesRequest};
use serde_json::json;

use super::{Error, ErrorKind, Result};
use crate::state::registry::ProcState;
use crate::Shared;

/// The process that answers a request naming `pid` (or none): its registry id and pid.
pub fn pick_process(shared: &Shared, pid: Option<u32>, method: &str) -> Result<(i64, u32)> {
    if let Some(pid) = pid {
        return super::calls::live_process_id(shared, pid).map(|id| (id, pid));
    }
    let want = format!("call:{method}");
    let awake: Vec<(i64, u32)> = shared
        .registry()
        .views()
        .into_iter()
        .filter(|v| v.state == ProcState::Awake && v.capabilities.iter().any(|c| c == &want))
        .map(|v| (v.id, v.pid))
        .collect();
    match awake.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::new(
            ErrorKind::NotFound,
            "no awake process can answer: give a pid",
        )
        .hint("see `scry ps`; wake a sleeping client with `scry wake PID`")),
        many => Err(Error::new(
            ErrorKind::Ambiguous,
            format!(
                "{} awake processes could answer (pids {}): say which",
                many.len(),
                many.iter()
                    .map(|p| p.1.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .hint("pass `pid`")),
    }
}

/// Asks the process's agent; the shared implementation of the REST endpoint, `scry lines` and
/// the MCP `find_lines` tool.
pub async fn find_lines(shared: &Shared, req: LinesRequest) -> Result<FoundLines> {
    if req.target.trim().is_empty() {
        return Err(Error::bad_request(
            "`target` is empty: give a file (app/orders.py) or a function (orders:checkout)",
        ));
    }
    let (process_id, pid) = pick_process(shared, req.pid, "find_lines")?;
    let mut params = json!({"target": req.target.trim()});
    if let Some(var) = &req.var {
        params["var"] = json!(var);
    }
    if let Some(limit) = req.limit {
        params["limit"] = json!(limit);
    }
    let mut answer = super::calls::call(
        shared,
        process_id,
        "find_lines",
        params,
        Duration::from_secs(20),
    )
    .await
    .map_err(|e| super::calls::call_error(e, pid))?;
    answer["pid"] = json!(pid);
    serde_json::from_value(answer).map_err(|e| {
        Error::new(
            ErrorKind::Agent,
            format!("the agent of pid {pid} answered find_lines in a shape this daemon does not read: {e}"),
        )
        .hint("the agent may be another version of scry: `scry ps` shows its version")
    })
}

/// How long the add-time location check waits for each process (an agent that does not
/// answer quickly must not hold up the add; the probe is still sent to it).
pub const LOCATION_WAIT: Duration = Duration::from_secs(2);

/// What the add-time location check found, for the answer to the caller.
#[derive(Debug, Default)]
pub struct LocationCheck {
    /// Things the caller should know (not loaded anywhere, not checked).
    pub notes: Vec<String>,
    /// What to do about them.
    pub hint: Option<String>,
}

/// The file and line of a `path.py:LINE` or `@path.py#LINE` location (none for functions).
fn file_and_line(location: &str) -> Option<(&str, u32)> {
    let (path, line) = match location.strip_prefix('@') {
        Some(rest) => rest.rsplit_once('#')?,
        None => location.rsplit_once(':')?,
    };
    Some((path, line.parse().ok()?))
}

/// Checks a probe's line against the connected (awake) processes it targets, asking each
/// agent `find_lines` for the file (in parallel, at most [`LOCATION_WAIT`] each): a line past
/// the end of the file as a process loaded it is refused; a file that no connected process has
/// loaded (or no process to ask) is accepted as pending, with a note saying so.
pub async fn check_location(
    shared: &Shared,
    location: &str,
    target: &scry_api::Target,
) -> Result<LocationCheck> {
    let Some((path, line)) = file_and_line(location) else {
        return Ok(LocationCheck::default());
    };
    let asked: Vec<(i64, u32)> = shared
        .registry()
        .views()
        .into_iter()
        .filter(|v| {
            v.state == ProcState::Awake
                && v.capabilities.iter().any(|c| c == "call:find_lines")
                && crate::state::probes::targets(target, v)
        })
        .map(|v| (v.id, v.pid))
        .collect();
    if asked.is_empty() {
        return Ok(LocationCheck {
            notes: vec![format!(
                "no process is connected, so `{path}` could not be checked: the probe is pending \
                 and arms when a process loads it"
            )],
            hint: Some(format!(
                "check the path with `scry lines {path}` once a process runs it"
            )),
        });
    }
    let answers = futures_util::future::join_all(asked.iter().map(|&(id, pid)| async move {
        let params = json!({"target": path, "limit": 1});
        (
            pid,
            super::calls::call(shared, id, "find_lines", params, LOCATION_WAIT).await,
        )
    }))
    .await;
    let (mut loaded, mut not_loaded, mut silent) = (Vec::new(), Vec::new(), Vec::new());
    for (pid, answer) in answers {
        match answer {
            Ok(found) => {
                let file = found["file"].as_str().unwrap_or(path);
                if let Some(last) = found["last_line"].as_u64() {
                    if u64::from(line) > last {
                        return Err(Error::new(
                            ErrorKind::BadLocation,
                            format!(
                                "line {line} is past the end of {file}: its last line is {last} \
                                 (as loaded in pid {pid})"
                            ),
                        )
                        .hint(format!(
                            "`scry lines {path} --pid {pid}` lists its executable lines"
                        )));
                    }
                }
                loaded.push(pid);
            }
            Err(super::calls::CallError::Refused { kind, .. }) if kind == "not_found" => {
                not_loaded.push(pid)
            }
            // Several files match, or something else the agent will report as the probe's
            // state: not a reason to refuse here.
            Err(super::calls::CallError::Refused { .. }) => loaded.push(pid),
            Err(_) => silent.push(pid),
        }
    }
    let pids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let mut check = LocationCheck::default();
    if loaded.is_empty() && !not_loaded.is_empty() {
        check.notes.push(format!(
            "no connected process has loaded {path} (asked pid {}): the probe is pending and \
             arms when one imports it",
            pids(&not_loaded)
        ));
        check.hint = Some(format!(
            "check the path with `scry lines {path} --pid {}`",
            not_loaded[0]
        ));
    }
    if !silent.is_empty() {
        check.notes.push(format!(
            "pid {} did not answer within {} s: the location was not checked there",
            pids(&silent),
            LOCATION_WAIT.as_secs()
        ));
    }
    Ok(check)
}
