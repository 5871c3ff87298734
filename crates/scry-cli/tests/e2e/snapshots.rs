//! What users read of the CLI, as snapshots (insta): adding a probe, `probe list`, `probe show`,
//! `events`, `ps`, an error with its hint, and values that are hard to read (bytes, an enum, a
//! nested dict, a long string, locals and a stack) in `events` and `trace show --tree`. What varies between runs and machines is masked
//! (ids, pids, times, ages, counters, versions, the repository's path, column padding), so a
//! change of wording or layout shows up as a diff to review: `cargo insta review`, or
//! `INSTA_UPDATE=always` to write them anew (under `CI` a difference fails).

use std::time::Duration;

use regex::Regex;

use crate::support::{pythons, repo, wait_for, Ctx};

/// `out` with what varies masked.
fn masked(out: &str, pid: u32) -> String {
    masked_pids(out, &[(pid, "[PID]")])
}

/// `out` with what varies masked, each of `pids` by its label.
pub fn masked_pids(out: &str, pids: &[(u32, &str)]) -> String {
    let mut s = out.replace(&repo().display().to_string(), "[REPO]");
    for (pattern, with) in [
        (r"\bp-[0-9a-f]{10}\b", "p-[ID]"),
        (r"\b\d{2}:\d{2}:\d{2}\.\d{3}\b", "[TIME]"),
        (r"\b\d+/\d+/\d+/\d+\b", "[COUNTS]"),
        (
            r"hits +\d+ \(recorded \d+, dropped \d+, errors \d+\)",
            "hits [N] (recorded [N], dropped [N], errors [N])",
        ),
        (r"\b3\.\d+\.\d+\b", "[VERSION]"),
        (r"\btr-[0-9a-f]{10}\b", "tr-[ID]"),
        (r"\d+ records, \d+ calls", "[N] records, [N] calls"),
        (r"\b\d+(?:\.\d+)? (?:ns|µs|ms|s)\b", "[DURATION]"),
        (r"\b\d+s\b", "[AGE]"),
        (r" {2,}", "  "),
    ] {
        let re = Regex::new(pattern).expect("a valid pattern");
        s = re.replace_all(&s, with).into_owned();
    }
    for (pid, label) in pids {
        let pid_re = Regex::new(&format!(r"\b{pid}\b")).expect("a valid pattern");
        s = pid_re.replace_all(&s, *label).into_owned();
    }
    s.lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

fn shown(ctx: &Ctx, args: &[&str], pid: u32) -> String {
    let out = ctx.scry(args);
    format!(
        "$ scry {}\nexit: {}\n--- stdout\n{}\n--- stderr\n{}",
        masked(&args.join(" "), pid),
        out.status.code().unwrap_or(-1),
        masked(&String::from_utf8_lossy(&out.stdout), pid),
        masked(&String::from_utf8_lossy(&out.stderr), pid),
    )
}

#[test]
fn what_users_read_of_probes_events_and_ps() {
    let py = pythons().into_iter().next().expect("a python");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let target = ctx.python(&py, "orders_loop.py", &["snap-e2e"]);
    let pid = target.pid();
    crate::probes::wait_awake(&ctx, pid, &py);
    let line = crate::probes::marked_line("orders_loop.py", "total");
    let loc = format!("orders_loop.py:{line}");
    let pid_s = pid.to_string();
    insta::assert_snapshot!(
        "probe_add",
        shown(
            &ctx,
            &[
                "probe",
                "add",
                &loc,
                "len(order['items'])",
                "--name",
                "totals",
                "--pid",
                &pid_s
            ],
            pid
        )
    );
    // Hits counted in the process's status, and events stored.
    wait_for("counters and events", Duration::from_secs(20), || {
        let list = ctx.scry_json(&["probe", "list"]);
        let counted = list["probes"][0]["processes"][0]["hits"]
            .as_u64()
            .unwrap_or(0)
            > 0;
        let events = ctx.scry_json(&["events", "--probe", "totals", "--limit", "2"]);
        let stored = events["events"].as_array().map_or(0, Vec::len) >= 2;
        (counted && stored).then_some(())
    });
    insta::assert_snapshot!("probe_list", shown(&ctx, &["probe", "list"], pid));
    insta::assert_snapshot!("probe_show", shown(&ctx, &["probe", "show", "totals"], pid));
    insta::assert_snapshot!(
        "events",
        shown(&ctx, &["events", "--probe", "totals", "--limit", "2"], pid)
    );
    insta::assert_snapshot!("ps", shown(&ctx, &["ps"], pid));
    let missing = format!("orders_loop.py:{}", line + 10_000);
    let refused = shown(&ctx, &["probe", "add", &missing, "x", "--pid", &pid_s], pid);
    assert!(!refused.contains("exit: 0"), "{refused}");
    insta::assert_snapshot!("error_line_without_code", refused);
}

/// Bytes, an enum, a dict deeper than the capture depth and a long string, as `scry events` (with
/// the probe's locals and stack) and `scry trace show --tree` (with arguments and results) print
/// them: as Python's `repr` would, every value and line bounded.
#[test]
fn what_users_read_of_hard_values_in_events_and_traces() {
    let py = pythons().into_iter().next().expect("a python");
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let target = ctx.python(&py, "values_service.py", &["snap-values"]);
    let pid = target.pid();
    crate::probes::wait_awake(&ctx, pid, &py);
    let line = crate::probes::marked_line("values_service.py", "handle");
    let loc = format!("values_service.py:{line}");
    let pid_s = pid.to_string();
    let added = ctx.scry(&[
        "probe", "add", &loc, "path", "mode", "scope", "body", "--name", "vals", "--locals",
        "--stack", "--pid", &pid_s,
    ]);
    assert!(added.status.success(), "{}", crate::support::text(&added));
    // Two events at least, so that the one shown is always one of several (the note says so).
    wait_for("two events", Duration::from_secs(20), || {
        let events = ctx.scry_json(&["events", "--probe", "vals", "--limit", "2"]);
        (events["events"].as_array()?.len() >= 2).then_some(())
    });
    let events = shown(&ctx, &["events", "--probe", "vals", "--limit", "1"], pid);
    assert!(events.lines().all(|l| l.chars().count() <= 400), "{events}");
    insta::assert_snapshot!("events_hard_values", events);
    ctx.scry(&["probe", "rm", "vals"]);

    let started = ctx.scry_json(&[
        "trace",
        "start",
        &pid_s,
        "--function",
        "__main__:handle",
        "--args",
        "--returns",
    ]);
    let id = started["id"].as_str().expect("trace id").to_owned();
    wait_for("a traced call", Duration::from_secs(20), || {
        let shown = ctx.scry_json(&["trace", "show", &id]);
        (shown["functions"][0]["calls"].as_u64()? >= 2).then_some(())
    });
    ctx.scry_json(&["trace", "stop", &id]);
    insta::assert_snapshot!(
        "trace_show_hard_values",
        shown(
            &ctx,
            &["trace", "show", &id, "--tree", "--max-lines", "1"],
            pid
        )
    );
}
