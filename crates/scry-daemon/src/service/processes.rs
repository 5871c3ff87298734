//! Processes: the ones scry knows (agents that connected, sleeping clients found through their
//! discovery files), one by pid, and waking or putting to sleep an embedded client.

use std::time::Duration;

use scry_api::{DiscoveredClient, ProcessEntry, ProcessList, Slept, Woken};
use serde_json::{json, Value};

use super::{Error, ErrorKind, Result};
use crate::clients::{self, ClientFile};
use crate::state::registry::{ProcState, RequestError};
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

fn find_client(shared: &Shared, target: &str) -> Result<ClientFile> {
    let pid: Option<u32> = target.parse().ok();
    let found: Vec<ClientFile> = clients::discover(&shared.home)
        .into_iter()
        .filter(|c| match pid {
            Some(p) => c.pid == p,
            None => c.name.as_deref() == Some(target),
        })
        .collect();
    match found.len() {
        0 => Err(Error::not_found(format!(
            "no embedded scry client {} is running",
            describe(target)
        ))
        .hint("see `scry ps`; the program must call `scry.init()` (or be attached with `scry attach PID`)")),
        1 => Ok(found.into_iter().next().expect("one element")),
        _ => Err(Error::new(
            ErrorKind::Ambiguous,
            format!(
                "{} processes are named `{target}`: pids {}",
                found.len(),
                found.iter().map(|c| c.pid.to_string()).collect::<Vec<_>>().join(", ")
            ),
        )
        .hint("name one by pid")),
    }
}

fn describe(target: &str) -> String {
    if target.parse::<u32>().is_ok() {
        format!("with pid {target}")
    } else {
        format!("named `{target}`")
    }
}

/// Wakes a sleeping embedded client (pid or name) and waits until its agent is registered.
pub async fn wake(shared: &Shared, target: &str) -> Result<Woken> {
    let already = shared
        .registry()
        .find(target)
        .into_iter()
        .filter(|e| e.agent.is_some())
        .map(|e| e.view.clone())
        .collect::<Vec<_>>();
    if let [one] = already.as_slice() {
        return Ok(Woken {
            already_awake: true,
            process: one.clone(),
        });
    }
    let client = find_client(shared, target)?;
    let daemon_url = format!("unix://{}", shared.home.agent_socket().display());
    clients::control(
        &client,
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
        if let Some(v) = view {
            return Ok(Woken {
                already_awake: false,
                process: v,
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

/// Puts an awake embedded client (pid or name) back to sleep.
pub async fn sleep(shared: &Shared, target: &str) -> Result<Slept> {
    let agents: Vec<_> = shared
        .registry()
        .find(target)
        .into_iter()
        .filter_map(|e| e.agent.clone().map(|a| (e.view.clone(), a)))
        .collect();
    match agents.as_slice() {
        [] => {
            let client = find_client(shared, target)?;
            Ok(Slept {
                already_sleeping: true,
                pid: client.pid,
            })
        }
        [(view, agent)] => {
            let reply = agent
                .request(
                    |id| scry_proto::DaemonMessage::Sleep { id },
                    Duration::from_secs(5),
                )
                .await;
            match reply {
                Ok(r) if r.ok => Ok(Slept {
                    already_sleeping: false,
                    pid: view.pid,
                }),
                Ok(r) => Err(Error::new(
                    ErrorKind::Agent,
                    r.error
                        .map(|e| e.message)
                        .unwrap_or_else(|| "the agent refused".into()),
                )),
                // The agent closes right after answering; a close is success too.
                Err(RequestError::Disconnected) => Ok(Slept {
                    already_sleeping: false,
                    pid: view.pid,
                }),
                Err(e) => Err(Error::new(ErrorKind::Timeout, e.to_string())),
            }
        }
        many => Err(Error::new(
            ErrorKind::Ambiguous,
            format!(
                "{} awake processes are named `{target}`: pids {}",
                many.len(),
                many.iter()
                    .map(|(v, _)| v.pid.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .hint("name one by pid")),
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
