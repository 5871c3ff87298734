//! `scry run [--debug] [--name N] -- CMD ARGS...`: runs a command with every Python process of
//! its tree loading the agent (a bootstrap `sitecustomize` first on `PYTHONPATH`), and owns the
//! terminal for the REPLs of that tree, which the daemon hands out one at a time.
//!
//! The terminal: the command runs in a process group of its own that is the terminal's
//! foreground group while no REPL is open, so ctrl-c reaches the program as usual. While a REPL
//! is open, `scry run`'s group is the foreground group: ctrl-c reaches only `scry run`, which
//! forwards it to the REPL (an interrupt of the command being run, or a fresh prompt).
//!
//! The line editor is ours (a small one on raw termios): a REPL's prompt must be abandoned when
//! its process dies while the user has not typed anything, which the line-editor crates
//! (rustyline, reedline) cannot do from outside their blocking `readline`. It has history,
//! tab completion (asked of the target's pdb through the daemon) and the usual keys.

use std::collections::VecDeque;
use std::io::Read;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::signal::{kill, killpg, signal, SigHandler, Signal};
use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use nix::unistd::{getpgrp, isatty, setpgid, tcsetpgrp, Pid};
use scry_daemon::Home;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::cli::RunArgs;
use crate::client::DaemonClient;
use crate::error::CliError;
use crate::printer::Printer;

/// The `sitecustomize.py` of the bootstrap directory: loads the agent, then the program's own
/// `sitecustomize` (the next one on `sys.path`), if any.
const SITECUSTOMIZE: &str = r#"# Written by `scry run`: loads the scry agent, then this program's own sitecustomize.
def _scry_bootstrap():
    import os
    import sys
    try:
        import scry._repl
        scry._repl.bootstrap_run()
    except Exception as err:  # never stop the program
        sys.stderr.write("scry run: the agent did not load: %r\n" % (err,))
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        import importlib.machinery
        import importlib.util
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules["sitecustomize"] = module
            spec.loader.exec_module(module)
    except ImportError:
        pass


_scry_bootstrap()
del _scry_bootstrap
"#;

