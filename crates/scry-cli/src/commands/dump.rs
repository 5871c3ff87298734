//! `scry dump` (presents what `scry_proc::stacks` read, and keeps it in the daemon's store when
//! a daemon runs) and `scry dumps` (the kept dumps).

use std::io::Write;

use scry_api::{DumpAdded, DumpList, DumpView};
use scry_daemon::Home;
use scry_proc::stacks::{
    self, AgentInside, AsyncLoopDump, Dump, DumpOptions, ProcessDump, ProcessKind, StackError,
};
use serde_json::Value;

use super::{age, CmdResult};
use crate::cli::{DumpArgs, DumpsArgs};
use crate::client::DaemonClient;
use crate::error::{CliError, ExitStatus};
use crate::printer::{table, Printer};

/// Dumps the stacks of a process (and its tree), or of every live process of a name, prints
/// them, writes `--out`, and keeps each dump in the daemon's store if a daemon is running (it is
/// never started for this: the dump itself needs no daemon).
pub async fn dump(home: &Home, args: &DumpArgs, printer: &mut Printer) -> CmdResult {
    if args.native && !stacks::NATIVE_SUPPORTED {
        return Err(CliError::new(
            "this scry was built without native unwinding, so `--native` cannot show C frames",
        )
        .hint(
            "install libunwind-dev and liblzma-dev, then reinstall from a scry checkout: \
             `pip install .` (the wheel builds with it), or \
             `cargo install --locked --path crates/scry-cli --features native`",
        ));
    }
    let options = DumpOptions {
        tree: args.tree,
        locals: args.locals,
        native: args.native,
    };
    let daemon = our_daemon(home).await;
    let target = args.target.trim();
    let (name, pids) = match target.parse::<u32>() {
        Ok(pid) if args.pid.is_some_and(|p| p != pid) => {
            return Err(CliError::new(format!(
                "`--pid` narrows a name; {target} is already a pid"
            )));
        }
        Ok(pid) => (None, vec![pid]),
        Err(_) => (
            Some(target),
            named_pids(home, daemon.as_ref().ok(), target, args.pid).await?,
        ),
    };
    let mut dumps = Vec::new();
    let mut first_error = None;
    for pid in pids {
        match stacks::dump(pid, options) {
            Ok(mut d) => {
                if let Ok(client) = &daemon {
                    ask_agents(client, &mut d).await;
                }
                dumps.push(d);
            }
            // Of several processes, one that exited meanwhile (or cannot be read) is said and
            // skipped; the dump of one process fails with it.
            Err(e) if name.is_some() => {
                let e = stack_error(e);
                printer.note(format!("scry: pid {pid} is not dumped: {}", e.message));
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(stack_error(e)),
        }
    }
    if dumps.is_empty() {
        return Err(first_error.unwrap_or_else(|| CliError::new("nothing was dumped")));
    }
    let doc = match name {
        None => serde_json::to_value(&dumps[0]),
        Some(name) => serde_json::to_value(NamedDumps {
            name,
            dumps: &dumps,
        }),
    }
    .map_err(std::io::Error::other)?;
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&doc).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n").map_err(|e| {
            CliError::new(format!("cannot write the dump to {}: {e}", path.display()))
        })?;
    }
    if printer.json {
        printer.json_value(&doc)?;
    } else {
        let mut buf = Vec::new();
        if let Some(name) = name {
            let pids: Vec<String> = dumps
                .iter()
                .map(|d| format!("pid {}", d.root_pid))
                .collect();
            let n = dumps.len();
            writeln!(
                buf,
                "{n} process{} named {name}: {}\n",
                if n == 1 { "" } else { "es" },
                pids.join(", ")
            )?;
        }
        for (i, d) in dumps.iter().enumerate() {
            if i > 0 {
                writeln!(buf)?;
            }
            render(d, &mut buf)?;
        }
        printer.line(String::from_utf8_lossy(&buf).trim_end())?;
    }
    if let Some(path) = &args.out {
        printer.note(format!("wrote the dump to {}", path.display()));
    }
    match &daemon {
        Ok(client) => {
            for d in &dumps {
                keep(client, d, printer).await;
            }
        }
        Err(why) => printer.note(format!("scry: the dump is not kept ({why})")),
    }
    Ok(ExitStatus::Success)
}

