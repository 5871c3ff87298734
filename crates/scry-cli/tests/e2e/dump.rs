//! `scry dump`: Python stacks read from outside, for a process and its tree (issue 5).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{minor_of, pythons, text, wait_for, Ctx, Proc};

/// Kills every pid of the test tree on drop (the pool workers and `sleep` outlive the parent).
/// The parent goes first: while it lives, its pool replaces killed workers with new ones.
struct TreeGuard(Vec<u32>);

impl Drop for TreeGuard {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Starts `dump_tree.py` and waits for its ready file: (the parent, the pids it wrote).
fn start_tree(ctx: &Ctx, python: &str) -> (Proc, Value, TreeGuard) {
    let ready = ctx.home().join(format!(
        "ready-{}.json",
        Path::new(python)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&ready);
    let mut proc = ctx.python(
        python,
        "dump_tree.py",
        &[ready.to_str().expect("utf-8 path")],
    );
    let pids: Value = wait_for("dump_tree.py to be ready", Duration::from_secs(60), || {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "dump_tree.py exited early ({status}): {}",
                ctx.script_log("dump_tree.py")
            );
        }
        std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    });
    let mut all: Vec<u32> = vec![
        proc.pid(),
        pids["blocked"].as_u64().expect("blocked") as u32,
        pids["sleep"].as_u64().expect("sleep") as u32,
    ];
    all.extend(
        pids["pool"]
            .as_array()
            .expect("pool")
            .iter()
            .filter_map(|p| p.as_u64().map(|p| p as u32)),
    );
    (proc, pids, TreeGuard(all))
}