/// Runs the command; returns its exit status (128+N when a signal N ended it).
pub async fn run(home: &Home, a: &RunArgs, printer: &mut Printer) -> Result<u8, CliError> {
    let Some((program, args)) = a.command.split_first() else {
        return Err(CliError::new("no command to run").hint("e.g. scry run -- python app.py"));
    };
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let created = client
        .post("/api/v1/repl/sessions", &json!({"name": a.name}))
        .await?;
    let session = created
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| CliError::new("the daemon did not name the REPL session"))?
        .to_owned();
    let stream = client
        .stream(&format!("/api/v1/repl/sessions/{session}/stream"))
        .await?;

    remove_stale_bootstraps();
    let boot = tempfile::Builder::new()
        .prefix(&format!("{BOOT_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| CliError::new(format!("cannot create the bootstrap directory: {e}")))?;
    scry_daemon::bundle::unpack_to(boot.path()).map_err(CliError::from_daemon)?;
    std::fs::write(boot.path().join("sitecustomize.py"), SITECUSTOMIZE)
        .map_err(|e| CliError::new(format!("cannot write the bootstrap: {e}")))?;

    let mut python_path = boot.path().as_os_str().to_owned();
    if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        python_path.push(":");
        python_path.push(old);
    }
    // Only a foreground `scry run` moves the terminal between groups (never steal it from the
    // shell when started in the background).
    let tty = isatty(0).unwrap_or(false)
        && nix::unistd::tcgetpgrp(stdin_fd()).is_ok_and(|fg| fg == getpgrp());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("PYTHONPATH", python_path)
        .env("PYTHONBREAKPOINT", "scry.pause")
        .env("SCRY_RUN_SESSION", &session)
        .env("SCRY_HOME", home.root());
    if let Some(n) = &a.name {
        cmd.env("SCRY_NAME", n);
    }
    if a.debug {
        cmd.env("SCRY_RUN_DEBUG", "1");
        cmd.env("SCRY_RUN_DEBUG_FILTER", a.debug_filter.join(","));
    } else {
        cmd.env_remove("SCRY_RUN_DEBUG");
    }
    // SAFETY: only async-signal-safe calls (setpgid, tcsetpgrp, signal, sigprocmask) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let _ = signal(Signal::SIGTTOU, SigHandler::SigDfl);
            let _ = signal(Signal::SIGINT, SigHandler::SigDfl);
            if tty {
                setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(std::io::Error::from)?;
                let stdin = BorrowedFd::borrow_raw(0);
                // We are not the foreground yet: SIGTTOU must not stop us meanwhile.
                let _ = signal(Signal::SIGTTOU, SigHandler::SigIgn);
                let _ = tcsetpgrp(stdin, getpgrp());
                let _ = signal(Signal::SIGTTOU, SigHandler::SigDfl);
            }
            Ok(())
        });
    }
    // SAFETY: ignoring a signal installs no handler code.
    unsafe {
        // We move the terminal's foreground between groups, also while in the background.
        let _ = signal(Signal::SIGTTOU, SigHandler::SigIgn);
    }
    let mut child = cmd.spawn().map_err(|e| {
        CliError::new(format!("cannot run `{program}`: {e}"))
            .hint("is it installed and on PATH? the command comes after `--`")
    })?;
    let child_pid = child.id().map(|p| Pid::from_raw(p as i32));
    if let (true, Some(pid)) = (tty, child_pid) {
        let _ = setpgid(pid, pid);
        let _ = tcsetpgrp(stdin_fd(), pid);
    }
    printer.note(format!(
        "scry run: session {session}; breakpoint() in any process of the tree opens a REPL here"
    ));

    let mut term = Terminal::new(printer, client, session.clone(), tty, child_pid);
    let mut lines = Box::pin(stream.bytes_stream());
    let mut stream_open = true;
    let mut pending = Vec::<u8>::new();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::new(format!("cannot handle SIGINT: {e}")))?;
    let keys = KeyReader::start(tty);
    let mut keys_rx = keys.rx;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st,
            chunk = lines.next(), if stream_open => match chunk {
                Some(Ok(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=i).collect();
                        if let Ok(ev) = serde_json::from_slice::<Value>(&line) {
                            term.on_event(&ev, &keys.active).await;
                        }
                    }
                }
                _ => {
                    term.note("scry run: the daemon closed the REPL stream; REPLs are off");
                    stream_open = false;
                }
            },
            Some(bytes) = keys_rx.recv() => term.on_keys(&bytes, &keys.active).await,
            _ = sigint.recv() => term.on_sigint().await,
        }
    };
    keys.active.store(false, Ordering::SeqCst);
    term.leave_prompt(&keys.active);
    if tty {
        let _ = tcsetpgrp(stdin_fd(), getpgrp());
    }
    let _ = term
        .client
        .delete(&format!("/api/v1/repl/sessions/{session}"))
        .await;
    drop(boot);
    let status = status.map_err(|e| CliError::new(format!("cannot wait for the command: {e}")))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => (128 + s) as u8,
        _ => 1,
    })
}

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// Reads the keyboard only while a prompt is shown (never while the program owns the terminal).
struct KeyReader {
    active: Arc<AtomicBool>,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

impl KeyReader {
    fn start(tty: bool) -> KeyReader {
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
struct Terminal<'p> {
    printer: &'p mut Printer,
    client: DaemonClient,
    session: String,
    tty: bool,
    color: bool,
    child_pgrp: Option<Pid>,
    holder: Option<String>,
    prompt: Option<String>,
    buf: Vec<char>,
    cursor: usize,
    history: VecDeque<String>,
    hist_pos: Option<usize>,
    saved_termios: Option<Termios>,
    escape: Vec<u8>,
}

impl<'p> Terminal<'p> {
    fn new(
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

    fn note(&mut self, text: &str) {
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

    async fn on_event(&mut self, ev: &Value, active: &Arc<AtomicBool>) {
        // Names and places come from the target: shown, never sent to the terminal as controls.
        let s = |k: &str| {
            crate::printer::escape_controls(ev.get(k).and_then(Value::as_str).unwrap_or(""))
                .into_owned()
        };
        match s("type").as_str() {
            "open" => {
                self.holder = Some(s("repl"));
                if self.tty {
                    // The REPL owns the terminal: ctrl-c now reaches scry run, not the tree.
                    let _ = tcsetpgrp(stdin_fd(), getpgrp());
                }
                let what = match s("kind").as_str() {
                    "post_mortem" => "post-mortem",
                    "break" => "break-in",
                    _ => "breakpoint",
                };
                let mut header = format!(
                    "── scry REPL: {} pid {}, thread {} ({what} at {}) ──",
                    s("name"),
                    ev.get("pid").and_then(Value::as_u64).unwrap_or(0),
                    s("thread"),
                    s("where")
                );
                if self.color {
                    header = format!("\x1b[1;35m{header}\x1b[0m");
                }
                self.out(&format!("\n{header}\n"));
                let waiting = waiting_text(ev.get("waiting"));
                if !waiting.is_empty() {
                    self.note(&waiting);
                }
            }
            "output" => {
                let text = s("text");
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
            "prompt" => {
                self.prompt = Some(s("prompt"));
                self.buf.clear();
                self.cursor = 0;
                self.hist_pos = None;
                self.enter_raw();
                active.store(true, Ordering::SeqCst);
                self.redraw();
            }
            "closed" => {
                let was_ours = self.holder.as_deref() == Some(s("repl").as_str());
                if was_ours {
                    self.leave_prompt(active);
                    self.holder = None;
                    let reason = s("reason");
                    if reason != "released" {
                        self.note(&format!("scry: REPL closed: {reason}"));
                    }
                    if let (true, Some(pgrp)) = (self.tty, self.child_pgrp) {
                        let _ = tcsetpgrp(stdin_fd(), pgrp);
                    }
                }
            }
            "queue" if self.holder.is_some() => {
                let waiting = waiting_text(ev.get("waiting"));
                if !waiting.is_empty() {
                    self.note(&waiting);
                }
            }
            _ => {}
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

    fn leave_prompt(&mut self, active: &Arc<AtomicBool>) {
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

    async fn post(&mut self, what: &str, body: Value) -> Option<Value> {
        let path = format!("/api/v1/repl/sessions/{}/{what}", self.session);
        match self.client.post(&path, &body).await {
            Ok(v) => Some(v),
            Err(e) => {
                self.note(&format!("scry: {}", e.message));
                None
            }
        }
    }

    async fn on_sigint(&mut self) {
        if self.holder.is_some() {
            // A REPL is running a command: interrupt it, never the tree.
            self.post("interrupt", json!({})).await;
        } else if let Some(pgrp) = self.child_pgrp {
            let _ = if self.tty {
                killpg(pgrp, Signal::SIGINT)
            } else {
                kill(pgrp, Signal::SIGINT)
            };
        }
    }

    async fn on_keys(&mut self, bytes: &[u8], active: &Arc<AtomicBool>) {
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
                    self.cursor = self.buf.len();
                    self.redraw();
                    self.leave_prompt(active);
                    if !line.trim().is_empty() && self.history.back() != Some(&line) {
                        self.history.push_back(line.clone());
                        if self.history.len() > 1000 {
                            self.history.pop_front();
                        }
                    }
                    self.post("input", json!({"line": line})).await;
                    return;
                }
                3 => {
                    // ctrl-c at the prompt: pdb prints --KeyboardInterrupt-- and prompts again.
                    self.out("^C");
                    self.leave_prompt(active);
                    self.post("interrupt", json!({})).await;
                    return;
                }
                4 => {
                    if self.buf.is_empty() {
                        self.leave_prompt(active);
                        self.post("input", json!({"line": "EOF"})).await;
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
        let Some(answer) = self
            .post(
                "complete",
                json!({"text": text, "line": full, "begidx": char_to_byte(&line, begidx),
                       "endidx": line.len()}),
            )
            .await
        else {
            return;
        };
        let matches: Vec<String> = answer
            .get("matches")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
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

fn waiting_text(waiting: Option<&Value>) -> String {
    let list = waiting
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        return String::new();
    }
    let who: Vec<String> = list
        .iter()
        .map(|w| {
            format!(
                "{} pid {} ({})",
                w.get("name").and_then(Value::as_str).unwrap_or("?"),
                w.get("pid").and_then(Value::as_u64).unwrap_or(0),
                w.get("thread").and_then(Value::as_str).unwrap_or("?")
            )
        })
        .collect();
    format!(
        "scry: {} REPL{} waiting: {}",
        list.len(),
        if list.len() == 1 { "" } else { "s" },
        who.join(", ")
    )
}

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// ANSI colours for a line of a pdb listing (`  12  ->    code`); other lines unchanged.
pub fn highlight_line(line: &str) -> String {
    let body = line.trim_end_matches('\n');
    let trimmed = body.trim_start();
    let digits = trimmed.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || !trimmed[digits..].starts_with(' ') {
        return line.to_owned();
    }
    let prefix_len = body.len() - trimmed.len() + digits;
    let (prefix, rest) = body.split_at(prefix_len);
    // pdb: two columns of markers (B, ->, >>) then a tab or spaces, then the code.
    let marker_end = rest
        .char_indices()
        .find(|(_, c)| *c == '\t')
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| rest.len().min(5));
    let (marker, code) = rest.split_at(marker_end.min(rest.len()));
    let mut out = format!("\x1b[2m{prefix}\x1b[0m");
    if marker.contains("->") || marker.contains(">>") {
        out.push_str(&format!("\x1b[1;33m{marker}\x1b[0m"));
    } else {
        out.push_str(marker);
    }
    out.push_str(&highlight_code(code));
    if line.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn highlight_code(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            let rest: String = chars[i..].iter().collect();
            out.push_str(&format!("\x1b[90m{rest}\x1b[0m"));
            break;
        }
        if c == '"' || c == '\'' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                if chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            let end = (j + 1).min(chars.len());
            let s: String = chars[i..end].iter().collect();
            out.push_str(&format!("\x1b[32m{s}\x1b[0m"));
            i = end;
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            let w: String = chars[i..j].iter().collect();
            if KEYWORDS.contains(&w.as_str()) {
                out.push_str(&format!("\x1b[1;34m{w}\x1b[0m"));
            } else {
                out.push_str(&w);
            }
            i = j;
            continue;
        }
        if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '.') {
                j += 1;
            }
            let w: String = chars[i..j].iter().collect();
            out.push_str(&format!("\x1b[36m{w}\x1b[0m"));
            i = j;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// `scry repl PID [--thread T]`: break into a running process and hold its REPL here.
pub async fn repl(
    home: &Home,
    a: &crate::cli::ReplArgs,
    printer: &mut Printer,
) -> Result<u8, CliError> {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let body = json!({"thread": a.thread});
    let path = format!("/api/v1/processes/{}/repl", a.pid);
    let answer = match client.post(&path, &body).await {
        Ok(answer) => answer,
        Err(first) => {
            // No agent to break into: a sleeping embedded client is woken, a process that never
            // loaded scry is attached (the daemon's `scry attach`), then ask again.
            match process_state(&client, a.pid).await.as_deref() {
                Some("awake") => return Err(first),
                Some("sleeping") => {
                    printer.note(format!(
                        "scry repl: pid {} has a sleeping scry client; waking it",
                        a.pid
                    ));
                    client
                        .post("/api/v1/wake", &json!({"target": a.pid.to_string()}))
                        .await?;
                }
                _ => {
                    printer.note(format!(
                        "scry repl: pid {} has no agent; attaching one (as `scry attach {}`)",
                        a.pid, a.pid
                    ));
                    super::attach::announce(&client, a.pid, None, printer).await?;
                    let request = scry_api::AttachRequest {
                        pid: a.pid,
                        timeout_ms: Some(REPL_ATTACH_TIMEOUT_MS),
                        injector: None,
                    };
                    client
                        .attach(&request, false, Duration::from_secs(90))
                        .await?;
                }
            }
            client.post(&path, &body).await?
        }
    };
    let session = answer
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| CliError::new("the daemon did not name the REPL session"))?
        .to_owned();
    let stream = client
        .stream(&format!("/api/v1/repl/sessions/{session}/stream"))
        .await?;
    let tty = isatty(0).unwrap_or(false);
    printer.note(format!(
        "scry repl: stopping pid {} at its next Python line ({})",
        a.pid,
        answer
            .get("thread")
            .and_then(Value::as_str)
            .unwrap_or("main thread")
    ));
    let mut term = Terminal::new(printer, client, session.clone(), tty, None);
    let mut lines = Box::pin(stream.bytes_stream());
    let mut pending = Vec::<u8>::new();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::new(format!("cannot handle SIGINT: {e}")))?;
    let keys = KeyReader::start(tty);
    let mut keys_rx = keys.rx;
    let mut opened = false;
    loop {
        tokio::select! {
            chunk = lines.next() => match chunk {
                Some(Ok(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=i).collect();
                        if let Ok(ev) = serde_json::from_slice::<Value>(&line) {
                            term.on_event(&ev, &keys.active).await;
                            match ev.get("type").and_then(Value::as_str) {
                                Some("open") => opened = true,
                                Some("closed") if opened => {
                                    let _ = term.client.delete(&format!("/api/v1/repl/sessions/{session}")).await;
                                    return Ok(0);
                                }
                                _ => {}
                            }
                        }
                    }
                }
                _ => return Err(CliError::new("the daemon closed the REPL stream")),
            },
            Some(bytes) = keys_rx.recv() => term.on_keys(&bytes, &keys.active).await,
            _ = sigint.recv() => {
                if term.holder.is_some() {
                    term.on_sigint().await;
                } else {
                    let _ = term.client.delete(&format!("/api/v1/repl/sessions/{session}")).await;
                    return Ok(130);
                }
            }
        }
    }
}

/// How long `scry repl` lets a process without an agent take to pick the attach up: more than
/// `scry attach`'s default 5 s, since through gdb the whole of gdb's run counts (slow on a
/// loaded machine) and the user is waiting for a prompt anyway.
const REPL_ATTACH_TIMEOUT_MS: f64 = 10_000.0;

/// The daemon's state of `pid` (`awake`, `sleeping`, `gone`), or None when it does not know it.
async fn process_state(client: &DaemonClient, pid: u32) -> Option<String> {
    let p: scry_api::ProcessEntry = client
        .get_as(&format!("/api/v1/processes/{pid}"))
        .await
        .ok()?;
    Some(p.state().as_str().to_owned())
}

/// The bootstrap directories of `scry run` are `$TMPDIR/scry-run-<pid of scry run>-<random>`.
const BOOT_PREFIX: &str = "scry-run-";

/// Removes the bootstrap directories that a `scry run` killed before it could clean up left
/// behind: ours (same uid), named after a pid that no longer runs.
fn remove_stale_bootstraps() {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let uid = nix::unistd::getuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(BOOT_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = entry
            .path()
            .symlink_metadata()
            .is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if ours && !scry_proc::alive(pid, None) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_are_highlighted_and_others_left_alone() {
        let l = highlight_line("  3  ->\tdef f(x):  # hi\n");
        assert!(l.contains("\x1b[1;34mdef\x1b[0m"), "{l:?}");
        assert!(l.contains("\x1b[90m# hi"), "{l:?}");
        assert!(l.ends_with('\n'));
        assert_eq!(highlight_line("> /x.py(3)f()\n"), "> /x.py(3)f()\n");
    }

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
