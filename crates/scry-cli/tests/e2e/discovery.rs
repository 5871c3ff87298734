//! `scry ps --all`: every Python process on the host, recognised from its memory image (issue
//! 4, point 1): a renamed interpreter is found, a non-Python process is not, the chroot
//! interpreters of the matrix show as another root, and a reloading server's supervisor,
//! worker and resource tracker are told apart.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{pythons, repo, wait_for, Ctx, Proc};

fn version_of(python: &str) -> (String, String) {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, sysconfig; print('%d.%d.%d' % sys.version_info[:3]); \
             print(sys.prefix); print(bool(sysconfig.get_config_var('Py_GIL_DISABLED')))",
        ])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let version = lines.next().unwrap_or_default().to_owned();
    let prefix = lines.next().unwrap_or_default().to_owned();
    (version, prefix)
}

fn all(ctx: &Ctx) -> Vec<Value> {
    let answer = ctx.scry_json(&["ps", "--all"]);
    answer["processes"].as_array().cloned().expect("processes")
}

fn find(list: &[Value], pid: u64) -> Option<&Value> {
    list.iter().find(|p| p["pid"] == pid)
}

/// Starts the reloading server of `tests/scripts/reload_server.py` through its `uvicorn`
/// symlink; returns it and the path of its status file.
pub fn start_reload_server(ctx: &Ctx, python: &str) -> (Proc, PathBuf) {
    let status = ctx.home().join(format!(
        "reload-status-{}.jsonl",
        python.rsplit('/').next().unwrap_or("py")
    ));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/reload/uvicorn");
    let child = Command::new(python)
        .arg(&script)
        .args(["app:app", "--reload", "--status"])
        .arg(&status)
        .env("PYTHONPATH", repo().join("python"))
        .env("SCRY_HOME", ctx.home())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("reload server");
    (
        Proc {
            child,
            label: "reload server".into(),
        },
        status,
    )
}

/// The worker starts the server reported so far: `(supervisor, worker)` pids.
pub fn reload_starts(status: &std::path::Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(status)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["supervisor"].as_u64()?, v["worker"].as_u64()?)))
        .collect()
}

#[test]
fn ps_all_recognises_python_by_its_image_not_its_name() {
    let ctx = Ctx::new();
    let host = pythons().remove(0);
    let (version, prefix) = version_of(&host);
    // A copy of the interpreter named `myservice`: no "python" in its name or command line.
    let exe = String::from_utf8_lossy(
        &Command::new(&host)
            .args([
                "-c",
                "import sys, os; print(os.path.realpath(sys.executable))",
            ])
            .output()
            .expect("python")
            .stdout,
    )
    .trim()
    .to_owned();
    let renamed = ctx.home().join("myservice");
    std::fs::copy(&exe, &renamed).expect("copy the interpreter");
    let service = Proc {
        child: Command::new(&renamed)
            .args(["-c", "import time\nwhile True: time.sleep(0.1)"])
            .env("PYTHONHOME", &prefix)
            .stdin(Stdio::null())
            .spawn()
            .expect("renamed interpreter"),
        label: "myservice".into(),
    };
    let sleep = Proc {
        child: Command::new("sleep").arg("300").spawn().expect("sleep"),
        label: "sleep".into(),
    };
    let list = wait_for(
        "the renamed interpreter in ps --all",
        Duration::from_secs(20),
        || {
            let list = all(&ctx);
            find(&list, service.pid().into())
                .filter(|p| p["python"] != "?")
                .map(|_| list.clone())
        },
    );
    let p = find(&list, service.pid().into()).expect("listed");
    let short = version.rsplit_once('.').map(|x| x.0).unwrap_or_default();
    assert_eq!(p["python"], short, "{p:#}");
    assert!(
        p["comm"].as_str().unwrap_or("").starts_with("myservice"),
        "{p:#}"
    );
    assert_eq!(p["python_detail"]["free_threaded"], false, "{p:#}");
    assert_eq!(p["scry"], "none");
    assert_eq!(p["container"], Value::Null, "{p:#}");
    assert!(p["rss_kib"].as_u64().unwrap_or(0) > 0, "{p:#}");
    assert!(p["cpu_percent"].as_f64().is_some(), "{p:#}");
    assert!(p["user"].is_string(), "{p:#}");
    if p["python_detail"]["evidence"] != "libpython_mapping" {
        // Read from the binary (Py_Version, 3.11+) or the runtime section (3.13+).
        if p["python_detail"]["version"].is_string() {
            assert_eq!(p["python_detail"]["version"], version.as_str(), "{p:#}");
        }
    }
    assert!(
        find(&list, sleep.pid().into()).is_none(),
        "sleep is not Python"
    );
    // Text.
    let out = ctx.scry(&["ps", "--all"]);
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.starts_with("PID "), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with(&format!("{} ", service.pid())) && l.contains("myservice")),
        "{shown}"
    );
}

#[test]
fn ps_all_shows_versions_containers_and_reload_roles() {
    let ctx = Ctx::new();
    for python in pythons() {
        let (version, _) = version_of(&python);
        let (_server, status) = start_reload_server(&ctx, &python);
        let (supervisor, worker) = wait_for("the first worker", Duration::from_secs(30), || {
            reload_starts(&status).first().copied()
        });
        let list = wait_for("the server in ps --all", Duration::from_secs(20), || {
            let list = all(&ctx);
            let ready = [supervisor, worker]
                .iter()
                .all(|&pid| find(&list, pid).is_some_and(|p| p["role"].is_object()));
            ready.then_some(list)
        });
        let sup = find(&list, supervisor).expect("supervisor");
        assert_eq!(sup["role"]["kind"], "reload_supervisor", "{sup:#}");
        assert_eq!(sup["role"]["tool"], "uvicorn", "{sup:#}");
        let w = find(&list, worker).expect("worker");
        assert_eq!(w["role"]["kind"], "reload_worker", "{w:#}");
        assert_eq!(w["ppid"], supervisor);
        let tracker = list
            .iter()
            .find(|p| p["ppid"] == supervisor && p["pid"] != worker)
            .expect("a resource tracker");
        assert_eq!(tracker["role"]["kind"], "resource_tracker", "{tracker:#}");
        for p in [sup, w] {
            assert_eq!(
                p["python_detail"]["version"].as_str().unwrap_or(&version),
                version,
                "{p:#}"
            );
        }
        // The matrix runs 3.13/3.14 in chroots: another root, like a container's.
        let chroot = std::fs::read_to_string(&python).is_ok_and(|t| t.contains("exec chroot"));
        assert_eq!(
            sup["container"]["other_root"].as_bool().unwrap_or(false),
            chroot,
            "{python}: {sup:#}"
        );
        // The tree marks the roles too.
        let out = ctx.scry(&["ps", "--tree", &supervisor.to_string()]);
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(shown.contains("[reload-worker:uvicorn]"), "{shown}");
        assert!(shown.contains("[mp-resource-tracker]"), "{shown}");
    }
}