/// `scry dump NAME --json`: one dump per process of the name.
#[derive(serde::Serialize)]
struct NamedDumps<'a> {
    name: &'a str,
    dumps: &'a [Dump],
}

/// The live processes registered under `name` (narrowed to `pid`): the daemon's when it runs,
/// else the embedded clients' discovery files.
async fn named_pids(
    home: &Home,
    daemon: Option<&DaemonClient>,
    name: &str,
    pid: Option<u32>,
) -> Result<Vec<u32>, CliError> {
    let mut pids: Vec<u32> = match daemon {
        Some(client) => client
            .get_as::<scry_api::ProcessList>("/api/v1/processes")
            .await?
            .processes
            .iter()
            .filter(|p| p.state() != scry_api::ProcState::Gone && p.name() == Some(name))
            .map(scry_api::ProcessEntry::pid)
            .collect(),
        None => scry_daemon::clients::discover(home)
            .into_iter()
            .filter(|c| c.name.as_deref() == Some(name))
            .map(|c| c.pid)
            .collect(),
    };
    pids.sort_unstable();
    pids.dedup();
    if pids.is_empty() {
        return Err(
            CliError::new(format!("no live process is named `{name}`")).hint(
                "see `scry ps`; give a pid for a process that never called `scry.init(name=...)`",
            ),
        );
    }
    match pid {
        None => Ok(pids),
        Some(p) if pids.contains(&p) => Ok(vec![p]),
        Some(p) => {
            let named: Vec<String> = pids.iter().map(u32::to_string).collect();
            Err(CliError::new(format!(
                "pid {p} is not one of the processes named `{name}`: pids {}",
                named.join(", ")
            ))
            .hint("give one of those pids with `--pid`, or leave `--pid` out to dump them all"))
        }
    }
}

/// The running daemon of this `SCRY_HOME` (or `SCRY_DAEMON`'s), never one that merely answers
/// on the default port for somebody else, and never started for a dump (which needs none).
/// The error says why there is none, for a note.
async fn our_daemon(home: &Home) -> Result<DaemonClient, String> {
    let client = DaemonClient::locate(home).map_err(|e| e.message)?;
    let ours = client.explicit || crate::client::read_daemon_file(home).is_some();
    if !ours || !client.is_up().await {
        return Err(
            "no scry daemon is running; with `scry serve --daemon` every dump is kept \
                    and `scry dumps` lists them"
                .into(),
        );
    }
    Ok(client)
}

/// How long a connected agent has to answer `inspect`: a process whose GIL is held by a
/// blocked thread cannot answer at all, and the dump must not wait long for it.
const INSPECT_TIMEOUT_MS: u64 = 1500;

/// Asks the connected agent of every Python process of the dump (all at once) what only the
/// inside can see: thread names set in Python and asyncio tasks. A process without an agent is
/// left as it is; one whose agent does not answer gets `agent.error`.
async fn ask_agents(client: &DaemonClient, dump: &mut Dump) {
    let connected: std::collections::HashSet<u32> = match client
        .get_as::<scry_api::ProcessList>("/api/v1/processes")
        .await
    {
        Ok(list) => list
            .processes
            .iter()
            .filter(|p| p.state() == scry_api::ProcState::Awake)
            .map(scry_api::ProcessEntry::pid)
            .collect(),
        Err(_) => return,
    };
    let asks = dump
        .processes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind == ProcessKind::Python && connected.contains(&p.pid))
        .map(|(i, p)| {
            let path = format!(
                "/api/v1/processes/{}/call/inspect?timeout_ms={INSPECT_TIMEOUT_MS}",
                p.pid
            );
            async move { (i, client.post(&path, &serde_json::json!({})).await) }
        });
    for (i, answer) in futures_util::future::join_all(asks).await {
        let Some(p) = dump.processes.get_mut(i) else {
            continue;
        };
        p.agent = Some(match answer {
            Ok(inside) => merge_inside(p, &inside),
            Err(e) => AgentInside {
                asyncio: Vec::new(),
                error: Some(format!("the scry agent did not answer: {}", e.message)),
            },
        });
    }
}

