//! The terminal side of a `scry run` / `scry repl` session: the keyboard reader (it reads only
//! while a prompt is shown, never while the program owns the terminal), REPL output, and the line
//! editor (history, tab completion asked of the target's pdb through the daemon, the usual keys).
//!
//! The line editor is ours (a small one on raw termios): a REPL's prompt must be abandoned when
//! its process dies while the user has not typed anything, which the line-editor crates
//! (rustyline, reedline) cannot do from outside their blocking `readline`.
//!
//! Not for: the session's processes and signals (`mod.rs`) or colours (`highlight.rs`).

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use nix::unistd::{getpgrp, isatty, tcsetpgrp, Pid};
use scry_api::{
    CompleteRequest, Completions, ReplInput, ReplSent, ReplSessionState, ReplSwitch, ReplView,
    TerminalEvent,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::highlight::highlight_line;
use crate::client::DaemonClient;
use crate::printer::Printer;

pub(super) fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// Reads the keyboard only while a prompt is shown (never while the program owns the terminal).
pub(super) struct KeyReader {
    pub(super) active: Arc<AtomicBool>,
    pub(super) rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl KeyReader {
    pub(super) fn start(tty: bool) -> KeyReader {
        let active = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let flag = active.clone();
        std::thread::spawn(move || {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 1024];
            loop {
                if tx.is_closed() {
                    return;
                }
                if !flag.load(Ordering::SeqCst) {
                    std::thread::park_timeout(Duration::from_millis(50));
                    continue;
                }
                let mut fds = [PollFd::new(stdin_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(50u16)) {
                    Ok(n) if n > 0 => {}
                    _ => continue,
                }
                if !flag.load(Ordering::SeqCst) {
                    continue;
                }
                match stdin.read(&mut buf) {
                    Ok(0) => {
                        let _ = tx.send(vec![4]); // end of input: like ctrl-d
                        if !tty {
                            return;
                        }
                    }
                    Ok(n) => {
                        let _ = tx.send(buf[..n].to_vec());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        KeyReader { active, rx }
    }
}

/// The terminal side of the session: REPL output, the prompt and its line editor.
pub(super) struct Terminal<'p> {
    printer: &'p mut Printer,
    pub(super) client: DaemonClient,
    session: String,
    tty: bool,
    color: bool,
    child_pgrp: Option<Pid>,
    pub(super) holder: Option<String>,
    prompt: Option<String>,
    buf: Vec<char>,
    cursor: usize,
    history: VecDeque<String>,
    hist_pos: Option<usize>,
    saved_termios: Option<Termios>,
    escape: Vec<u8>,
}

impl<'p> Terminal<'p> {
    pub(super) fn new(
        printer: &'p mut Printer,
        client: DaemonClient,
        session: String,
        tty: bool,
        child_pgrp: Option<Pid>,
    ) -> Self {
        let color =
            tty && scry_daemon::env::var("NO_COLOR").is_none() && isatty(1).unwrap_or(false);
        Terminal {
            printer,
            client,
            session,
            tty,
            color,
            child_pgrp,
            holder: None,
            prompt: None,
            buf: Vec::new(),
            cursor: 0,
            history: VecDeque::new(),
            hist_pos: None,
            saved_termios: None,
            escape: Vec::new(),
        }
    }

    fn out(&mut self, text: &str) {
        self.printer.raw(text);
    }

    pub(super) fn note(&mut self, text: &str) {
        let shown = self.prompt.is_some();
        if shown {
            self.out("\r\x1b[K");
        }
        let text = if self.color {
            format!("\x1b[2m{text}\x1b[0m\n")
        } else {
            format!("{text}\n")
        };
        self.out(&text);
        if shown {
            self.redraw();
        }
    }

    pub(super) async fn on_event(&mut self, ev: &TerminalEvent, active: &Arc<AtomicBool>) {
        // Names and places come from the target: shown, never sent to the terminal as controls.
        let s = |text: &str| crate::printer::escape_controls(text).into_owned();
        match ev {
            TerminalEvent::Open { view, waiting, .. } => {
                self.holder = Some(s(&view.repl));
                if self.tty {
                    // The REPL owns the terminal: ctrl-c now reaches scry run, not the tree.
                    let _ = tcsetpgrp(stdin_fd(), getpgrp());
                }
                let what = match view.kind.as_str() {
                    "post_mortem" => "post-mortem",
                    "break" => "break-in",
                    _ => "breakpoint",
                };
                let mut header = format!(
                    "── scry REPL: {} pid {}, thread {} ({what} at {}) ──",
                    s(&view.name),
                    view.pid,
                    s(&view.thread),
                    s(&view.place)
                );
                if self.color {
                    header = format!("\x1b[1;35m{header}\x1b[0m");
                }
                self.out(&format!("\n{header}\n"));
                let waiting = waiting_text(waiting);
                if !waiting.is_empty() {
                    self.note(&waiting);
                }
            }
            TerminalEvent::Output { text, .. } => {
                let text = s(text);
                let text = if self.color {
                    text.split_inclusive('\n').map(highlight_line).collect()
                } else {
                    text
                };
                let shown = self.prompt.is_some();
                if shown {
                    self.out("\r\x1b[K");
                }
                self.out(&text);
                if shown {
                    self.redraw();
                }
            }
            TerminalEvent::Prompt { prompt, .. } => {
                self.prompt = Some(s(prompt));
                self.buf.clear();
                self.cursor = 0;
                self.hist_pos = None;
                self.enter_raw();
                active.store(true, Ordering::SeqCst);
                self.redraw();
            }
            TerminalEvent::Closed { repl, reason } => {
                let was_ours = self.holder.as_deref() == Some(s(repl).as_str());
                if was_ours {
                    self.leave_prompt(active);
                    self.holder = None;
                    let reason = s(reason);
                    if reason != "released" {
                        self.note(&format!("scry: REPL closed: {reason}"));
                    }
                    if let (true, Some(pgrp)) = (self.tty, self.child_pgrp) {
                        let _ = tcsetpgrp(stdin_fd(), pgrp);
                    }
                }
            }
            TerminalEvent::Queue { waiting } if self.holder.is_some() => {
                let waiting = waiting_text(waiting);
                if !waiting.is_empty() {
                    self.note(&waiting);
                }
            }
            TerminalEvent::Queue { .. } => {}
        }
    }

    fn enter_raw(&mut self) {
        if !self.tty || self.saved_termios.is_some() {
            return;
        }
        if let Ok(t) = termios::tcgetattr(stdin_fd()) {
            let mut raw = t.clone();
            raw.local_flags &=
                !(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN);
            raw.input_flags &= !(termios::InputFlags::ICRNL | termios::InputFlags::IXON);
            if termios::tcsetattr(stdin_fd(), SetArg::TCSADRAIN, &raw).is_ok() {
                self.saved_termios = Some(t);
            }
        }
    }

    pub(super) fn leave_prompt(&mut self, active: &Arc<AtomicBool>) {
        active.store(false, Ordering::SeqCst);
        if self.prompt.take().is_some() {
            self.out("\r\n");
        }
        if let Some(t) = self.saved_termios.take() {
            let _ = termios::tcsetattr(stdin_fd(), SetArg::TCSADRAIN, &t);
        }
    }

    fn redraw(&mut self) {
        let Some(prompt) = self.prompt.clone() else {
            return;
        };
        let line: String = self.buf.iter().collect();
        let back = self.buf.len() - self.cursor;
        let mut text = format!("\r\x1b[K{prompt}{line}");
        if back > 0 {
            text.push_str(&format!("\x1b[{back}D"));
        }
        self.out(&text);
    }

    /// POSTs to the session's `what` endpoint; a failure is noted in the terminal, not fatal.
    async fn post<B: Serialize, T: DeserializeOwned>(&mut self, what: &str, body: &B) -> Option<T> {
        let path = format!("/api/v1/repl/sessions/{}/{what}", self.session);
        match self.client.post_as(&path, body).await {
            Ok(v) => Some(v),
            Err(e) => {
                self.note(&format!("scry: {}", e.message));
                None
            }
        }
    }

    pub(super) async fn on_sigint(&mut self) {
        if self.holder.is_some() {
            // A REPL is running a command: interrupt it, never the tree.
            self.post::<_, ReplSent>("interrupt", &json!({})).await;
        } else if let Some(pgrp) = self.child_pgrp {
            let _ = if self.tty {
                killpg(pgrp, Signal::SIGINT)
            } else {
                kill(pgrp, Signal::SIGINT)
            };
        }
    }

    pub(super) async fn on_keys(&mut self, bytes: &[u8], active: &Arc<AtomicBool>) {
        if self.prompt.is_none() {
            return;
        }
        let mut text = String::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            if !self.escape.is_empty() || b == 0x1b {
                self.escape.push(b);
                if let Some(done) = self.escape_key() {
                    self.escape.clear();
                    self.key_escape(&done);
                }
                continue;
            }
            match b {
                b'\r' | b'\n' => {
                    let line: String = self.buf.iter().collect();
                    if line.trim_start().starts_with('%') {
                        // scry's own commands (`%repls`, `%switch PID`): never sent to pdb
                        // (`%` starts no Python statement and no pdb command).
                        self.remember(&line);
                        self.scry_command(line.trim(), active).await;
                        return;
                    }
                    self.cursor = self.buf.len();
                    self.redraw();
                    self.leave_prompt(active);
                    self.remember(&line);
                    self.post::<_, ReplSent>("input", &ReplInput { line }).await;
                    return;
                }
                3 => {
                    // ctrl-c at the prompt: pdb prints --KeyboardInterrupt-- and prompts again.
                    self.out("^C");
                    self.leave_prompt(active);
                    self.post::<_, ReplSent>("interrupt", &json!({})).await;
                    return;
                }
                4 => {
                    if self.buf.is_empty() {
                        self.leave_prompt(active);
                        let eof = ReplInput {
                            line: "EOF".to_owned(),
                        };
                        self.post::<_, ReplSent>("input", &eof).await;
                        return;
                    }
                    if self.cursor < self.buf.len() {
                        self.buf.remove(self.cursor);
                    }
                }
                b'\t' => {
                    let typed: String = std::mem::take(&mut text);
                    self.insert(&typed);
                    self.complete().await;
                }
                0x7f | 8 if self.cursor > 0 => {
                    self.cursor -= 1;
                    self.buf.remove(self.cursor);
                }
                1 => self.cursor = 0,
                5 => self.cursor = self.buf.len(),
                2 => self.cursor = self.cursor.saturating_sub(1),
                6 => self.cursor = (self.cursor + 1).min(self.buf.len()),
                0x0b => self.buf.truncate(self.cursor),
                0x15 => {
                    self.buf.drain(..self.cursor);
                    self.cursor = 0;
                }
                0x0c => self.out("\x1b[H\x1b[2J"),
                b if b >= 0x20 => {
                    // Gather printable bytes (UTF-8 sequences included) and insert them at once.
                    let start = i - 1;
                    let mut end = i;
                    while end < bytes.len() && bytes[end] >= 0x20 && bytes[end] != 0x7f {
                        end += 1;
                    }
                    text.push_str(&String::from_utf8_lossy(&bytes[start..end]));
                    i = end;
                    let typed = std::mem::take(&mut text);
                    self.insert(&typed);
                }
                _ => {}
            }
        }
        self.redraw();
    }

    fn remember(&mut self, line: &str) {
        if !line.trim().is_empty() && self.history.back().map(String::as_str) != Some(line) {
            self.history.push_back(line.to_owned());
            if self.history.len() > 1000 {
                self.history.pop_front();
            }
        }
    }

    /// A line of scry's own at a REPL prompt: `%repls` lists the REPLs of this terminal,
    /// `%switch PID` gives the terminal to another (this one waits, at its prompt, first in
    /// line).
    async fn scry_command(&mut self, line: &str, active: &Arc<AtomicBool>) {
        // The typed line stays on screen, as a pdb command would.
        self.cursor = self.buf.len();
        self.redraw();
        self.out("\r\n");
        self.buf.clear();
        self.cursor = 0;
        self.hist_pos = None;
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("%repls" | "%list"), None, _) => {
                let path = format!("/api/v1/repl/sessions/{}", self.session);
                match self.client.get_as::<ReplSessionState>(&path).await {
                    Ok(state) => {
                        let text = repls_text(&state);
                        self.out(&text);
                    }
                    Err(e) => self.out(&format!("scry: {}\n", e.message)),
                }
                self.redraw();
            }
            (Some("%switch"), Some(to), None) => {
                let to = match to.parse::<u32>() {
                    Ok(pid) => ReplSwitch {
                        pid: Some(pid),
                        repl: None,
                    },
                    Err(_) => ReplSwitch {
                        pid: None,
                        repl: Some(to.to_owned()),
                    },
                };
                let path = format!("/api/v1/repl/sessions/{}/switch", self.session);
                match self.client.post_as::<_, ReplSessionState>(&path, &to).await {
                    // The other REPL's header and prompt come as events.
                    Ok(_) => self.leave_prompt(active),
                    Err(e) => {
                        let hint = e.hint.map(|h| format!(" ({h})")).unwrap_or_default();
                        self.out(&format!("scry: {}{hint}\n", e.message));
                        self.redraw();
                    }
                }
            }
            _ => {
                self.out(&format!(
                    "scry: `{line}` is no scry command: `%repls` lists the REPLs of this terminal, `%switch PID` switches to one\n"
                ));
                self.redraw();
            }
        }
    }

    fn insert(&mut self, text: &str) {
        for c in text.chars() {
            self.buf.insert(self.cursor, c);
            self.cursor += 1;
        }
    }

    /// A complete escape sequence collected in `self.escape`, or None while it goes on.
    fn escape_key(&self) -> Option<String> {
        let e = &self.escape;
        if e.len() < 2 {
            return None;
        }
        if e[1] != b'[' && e[1] != b'O' {
            return Some(String::from_utf8_lossy(e).into_owned());
        }
        let last = *e.last()?;
        if e.len() >= 3 && (last.is_ascii_alphabetic() || last == b'~') {
            return Some(String::from_utf8_lossy(&e[2..]).into_owned());
        }
        (e.len() > 8).then(String::new)
    }

    fn key_escape(&mut self, key: &str) {
        match key {
            "A" => self.history_move(true),
            "B" => self.history_move(false),
            "C" => self.cursor = (self.cursor + 1).min(self.buf.len()),
            "D" => self.cursor = self.cursor.saturating_sub(1),
            "H" | "1~" => self.cursor = 0,
            "F" | "4~" => self.cursor = self.buf.len(),
            "3~" if self.cursor < self.buf.len() => {
                self.buf.remove(self.cursor);
            }
            _ => {}
        }
    }

    fn history_move(&mut self, up: bool) {
        if self.history.is_empty() {
            return;
        }
        let pos = match (self.hist_pos, up) {
            (None, true) => Some(self.history.len() - 1),
            (None, false) => None,
            (Some(p), true) => Some(p.saturating_sub(1)),
            (Some(p), false) if p + 1 < self.history.len() => Some(p + 1),
            (Some(_), false) => None,
        };
        self.hist_pos = pos;
        self.buf = pos
            .and_then(|p| self.history.get(p))
            .map(|l| l.chars().collect())
            .unwrap_or_default();
        self.cursor = self.buf.len();
    }

    /// Tab: completions from the target's pdb (readline's word rules).
    async fn complete(&mut self) {
        const DELIMS: &str = " \t\n`~!@#$%^&*()-=+[{]}\\|;:'\",<>/?";
        let line: String = self.buf[..self.cursor].iter().collect();
        let begidx = self.buf[..self.cursor]
            .iter()
            .rposition(|c| DELIMS.contains(*c))
            .map(|i| i + 1)
            .unwrap_or(0);
        let text: String = self.buf[begidx..self.cursor].iter().collect();
        let full: String = self.buf.iter().collect();
        let req = CompleteRequest {
            text: Some(text.clone()),
            line: Some(full),
            begidx: Some(char_to_byte(&line, begidx)),
            endidx: Some(line.len()),
        };
        let Some(Completions { matches }) = self.post("complete", &req).await else {
            return;
        };
        if matches.is_empty() {
            return;
        }
        let common = common_prefix(&matches);
        if common.chars().count() > text.chars().count() {
            let rest: String = common.chars().skip(text.chars().count()).collect();
            self.insert(&rest);
        } else if matches.len() > 1 {
            let list = matches.join("  ");
            self.out("\r\x1b[K");
            self.out(&format!("{list}\n"));
        }
    }
}

/// One line of the session's terminal stream as its event, or None when this scry cannot read
/// it (an event of a newer daemon): skipped, with a debug log line, and the session goes on.
pub(super) fn read_event(line: &[u8]) -> Option<TerminalEvent> {
    match serde_json::from_slice(line) {
        Ok(ev) => Some(ev),
        Err(e) => {
            tracing::debug!(target: "repl", "skipped a terminal event this scry cannot read: {e}");
            None
        }
    }
}

fn char_to_byte(s: &str, chars: usize) -> usize {
    s.char_indices()
        .nth(chars)
        .map(|(b, _)| b)
        .unwrap_or(s.len())
}

fn common_prefix(items: &[String]) -> String {
    let Some(first) = items.first() else {
        return String::new();
    };
    let mut n = first.chars().count();
    for it in &items[1..] {
        n = n.min(
            first
                .chars()
                .zip(it.chars())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    first.chars().take(n).collect()
}

/// `%repls`: the REPL holding the terminal (marked `*`) and the ones waiting, next first.
fn repls_text(state: &ReplSessionState) -> String {
    let s = |text: &str| crate::printer::escape_controls(text).into_owned();
    let line = |mark: &str, r: &ReplView| {
        format!(
            "  {mark} pid {:<7} {} ({}) {} at {}\n",
            r.pid,
            s(&r.name),
            s(&r.thread),
            r.kind.replace('_', "-"),
            s(&r.place)
        )
    };
    let mut out = String::from("scry: REPLs of this terminal (* has it; %switch PID switches):\n");
    if let Some(h) = &state.holder {
        out.push_str(&line("*", h));
    }
    for w in &state.waiting {
        out.push_str(&line(" ", w));
    }
    out
}

fn waiting_text(list: &[ReplView]) -> String {
    if list.is_empty() {
        return String::new();
    }
    // Names and threads come from the target processes: no control character reaches the
    // terminal (as for the REPL's header).
    let s = |text: &str| crate::printer::escape_controls(text).into_owned();
    let who: Vec<String> = list
        .iter()
        .map(|w| format!("{} pid {} ({})", s(&w.name), w.pid, s(&w.thread)))
        .collect();
    format!(
        "scry: {} REPL{} waiting: {} (%switch PID switches, %repls lists)",
        list.len(),
        if list.len() == 1 { "" } else { "s" },
        who.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_of_matches() {
        let m = vec!["obj.alpha".to_owned(), "obj.also".to_owned()];
        assert_eq!(common_prefix(&m), "obj.al");
    }

    #[test]
    fn a_borrowed_stdin_is_usable() {
        use std::os::fd::AsFd;
        let _ = stdin_fd().as_fd();
    }
}