fn entry(dump: &Value, pid: u64) -> &Value {
    dump["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("process {pid} is not in the dump: {dump:#}"))
}

fn functions(process: &Value) -> Vec<String> {
    process["threads"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["frames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["function"].as_str().map(str::to_owned))
        .collect()
}

/// Checks the documented schema of one dump (docs/dump.md): fields and their types.
fn check_schema(dump: &Value) {
    assert_eq!(dump["schema"], 1);
    assert!(dump["root_pid"].is_u64());
    assert!(dump["tree"].is_boolean());
    assert!(dump["taken_at"].is_f64());
    assert!(dump["duration_ms"].is_number());
    assert_eq!(dump["frame_order"], "innermost_first");
    for p in dump["processes"].as_array().expect("processes") {
        assert!(
            p["pid"].is_u64() && p["ppid"].is_u64() && p["depth"].is_u64(),
            "{p}"
        );
        assert!(p["comm"].is_string() && p["cmdline"].is_array(), "{p}");
        let kind = p["kind"].as_str().expect("kind");
        assert!(
            ["python", "other", "gone", "unreadable"].contains(&kind),
            "{kind}"
        );
        assert!(p["python_version"].is_string() || p["python_version"].is_null());
        assert!(p["paused"].is_boolean());
        assert!(p["pause_error"].is_string() || p["pause_error"].is_null());
        assert!(p["state"].is_string() || p["state"].is_null());
        assert!(p["wchan"].is_string() || p["wchan"].is_null());
        assert!(p["error"].is_string() || p["error"].is_null());
        for t in p["threads"].as_array().expect("threads") {
            assert!(
                t["os_thread_id"].is_u64() || t["os_thread_id"].is_null(),
                "{t}"
            );
            assert!(t["python_thread_id"].is_u64(), "{t}");
            assert!(t["name"].is_string() || t["name"].is_null(), "{t}");
            assert!(t["holds_gil"].is_boolean(), "{t}");
            assert!(["running", "idle"].contains(&t["status"].as_str().expect("status")));
            for f in t["frames"].as_array().expect("frames") {
                assert!(f["function"].is_string() && f["file"].is_string(), "{f}");
                assert!(f["line"].is_i64(), "{f}");
            }
        }
        // Present only when an agent is connected (docs/dump.md).
        if let Some(agent) = p.get("agent") {
            assert!(
                agent["error"].is_string() || agent.get("error").is_none(),
                "{agent}"
            );
            for lp in agent["asyncio"].as_array().expect("asyncio") {
                assert!(lp["thread_native_id"].is_u64() || lp["thread_native_id"].is_null());
                for t in lp["tasks"].as_array().expect("tasks") {
                    assert!(t["name"].is_string() && t["coro"].is_string(), "{t}");
                    assert!(
                        ["pending", "done", "cancelled", "unreadable"]
                            .contains(&t["state"].as_str().expect("state")),
                        "{t}"
                    );
                    assert!(t["awaiting"].is_string() || t["awaiting"].is_null(), "{t}");
                    for f in t["stack"].as_array().expect("stack") {
                        assert!(f["function"].is_string() && f["file"].is_string(), "{f}");
                        assert!(f["line"].is_u64(), "{f}");
                    }
                }
            }
        }
    }
}

#[test]
fn dump_tree_shows_every_process_parent_first_on_every_interpreter() {
    for python in pythons() {
        let ctx = Ctx::new();
        let (proc, pids, _guard) = start_tree(&ctx, &python);
        let root = proc.pid().to_string();
        let out_file = ctx.home().join("dump.json");
        let out = ctx.scry(&[
            "dump",
            "--tree",
            &root,
            "--json",
            "--out",
            out_file.to_str().expect("utf-8"),
        ]);
        assert!(out.status.success(), "{python}: {}", text(&out));
        let dump: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        check_schema(&dump);
        let list = dump["processes"].as_array().expect("processes");

        // Parent before child: the root first, every process after its parent.
        assert_eq!(list[0]["pid"], u64::from(proc.pid()), "{python}");
        for (i, p) in list.iter().enumerate().skip(1) {
            let parent = list
                .iter()
                .position(|q| q["pid"] == p["ppid"])
                .unwrap_or_else(|| panic!("{python}: parent of {p} missing"));
            assert!(parent < i, "{python}: {p} listed before its parent");
        }

        let root_entry = entry(&dump, pids["parent"].as_u64().expect("parent"));
        assert_eq!(root_entry["kind"], "python", "{python}: {root_entry:#}");
        assert!(
            functions(root_entry).contains(&"parent_waits_forever".to_owned()),
            "{python}: {root_entry:#}"
        );
        let version = root_entry["python_version"].as_str().expect("version");
        let minor = python
            .rsplit("python")
            .next()
            .filter(|v| v.starts_with('3'))
            .map(str::to_owned);
        if let Some(minor) = minor {
            assert!(
                version.starts_with(&format!("{minor}.")),
                "{python}: {version}"
            );
        }

        for worker in pids["pool"].as_array().expect("pool") {
            let w = entry(&dump, worker.as_u64().expect("pid"));
            assert_eq!(w["kind"], "python", "{python}: {w:#}");
            assert!(
                functions(w).contains(&"worker".to_owned()),
                "{python}: {w:#}"
            );
        }

        // The worker blocked in read(2): its real Python stack.
        let blocked = entry(&dump, pids["blocked"].as_u64().expect("blocked"));
        assert_eq!(blocked["kind"], "python", "{python}: {blocked:#}");
        let names = functions(blocked);
        assert!(
            names.contains(&"blocked_in_read".to_owned()),
            "{python}: {names:?}"
        );
        let threads = blocked["threads"].as_array().expect("threads");
        let main = threads
            .iter()
            .find(|t| t["frames"][0]["function"] == "blocked_in_read")
            .unwrap_or_else(|| panic!("{python}: {blocked:#}"));
        assert_eq!(main["status"], "idle", "{python}: {main:#}");
        assert_eq!(
            main["holds_gil"], true,
            "{python}: read(2) with the GIL: {main:#}"
        );
        let starved = threads
            .iter()
            .find(|t| t["name"] == "starved")
            .unwrap_or_else(|| panic!("{python}: no starved thread: {blocked:#}"));
        assert_eq!(starved["holds_gil"], false, "{python}: {starved:#}");
        assert_eq!(
            starved["frames"][0]["function"], "starved",
            "{python}: {starved:#}"
        );

        // The non-Python child: listed with its kernel state, not a failure.
        let sleep = entry(&dump, pids["sleep"].as_u64().expect("sleep"));
        assert_eq!(sleep["kind"], "other", "{python}: {sleep:#}");
        assert!(
            sleep["state"].as_str().expect("state").starts_with('S'),
            "{python}: {sleep:#}"
        );
        assert!(sleep["threads"].as_array().expect("threads").is_empty());

        // --out wrote the same dump.
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&out_file).expect("--out file"))
                .expect("--out JSON");
        check_schema(&written);
        assert_eq!(
            written["processes"].as_array().map(Vec::len),
            Some(list.len())
        );

        // Text: the function names, the non-Python child's state.
        let out = ctx.scry(&["dump", "--tree", &root]);
        assert!(out.status.success(), "{python}: {}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        for needle in [
            "frames innermost first",
            "blocked_in_read (",
            "parent_waits_forever (",
            "worker (",
            "not Python: S (sleeping)",
        ] {
            assert!(
                shown.contains(needle),
                "{python}: no {needle:?} in\n{shown}"
            );
        }
    }
}

#[test]
fn dump_one_process_with_locals() {
    for python in pythons() {
        let ctx = Ctx::new();
        let (_proc, pids, _guard) = start_tree(&ctx, &python);
        let blocked = pids["blocked"].as_u64().expect("blocked").to_string();
        let dump = ctx.scry_json(&["dump", "--locals", &blocked]);
        check_schema(&dump);
        assert_eq!(dump["processes"].as_array().map(Vec::len), Some(1));
        let frame = dump["processes"][0]["threads"]
            .as_array()
            .expect("threads")
            .iter()
            .map(|t| &t["frames"][0])
            .find(|f| f["function"] == "blocked_in_read")
            .unwrap_or_else(|| panic!("{python}: {dump:#}"));
        assert_eq!(frame["function"], "blocked_in_read", "{python}: {dump:#}");
        let locals = frame["locals"].as_array().expect("locals with --locals");
        let fd = locals
            .iter()
            .find(|l| l["name"] == "fd")
            .unwrap_or_else(|| panic!("{python}: no local fd: {frame:#}"));
        assert_eq!(fd["arg"], true);
        assert!(
            fd["repr"]
                .as_str()
                .is_some_and(|r| r.parse::<u32>().is_ok()),
            "{fd}"
        );
        let out = ctx.scry(&["dump", "--locals", &blocked]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("fd (arg) = "),
            "{python}: {}",
            text(&out)
        );
    }
}

#[test]
fn dump_errors_say_what_to_do() {
    let ctx = Ctx::new();

    // No such process.
    let out = ctx.scry(&["dump", "4194304"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: no process with pid 4194304"),
        "{err}"
    );
    assert!(err.contains("\nhint: "), "{err}");

    // Not a Python process (without --tree), but listed with --tree.
    let mut sleep = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep");
    let pid = sleep.id().to_string();
    let out = ctx.scry(&["dump", &pid]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: process {pid} (sleep) is not a Python process"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "hint: scry dump reads CPython processes; `scry dump --tree {pid}`"
        )),
        "{err}"
    );
    let tree = ctx.scry_json(&["dump", "--tree", &pid]);
    assert_eq!(tree["processes"][0]["kind"], "other", "{tree:#}");
    let _ = sleep.kill();
    let _ = sleep.wait();

    // Permission denied: an unprivileged user reading a process it does not own.
    let python = pythons().into_iter().next().expect("a python");
    let target = Proc {
        child: Command::new(&python)
            .args(["-c", "import time; time.sleep(600)"])
            .stdin(Stdio::null())
            .spawn()
            .expect("python"),
        label: "sleeping python".into(),
    };
    let (reader, target_pid) = if nix::unistd::getuid().is_root() {
        (
            vec![
                "setpriv".to_owned(),
                "--reuid=65534".into(),
                "--regid=65534".into(),
                "--clear-groups".into(),
            ],
            target.pid(),
        )
    } else {
        // Not root: pid 1 belongs to root.
        (Vec::new(), 1)
    };
    let mut cmd = match reader.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(crate::support::scry_bin());
            c
        }
        None => Command::new(crate::support::scry_bin()),
    };
    let out = cmd
        .args(["dump", &target_pid.to_string()])
        .env("SCRY_HOME", ctx.home())
        .stdin(Stdio::null())
        .output()
        .expect("run scry");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: permission denied reading the memory of process {target_pid}"
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: run scry as the same user as the process, or as root"),
        "{err}"
    );
    assert!(err.contains("ptrace_scope"), "{err}");
    assert!(err.contains("CAP_SYS_PTRACE"), "{err}");
}

