//! Processes: the ones scry knows (agents that connected, sleeping clients found through their
//! discovery files), one by pid, and waking or putting to sleep an embedded client.

use std::time::Duration;

use scry_api::{
    DiscoveredClient, ProcessEntry, ProcessFailure, ProcessList, ProcessView, Slept, SleptProcess,
    Woken, WokenProcess,
};
use serde_json::{json, Value};

use super::{Error, ErrorKind, Result};
use crate::clients::{self, ClientFile};
use crate::state::registry::{AgentHandle, ProcState, RequestError};
use crate::Shared;

/// How long a gone process stays in the default listing.
const RECENTLY_GONE: f64 = 15.0 * 60.0;

/// Every process scry knows: agents' processes (gone ones of the last 15 minutes, or all with
/// `all_gone`) and sleeping clients the daemon has not heard from. Processes that exited since
/// the last liveness sweep are marked gone first, so that a list never shows a process that
/// just ended (`scry demo --stop` then `scry ps`) as sleeping.
pub async fn list(shared: &Shared, all_gone: bool) -> ProcessList {
    super::agents::sweep(shared).await;
    let views = shared.registry().views();
    let cutoff = crate::now() - RECENTLY_GONE;
    let mut out = Vec::new();
    let mut live_pids = Vec::new();
    for v in views {
        if v.state == ProcState::Gone && !all_gone && v.last_heard < cutoff {
            continue;
        }
        if v.state != ProcState::Gone {
            live_pids.push(v.pid);
        }
        out.push(ProcessEntry::Agent(Box::new(v)));
    }
    // Sleeping embedded clients the daemon has not heard from (e.g. started before the daemon).
    for c in clients::discover(&shared.home) {
        if live_pids.contains(&c.pid) {
            continue;
        }
        out.push(ProcessEntry::Discovery(DiscoveredClient {
            pid: c.pid,
            name: c.name.clone(),
            state: ProcState::Sleeping,
            python_version: c
                .python_version
                .as_ref()
                .and_then(Value::as_str)
                .map(str::to_owned),
            executable: c.executable.clone(),
            argv: scry_proc::info(c.pid)
                .map(|p| p.cmdline)
                .unwrap_or_default(),
            control: c.control(),
            first_seen: c.started_at,
        }));
    }
    ProcessList { processes: out }
}

/// The process with this pid: the live one when there is one, else the newest gone one.
pub async fn get(shared: &Shared, pid: u32) -> Result<ProcessEntry> {
    let all = list(shared, true).await.processes;
    let live = all
        .iter()
        .find(|p| p.pid() == pid && p.state() != ProcState::Gone);
    live.or_else(|| all.iter().find(|p| p.pid() == pid))
        .cloned()
        .ok_or_else(|| {
            Error::not_found(format!("scry knows no process {pid}"))
                .hint("see `scry ps`; a process that never loaded scry must be attached first")
        })
}

/// A process named by pid or registered name.
pub fn parse_target(v: &Value) -> Result<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        _ => Err(Error::bad_request(
            "`target` must be a pid or a process name",
        )),
    }
}

/// The live embedded clients `target` names (a pid, or every client registered under a name),
/// narrowed to `pid` when given.
fn find_clients(shared: &Shared, target: &str, pid: Option<u32>) -> Vec<ClientFile> {
    clients::discover(&shared.home)
        .into_iter()
        .filter(|c| names(target, c.pid, c.name.as_deref()) && pid.is_none_or(|p| c.pid == p))
        .collect()
}

/// Whether `target` (a pid or a name) names the process with this pid and name.
fn names(target: &str, pid: u32, name: Option<&str>) -> bool {
    match target.parse::<u32>() {
        Ok(p) => p == pid,
        Err(_) => name == Some(target),
    }
}

/// The error when `target` (narrowed to `pid`) names no process that can be woken or slept.
fn nothing_named(shared: &Shared, target: &str, pid: Option<u32>) -> Error {
    if let Some(pid) = pid {
        // Name the processes the target does mean, so that the right pid is one look away.
        let others: Vec<String> = find_clients(shared, target, None)
            .iter()
            .map(|c| c.pid.to_string())
            .collect();
        if !others.is_empty() {
            return Error::not_found(format!(
                "pid {pid} is not one of the processes {}: pids {}",
                describe(target),
                others.join(", ")
            ))
            .hint("give one of those pids with `--pid`, or leave `--pid` out to act on all");
        }
    }
    Error::not_found(format!(
        "no embedded scry client {} is running",
        describe(target)
    ))
    .hint("see `scry ps`; the program must call `scry.init()` (or be attached with `scry attach PID`)")
}

fn describe(target: &str) -> String {
    if target.parse::<u32>().is_ok() {
        format!("with pid {target}")
    } else {
        format!("named `{target}`")
    }
}

/// The answer for several processes acted on at once: the successes, and the failures by pid.
/// Failing everywhere is an error (the only one's, or one that names them all).
fn gather<T>(
    target: &str,
    verb: &str,
    results: Vec<(u32, Result<T>)>,
) -> Result<(Vec<T>, Vec<ProcessFailure>)> {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (pid, r) in results {
        match r {
            Ok(t) => done.push(t),
            Err(error) => failed.push(ProcessFailure { pid, error }),
        }
    }
    if !done.is_empty() {
        return Ok((done, failed));
    }
    if let [one] = failed.as_slice() {
        return Err(one.error.clone());
    }
    let first = failed.first().map(|f| f.error.clone());
    let detail: Vec<String> = failed
        .iter()
        .map(|f| format!("pid {}: {}", f.pid, f.error.message))
        .collect();
    let kind = first.as_ref().map_or(ErrorKind::Other, |e| e.kind);
    let mut e = Error::new(
        kind,
        format!(
            "could not {verb} any of the {} processes {}: {}",
            failed.len(),
            describe(target),
            detail.join("; ")
        ),
    );
    if let Some(hint) = first.and_then(|f| f.hint) {
        e = e.hint(hint);
    }
    Err(e)
}

