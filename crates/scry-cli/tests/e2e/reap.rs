//! `scry reap`: a tree ended politely, step by step, with no zombie left (issue 5).

use std::time::Duration;

use serde_json::Value;

use crate::support::{pythons, text, wait_for, Ctx, Proc};

/// SIGKILLs every pid of the test tree on drop (whatever a failed test left).
pub struct TreeGuard(Vec<u32>);

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

/// Starts `reap_tree.py` in MODE under its subreaper: (the subreaper, the pids, the guard).
pub fn start(ctx: &Ctx, mode: &str) -> (Proc, Value, TreeGuard) {
    let ready = ctx.home().join(format!("reap-ready-{mode}.json"));
    let python = pythons().remove(0);
    let mut proc = ctx.python(
        &python,
        "reap_tree.py",
        &[ready.to_str().expect("utf-8 path"), mode],
    );
    let pids: Value = wait_for("reap_tree.py to be ready", Duration::from_secs(60), || {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "reap_tree.py exited early ({status}): {}",
                ctx.script_log("reap_tree.py")
            );
        }
        std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    });
    let all = ["root", "int", "both", "sleep"]
        .iter()
        .map(|k| pids[k].as_u64().expect("pid") as u32)
        .collect();
    (proc, pids, TreeGuard(all))
}

/// The kernel state letter of `pid`, `None` when it has no /proc entry.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim().chars().next()
}

fn pid(pids: &Value, key: &str) -> u64 {
    pids[key].as_u64().expect("pid")
}

fn outcome(report: &Value, pid: u64) -> String {
    let e = report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("{pid} not in the report: {report:#}"));
    match e["step"].as_str() {
        Some(step) => format!("{}:{step}", e["outcome"].as_str().unwrap_or("?")),
        None => e["outcome"].as_str().unwrap_or("?").to_owned(),
    }
}

/// Waits until none of `pids` has a /proc entry that is alive or a zombie.
fn assert_all_gone_no_zombie(guard: &TreeGuard) {
    wait_for(
        "the tree to be gone, zombies reaped",
        Duration::from_secs(10),
        || guard.0.iter().all(|&p| state(p).is_none()).then_some(()),
    );
}

#[test]
fn reap_ends_each_process_at_the_step_it_yields_to_and_leaves_no_zombie() {
    let ctx = Ctx::new();
    let (_reaper, pids, guard) = start(&ctx, "tree");
    let root = pid(&pids, "root").to_string();

    // --dry-run lists the whole tree and ends nothing.
    let dry = ctx.scry_json(&["reap", &root, "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    let listed: Vec<u64> = dry["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    for key in ["root", "int", "both", "sleep"] {
        assert!(
            listed.contains(&pid(&pids, key)),
            "{key} not listed: {dry:#}"
        );
    }
    for &p in &guard.0 {
        assert!(
            matches!(state(p), Some(s) if s != 'Z'),
            "--dry-run ended {p}"
        );
    }
    // Whether --dry-run sent a signal that has not ended anything is told by the real reap
    // below: the children log every signal they ignore, and then each has exactly the real
    // reap's.

    // The text output says which step ended each process.
    let out = ctx.scry(&["reap", &root, "--grace", "1"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for line in [
        "SIGINT to 4 processes",
        "SIGTERM to 2 processes",
        "SIGKILL to 1 process",
    ] {
        assert!(shown.contains(line), "no `{line}` in:\n{shown}");
    }
    for (key, step) in [
        ("root", "SIGINT"),
        ("sleep", "SIGINT"),
        ("int", "SIGTERM"),
        ("both", "SIGKILL"),
    ] {
        let p = format!("{} ", pid(&pids, key));
        assert!(
            shown
                .lines()
                .any(|l| l.trim_start().starts_with(&p)
                    && l.ends_with(&format!("ended after {step}"))),
            "{key} not shown as ended after {step}:\n{shown}"
        );
    }
    assert_all_gone_no_zombie(&guard);
    assert_eq!(
        ignored_signals(&ctx, "tree"),
        ["both SIGINT", "both SIGTERM", "int SIGINT"],
        "each child got the real reap's signals once, and none from --dry-run"
    );
}

/// The signals the tree's children ignored, as sorted `ROLE SIGNAME` lines.
fn ignored_signals(ctx: &Ctx, mode: &str) -> Vec<String> {
    let log = ctx.home().join(format!("reap-ready-{mode}.json.signals"));
    let mut lines: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn reap_json_reports_the_ending_step_of_each_process() {
    let ctx = Ctx::new();
    let (_reaper, pids, guard) = start(&ctx, "tree");
    let report = ctx.scry_json(&["reap", &pid(&pids, "root").to_string(), "--grace", "1"]);
    assert_eq!(outcome(&report, pid(&pids, "root")), "ended:sigint");
    assert_eq!(outcome(&report, pid(&pids, "sleep")), "ended:sigint");
    assert_eq!(outcome(&report, pid(&pids, "int")), "ended:sigterm");
    assert_eq!(outcome(&report, pid(&pids, "both")), "ended:sigkill");
    assert_all_gone_no_zombie(&guard);
}

#[test]
fn reap_orphans_lists_then_ends_only_the_matching_orphans() {
    let ctx = Ctx::new();
    let (_reaper, pids, guard) = start(&ctx, "orphans");
    // The root exits once ready: its children are orphans (their group leader is gone).
    wait_for("the orphans' root to exit", Duration::from_secs(10), || {
        state(pid(&pids, "root") as u32).is_none().then_some(())
    });
    let pattern = ctx
        .home()
        .join("reap-ready-orphans.json")
        .to_string_lossy()
        .into_owned();
    let dry = ctx.scry_json(&["reap", "--orphans", &pattern, "--dry-run"]);
    let mut listed: Vec<u64> = dry["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    listed.sort_unstable();
    // `sleep 300` does not carry the pattern: only the two Python children match.
    let mut want = vec![pid(&pids, "int"), pid(&pids, "both")];
    want.sort_unstable();
    assert_eq!(listed, want, "{dry:#}");

    // Without a terminal and without --yes nothing is reaped.
    let out = ctx.scry(&["reap", "--orphans", &pattern]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--yes"), "{}", text(&out));
    assert!(matches!(state(pid(&pids, "int") as u32), Some(s) if s != 'Z'));

    let report = ctx.scry_json(&["reap", "--orphans", &pattern, "--yes", "--grace", "1"]);
    assert_eq!(outcome(&report, pid(&pids, "int")), "ended:sigterm");
    assert_eq!(outcome(&report, pid(&pids, "both")), "ended:sigkill");
    wait_for("the orphans to be gone", Duration::from_secs(10), || {
        [pid(&pids, "int"), pid(&pids, "both")]
            .iter()
            .all(|&p| state(p as u32).is_none())
            .then_some(())
    });
    // The non-matching orphan was left alone, and the refused reap sent nothing.
    assert!(matches!(state(pid(&pids, "sleep") as u32), Some(s) if s != 'Z'));
    assert_eq!(
        ignored_signals(&ctx, "orphans"),
        ["both SIGINT", "both SIGTERM", "int SIGINT"]
    );
    drop(guard);
}

#[test]
fn reap_refuses_pid_1_and_its_own_ancestors() {
    let ctx = Ctx::new();
    let out = ctx.scry(&["reap", "1", "--dry-run"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("refusing to reap pid 1"),
        "{}",
        text(&out)
    );
    let me = std::process::id().to_string();
    let out = ctx.scry(&["reap", &me, "--dry-run"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("ancestor"), "{}", text(&out));
}
