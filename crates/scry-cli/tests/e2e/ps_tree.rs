//! `scry ps --tree PID`: a process tree read from /proc with Python processes marked (issue 5).

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::reap::start;
use crate::support::{pythons, text, wait_for, Ctx};

fn entry(tree: &Value, pid: u64) -> &Value {
    tree["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("{pid} not in the tree: {tree:#}"))
}

fn version_of(python: &str) -> String {
    let out = Command::new(python)
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("python");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn ps_tree_marks_python_processes_and_lists_the_others() {
    let ctx = Ctx::new();
    let (_reaper, pids, _guard) = start(&ctx, "tree");
    let version = version_of(&pythons().remove(0));
    let root = pids["root"].as_u64().expect("root");
    let tree = ctx.scry_json(&["ps", "--tree", &root.to_string()]);
    assert_eq!(tree["root_pid"], root);
    assert_eq!(tree["daemon"], false);
    let order: Vec<u64> = tree["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert_eq!(order[0], root, "the root comes first: {tree:#}");
    for key in ["root", "int", "both"] {
        let p = entry(&tree, pids[key].as_u64().expect("pid"));
        assert_eq!(p["python"], version.as_str(), "{key}: {p:#}");
        assert_eq!(p["scry"], "none");
        assert_eq!(p["state"], "S", "{key} sleeps: {p:#}");
        assert!(p["rss_kib"].as_u64().unwrap_or(0) > 0, "{p:#}");
        assert!(p["cpu_percent"].as_f64().is_some(), "{p:#}");
        assert!(p["age_seconds"].as_f64().is_some(), "{p:#}");
    }
    let sleep = entry(&tree, pids["sleep"].as_u64().expect("sleep"));
    assert_eq!(sleep["python"], Value::Null, "{sleep:#}");
    assert_eq!(sleep["depth"], 1);
    assert_eq!(sleep["comm"], "sleep");
    // Never starts a daemon.
    assert!(!ctx.home().join("run/daemon.json").exists());

    // Text: an indented tree with the Python version and what each waits on.
    let out = ctx.scry(&["ps", "--tree", &root.to_string()]);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    assert!(shown.starts_with("PID "), "{shown}");
    let sleep_line = shown
        .lines()
        .find(|l| l.starts_with(&format!("{} ", pids["sleep"])))
        .unwrap_or_else(|| panic!("no sleep line:\n{shown}"));
    assert!(sleep_line.contains("└ sleep 300"), "{shown}");
    let root_line = shown
        .lines()
        .find(|l| l.starts_with(&format!("{root} ")))
        .expect("root line");
    assert!(root_line.contains(&format!(" {version} ")), "{shown}");
}

#[test]
fn ps_tree_shows_the_scry_state_of_a_client() {
    let py = pythons().remove(0);
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let client = ctx.python(&py, "embedded_client.py", &["tree-client"]);
    let pid = client.pid();
    let scry_state = |ctx: &Ctx| {
        let tree = ctx.scry_json(&["ps", "--tree", &pid.to_string()]);
        entry(&tree, pid as u64)["scry"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    wait_for("the client to sleep", Duration::from_secs(20), || {
        (scry_state(&ctx) == "sleeping").then_some(())
    });
    let out = ctx.scry(&["wake", "tree-client"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("the client to be awake", Duration::from_secs(20), || {
        (scry_state(&ctx) == "awake").then_some(())
    });
    let tree = ctx.scry_json(&["ps", "--tree", &pid.to_string()]);
    assert_eq!(tree["daemon"], true);
    assert_eq!(entry(&tree, pid as u64)["name"], "tree-client");
}

#[test]
fn ps_tree_of_a_missing_pid_is_an_error() {
    let ctx = Ctx::new();
    let out = ctx.scry(&["ps", "--tree", "4194303"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no process with pid 4194303"),
        "{}",
        text(&out)
    );
}
