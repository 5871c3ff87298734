//! The REPL relay (`/api/v1/repl/sessions/...`, `POST /api/v1/processes/{pid}/repl`): one
//! terminal (a `scry run` or `scry repl`) shared by the debugger REPLs of any number of
//! processes, one at a time, in arrival order.
//!
//! A session is created ([`NewReplSession`] → [`ReplSessionCreated`]) or made by breaking into a
//! process ([`BreakIn`] → [`BrokenIn`]); its one terminal follows
//! `GET .../{id}/stream`, JSON lines each holding one [`TerminalEvent`], and sends back what is
//! typed ([`ReplInput`] → [`ReplSent`]), ctrl-c (`.../interrupt` → [`ReplSent`]) and tab
//! ([`CompleteRequest`] → [`Completions`]).

use serde::{Deserialize, Serialize};

/// `POST /api/v1/repl/sessions`: a new session. The body may be left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewReplSession {
    /// What to call the session (`scry run --name`); `null` when unnamed.
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /api/v1/repl/sessions`: the session made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplSessionCreated {
    /// The session's id (`r...`), for the session's other endpoints and for the agents of its
    /// processes (`SCRY_RUN_SESSION`).
    pub id: String,
}

/// One REPL that holds or waits for a session's terminal. Its strings come from the target's
/// agent: a terminal shows them with control characters escaped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplView {
    /// The REPL's id (the agent's), named again by its terminal events.
    pub repl: String,
    /// The process it runs in.
    pub pid: u32,
    /// The process's name (`scry run --name`, `scry.init(name=...)`, else the agent's guess).
    pub name: String,
    /// The Python thread stopped in it.
    pub thread: String,
    /// Why it opened: `breakpoint` (`breakpoint()`), `post_mortem` (an uncaught exception) or
    /// `break` (`scry repl PID`); empty when the agent did not say.
    pub kind: String,
    /// Where the thread stopped (`file:line in function`; empty when the agent did not say).
    #[serde(rename = "where")]
    pub place: String,
}

/// `GET /api/v1/repl/sessions/{id}`: who holds the terminal and who waits for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplSessionState {
    /// The session's id.
    pub id: String,
    /// Its name, `null` when unnamed.
    pub name: Option<String>,
    /// The REPL that holds the terminal now, `null` when none does.
    pub holder: Option<ReplView>,
    /// The REPLs waiting for it, next first.
    pub waiting: Vec<ReplView>,
}

/// `DELETE /api/v1/repl/sessions/{id}`: the session ended; every REPL that held or waited for
/// it was cancelled (its process runs on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplSessionDeleted {
    /// The id of the session ended.
    pub deleted: String,
}

/// `POST /api/v1/repl/sessions/{id}/input`: a line typed in the terminal, for the REPL that
/// holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplInput {
    /// The line, without its newline; `EOF` for ctrl-d on an empty line (pdb's own spelling).
    pub line: String,
}

/// What `.../input` and `.../interrupt` answer (`.../interrupt` takes no body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplSent {
    /// The message was handed to the holder's agent (false: its connection is gone).
    pub sent: bool,
}

/// `POST /api/v1/repl/sessions/{id}/complete`: tab in the terminal, passed to the holder's pdb
/// as its `complete(text, line, begidx, endidx)` takes them. Every field may be left out (the
/// agent takes `""`, `""`, 0 and the end of `line`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompleteRequest {
    /// The word being completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The whole line typed so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// Where `text` begins in `line`, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begidx: Option<usize>,
    /// Where it ends (the cursor), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endidx: Option<usize>,
}

/// What `.../complete` answers: the holder's completions (the agent's `repl.complete` answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completions {
    /// The candidates for `text`, sorted, at most 200.
    #[serde(default)]
    pub matches: Vec<String>,
}

/// `POST /api/v1/processes/{pid}/repl` (`scry repl PID`): stop a thread of the process at its
/// next Python line and open its REPL in a new session. The body may be left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakIn {
    /// The thread, by name or ident; `null` for the main thread.
    #[serde(default)]
    pub thread: Option<String>,
}

/// `POST /api/v1/repl/sessions/{id}/switch`: give the terminal to a REPL that waits for it
/// (by pid, or by its id when a process has several); the REPL that held it waits first in
/// line, paused at its prompt, and gets the terminal back, prompt and all, when it is its turn.
/// Answers the session's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplSwitch {
    /// The process whose (first) waiting REPL gets the terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The REPL ([`ReplView::repl`]) that gets the terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repl: Option<String>,
}

/// What a break-in answers: the session made for it (follow its stream for the REPL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenIn {
    /// The new session's id.
    pub id: String,
    /// The process.
    pub pid: u32,
    /// The name of the thread that will stop, `null` when the agent did not say.
    pub thread: Option<String>,
}

/// One event of a session's terminal stream (`GET /api/v1/repl/sessions/{id}/stream`, one JSON
/// object a line, tagged by `type`). A terminal skips a line it cannot read (an event of a newer
/// daemon).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TerminalEvent {
    /// A REPL now holds the terminal; output and prompts are its until `closed`.
    Open {
        /// The REPL.
        #[serde(flatten)]
        view: ReplView,
        /// The uncaught exception of a post-mortem, as the agent formatted it, else `null`.
        exception: Option<String>,
        /// The REPLs still waiting, next first.
        waiting: Vec<ReplView>,
    },
    /// Text the holder's REPL printed (pdb's output; the prompt comes as `prompt`).
    Output {
        /// The holder.
        repl: String,
        /// The text, as printed (newlines included).
        text: String,
    },
    /// The holder waits for a line (`(Pdb) `).
    Prompt {
        /// The holder.
        repl: String,
        /// The prompt to show.
        prompt: String,
    },
    /// The holder let the terminal go.
    Closed {
        /// The REPL that held it.
        repl: String,
        /// `released` when the REPL ended (continue, quit), else why it was taken away (its
        /// process is gone), for the user.
        reason: String,
    },
    /// The queue of waiting REPLs changed.
    Queue {
        /// The REPLs waiting, next first.
        waiting: Vec<ReplView>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ReplView {
        ReplView {
            repl: "a1".into(),
            pid: 4242,
            name: "worker".into(),
            thread: "MainThread".into(),
            kind: "post_mortem".into(),
            place: "app.py:12".into(),
        }
    }

    #[test]
    fn terminal_events_are_tagged_by_type_with_the_view_flattened() {
        let open = TerminalEvent::Open {
            view: view(),
            exception: Some("ValueError: x".into()),
            waiting: vec![],
        };
        let line = serde_json::to_string(&open).expect("json");
        assert_eq!(
            line,
            r#"{"type":"open","repl":"a1","pid":4242,"name":"worker","thread":"MainThread","kind":"post_mortem","where":"app.py:12","exception":"ValueError: x","waiting":[]}"#
        );
        assert_eq!(
            serde_json::from_str::<TerminalEvent>(&line).expect("reads"),
            open
        );
        let closed = r#"{"type":"closed","repl":"a1","reason":"released"}"#;
        let parsed: TerminalEvent = serde_json::from_str(closed).expect("reads");
        assert_eq!(serde_json::to_string(&parsed).expect("json"), closed);
        let queue = r#"{"type":"queue","waiting":[{"repl":"a1","pid":4242,"name":"worker","thread":"MainThread","kind":"post_mortem","where":"app.py:12"}]}"#;
        let parsed: TerminalEvent = serde_json::from_str(queue).expect("reads");
        assert_eq!(serde_json::to_string(&parsed).expect("json"), queue);
        assert!(serde_json::from_str::<TerminalEvent>(r#"{"type":"from_the_future"}"#).is_err());
    }

    #[test]
    fn session_answers_keep_their_nulls() {
        let state = ReplSessionState {
            id: "r1".into(),
            name: None,
            holder: None,
            waiting: vec![view()],
        };
        assert_eq!(
            serde_json::to_value(&state).expect("json"),
            serde_json::json!({"id": "r1", "name": null, "holder": null, "waiting": [
                {"repl": "a1", "pid": 4242, "name": "worker", "thread": "MainThread",
                 "kind": "post_mortem", "where": "app.py:12"}]})
        );
        let broke = BrokenIn {
            id: "r1".into(),
            pid: 7,
            thread: None,
        };
        assert_eq!(
            serde_json::to_string(&broke).expect("json"),
            r#"{"id":"r1","pid":7,"thread":null}"#
        );
        assert_eq!(
            serde_json::to_string(&NewReplSession::default()).expect("json"),
            r#"{"name":null}"#
        );
    }

    #[test]
    fn a_completion_request_passes_on_only_what_was_given() {
        let req: CompleteRequest =
            serde_json::from_str(r#"{"text":"ob","line":"p ob"}"#).expect("reads");
        assert_eq!(
            serde_json::to_string(&req).expect("json"),
            r#"{"text":"ob","line":"p ob"}"#
        );
        let answer: Completions = serde_json::from_str("{}").expect("reads");
        assert!(answer.matches.is_empty());
    }
}
