//! The everyday workflow on real services: `scry detach ROOT` undoes `scry attach --follow
//! ROOT` in every process of the tree; `scry debug` under a follow attaches to none of
//! debugpy's helpers and leaves no placement behind; `scry stop` says which agents end and
//! `scry serve --daemon --restore` attaches them again.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{minor_of, pythons, skipped, text, wait_for, Ctx, Proc};

/// A 3.14+ interpreter (PEP 768: nothing is stopped; the follow logic is the same for gdb).
fn python314() -> Option<String> {
    pythons().into_iter().find(|p| minor_of(p) >= 14)
}

/// Starts `follow_tree.py` (a parent and two forked workers) and waits for its pids.
fn start_tree(ctx: &Ctx, python: &str) -> (Proc, u32, Vec<u32>) {
    let ready = ctx.home().join("tree-ready.json");
    let proc = ctx.python(python, "follow_tree.py", &[ready.to_str().expect("path")]);
    let pids: Value = wait_for("the tree to start", Duration::from_secs(60), || {
        serde_json::from_str(&std::fs::read_to_string(&ready).ok()?).ok()
    });
    let parent = pids["parent"].as_u64().expect("parent") as u32;
    let workers: Vec<u32> = pids["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter_map(|w| w.as_u64().map(|w| w as u32))
        .collect();
    assert_eq!(parent, proc.pid());
    assert_eq!(workers.len(), 2);
    (proc, parent, workers)
}

/// The pids `scry ps --json` shows awake.
fn awake(ctx: &Ctx) -> BTreeSet<u32> {
    ctx.ps()
        .iter()
        .filter(|p| p["state"] == "awake")
        .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
        .collect()
}

/// Whether a thread of `pid` is named `scry-link` (3.14+ names OS threads after Python's).
fn has_link_thread(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "scry-link")
            })
        })
        .unwrap_or(false)
}

