//! Strings from targets and callers reach the owner's terminal escaped (issue 12, item 7): a
//! probe name or a process name carrying escape sequences (retitle the terminal, clear the
//! screen, hide text) is shown, never sent as control characters.

use std::time::Duration;

use crate::support::{pythons, text, wait_for, Ctx};

const EVIL: &str = "x\u{1b}]0;pwned\u{7}\u{1b}[2J\ry";

fn assert_no_controls(what: &str, out: &std::process::Output) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let bad: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| (*b < 0x20 && *b != b'\n' && *b != b'\t') || *b == 0x7f)
            .collect();
        assert!(
            bad.is_empty(),
            "{what}: {stream} carries control bytes {bad:?}: {}",
            text(out)
        );
    }
}

#[test]
fn names_with_escape_sequences_are_printed_escaped() {
    let py = pythons().into_iter().next().expect("an interpreter");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let target = ctx.python(&py, "orders_loop.py", &[EVIL]);
    let pid = target.pid();
    wait_for("the target awake", Duration::from_secs(30), || {
        (ctx.state_of(pid).as_deref() == Some("awake")).then_some(())
    });
    // A probe name must be a word: refused, and the refusal is escaped too.
    let out = ctx.scry(&[
        "probe",
        "add",
        "orders_loop.py:18",
        "subtotal",
        "--name",
        EVIL,
    ]);
    assert_no_controls("probe add --name", &out);
    assert!(!out.status.success(), "{}", text(&out));
    // A value carrying escapes (here a constant; in life, any string of the target).
    let out = ctx.scry(&[
        "probe",
        "add",
        "orders_loop.py:18",
        "'\\x1b]0;pwned\\x07'",
        "--name",
        "esc",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("a hit", Duration::from_secs(30), || {
        let v = ctx.scry_json(&["events", "--probe", "esc", "--limit", "1"]);
        (!v["events"].as_array()?.is_empty()).then_some(())
    });
    for args in [
        vec!["ps"],
        vec!["probe", "list"],
        vec!["status"],
        vec!["events", "--limit", "5"],
        vec!["logs", "--limit", "20"],
    ] {
        let out = ctx.scry(&args);
        assert_no_controls(&format!("scry {}", args[0]), &out);
    }
    // Shown, in a form the owner can read.
    let out = ctx.scry(&["ps"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("x\\x1b]0;pwned"),
        "{}",
        text(&out)
    );
    let out = ctx.scry(&["events", "--probe", "esc", "--limit", "1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\\x1b]0;pwned"),
        "{}",
        text(&out)
    );
    let out = ctx.scry(&["probe", "rm", "esc"]);
    assert_no_controls("probe rm", &out);
    assert!(out.status.success(), "{}", text(&out));
}
