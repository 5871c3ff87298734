//! The REPL relay: one terminal (a `scry run` or `scry repl` session) shared by the debugger
//! REPLs of any number of processes, one at a time, in arrival order.
//!
//! Agents ask for the terminal with `notify repl.request` (tagged with their session id); the
//! daemon keeps a FIFO queue per session and grants the head (`notify repl.grant`). While a REPL
//! holds the terminal its output (`repl.output`, `repl.prompt`) goes to the session's terminal
//! stream, and the lines typed there go back as `repl.input`; `repl.release` hands the terminal
//! to the next. A holder or waiter whose agent disconnects (the process died) is dropped at once.
//!
//! Not for: the REPL itself (pdb runs in the agent) or the terminal's line editing (the CLI).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use scry_api::{
    BrokenIn, CompleteRequest, Completions, ReplSent, ReplSessionDeleted, ReplSessionState,
    ReplSwitch, TerminalEvent,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Error, ErrorKind, Result};
use crate::state::repl::{Repl, Session};
use crate::Shared;

/// Creates a session and returns its id (starting the relay task on first use).
pub fn create_session(shared: &Arc<Shared>, name: Option<String>) -> String {
    ensure_task(shared);
    let id = crate::new_id("r");
    let (tx, rx) = mpsc::unbounded_channel();
    shared.repl.sessions().insert(
        id.clone(),
        Session {
            name,
            holder: None,
            waiting: VecDeque::new(),
            terminal: tx,
            terminal_rx: Some(rx),
        },
    );
    id
}

fn ensure_task(shared: &Arc<Shared>) {
    use std::sync::atomic::Ordering;
    if shared.repl.started.swap(true, Ordering::SeqCst) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move { relay_task(shared).await });
}

async fn relay_task(shared: Arc<Shared>) {
    let mut notices = super::calls::notices(&shared);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut stop = shared.shutdown_signal();
    loop {
        tokio::select! {
            n = notices.recv() => match n {
                Ok(n) if n.topic.starts_with("repl.") => on_notice(&shared, n),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                    tracing::warn!(target: "repl", "relay lagged behind {k} agent notices");
                }
                Err(_) => return,
            },
            _ = tick.tick() => drop_dead(&shared),
            _ = stop.changed() => return,
        }
    }
}