fn follow(ctx: &Ctx, root: u32, all: &[u32]) {
    let out = ctx.scry(&["attach", "--follow", &root.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(
        "the root and both workers to be awake",
        Duration::from_secs(60),
        || {
            let now = awake(ctx);
            all.iter().all(|p| now.contains(p)).then_some(())
        },
    );
}

#[test]
fn detaching_a_followed_root_detaches_every_agent_of_its_tree() {
    let Some(python) = python314() else {
        skipped::<()>("no Python 3.14+ in SCRY_TEST_PYTHONS");
        return;
    };
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let (_tree, root, workers) = start_tree(&ctx, &python);
    let all: Vec<u32> = std::iter::once(root).chain(workers.clone()).collect();
    follow(&ctx, root, &all);
    // The check below can fail: each agent runs a `scry-link` thread now.
    wait_for(
        "a scry-link thread in each",
        Duration::from_secs(10),
        || all.iter().all(|p| has_link_thread(*p)).then_some(()),
    );

    let answer = ctx.scry_json(&["detach", &root.to_string()]);
    assert_eq!(answer["detached"], true, "{answer}");
    assert_eq!(answer["unfollowed"], true, "{answer}");
    let mut detached: Vec<u32> = answer["tree_detached"]
        .as_array()
        .expect("tree_detached")
        .iter()
        .filter_map(|p| p.as_u64().map(|p| p as u32))
        .collect();
    detached.sort_unstable();
    let mut expected = workers.clone();
    expected.sort_unstable();
    assert_eq!(detached, expected, "{answer}");
    assert!(answer.get("tree_failed").is_none(), "{answer}");

    let now = awake(&ctx);
    assert!(
        all.iter().all(|p| !now.contains(p)),
        "still awake after detach: {now:?} (tree {all:?})"
    );
    wait_for(
        "no scry-link thread left in the tree",
        Duration::from_secs(10),
        || all.iter().all(|p| !has_link_thread(*p)).then_some(()),
    );
    assert_eq!(
        ctx.get("/api/v1/follow")["follows"],
        serde_json::json!([]),
        "the follow is stopped"
    );
    // And stays so: nothing attaches again (the follow and its attaches in progress ended).
    let out = ctx.scry(&["detach", &root.to_string()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no scry agent"),
        "{}",
        text(&out)
    );
}

/// The `/tmp/scry-attach-*` directories there now.
fn placements() -> BTreeSet<PathBuf> {
    std::fs::read_dir("/tmp")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("scry-attach-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of debugpy's adapter and launcher processes now.
fn debugpy_helpers() -> BTreeSet<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                c.contains("debugpy/adapter") || c.contains("debugpy/launcher")
            })
        })
        .collect()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn scry_debug_under_a_follow_attaches_no_debugpy_helper() {
    let Some(python) = python314() else {
        skipped::<()>("no Python 3.14+ in SCRY_TEST_PYTHONS");
        return;
    };
    let importable = Command::new(&python)
        .args(["-c", "import debugpy"])
        .current_dir(crate::support::repo())
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        skipped::<()>(&format!(
            "debugpy is not importable by {python} (the role recognition is unit-tested in scry-proc)"
        ));
        return;
    }
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let before = placements();
    let helpers_before = debugpy_helpers();
    let (_tree, root, workers) = start_tree(&ctx, &python);
    let all: Vec<u32> = std::iter::once(root).chain(workers.clone()).collect();
    follow(&ctx, root, &all);

    let answer = ctx.scry_json(&["debug", &workers[0].to_string(), "--port", "0"]);
    assert!(answer["port"].as_u64().is_some(), "{answer}");
    let helpers: BTreeSet<u32> = debugpy_helpers()
        .difference(&helpers_before)
        .copied()
        .collect();
    assert!(!helpers.is_empty(), "debugpy listens through its adapter");
    // The follow walks the tree every 200 ms and attaches within about a second: watch it
    // for 5 s. Besides the tree's three, the only processes under the root are debugpy's
    // (its adapter starts a short-lived process under the worker, which daemonizes the
    // adapter proper): the follow must not even try them (an attempt is kept in `failed`,
    // even of a process gone since).
    let mut expected: Vec<u64> = all.iter().map(|p| u64::from(*p)).collect();
    expected.sort_unstable();
    for _ in 0..50 {
        let follows = ctx.get("/api/v1/follow");
        let state = &follows["follows"][0];
        assert_eq!(state["root"], root, "{follows}");
        assert_eq!(
            state["failed"],
            serde_json::json!({}),
            "the follow tried a process outside the tree's three: {follows}"
        );
        let attached: Vec<u64> = state["attached"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        assert_eq!(attached, expected, "{follows}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = ctx.ps();
    assert!(
        !rows.iter().any(|p| p["argv"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| x.as_str().is_some_and(|s| s.contains("debugpy"))))),
        "an agent in a debugpy helper: {rows:?}"
    );
    // Placements of other tests come and go; one of this test's would stay.
    wait_for("no placement left behind", Duration::from_secs(30), || {
        placements()
            .difference(&before)
            .next()
            .is_none()
            .then_some(())
    });
    let out = ctx.scry(&["detach", &root.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    for pid in helpers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn stop_then_serve_restore_attaches_again() {
    let mut targets: Vec<String> = python314().into_iter().collect();
    let gdb = std::path::Path::new("/usr/bin/gdb").exists();
    if let Some(p) = pythons().into_iter().find(|p| {
        minor_of(p) == 11 && std::fs::read_to_string(p).map_or(true, |t| !t.contains("exec chroot"))
    }) {
        if gdb {
            targets.push(p);
        }
    }
    if targets.is_empty() {
        skipped::<()>("no Python 3.14+ nor a host 3.11 with gdb in SCRY_TEST_PYTHONS");
        return;
    }
    let ctx = Ctx::new();
    let port = ctx.config_free_port().to_string();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--daemon", "--port", &port];
        args.extend_from_slice(extra);
        let out = ctx.scry(&args);
        assert!(out.status.success(), "{}", text(&out));
        out
    };
    serve(&[]);
    let procs: Vec<Proc> = targets
        .iter()
        .map(|p| ctx.python(p, "plain_loop.py", &[]))
        .collect();
    let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
    for pid in &pids {
        let pid = pid.to_string();
        let out = wait_for("an attach", Duration::from_secs(60), || {
            let out = ctx.scry(&["attach", &pid]);
            out.status.success().then_some(out)
        });
        assert!(out.status.success(), "{}", text(&out));
    }

    // No terminal: it stops, and says what ended.
    let out = ctx.scry(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let n = pids.len();
    assert!(
        said.contains(&format!(
            "ended {n} injected agent{}",
            if n == 1 { "" } else { "s" }
        )),
        "{said}"
    );
    assert!(said.contains("scry serve --restore"), "{said}");
    let file = ctx.home().join("restore.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file)
            .expect("restore.json")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // The agents went with their daemon (3.14+ names its OS threads: it shows).
    for (pid, python) in pids.iter().zip(&targets) {
        if minor_of(python) >= 14 {
            wait_for(
                "the agent to go with its daemon",
                Duration::from_secs(15),
                || (!has_link_thread(*pid)).then_some(()),
            );
        }
    }

    let out = serve(&["--restore", "--json"]);
    let answer: Value = serde_json::from_slice(&out.stdout).expect("json");
    let outcomes = answer["restore"]["outcomes"].as_array().expect("outcomes");
    assert_eq!(outcomes.len(), n, "{answer}");
    for o in outcomes {
        assert_eq!(o["ok"], true, "{answer}");
        assert_eq!(o["action"], "attach", "{answer}");
    }
    let now = awake(&ctx);
    for pid in &pids {
        assert!(now.contains(pid), "{pid} not awake again: {now:?}");
    }
    assert!(!file.exists(), "the restore file is removed once read");

    // Nothing saved any more: a second restore says so.
    let out = ctx.scry(&["stop", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let _ = std::fs::remove_file(&file);
    let out = serve(&["--restore"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to restore"),
        "{}",
        text(&out)
    );
    let out = ctx.scry(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn scry_stop_on_a_terminal_asks_before_ending_injected_agents() {
    let Some(python) = python314() else {
        skipped::<()>("no Python 3.14+ in SCRY_TEST_PYTHONS");
        return;
    };
    let ctx = Ctx::new();
    let port = ctx.config_free_port().to_string();
    let out = ctx.scry(&["serve", "--daemon", "--port", &port]);
    assert!(out.status.success(), "{}", text(&out));
    let target = ctx.python(&python, "plain_loop.py", &[]);
    let pid = target.pid().to_string();
    wait_for("an attach", Duration::from_secs(60), || {
        ctx.scry(&["attach", &pid]).status.success().then_some(())
    });
    let stop_in_pty = || {
        let mut cmd = Command::new(crate::support::scry_bin());
        cmd.arg("stop")
            .env("SCRY_HOME", ctx.home())
            .env_remove("SCRY_DAEMON")
            .env_remove("SCRY_LOG");
        let mut session =
            rexpect::session::spawn_command(cmd, Some(20_000)).expect("spawn in a pty");
        session
            .exp_string(&format!("ends 1 injected agent (pid {pid})"))
            .expect("what ends");
        session.exp_string("stop it? [y/N]").expect("the question");
        session
    };
    let mut session = stop_in_pty();
    session.send_line("n").expect("answer");
    session
        .exp_string("not confirmed: the daemon runs on")
        .expect("refusal");
    session.exp_eof().expect("scry stop exits");
    assert_eq!(ctx.state_of(target.pid()).as_deref(), Some("awake"));
    assert!(!ctx.home().join("restore.json").exists());

    let mut session = stop_in_pty();
    session.send_line("y").expect("answer");
    session.exp_string("scry daemon stopped").expect("stopped");
    session
        .exp_string("ended 1 injected agent")
        .expect("what ended");
    session.exp_eof().expect("scry stop exits");
    assert!(ctx.home().join("restore.json").exists());
}
