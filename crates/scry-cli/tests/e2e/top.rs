//! `scry top PID` through a real pseudo-terminal: renders, refreshes, quits on `q` (issue 5).

use std::process::Command;
use std::time::{Duration, Instant};

use rexpect::process::WaitStatus;

use crate::reap::start;
use crate::support::{scry_bin, Ctx};

/// Feeds what the pty shows to a terminal emulator until the screen satisfies `cond`.
fn screen_until(
    session: &mut rexpect::session::PtySession,
    parser: &mut vt100::Parser,
    what: &str,
    cond: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // rexpect hands out bytes as chars (one per byte): turn them back into bytes.
        let mut bytes = Vec::new();
        while let Some(c) = session.try_read() {
            bytes.push(c as u32 as u8);
        }
        parser.process(&bytes);
        let screen = parser.screen().contents();
        if cond(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn top_renders_refreshes_and_quits_on_q() {
    let ctx = Ctx::new();
    let (_reaper, pids, _guard) = start(&ctx, "tree");
    let root = pids["root"].as_u64().expect("root").to_string();
    // A new pty has no size: give it one, then run scry top in it.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "stty cols 200 rows 40; exec \"$0\" top \"$1\"",
        scry_bin().to_str().expect("utf-8 path"),
        &root,
    ])
    .env("SCRY_HOME", ctx.home())
    .env("TERM", "xterm-256color")
    .env_remove("SCRY_DAEMON")
    .env_remove("SCRY_LOG");
    let mut session = rexpect::session::spawn_command(cmd, Some(20_000)).expect("spawn in a pty");
    let mut parser = vt100::Parser::new(40, 200, 0);
    // The first frame shows the root's command line and the tree's `sleep` child.
    let sleep = pids["sleep"].as_u64().expect("sleep") as i32;
    screen_until(&mut session, &mut parser, "the tree", |s| {
        s.contains("reap_tree.py") && s.contains(&format!("{sleep} ")) && s.contains("└ sleep 300")
    });
    // Refreshes: the killed child is shown as a zombie on a later frame (the root does not
    // wait for it).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleep),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill sleep");
    screen_until(&mut session, &mut parser, "the zombie", |s| {
        s.contains("Z zombie") && s.contains("[sleep]")
    });
    session.send("q").expect("send q");
    session.flush().expect("flush");
    let rest = session.exp_eof().expect("scry top exits");
    let bytes: Vec<u8> = rest.chars().map(|c| c as u32 as u8).collect();
    parser.process(&bytes);
    // The terminal is restored: main screen, visible cursor.
    assert!(
        !parser.screen().alternate_screen(),
        "still on the alternate screen"
    );
    assert!(!parser.screen().hide_cursor(), "the cursor is still hidden");
    match session.process().wait().expect("wait") {
        WaitStatus::Exited(_, code) => assert_eq!(code, 0),
        other => panic!("scry top ended with {other:?}"),
    }
}

#[test]
fn top_without_a_terminal_points_to_ps_tree() {
    let ctx = Ctx::new();
    let out = ctx.scry(&["top", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs a terminal") && err.contains("scry ps --tree"),
        "{err}"
    );
}