/// Puts the Python thread names of `inspect`'s answer on the threads (by OS thread id) and
/// returns the rest.
fn merge_inside(p: &mut ProcessDump, inside: &Value) -> AgentInside {
    for t in inside["threads"].as_array().into_iter().flatten() {
        let (Some(native), Some(name)) = (t["native_id"].as_u64(), t["name"].as_str()) else {
            continue;
        };
        if let Some(thread) = p
            .threads
            .iter_mut()
            .find(|th| th.os_thread_id == Some(native))
        {
            thread.name = Some(name.to_owned());
        }
    }
    match serde_json::from_value::<Vec<AsyncLoopDump>>(inside["asyncio"].clone()) {
        Ok(asyncio) => AgentInside {
            asyncio,
            error: None,
        },
        Err(e) => AgentInside {
            asyncio: Vec::new(),
            error: Some(format!("the scry agent's answer was not understood: {e}")),
        },
    }
}

/// Stores the dump in the running daemon, saying what happened on stderr. Never fails the dump.
async fn keep(client: &DaemonClient, dump: &Dump, printer: &mut Printer) {
    let body = match serde_json::to_value(dump) {
        Ok(v) => v,
        Err(e) => {
            printer.note(format!("scry: the dump is not kept: {e}"));
            return;
        }
    };
    match client.post_as::<_, DumpAdded>("/api/v1/dumps", &body).await {
        Ok(DumpAdded { id }) => printer.note(format!(
            "scry: kept as dump {id} (`scry dumps {id}` shows it again)"
        )),
        Err(e) => printer.note(format!("scry: the dump is not kept: {}", e.message)),
    }
}

/// Lists the kept dumps, or shows one.
pub async fn dumps(home: &Home, args: &DumpsArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    if let Some(id) = args.id {
        let answer: DumpView = client.get_as(&format!("/api/v1/dumps/{id}")).await?;
        if printer.json {
            printer.json_value(&answer.dump)?;
            return Ok(ExitStatus::Success);
        }
        // Parsed here, not by the client: a dump kept by another scry version may not read as
        // this version's `Dump`, and `--json` still shows it as stored.
        let dump: Dump = serde_json::from_value(answer.dump).map_err(|e| {
            CliError::new(format!("dump {id} is not readable by this scry: {e}"))
                .hint(format!("`scry dumps {id} --json` shows it as stored"))
        })?;
        let mut buf = Vec::new();
        render(&dump, &mut buf)?;
        printer.line(String::from_utf8_lossy(&buf).trim_end())?;
        return Ok(ExitStatus::Success);
    }
    let answer: DumpList = client.get_as("/api/v1/dumps").await?;
    if printer.json {
        printer.json_value(&answer)?;
        return Ok(ExitStatus::Success);
    }
    let list = answer.dumps;
    if list.is_empty() {
        printer.line("no dumps yet")?;
        printer.note("hint: `scry dump PID` while the daemon runs keeps the dump here");
        return Ok(ExitStatus::Success);
    }
    let now = scry_daemon::now();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            vec![
                d.id.to_string(),
                format!("{} ago", age(now - d.taken_at)),
                d.root_pid.to_string(),
                if d.tree { "tree" } else { "process" }.to_owned(),
                format!("{}/{}", d.python_processes, d.processes),
                d.command.clone(),
            ]
        })
        .collect();
    for line in table(
        &["ID", "TAKEN", "PID", "SCOPE", "PYTHON/ALL", "COMMAND"],
        &rows,
    ) {
        printer.line(line)?;
    }
    Ok(ExitStatus::Success)
}

