//! `$SCRY_HOME` is private (issue 12, item 7): `scry.db` and the logs were created 0644 inside
//! an existing 0755 home, readable by every local user.
//!
//! A home made 0755 under umask 022 before the daemon starts; after a start, an embedded
//! client, a probe, its events and a `scry stop`, every directory under the home (and the home)
//! is 0700 and every file 0600 (the run directory's sockets 0600 or 0700), and the attacker
//! cannot read the store.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{attacker, skipped};
use crate::support::{pythons, repo, text, wait_for, Ctx, Proc};

/// Every entry under `dir` whose mode is not private, as `path mode` lines.
fn loose(dir: &Path, out: &mut Vec<String>) {
    let meta = std::fs::symlink_metadata(dir).expect("stat");
    if meta.mode() & 0o7777 != 0o700 {
        out.push(format!(
            "{} {:o} (directory)",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // removed meanwhile
        };
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_dir() {
            loose(&path, out);
        } else if ft.is_socket() {
            if mode & 0o077 != 0 {
                out.push(format!("{} {mode:o} (socket)", path.display()));
            }
        } else if mode != 0o600 {
            out.push(format!("{} {mode:o}", path.display()));
        }
    }
}

#[test]
fn home_is_private_whatever_the_umask_and_its_mode() {
    let Some(attacker) = attacker() else { return };
    let Some(py) = pythons()
        .into_iter()
        .next()
        .or_else(|| skipped("no Python in SCRY_TEST_PYTHONS"))
    else {
        return;
    };
    // The usual umask, explicitly (process-wide; every test here expects the default anyway).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mut ctx = Ctx::new();
    std::fs::set_permissions(ctx.home(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    ctx.start_daemon();

    // An embedded client (its discovery file lives in the home) that a probe hits; its stderr
    // goes outside the home (the harness's own files are not what is tested).
    let log = tempfile::NamedTempFile::new().expect("log");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/orders_loop.py");
    let target = Proc {
        child: Command::new(&py)
            .arg(&script)
            .arg("files-e2e")
            .env("PYTHONPATH", repo().join("python"))
            .env("SCRY_HOME", ctx.home())
            .env_remove("SCRY_DAEMON")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log.reopen().expect("log")))
            .spawn()
            .expect("spawn target"),
        label: "orders_loop".into(),
    };
    let pid = target.pid();
    wait_for("the client awake", Duration::from_secs(20), || {
        (ctx.state_of(pid).as_deref() == Some("awake")).then_some(())
    });
    let line = std::fs::read_to_string(&script)
        .expect("script")
        .lines()
        .position(|l| l.contains("# PROBE: total"))
        .expect("marked line")
        + 1;
    let loc = format!("orders_loop.py:{line}");
    let out = ctx.scry(&["probe", "add", &loc, "subtotal", "--name", "files"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("events stored", Duration::from_secs(20), || {
        let v = ctx.scry_json(&["events", "--probe", "files", "--limit", "5"]);
        (v["events"].as_array().is_some_and(|e| !e.is_empty())).then_some(())
    });
    let out = ctx.scry(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));

    let mut bad = Vec::new();
    loose(ctx.home(), &mut bad);
    assert!(
        bad.is_empty(),
        "not private in $SCRY_HOME:\n{}",
        bad.join("\n")
    );
    for f in ["scry.db", "config.toml"] {
        assert!(ctx.home().join(f).exists(), "{f} exists");
    }
    // And the attack itself: another user reads nothing.
    let out = attacker
        .command("cat")
        .arg(ctx.home().join("scry.db"))
        .output()
        .expect("cat");
    assert!(!out.status.success(), "the attacker read scry.db");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out)
    );
    drop(target);
}