#[test]
fn dump_reads_without_pausing_when_pausing_is_refused() {
    for python in pythons() {
        let ctx = Ctx::new();
        let ready = ctx.home().join("ready");
        let mut target = Proc {
            child: Command::new(&python)
                .args([
                    "-c",
                    "import sys, time\n\
                     def idle_forever():\n    \
                         while True: time.sleep(3600)\n\
                     open(sys.argv[1], 'w').close()\n\
                     idle_forever()\n",
                ])
                .arg(&ready)
                .stdin(Stdio::null())
                .spawn()
                .expect("python"),
            label: "idle python".into(),
        };
        wait_for("the target to start", Duration::from_secs(30), || {
            ready.exists().then_some(())
        });
        // Another tracer holds the process (as a debugger would): ptrace refuses a second one.
        let pid = nix::unistd::Pid::from_raw(target.pid() as i32);
        nix::sys::ptrace::seize(pid, nix::sys::ptrace::Options::empty()).expect("PTRACE_SEIZE");
        let out = ctx.scry(&["dump", &target.pid().to_string(), "--json"]);
        let shown = ctx.scry(&["dump", &target.pid().to_string()]);
        target.kill();
        assert!(out.status.success(), "{python}: {}", text(&out));
        let dump: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        check_schema(&dump);
        let p = &dump["processes"][0];
        assert_eq!(p["paused"], false, "{python}: {p:#}");
        assert!(p["pause_error"].is_string(), "{python}: {p:#}");
        assert!(
            functions(p).contains(&"idle_forever".to_owned()),
            "{python}: {p:#}"
        );
        assert!(shown.status.success(), "{python}: {}", text(&shown));
        assert!(
            String::from_utf8_lossy(&shown.stdout).contains("read WITHOUT pausing"),
            "{python}: {}",
            text(&shown)
        );
    }
}

