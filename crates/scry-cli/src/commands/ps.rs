//! `scry ps` (the processes scry knows) and `scry ps --tree PID` (a process tree read from
//! `/proc`, with what scry knows of each process).

use scry_api::{ProcState, ProcessEntry, ProcessList};
use scry_daemon::Home;
use scry_proc::tree::{Sampler, Selection, TreeProcess};
use serde_json::Value;

use super::{age, CmdResult};
use crate::cli::PsArgs;
use crate::client::DaemonClient;
use crate::error::{CliError, ExitStatus};
use crate::printer::{table, Printer};

/// Lists the processes the daemon knows and the sleeping embedded clients.
pub async fn ps(home: &Home, args: &PsArgs, printer: &mut Printer) -> CmdResult {
    if let Some(root) = args.tree {
        return tree(home, root, printer).await;
    }
    if args.all {
        return all(home, printer).await;
    }
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let path = if args.gone {
        "/api/v1/processes?gone=true"
    } else {
        "/api/v1/processes"
    };
    let answer: ProcessList = client.get_as(path).await?;
    if printer.json {
        printer.json_value(&answer)?;
        return Ok(ExitStatus::Success);
    }
    let list = answer.processes;
    if list.is_empty() {
        printer.line("no processes yet")?;
        printer.note(
            "hint: a program that calls `import scry; scry.init()` shows up here; try `scry demo`",
        );
        return Ok(ExitStatus::Success);
    }
    let now = scry_daemon::now();
    let rows: Vec<Vec<String>> = list.iter().map(|p| row(p, now)).collect();
    for line in table(
        &[
            "PID", "NAME", "STATE", "PYTHON", "ORIGIN", "SINCE", "COMMAND",
        ],
        &rows,
    ) {
        printer.line(line)?;
    }
    Ok(ExitStatus::Success)
}

fn row(p: &ProcessEntry, now: f64) -> Vec<String> {
    let (since, command, origin) = match p {
        ProcessEntry::Agent(v) => {
            let since = match v.state {
                ProcState::Awake => v.connected_since,
                ProcState::Gone | ProcState::Sleeping => Some(v.last_heard),
            };
            let command = if v.argv.is_empty() {
                v.executable.clone()
            } else {
                v.argv.join(" ")
            };
            (since, command, v.origin.clone())
        }
        ProcessEntry::Discovery(c) => (
            c.first_seen,
            if c.argv.is_empty() {
                c.executable.clone().unwrap_or_default()
            } else {
                c.argv.join(" ")
            },
            "embedded".to_owned(),
        ),
    };
    vec![
        p.pid().to_string(),
        p.name().unwrap_or("-").to_owned(),
        p.state().as_str().to_owned(),
        p.python_version().unwrap_or("-").to_owned(),
        origin,
        since.map(|t| age(now - t)).unwrap_or_else(|| "-".into()),
        command,
    ]
}

/// What scry knows of a process: its state (`sleeping`, `awake`), name and Python version.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// `sleeping` (an embedded client, or a registered process without an agent) or `awake`.
    pub state: String,
    /// Its scry name.
    pub name: Option<String>,
    /// The Python version it reported.
    pub python: Option<String>,
}

/// The processes scry knows: sleeping clients from their discovery files, then the daemon's
/// registry when this home's daemon runs (never started for this). The flag says whether a
/// daemon answered.
pub async fn known(home: &Home) -> (std::collections::HashMap<u32, Known>, bool) {
    let mut out = std::collections::HashMap::new();
    for c in scry_daemon::clients::discover(home) {
        let python = c.python_version.as_ref().and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        });
        out.insert(
            c.pid,
            Known {
                state: c.state.clone().unwrap_or_else(|| "sleeping".into()),
                name: c.name.clone(),
                python,
            },
        );
    }
    let Ok(client) = DaemonClient::locate(home) else {
        return (out, false);
    };
    let ours = client.explicit || crate::client::read_daemon_file(home).is_some();
    if !ours || !client.is_up().await {
        return (out, false);
    }
    let Ok(answer) = client.get_as::<ProcessList>("/api/v1/processes").await else {
        return (out, false);
    };
    for p in answer.processes {
        if p.state() == ProcState::Gone {
            continue;
        }
        out.insert(
            p.pid(),
            Known {
                state: p.state().as_str().to_owned(),
                name: p.name().map(str::to_owned),
                python: p.python_version().map(str::to_owned),
            },
        );
    }
    (out, true)
}

