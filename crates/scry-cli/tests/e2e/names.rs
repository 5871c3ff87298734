//! Names shared by several processes, and the processes that come and go under them: a name
//! means every live process registered under it (the workers of a pre-fork server), `--pid`
//! narrows it to one (wake, sleep, probes, dumps), and a probe's status lists the live
//! processes and counts the gone ones.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::probes::{marked_line, wait_awake};
use crate::snapshots::masked_pids;
use crate::support::{pythons, text, wait_for, Ctx};

/// The pids of the live processes `scry ps` shows under `name` in `state`.
fn named(ctx: &Ctx, name: &str, state: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = ctx
        .ps()
        .iter()
        .filter(|p| p["name"] == name && p["state"] == state)
        .filter_map(|p| p["pid"].as_u64().and_then(|p| u32::try_from(p).ok()))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// `scry ARGS` as a user reads it, pids masked by their labels.
fn shown(ctx: &Ctx, args: &[&str], pids: &[(u32, &str)]) -> String {
    let out = ctx.scry(args);
    let mut command = args.join(" ");
    for (pid, label) in pids {
        command = command.replace(&pid.to_string(), label);
    }
    format!(
        "$ scry {command}\nexit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code().unwrap_or(-1),
        masked_pids(&String::from_utf8_lossy(&out.stdout), pids),
        masked_pids(&String::from_utf8_lossy(&out.stderr), pids),
    )
}

/// The probe `name` as `scry probe list --json` shows it.
fn probe(ctx: &Ctx, name: &str) -> Option<Value> {
    ctx.scry_json(&["probe", "list"])["probes"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

/// The probe's status in `pid`, when listed.
fn status_in(probe: &Value, pid: u32) -> Option<Value> {
    probe["processes"]
        .as_array()?
        .iter()
        .find(|s| s["pid"] == pid)
        .cloned()
}

fn pids_of(answer: &Value) -> Vec<u64> {
    answer["processes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["pid"].as_u64().or_else(|| p["process"]["pid"].as_u64()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_name_shared_by_workers_wakes_probes_and_sleeps_them_all_and_pid_narrows() {
    let line = marked_line("shared_name_workers.py", "handle");
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let master = ctx.python(&py, "shared_name_workers.py", &["shop"]);
        let workers = wait_for(
            &format!("{py}: two sleeping workers named shop"),
            Duration::from_secs(20),
            || Some(named(&ctx, "shop", "sleeping")).filter(|p| p.len() == 2),
        );
        let (a, b) = (workers[0], workers[1]);
        let labels = [(a, "[PID-A]"), (b, "[PID-B]"), (master.pid(), "[MASTER]")];

        // The name wakes both, and says so.
        let woke = shown(&ctx, &["wake", "shop"], &labels);
        insta::assert_snapshot!("wake_shared_name", woke);
        for pid in [a, b] {
            assert_eq!(ctx.state_of(pid).as_deref(), Some("awake"), "{py}: {pid}");
        }
        let again = ctx.scry_json(&["wake", "shop"]);
        assert_eq!(again["already_awake"], true, "{again}");
        assert_eq!(pids_of(&again), [a as u64, b as u64], "{again}");

        // A probe on the name arms in both workers, and hits arrive from both.
        let loc = format!("shared_name_workers.py:{line}");
        let out = ctx.scry(&[
            "probe",
            "add",
            &loc,
            "n",
            "--name",
            "handled",
            "--process",
            "shop",
        ]);
        assert!(
            out.status.success(),
            "{py}: {}\n{}",
            text(&out),
            ctx.script_log("shared_name_workers.py")
        );
        wait_for(
            &format!("{py}: hits from both workers"),
            Duration::from_secs(20),
            || {
                let events = ctx.scry_json(&["events", "--probe", "handled", "--limit", "1000"]);
                let pids: BTreeSet<u64> = events["events"]
                    .as_array()?
                    .iter()
                    .filter_map(|e| e["pid"].as_u64())
                    .collect();
                (pids == BTreeSet::from([a as u64, b as u64])).then_some(())
            },
        );

        // A name with --pid: a probe in that worker only.
        let a_s = a.to_string();
        let out = ctx.scry(&[
            "probe",
            "add",
            &loc,
            "n",
            "--name",
            "one",
            "--process",
            "shop",
            "--pid",
            &a_s,
        ]);
        assert!(out.status.success(), "{py}: {}", text(&out));
        let one = probe(&ctx, "one").expect("probe one");
        assert_eq!(one["target"]["kind"], "pid", "{one}");
        assert!(status_in(&one, a).is_some(), "{py}: {one}");
        assert!(status_in(&one, b).is_none(), "{py}: {one}");
        // A pid that is not one of the name's is refused.
        let master_s = master.pid().to_string();
        let out = ctx.scry(&[
            "probe",
            "add",
            &loc,
            "n",
            "--process",
            "shop",
            "--pid",
            &master_s,
        ]);
        assert!(!out.status.success(), "{py}: {}", text(&out));
        assert!(text(&out).contains("is not named `shop`"), "{}", text(&out));

        // Sleep narrowed to one worker: the other stays awake.
        let out = ctx.scry(&["sleep", "shop", "--pid", &a_s]);
        assert!(out.status.success(), "{py}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("pid {a} is asleep: hooks removed, connection closed\n")
        );
        wait_for(
            &format!("{py}: worker A asleep"),
            Duration::from_secs(20),
            || (ctx.state_of(a).as_deref() == Some("sleeping")).then_some(()),
        );
        assert_eq!(ctx.state_of(b).as_deref(), Some("awake"), "{py}");
        let out = ctx.scry(&["wake", "shop", "--pid", &master_s]);
        assert!(!out.status.success(), "{py}: {}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "pid {master_s} is not one of the processes named `shop`: pids {a}, {b}"
            )),
            "{}",
            text(&out)
        );

        // The name again: one worker woken, the other already awake, both said.
        let woke = ctx.scry_json(&["wake", "shop"]);
        assert_eq!(woke["already_awake"], false, "{woke}");
        assert_eq!(woke["processes"][0]["already_awake"], false, "{woke}");
        assert_eq!(woke["processes"][1]["already_awake"], true, "{woke}");

        // A dump of the name: one per worker; --pid narrows it.
        let roots = |doc: &Value| -> Vec<u64> {
            doc["dumps"]
                .as_array()
                .map(|d| d.iter().filter_map(|d| d["root_pid"].as_u64()).collect())
                .unwrap_or_default()
        };
        let dumped = ctx.scry_json(&["dump", "shop"]);
        assert_eq!(dumped["name"], "shop", "{py}");
        assert_eq!(roots(&dumped), [a as u64, b as u64], "{py}");
        let dumped = ctx.scry_json(&["dump", "shop", "--pid", &a_s]);
        assert_eq!(roots(&dumped), [a as u64], "{py}");

        // The name puts both to sleep.
        let slept = shown(&ctx, &["sleep", "shop"], &labels);
        insta::assert_snapshot!("sleep_shared_name", slept);
        for pid in [a, b] {
            wait_for(
                &format!("{py}: {pid} asleep"),
                Duration::from_secs(20),
                || (ctx.state_of(pid).as_deref() == Some("sleeping")).then_some(()),
            );
        }
        let again = ctx.scry_json(&["sleep", "shop"]);
        assert_eq!(again["already_sleeping"], true, "{again}");
        assert_eq!(pids_of(&again), [a as u64, b as u64], "{again}");
        drop(master);
    }
}

#[test]
fn probe_status_lists_the_live_processes_and_counts_the_gone_ones() {
    let line = marked_line("orders_loop.py", "total");
    let loc = format!("orders_loop.py:{line}");
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let out = ctx.scry(&[
            "probe",
            "add",
            &loc,
            "subtotal",
            "--name",
            "churn",
            "--process",
            "churn",
        ]);
        assert!(out.status.success(), "{py}: {}", text(&out));
        let live = ctx.python(&py, "orders_loop.py", &["churn"]);
        wait_awake(&ctx, live.pid(), &py);

        // Ten short-lived processes: each connects, arms the probe, hits it, and exits.
        let mut hits_of_gone = 0;
        let mut gone = Vec::new();
        for i in 0..10 {
            let mut short = ctx.python(&py, "orders_loop.py", &["churn"]);
            let pid = short.pid();
            let hits = wait_for(
                &format!("{py}: short-lived process {i} armed and hit"),
                Duration::from_secs(20),
                || {
                    let s = status_in(&probe(&ctx, "churn")?, pid)?;
                    let hits = s["hits"].as_u64().unwrap_or(0);
                    (s["state"] == "armed" && hits > 0).then_some(hits)
                },
            );
            hits_of_gone += hits;
            short.kill();
            gone.push(pid);
        }

        let shown_probe = wait_for(
            &format!("{py}: ten gone, one live"),
            Duration::from_secs(20),
            || probe(&ctx, "churn").filter(|p| p["gone"] == 10),
        );
        let listed: Vec<u64> = shown_probe["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .filter_map(|s| s["pid"].as_u64())
            .collect();
        assert_eq!(listed, [live.pid() as u64], "{py}: {shown_probe}");
        // The totals still count the gone processes' hits.
        let total = shown_probe["totals"]["hits"].as_u64().expect("hits");
        let live_hits = shown_probe["processes"][0]["hits"].as_u64().expect("hits");
        assert!(
            total >= live_hits + hits_of_gone,
            "{py}: totals {total} < live {live_hits} + gone {hits_of_gone}: {shown_probe}"
        );

        // What a person reads: the live process, then the count of the gone ones.
        let mut labels = vec![(live.pid(), "[PID]")];
        labels.extend(gone.iter().map(|&p| (p, "[GONE-PID]")));
        insta::assert_snapshot!(
            "probe_list_with_gone",
            shown(&ctx, &["probe", "list"], &labels)
        );
        insta::assert_snapshot!(
            "probe_show_with_gone",
            shown(&ctx, &["probe", "show", "churn"], &labels)
        );
    }
}