fn ptrace_scope_hint() -> String {
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .map(|s| s.trim().to_owned());
    let yama = match scope.as_deref() {
        Some(v) if v != "0" => format!(
            "; /proc/sys/kernel/yama/ptrace_scope is {v}: 1 lets only a parent read a process, \
             2 only root, 3 nobody (as root: `sysctl kernel.yama.ptrace_scope=0`)"
        ),
        Some(_) => String::new(),
        None => "; where Yama is on, /proc/sys/kernel/yama/ptrace_scope 1 lets only a parent \
                 read a process and 2 only root"
            .to_owned(),
    };
    format!(
        "run scry as the same user as the process, or as root{yama}; in a container the reader \
         needs CAP_SYS_PTRACE (docker run --cap-add SYS_PTRACE, or securityContext.capabilities \
         in Kubernetes)"
    )
}

/// A user-facing error for each way a dump can fail.
fn stack_error(e: StackError) -> CliError {
    let hint = match &e {
        StackError::NoSuchProcess { .. } => {
            "check the pid: `ps -ef`, or `pgrep -af NAME` to find it by command".to_owned()
        }
        StackError::PermissionDenied { .. } => ptrace_scope_hint(),
        StackError::NotPython { pid, .. } => format!(
            "scry dump reads CPython processes; `scry dump --tree {pid}` lists this process \
             with the Python processes below it"
        ),
        _ => "scry dump reads CPython 3.3 to 3.14 (not free-threaded builds); run again with \
              SCRY_LOG=proc=debug for details"
            .to_owned(),
    };
    let mut causes = Vec::new();
    let mut cur = std::error::Error::source(&e);
    while let Some(c) = cur {
        let text = c.to_string();
        // remoteprocess wraps an io::Error and shows the same text: keep one.
        if causes.last() != Some(&text) {
            causes.push(text);
        }
        cur = c.source();
    }
    let mut err = CliError::new(e.to_string()).hint(hint);
    err.causes = causes;
    err
}

/// The dump as text: a header, then each process (indented by its depth) and its threads.
pub fn render(dump: &Dump, out: &mut impl Write) -> std::io::Result<()> {
    let below = dump.processes.len().saturating_sub(1);
    let scope = if dump.tree {
        format!(
            "process {} and {below} below it",
            dump.root_pid,
            below = below
        )
    } else {
        format!("process {}", dump.root_pid)
    };
    writeln!(
        out,
        "scry dump of {scope} in {:.0} ms; frames innermost first (the running frame on top)",
        dump.duration_ms
    )?;
    for p in &dump.processes {
        writeln!(out)?;
        render_process(p, out)?;
    }
    Ok(())
}

/// Whether a thread is one of the scry agent's own (they are all named `scry-…`).
fn is_scry_thread(name: Option<&str>) -> bool {
    name.is_some_and(|n| n.starts_with("scry-"))
}