/// One process of `scry ps --tree`, as printed in JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TreeRow {
    #[serde(flatten)]
    process: TreeProcess,
    /// `none`, `sleeping` or `awake`.
    scry: String,
    /// The scry name, when known.
    name: Option<String>,
    /// Seconds since it started.
    age_seconds: f64,
    /// The user name of its uid, when known.
    user: Option<String>,
}

/// Joins a sample with what scry knows. The daemon's Python version wins over the one read
/// from the mappings.
pub fn rows_of(
    sample: Vec<TreeProcess>,
    known: &std::collections::HashMap<u32, Known>,
    now: f64,
) -> Vec<TreeRow> {
    sample
        .into_iter()
        .map(|mut p| {
            let k = known.get(&p.pid);
            if let Some(v) = k.and_then(|k| k.python.clone()) {
                p.python = Some(v);
            }
            TreeRow {
                user: user_name(p.uid),
                age_seconds: (now - p.started_at).max(0.0),
                scry: k.map(|k| k.state.clone()).unwrap_or_else(|| "none".into()),
                name: k.and_then(|k| k.name.clone()),
                process: p,
            }
        })
        .collect()
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// `scry ps --all`: every Python process this user may see, two CPU samples ~200 ms apart.
pub async fn all(home: &Home, printer: &mut Printer) -> CmdResult {
    let mut sampler = Sampler::new();
    sampler
        .sample(Selection::Python)
        .map_err(|e| CliError::new(e.to_string()))?;
    let (known, daemon) = known(home).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let sample = sampler
        .sample(Selection::Python)
        .map_err(|e| CliError::new(e.to_string()))?;
    let rows = rows_of(sample, &known, scry_daemon::now());
    if printer.json {
        printer.json_value(&serde_json::json!({
            "daemon": daemon,
            "processes": rows,
        }))?;
        return Ok(ExitStatus::Success);
    }
    if rows.is_empty() {
        printer.line("no Python process that you may see")?;
        return Ok(ExitStatus::Success);
    }
    for line in table(&ALL_HEADER, &all_cells(&rows)) {
        printer.line(line)?;
    }
    Ok(ExitStatus::Success)
}

/// The column names of `scry ps --all`.
const ALL_HEADER: [&str; 11] = [
    "PID",
    "PPID",
    "USER",
    "PYTHON",
    "CPU%",
    "RSS",
    "CONTAINER",
    "SCRY",
    "ROLE",
    "EXE",
    "COMMAND",
];

fn container_cell(p: &TreeProcess) -> String {
    match &p.container {
        None => "-".into(),
        Some(c) => match (&c.root, c.other_pid_namespace) {
            (Some(root), true) => format!("pidns,root={root}"),
            (Some(root), false) => format!("root={root}"),
            (None, true) => "pidns".into(),
            (None, false) => "other-root".into(),
        },
    }
}

fn all_cells(rows: &[TreeRow]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            let p = &r.process;
            let python = match &p.python_detail {
                Some(d) => d.version.clone().map_or_else(
                    || d.short.clone(),
                    |v| format!("{v}{}", if d.free_threaded { "t" } else { "" }),
                ),
                None => p.python.clone().unwrap_or_else(|| "?".into()),
            };
            vec![
                p.pid.to_string(),
                p.ppid.to_string(),
                r.user.clone().unwrap_or_else(|| p.uid.to_string()),
                python,
                p.cpu_percent
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "-".into()),
                p.rss_kib.map(size).unwrap_or_else(|| "-".into()),
                container_cell(p),
                match &r.name {
                    Some(n) => format!("{}:{n}", r.scry),
                    None => r.scry.clone(),
                },
                p.role
                    .as_ref()
                    .map(|r| r.label())
                    .unwrap_or_else(|| "-".into()),
                p.executable.clone().unwrap_or_else(|| "-".into()),
                p.cmdline.join(" "),
            ]
        })
        .collect()
}

/// `scry ps --tree PID`: the tree under PID with two CPU samples ~200 ms apart.
pub async fn tree(home: &Home, root: u32, printer: &mut Printer) -> CmdResult {
    let mut sampler = Sampler::new();
    sampler
        .sample(Selection::Tree(root))
        .map_err(|e| CliError::new(e.to_string()).hint("is the pid right? `ps -ef` lists them"))?;
    let (known, daemon) = known(home).await;
    // Whatever the daemon lookup took counts toward the ~200 ms between the two samples.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let sample = sampler
        .sample(Selection::Tree(root))
        .map_err(|e| CliError::new(e.to_string()))?;
    let rows = rows_of(sample, &known, scry_daemon::now());
    if printer.json {
        printer.json_value(&serde_json::json!({
            "root_pid": root,
            "daemon": daemon,
            "processes": rows,
        }))?;
    } else {
        for line in tree_lines(&rows) {
            printer.line(line)?;
        }
    }
    Ok(ExitStatus::Success)
}