#[test]
fn dump_is_kept_by_a_running_daemon_and_listed() {
    let python = pythons().into_iter().next().expect("a python");
    let mut ctx = Ctx::new();
    let (proc, _pids, _guard) = start_tree(&ctx, &python);
    let root = proc.pid().to_string();

    // Without a daemon: dumped, not kept, and no daemon started.
    let out = ctx.scry(&["dump", "--tree", &root]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the dump is not kept"),
        "{}",
        text(&out)
    );
    assert!(!ctx.home().join("run/daemon.json").exists());

    ctx.start_daemon();
    let out = ctx.scry(&["dump", "--tree", &root, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kept as dump 1"), "{}", text(&out));
    let dumped: Value = serde_json::from_slice(&out.stdout).expect("JSON");

    let list = ctx.scry_json(&["dumps"]);
    let first = &list["dumps"][0];
    assert_eq!(first["id"], 1, "{list:#}");
    assert_eq!(first["root_pid"], u64::from(proc.pid()), "{list:#}");
    assert_eq!(first["tree"], true);
    assert_eq!(
        first["processes"],
        dumped["processes"].as_array().map(Vec::len).unwrap_or(0)
    );
    assert_eq!(first["python_processes"], 5, "{list:#}");

    let stored = ctx.scry_json(&["dumps", "1"]);
    assert_eq!(stored, dumped);
    check_schema(&stored);

    let out = ctx.scry(&["dumps", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("blocked_in_read ("), "{shown}");
    let out = ctx.scry(&["dumps"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.starts_with("ID  TAKEN"), "{shown}");
    assert!(shown.contains("5/6"), "{shown}");

    let out = ctx.scry(&["dumps", "99"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no dump 99"),
        "{}",
        text(&out)
    );
}

/// With an agent connected, the dump adds what only the inside sees: thread names set in
/// Python and the asyncio tasks with their await chains.
#[test]
fn dump_adds_asyncio_tasks_and_thread_names_from_a_connected_agent() {
    for python in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let mut proc = ctx.python(&python, "async_service.py", &[]);
        let pid = proc.pid();
        wait_for("the service's agent", Duration::from_secs(30), || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!(
                    "async_service.py exited ({status}): {}",
                    ctx.script_log("async_service.py")
                );
            }
            (ctx.state_of(pid).as_deref() == Some("awake")).then_some(())
        });
        // The tasks exist once the loop ran `main` for a moment: ask until both are there.
        let dumped = wait_for("both tasks in the dump", Duration::from_secs(30), || {
            let d = ctx.scry_json(&["dump", &pid.to_string()]);
            let tasks = d["processes"][0]["agent"]["asyncio"][0]["tasks"]
                .as_array()?
                .clone();
            (tasks.len() >= 3).then_some(d)
        });
        check_schema(&dumped);
        let p = &dumped["processes"][0];
        let names: Vec<&str> = p["threads"]
            .as_array()
            .expect("threads")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(names.contains(&"ledger-writer"), "{python}: {names:?}");
        let tasks = p["agent"]["asyncio"][0]["tasks"].as_array().expect("tasks");
        let task = |name: &str| {
            tasks
                .iter()
                .find(|t| t["name"] == name)
                .unwrap_or_else(|| panic!("{python}: no task {name} in {tasks:#?}"))
        };
        let fetcher = task("fetcher");
        assert_eq!(fetcher["state"], "pending");
        assert_eq!(fetcher["stack"][0]["function"], "fetch", "{fetcher:#}");
        assert!(
            fetcher["awaiting"]
                .as_str()
                .is_some_and(|a| a.contains("Future")),
            "{fetcher:#}"
        );
        let consumer = task("consumer");
        let chain: Vec<&str> = consumer["stack"]
            .as_array()
            .expect("stack")
            .iter()
            .filter_map(|f| f["function"].as_str())
            .collect();
        // Qualified names (`co_qualname`) are 3.11+.
        let get = if minor_of(&python) >= 11 {
            "Queue.get"
        } else {
            "get"
        };
        assert_eq!(chain, ["consume", get], "{python}: {consumer:#}");

        let out = ctx.scry(&["dump", &pid.to_string()]);
        assert!(out.status.success(), "{}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("\"ledger-writer\""), "{shown}");
        assert!(shown.contains("asyncio loop on thread"), "{shown}");
        assert!(
            shown.contains("task \"fetcher\" (fetch, pending, awaiting <Future"),
            "{shown}"
        );
        proc.kill();
    }
}

/// `--native`: the C frames under the Python ones. The worker blocked in `os.read` shows the
/// libc frame it waits in, then its Python frame.
#[test]
fn dump_native_shows_the_c_frames_a_blocked_worker_waits_in() {
    for python in pythons() {
        let ctx = Ctx::new();
        let (_proc, pids, _guard) = start_tree(&ctx, &python);
        let blocked = pids["blocked"].as_u64().expect("blocked").to_string();
        let out = ctx.scry(&["dump", "--native", &blocked, "--json"]);
        if !out.status.success() {
            // A build without the `native` feature (scripts/test builds with it) must say so
            // and how to get it.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("built without native unwinding") && err.contains("--features native"),
                "{}",
                text(&out)
            );
            return;
        }
        let dump: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        check_schema(&dump);
        let frames = dump["processes"][0]["threads"]
            .as_array()
            .expect("threads")
            .iter()
            .map(|t| t["frames"].as_array().expect("frames"))
            .find(|fs| fs.iter().any(|f| f["function"] == "blocked_in_read"))
            .unwrap_or_else(|| panic!("{python}: no blocked thread in {dump:#}"));
        let first = &frames[0];
        assert_eq!(first["native"], true, "{python}: {frames:#?}");
        // glibc before 2.34 (bullseye's 2.31) keeps the cancellable read(2) in libpthread.
        assert!(
            first["module"]
                .as_str()
                .is_some_and(|m| m.contains("libc") || m.contains("libpthread")),
            "{python}: the innermost frame is not in libc: {frames:#?}"
        );
        let python_at = frames
            .iter()
            .position(|f| f["function"] == "blocked_in_read")
            .expect("the Python frame");
        assert!(
            frames[..python_at].iter().all(|f| f["native"] == true),
            "{python}: {frames:#?}"
        );
        let out = ctx.scry(&["dump", "--native", &blocked]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("[native] "),
            "{}",
            text(&out)
        );
    }
}