fn render_process(p: &ProcessDump, out: &mut impl Write) -> std::io::Result<()> {
    let pad = "    ".repeat(p.depth as usize);
    let command = if p.cmdline.is_empty() {
        format!("[{}]", p.comm)
    } else {
        p.cmdline.join(" ")
    };
    let state = || {
        let mut s = p.state.clone().unwrap_or_else(|| "?".into());
        if let Some(w) = &p.wchan {
            s.push_str(&format!(", waiting in {w}"));
        }
        s
    };
    match p.kind {
        ProcessKind::Python => {
            let version = p.python_version.as_deref().unwrap_or("?");
            let paused = if p.paused {
                "paused while read".to_owned()
            } else {
                "read WITHOUT pausing (pausing refused; stacks may be inconsistent)".to_owned()
            };
            writeln!(
                out,
                "{pad}process {} (python {version}, {paused}): {command}",
                p.pid
            )?;
            if let (false, Some(why)) = (p.paused, &p.pause_error) {
                writeln!(out, "{pad}  pausing failed: {why}")?;
            }
            if p.threads.is_empty() {
                writeln!(out, "{pad}  no Python threads")?;
            }
            for t in &p.threads {
                let tid = t
                    .os_thread_id
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| format!("py:{:#x}", t.python_thread_id));
                let name = t
                    .name
                    .as_deref()
                    .map(|n| format!(" \"{n}\""))
                    .unwrap_or_default();
                let gil = if t.holds_gil { ", holds the GIL" } else { "" };
                if is_scry_thread(t.name.as_deref()) {
                    // The agent's own threads (its link, control plane) are not the user's
                    // program: marked, their frames kept for --json.
                    writeln!(
                        out,
                        "{pad}  thread {tid}{name}: scry's own ({}{gil}; frames in --json)",
                        t.status
                    )?;
                    continue;
                }
                writeln!(out, "{pad}  thread {tid}{name}: {}{gil}", t.status)?;
                for f in &t.frames {
                    if f.native {
                        let module = f.module.as_deref().unwrap_or("?");
                        let module = module.rsplit('/').next().unwrap_or(module);
                        writeln!(out, "{pad}    [native] {} ({module})", f.function)?;
                        continue;
                    }
                    writeln!(out, "{pad}    {} ({}:{})", f.function, f.file, f.line)?;
                    for l in f.locals.iter().flatten() {
                        let kind = if l.arg { " (arg)" } else { "" };
                        writeln!(
                            out,
                            "{pad}        {}{kind} = {}",
                            l.name,
                            l.repr.as_deref().unwrap_or("?")
                        )?;
                    }
                }
            }
            if let Some(agent) = &p.agent {
                render_inside(agent, &pad, out)?;
            }
        }
        ProcessKind::Other => writeln!(
            out,
            "{pad}process {} (not Python: {}): {command}",
            p.pid,
            state()
        )?,
        ProcessKind::Gone => writeln!(
            out,
            "{pad}process {} ({}): {command}",
            p.pid,
            p.error.as_deref().unwrap_or("exited during the dump")
        )?,
        ProcessKind::Unreadable => {
            writeln!(
                out,
                "{pad}process {} (stacks unreadable; {}): {command}",
                p.pid,
                state()
            )?;
            if let Some(e) = &p.error {
                writeln!(out, "{pad}  {e}")?;
            }
        }
    }
    Ok(())
}