/// A size in KiB, short: `812K`, `12.3M`, `1.2G`.
fn size(kib: u64) -> String {
    let k = kib as f64;
    if k < 1024.0 {
        format!("{kib}K")
    } else if k < 1024.0 * 1024.0 {
        format!("{:.1}M", k / 1024.0)
    } else {
        format!("{:.1}G", k / 1024.0 / 1024.0)
    }
}

/// What a process waits on: its state letter and the kernel function it sleeps in.
pub fn waiting(p: &TreeProcess) -> String {
    match (&p.wchan, p.state) {
        (Some(w), s) => format!("{s} {w}"),
        (None, 'R') => "R running".into(),
        (None, 'Z') => "Z zombie".into(),
        (None, s) => s.to_string(),
    }
}

/// The table rows of a tree (shared by `scry ps --tree` and `scry top`): PID, CPU%, RSS, AGE,
/// PYTHON, SCRY, WAIT, COMMAND indented by depth.
pub fn tree_cells(rows: &[TreeRow]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            let p = &r.process;
            let command = if p.cmdline.is_empty() {
                format!("[{}]", p.comm)
            } else {
                p.cmdline.join(" ")
            };
            let marker = if p.depth == 0 { "" } else { "└ " };
            let command = match &p.role {
                Some(role) => format!("[{}] {command}", role.label()),
                None => command,
            };
            vec![
                p.pid.to_string(),
                p.cpu_percent
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "-".into()),
                p.rss_kib.map(size).unwrap_or_else(|| "-".into()),
                age(r.age_seconds),
                p.python.clone().unwrap_or_else(|| "-".into()),
                match &r.name {
                    Some(n) => format!("{}:{n}", r.scry),
                    None => r.scry.clone(),
                },
                waiting(p),
                format!(
                    "{}{marker}{command}",
                    "  ".repeat(p.depth.saturating_sub(1) as usize)
                ),
            ]
        })
        .collect()
}

/// The column names of [`tree_cells`].
pub const TREE_HEADER: [&str; 8] = [
    "PID", "CPU%", "RSS", "AGE", "PYTHON", "SCRY", "WAIT", "COMMAND",
];

fn tree_lines(rows: &[TreeRow]) -> Vec<String> {
    table(&TREE_HEADER, &tree_cells(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, depth: u32, python: Option<&str>) -> TreeProcess {
        TreeProcess {
            pid,
            ppid: 1,
            depth,
            comm: "x".into(),
            cmdline: vec![format!("cmd{pid}")],
            uid: 0,
            python: python.map(str::to_owned),
            state: 'S',
            state_text: Some("S (sleeping)".into()),
            wchan: Some("do_select".into()),
            cpu_percent: Some(1.25),
            rss_kib: Some(2048),
            started_at: 100.0,
            executable: None,
            python_detail: None,
            container: None,
            role: None,
        }
    }

    #[test]
    fn tree_text_is_indented_and_marks_python() {
        let mut known = std::collections::HashMap::new();
        known.insert(
            10,
            Known {
                state: "awake".into(),
                name: Some("app".into()),
                python: Some("3.14".into()),
            },
        );
        let rows = rows_of(
            vec![
                process(10, 0, Some("3.11")),
                process(11, 1, None),
                process(12, 2, Some("3.11")),
            ],
            &known,
            160.0,
        );
        assert_eq!(
            tree_lines(&rows),
            vec![
                "PID  CPU%  RSS   AGE  PYTHON  SCRY       WAIT         COMMAND",
                "10   1.2   2.0M  1m   3.14    awake:app  S do_select  cmd10",
                "11   1.2   2.0M  1m   -       none       S do_select  └ cmd11",
                "12   1.2   2.0M  1m   3.11    none       S do_select    └ cmd12",
            ]
        );
        let json = serde_json::to_value(&rows[0]).expect("json");
        assert_eq!(json["scry"], "awake");
        assert_eq!(json["python"], "3.14");
        assert_eq!(json["pid"], 10);
    }
}