/// Wakes the embedded clients `target` names (a pid, or every process registered under a
/// name; `pid` narrows it to one of them), all at once, and waits until their agents are
/// registered. Those already awake are left as they are.
pub async fn wake(shared: &Shared, target: &str, pid: Option<u32>) -> Result<Woken> {
    let awake: Vec<ProcessView> = shared
        .registry()
        .find(target)
        .into_iter()
        .filter(|e| e.agent.is_some() && pid.is_none_or(|p| e.view.pid == p))
        .map(|e| e.view.clone())
        .collect();
    let asleep: Vec<ClientFile> = find_clients(shared, target, pid)
        .into_iter()
        .filter(|c| !awake.iter().any(|v| v.pid == c.pid))
        .collect();
    if awake.is_empty() && asleep.is_empty() {
        return Err(nothing_named(shared, target, pid));
    }
    let wakes = asleep
        .iter()
        .map(|c| async move { (c.pid, wake_one(shared, c).await) });
    let mut results: Vec<(u32, Result<WokenProcess>)> = awake
        .into_iter()
        .map(|process| {
            (
                process.pid,
                Ok(WokenProcess {
                    already_awake: true,
                    process,
                }),
            )
        })
        .collect();
    results.extend(futures_util::future::join_all(wakes).await);
    results.sort_by_key(|(pid, _)| *pid);
    let (processes, failed) = gather(target, "wake", results)?;
    Ok(Woken {
        already_awake: processes.iter().all(|p| p.already_awake),
        process: processes[0].process.clone(),
        processes,
        failed,
    })
}

/// Wakes one client through its control plane and waits until its agent is registered.
async fn wake_one(shared: &Shared, client: &ClientFile) -> Result<WokenProcess> {
    let daemon_url = format!("unix://{}", shared.home.agent_socket().display());
    clients::control(
        client,
        shared.token.as_deref(),
        "wake",
        Some(json!({"daemon_url": daemon_url})),
    )
    .await
    .map_err(|e| Error::new(ErrorKind::ControlPlane, e.to_string()))?;
    // The client answers after its welcome, so it is registered by now; allow a little slack.
    for _ in 0..50 {
        let view = shared
            .registry()
            .find(&client.pid.to_string())
            .into_iter()
            .find(|e| e.agent.is_some())
            .map(|e| e.view.clone());
        if let Some(process) = view {
            return Ok(WokenProcess {
                already_awake: false,
                process,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::new(
        ErrorKind::Timeout,
        format!(
            "pid {} said it woke but did not connect within 5 s",
            client.pid
        ),
    ))
}

/// Puts the awake agents `target` names (a pid, or every process registered under a name;
/// `pid` narrows it to one of them) to sleep, all at once. Sleeping clients of the name are
/// reported as such.
pub async fn sleep(shared: &Shared, target: &str, pid: Option<u32>) -> Result<Slept> {
    let agents: Vec<(ProcessView, AgentHandle)> = shared
        .registry()
        .find(target)
        .into_iter()
        .filter(|e| pid.is_none_or(|p| e.view.pid == p))
        .filter_map(|e| e.agent.clone().map(|a| (e.view.clone(), a)))
        .collect();
    let asleep: Vec<ClientFile> = find_clients(shared, target, pid)
        .into_iter()
        .filter(|c| !agents.iter().any(|(v, _)| v.pid == c.pid))
        .collect();
    if agents.is_empty() && asleep.is_empty() {
        return Err(nothing_named(shared, target, pid));
    }
    let sleeps = agents
        .iter()
        .map(|(view, agent)| async move { (view.pid, sleep_one(view, agent).await) });
    let mut results: Vec<(u32, Result<SleptProcess>)> = asleep
        .into_iter()
        .map(|c| {
            (
                c.pid,
                Ok(SleptProcess {
                    pid: c.pid,
                    name: c.name,
                    already_sleeping: true,
                }),
            )
        })
        .collect();
    results.extend(futures_util::future::join_all(sleeps).await);
    results.sort_by_key(|(pid, _)| *pid);
    let (processes, failed) = gather(target, "put to sleep", results)?;
    Ok(Slept {
        already_sleeping: processes.iter().all(|p| p.already_sleeping),
        pid: processes[0].pid,
        processes,
        failed,
    })
}

/// Asks one agent to sleep.
async fn sleep_one(view: &ProcessView, agent: &AgentHandle) -> Result<SleptProcess> {
    let reply = agent
        .request(
            |id| scry_proto::DaemonMessage::Sleep { id },
            Duration::from_secs(5),
        )
        .await;
    let slept = SleptProcess {
        pid: view.pid,
        name: view.name.clone(),
        already_sleeping: false,
    };
    match reply {
        Ok(r) if r.ok => Ok(slept),
        Ok(r) => Err(Error::new(
            ErrorKind::Agent,
            r.error
                .map(|e| e.message)
                .unwrap_or_else(|| "the agent refused".into()),
        )),
        // The agent closes right after answering; a close is success too.
        Err(RequestError::Disconnected) => Ok(slept),
        Err(e) => Err(Error::new(ErrorKind::Timeout, e.to_string())),
    }
}

/// Process row ids with this pid (a pid may have been several processes over time).
pub fn row_ids_for_pid(shared: &Shared, pid: u32) -> Vec<i64> {
    shared
        .registry()
        .views()
        .into_iter()
        .filter(|v| v.pid == pid)
        .map(|v| v.id)
        .collect()
}