/// The asyncio tasks the agent reported, each with its await chain (outermost first, as
/// Python's `asyncio` task dumps show them) and what it awaits.
fn render_inside(agent: &AgentInside, pad: &str, out: &mut impl Write) -> std::io::Result<()> {
    if let Some(e) = &agent.error {
        writeln!(out, "{pad}  (asyncio tasks unknown: {e})")?;
    }
    for lp in &agent.asyncio {
        let thread = lp
            .thread_native_id
            .map(|t| format!(" on thread {t}"))
            .unwrap_or_default();
        writeln!(
            out,
            "{pad}  asyncio loop{thread}: {} task{}",
            lp.tasks.len(),
            if lp.tasks.len() == 1 { "" } else { "s" }
        )?;
        for t in &lp.tasks {
            let awaiting = t
                .awaiting
                .as_deref()
                .map(|a| format!(", awaiting {a}"))
                .unwrap_or_default();
            writeln!(
                out,
                "{pad}    task \"{}\" ({}, {}{awaiting})",
                t.name, t.coro, t.state
            )?;
            for f in &t.stack {
                writeln!(out, "{pad}      {} ({}:{})", f.function, f.file, f.line)?;
            }
        }
        if let Some(note) = &lp.note {
            writeln!(out, "{pad}    ({note})")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scry_proc::stacks::{FrameDump, ThreadDump};

    fn sample() -> Dump {
        let base = ProcessDump {
            pid: 10,
            ppid: 1,
            depth: 0,
            comm: "python3".into(),
            cmdline: vec!["python3".into(), "app.py".into()],
            kind: ProcessKind::Python,
            python_version: Some("3.11.2".into()),
            paused: true,
            pause_error: None,
            state: Some("S (sleeping)".into()),
            wchan: None,
            error: None,
            agent: None,
            threads: vec![ThreadDump {
                os_thread_id: Some(10),
                python_thread_id: 1,
                name: Some("MainThread".into()),
                holds_gil: true,
                status: "idle".into(),
                frames: vec![
                    FrameDump {
                        function: "__libc_read".into(),
                        file: "?".into(),
                        line: 0,
                        locals: None,
                        native: true,
                        module: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
                    },
                    FrameDump {
                        function: "wait_forever".into(),
                        file: "app.py".into(),
                        line: 3,
                        locals: None,
                        native: false,
                        module: None,
                    },
                    FrameDump {
                        function: "<module>".into(),
                        file: "app.py".into(),
                        line: 9,
                        locals: None,
                        native: false,
                        module: None,
                    },
                ],
            }],
        };
        let sleep = ProcessDump {
            pid: 11,
            ppid: 10,
            depth: 1,
            comm: "sleep".into(),
            cmdline: vec!["sleep".into(), "60".into()],
            kind: ProcessKind::Other,
            python_version: None,
            state: Some("S (sleeping)".into()),
            wchan: Some("hrtimer_nanosleep".into()),
            threads: vec![],
            ..base.clone()
        };
        Dump {
            schema: 1,
            root_pid: 10,
            tree: true,
            taken_at: 0.0,
            duration_ms: 12.4,
            frame_order: "innermost_first".into(),
            processes: vec![base, sleep],
        }
    }

    #[test]
    fn renders_processes_threads_and_frames() {
        let mut buf = Vec::new();
        render(&sample(), &mut buf).expect("render");
        assert_eq!(
            String::from_utf8_lossy(&buf),
            "scry dump of process 10 and 1 below it in 12 ms; frames innermost first (the running frame on top)\n\
             \n\
             process 10 (python 3.11.2, paused while read): python3 app.py\n  \
             thread 10 \"MainThread\": idle, holds the GIL\n    \
             [native] __libc_read (libc.so.6)\n    \
             wait_forever (app.py:3)\n    \
             <module> (app.py:9)\n\
             \n    \
             process 11 (not Python: S (sleeping), waiting in hrtimer_nanosleep): sleep 60\n"
        );
    }

    #[test]
    fn the_agents_own_threads_are_marked_and_their_frames_left_to_json() {
        let mut dump = sample();
        let mut link = dump.processes[0].threads[0].clone();
        link.os_thread_id = Some(12);
        link.name = Some("scry-link".into());
        link.holds_gil = false;
        dump.processes[0].threads.push(link);
        let mut buf = Vec::new();
        render(&dump, &mut buf).expect("render");
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.contains("  thread 12 \"scry-link\": scry's own (idle; frames in --json)\n"),
            "{text}"
        );
        assert_eq!(text.matches("wait_forever").count(), 1, "{text}");
    }

    #[test]
    fn not_python_error_has_a_hint() {
        let e = stack_error(StackError::NotPython {
            pid: 7,
            comm: "sleep".into(),
            source: "no python".into(),
        });
        let text = e.render();
        assert!(text.starts_with("error: process 7 (sleep) is not a Python process"));
        assert!(text.contains("hint: scry dump reads CPython"), "{text}");
    }

    #[test]
    fn permission_error_hints_at_ptrace() {
        let e = stack_error(StackError::PermissionDenied {
            pid: 7,
            source: "Permission denied (os error 13)".into(),
        });
        let text = e.render();
        assert!(text.contains("CAP_SYS_PTRACE"), "{text}");
        assert!(text.contains("same user"), "{text}");
        assert!(text.contains("ptrace_scope"), "{text}");
    }
}