fn text(data: &Value, key: &str) -> String {
    data.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn on_notice(shared: &Arc<Shared>, n: super::calls::AgentNotice) {
    let session_id = text(&n.data, "session");
    let repl_id = text(&n.data, "repl");
    let mut grants = Vec::new();
    {
        let mut sessions = shared.repl.sessions();
        let Some(s) = sessions.get_mut(&session_id) else {
            drop(sessions);
            if n.topic == "repl.request" {
                // The terminal is gone: let the process run on.
                super::calls::notify(
                    shared,
                    n.process_id,
                    "repl.cancel",
                    json!({"repl": repl_id}),
                );
            }
            return;
        };
        let is_holder = s.holder.as_ref().is_some_and(|h| h.id == repl_id);
        match n.topic.as_str() {
            "repl.request" => {
                let repl = Repl {
                    id: repl_id,
                    process_id: n.process_id,
                    pid: n.pid,
                    name: text(&n.data, "name"),
                    thread: text(&n.data, "thread"),
                    kind: text(&n.data, "kind"),
                    place: text(&n.data, "where"),
                    exception: n
                        .data
                        .get("exception")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    granted: false,
                    prompt: None,
                    at_prompt: false,
                };
                tracing::debug!(target: "repl", pid = repl.pid, repl = %repl.id, "REPL requested");
                if s.holder.as_ref().is_some_and(|h| h.id == repl.id)
                    || s.waiting.iter().any(|w| w.id == repl.id)
                {
                    return;
                }
                s.waiting.push_back(repl);
                grant_next(s, &mut grants);
                s.send(TerminalEvent::Queue {
                    waiting: s.waiting(),
                });
            }
            "repl.output" if is_holder => {
                s.send(TerminalEvent::Output {
                    repl: repl_id,
                    text: text(&n.data, "text"),
                });
            }
            "repl.prompt" if is_holder => {
                let prompt = text(&n.data, "prompt");
                if let Some(h) = s.holder.as_mut() {
                    h.prompt = Some(prompt.clone());
                    h.at_prompt = true;
                }
                s.send(TerminalEvent::Prompt {
                    repl: repl_id,
                    prompt,
                });
            }
            "repl.release" => {
                if is_holder {
                    s.holder = None;
                    s.send(TerminalEvent::Closed {
                        repl: repl_id,
                        reason: "released".to_owned(),
                    });
                    grant_next(s, &mut grants);
                } else {
                    s.waiting.retain(|w| w.id != repl_id);
                }
            }
            _ => {}
        }
    }
    for (process_id, repl) in grants {
        super::calls::notify(shared, process_id, "repl.grant", json!({"repl": repl}));
    }
}

/// Grants the terminal to the head of the queue when nobody holds it.
fn grant_next(s: &mut Session, grants: &mut Vec<(i64, String)>) {
    if s.holder.is_some() {
        return;
    }
    if let Some(next) = s.waiting.pop_front() {
        hand_over(s, next, grants);
    }
}

/// Makes `next` the holder: the terminal is told; an agent that never had the terminal is
/// granted it (and prompts), one that had it (switched away from) gets its last prompt shown
/// again, since it still waits at it.
fn hand_over(s: &mut Session, mut next: Repl, grants: &mut Vec<(i64, String)>) {
    s.send(TerminalEvent::Open {
        view: next.view(),
        exception: next.exception.clone(),
        waiting: s.waiting(),
    });
    if next.granted {
        if let Some(prompt) = &next.prompt {
            s.send(TerminalEvent::Prompt {
                repl: next.id.clone(),
                prompt: prompt.clone(),
            });
        }
    } else {
        next.granted = true;
        grants.push((next.process_id, next.id.clone()));
    }
    s.holder = Some(next);
}

/// Gives the terminal to a waiting REPL (by pid or id) from the holder, which waits first in
/// line at its prompt (`%switch PID` in `scry run`).
pub fn switch(shared: &Shared, id: &str, to: &ReplSwitch) -> Result<ReplSessionState> {
    let wanted = |r: &Repl| match (&to.repl, to.pid) {
        (Some(repl), _) => &r.id == repl,
        (None, Some(pid)) => r.pid == pid,
        (None, None) => false,
    };
    if to.repl.is_none() && to.pid.is_none() {
        return Err(Error::bad_request("say which REPL: `pid` or `repl`"));
    }
    let mut grants = Vec::new();
    let state = {
        let mut sessions = shared.repl.sessions();
        let s = sessions.get_mut(id).ok_or_else(|| not_found(id))?;
        let Some(holder) = s.holder.as_ref() else {
            return Err(Error::new(
                ErrorKind::NoRepl,
                "no REPL holds this terminal now",
            ));
        };
        if wanted(holder) {
            return Ok(s.state(id));
        }
        // A REPL running a command has no prompt to come back to: switch only at a prompt.
        if !holder.at_prompt {
            return Err(Error::new(
                ErrorKind::Busy,
                "the REPL that holds the terminal has not prompted yet",
            ));
        }
        let Some(at) = s.waiting.iter().position(wanted) else {
            let which = match (&to.repl, to.pid) {
                (Some(r), _) => format!("REPL {r}"),
                (_, Some(p)) => format!("process {p}"),
                _ => String::new(),
            };
            return Err(
                Error::not_found(format!("no REPL of {which} waits in this terminal"))
                    .hint("`%repls` lists the REPLs waiting"),
            );
        };
        let next = s
            .waiting
            .remove(at)
            .ok_or_else(|| Error::internal("the queue changed"))?;
        if let Some(previous) = s.holder.take() {
            s.waiting.push_front(previous);
        }
        hand_over(s, next, &mut grants);
        s.state(id)
    };
    for (process_id, repl) in grants {
        super::calls::notify(shared, process_id, "repl.grant", json!({"repl": repl}));
    }
    Ok(state)
}

/// Drops holders and waiters whose agent is no longer connected (their process died).
fn drop_dead(shared: &Arc<Shared>) {
    let connected = |process_id: i64| {
        shared
            .registry()
            .get_mut(process_id)
            .is_some_and(|e| e.agent.is_some())
    };
    let mut grants = Vec::new();
    let mut cancels = Vec::new();
    {
        let mut sessions = shared.repl.sessions();
        // A terminal that went away (scry run killed) ends its session: its REPLs run on.
        sessions.retain(|id, s| {
            let gone = s.terminal_rx.is_none() && s.terminal.is_closed();
            if gone {
                tracing::info!(target: "repl", session = %id, "terminal gone; session closed");
                for r in s.holder.iter().chain(s.waiting.iter()) {
                    cancels.push((r.process_id, r.id.clone()));
                }
            }
            !gone
        });
        for s in sessions.values_mut() {
            let before = s.waiting.len();
            s.waiting.retain(|w| connected(w.process_id));
            let mut changed = before != s.waiting.len();
            if let Some(h) = s.holder.clone() {
                if !connected(h.process_id) {
                    tracing::info!(target: "repl", pid = h.pid, "REPL holder is gone; terminal released");
                    s.holder = None;
                    s.send(TerminalEvent::Closed {
                        repl: h.id.clone(),
                        reason: format!("process {} ({}) is gone", h.pid, h.name),
                    });
                    changed = true;
                    grant_next(s, &mut grants);
                }
            }
            if changed {
                s.send(TerminalEvent::Queue {
                    waiting: s.waiting(),
                });
            }
        }
    }
    for (process_id, repl) in grants {
        super::calls::notify(shared, process_id, "repl.grant", json!({"repl": repl}));
    }
    for (process_id, repl) in cancels {
        super::calls::notify(shared, process_id, "repl.cancel", json!({"repl": repl}));
    }
}

fn not_found(id: &str) -> Error {
    Error::not_found(format!("no REPL session `{id}`"))
}

/// The holder of a session: (process id, pid, repl id).
fn holder(shared: &Shared, id: &str) -> Result<(i64, u32, String)> {
    with_holder(shared, id, |h| (h.process_id, h.pid, h.id.clone()))
}

/// Runs `f` on the holder of a session, under the sessions' lock.
fn with_holder<T>(shared: &Shared, id: &str, f: impl FnOnce(&mut Repl) -> T) -> Result<T> {
    let mut sessions = shared.repl.sessions();
    let s = sessions.get_mut(id).ok_or_else(|| not_found(id))?;
    let h = s
        .holder
        .as_mut()
        .ok_or_else(|| Error::new(ErrorKind::NoRepl, "no REPL holds this terminal now"))?;
    Ok(f(h))
}

/// A session's state: its holder and the REPLs waiting.
pub fn state(shared: &Shared, id: &str) -> Result<ReplSessionState> {
    let sessions = shared.repl.sessions();
    let s = sessions.get(id).ok_or_else(|| not_found(id))?;
    Ok(s.state(id))
}

/// Ends a session: every REPL holding or waiting for it is cancelled.
pub fn delete_session(shared: &Shared, id: &str) -> Result<ReplSessionDeleted> {
    let s = shared
        .repl
        .sessions()
        .remove(id)
        .ok_or_else(|| not_found(id))?;
    for r in s.holder.iter().chain(s.waiting.iter()) {
        super::calls::notify(shared, r.process_id, "repl.cancel", json!({"repl": r.id}));
    }
    Ok(ReplSessionDeleted {
        deleted: id.to_owned(),
    })
}

/// The session's terminal events (`open`, `output`, `prompt`, `closed`, `queue`), for the one
/// terminal that follows it.
pub fn terminal(shared: &Shared, id: &str) -> Result<mpsc::UnboundedReceiver<TerminalEvent>> {
    let mut sessions = shared.repl.sessions();
    let s = sessions.get_mut(id).ok_or_else(|| not_found(id))?;
    s.terminal_rx.take().ok_or_else(|| {
        Error::new(
            ErrorKind::Busy,
            "another terminal already follows this session",
        )
    })
}

/// A line typed in the terminal, for the REPL that holds it.
pub fn input(shared: &Shared, id: &str, line: String) -> Result<ReplSent> {
    // It runs the line now: no prompt to come back to until it prompts again. (Under the same
    // lock as the lookup: a switch in between must not mark the other REPL busy.)
    let (process_id, repl) = with_holder(shared, id, |h| {
        h.at_prompt = false;
        (h.process_id, h.id.clone())
    })?;
    let sent = super::calls::notify(
        shared,
        process_id,
        "repl.input",
        json!({"repl": repl, "line": line}),
    );
    Ok(ReplSent { sent })
}

/// Ctrl-C in the terminal: interrupts the REPL that holds it.
pub fn interrupt(shared: &Shared, id: &str) -> Result<ReplSent> {
    let (process_id, _, repl) = holder(shared, id)?;
    let sent = super::calls::notify(shared, process_id, "repl.interrupt", json!({"repl": repl}));
    Ok(ReplSent { sent })
}

/// Tab in the terminal: completions from the REPL that holds it.
pub async fn complete(shared: &Shared, id: &str, req: CompleteRequest) -> Result<Completions> {
    let (process_id, pid, repl) = holder(shared, id)?;
    // The agent's call takes the request's fields as given (absent ones stay absent: the agent
    // has its own defaults) plus the REPL they are for.
    let mut params = serde_json::Map::new();
    params.insert("repl".into(), json!(repl));
    if let Ok(Value::Object(fields)) = serde_json::to_value(&req) {
        params.extend(fields);
    }
    let answer = super::calls::call(
        shared,
        process_id,
        "repl.complete",
        Value::Object(params),
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| super::calls::call_error(e, pid))?;
    serde_json::from_value(answer).map_err(|e| {
        Error::new(
            ErrorKind::Agent,
            format!("the agent of pid {pid} answered repl.complete in a shape this daemon does not read: {e}"),
        )
        .hint("the agent may be another version of scry: `scry ps` shows its version")
    })
}

/// A new session whose REPL is the process `pid` stopped at its next Python line (main thread
/// unless `thread`).
pub async fn break_in(shared: &Arc<Shared>, pid: u32, thread: Option<String>) -> Result<BrokenIn> {
    let process_id = super::calls::live_process_id(shared, pid)?;
    let id = create_session(shared, Some(format!("repl {pid}")));
    let result = super::calls::call(
        shared,
        process_id,
        "repl.break",
        json!({"session": id, "thread": thread}),
        Duration::from_secs(10),
    )
    .await;
    match result {
        Ok(r) => Ok(BrokenIn {
            id,
            pid,
            // The agent names the thread it armed; an answer without one still broke in.
            thread: r.get("thread").and_then(Value::as_str).map(str::to_owned),
        }),
        Err(e) => {
            shared.repl.sessions().remove(&id);
            Err(super::calls::call_error(e, pid))
        }
    }
}
