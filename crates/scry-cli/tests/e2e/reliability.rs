//! Nothing lost without a count, nothing that brings the daemon down (issue 13): every hit is
//! stored or counted with its reason across a `kill -9` of the daemon; a report resent after a
//! reconnect is stored once; a peer that floods without reading keeps the daemon's memory
//! bounded while `scry status` still answers; and a short run of `bench/soak`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{pythons, repo, text, wait_for, Ctx};

/// The line of `hot_loop.py` the tests probe.
fn hot_line() -> u32 {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/hot_loop.py");
    let src = std::fs::read_to_string(&path).expect("hot_loop.py");
    src.lines()
        .position(|l| l.contains("# HOT LINE"))
        .map(|i| i as u32 + 1)
        .expect("the HOT LINE marker")
}

fn add_hot_probe(ctx: &Ctx) -> String {
    let loc = format!("hot_loop.py:{}", hot_line());
    let v = ctx.scry_json(&["probe", "add", &loc, "i", "--name", "hot"]);
    v["id"].as_str().expect("probe id").to_owned()
}

fn probe(ctx: &Ctx, id: &str) -> Value {
    ctx.get(&format!("/api/v1/probes/{id}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// hits, and what became of them: stored, removed by retention, kept out by a full disk,
/// dropped in the agent, dropped by the daemon.
fn accounting(t: &Value) -> (u64, u64) {
    let accounted = n(&t["stored"])
        + n(&t["removed_by_retention"])
        + n(&t["not_stored_disk_full"])
        + n(&t["dropped"])
        + n(&t["dropped_by_daemon"]);
    (n(&t["hits"]), accounted)
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Starts `agents` hot loops on `python`, waits until each armed the probe, and lets them go.
fn start_hot_loops(
    ctx: &Ctx,
    python: &str,
    probe_id: &str,
    agents: usize,
    seconds: &str,
    rate: &str,
) -> Vec<crate::support::Proc> {
    let go = ctx.home().join("go");
    let go_arg = go.to_str().expect("utf-8 home").to_owned();
    let procs: Vec<_> = (0..agents)
        .map(|_| ctx.python(python, "hot_loop.py", &[&go_arg, seconds, rate]))
        .collect();
    wait_for(
        "every hot loop to arm the probe",
        Duration::from_secs(60),
        || {
            let p = probe(ctx, probe_id);
            let armed = p["processes"]
                .as_array()
                .map(|a| a.iter().filter(|s| s["state"] == "armed").count())
                .unwrap_or(0);
            (armed >= agents).then_some(())
        },
    );
    std::fs::write(&go, b"").expect("go");
    procs
}

/// Waits until every loop said it is done and the probe's counters balance and stay put.
fn wait_balanced(ctx: &Ctx, probe_id: &str, agents: usize) -> Value {
    wait_for("every hot loop to finish", Duration::from_secs(90), || {
        let done = ctx.script_log("hot_loop.py").matches("calls ").count();
        // All loops share one log file name; each writes its own line.
        (done >= 1).then_some(())
    });
    let mut last: Option<(Value, Instant)> = None;
    wait_for(
        "hits == stored + dropped, steady for 2 s",
        Duration::from_secs(120),
        || {
            let p = probe(ctx, probe_id);
            let t = p["totals"].clone();
            let reported = p["processes"].as_array().map(Vec::len).unwrap_or(0);
            let (hits, accounted) = accounting(&t);
            let steady = match &last {
                Some((prev, since)) if *prev == t => since.elapsed() >= Duration::from_secs(2),
                _ => {
                    last = Some((t.clone(), Instant::now()));
                    false
                }
            };
            (steady && reported >= agents && hits > 0 && hits == accounted).then_some(t)
        },
    )
}

#[test]
fn kill_9_of_the_daemon_under_real_agents_loses_no_hit_uncounted() {
    for python in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let probe_id = add_hot_probe(&ctx);
        let agents = 2;
        let procs = start_hot_loops(&ctx, &python, &probe_id, agents, "4", "0");
        // Mid-run: hits are in the agents' buffers, on the wire and in the daemon's queue.
        wait_for("some hits stored", Duration::from_secs(30), || {
            (n(&probe(&ctx, &probe_id)["totals"]["stored"]) > 0).then_some(())
        });
        ctx.kill_daemon();
        ctx.start_daemon();
        let t = wait_balanced(&ctx, &probe_id, agents);
        let (hits, accounted) = accounting(&t);
        assert_eq!(hits, accounted, "{python}: {t}");
        assert!(n(&t["stored"]) > 0, "{python}: {t}");
        // The agents that came back are the same processes again, awake, never gone.
        for p in &procs {
            assert_eq!(
                ctx.state_of(p.pid()).as_deref(),
                Some("awake"),
                "{python}: {:?}",
                ctx.ps()
            );
        }
        drop(procs);
    }
}

/// A protocol-level agent on the unix socket.
struct RawAgent {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl RawAgent {
    fn connect(ctx: &Ctx, name: &str) -> RawAgent {
        let sock = ctx.home().join("run/agent.sock");
        let stream = UnixStream::connect(&sock).expect("connect agent socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut a = RawAgent { stream, reader };
        let hello = json!({"type":"hello","protocol":1,"agent_version":"test","pid":std::process::id(),
            "ppid":1,"host":"reliability-test","name":name,"origin":"embedded",
            "python":{"version":"3.0.0","implementation":"cpython","executable":"/bin/false"},
            "argv":["reliability"],"cwd":"/","started_at":1.0});
        a.send(&format!("{hello}\n"));
        let welcome = a.next();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        a
    }

    fn send(&mut self, line: &str) {
        self.stream.write_all(line.as_bytes()).expect("send");
    }

    fn next(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }

    /// Reads until the ack of `seq` (acks are cumulative).
    fn wait_ack(&mut self, seq: u64) {
        loop {
            let m = self.next();
            if m["type"] == "ack" && n(&m["seq"]) >= seq {
                return;
            }
        }
    }
}

fn report(stream: &str, seq: u64, events: usize) -> String {
    // Hit times of now: retention by age must not be what changes the count.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let evs: Vec<Value> = (0..events)
        .map(|i| json!({"kind":"probe","t":t0 + i as f64 / 1e4,"source":"p-resend","data":{"seq":seq,"i":i}}))
        .collect();
    format!(
        "{}\n",
        json!({"type":"report","seq":seq,"events":evs,"dropped":0,"stream":stream})
    )
}

fn events_stored(ctx: &Ctx) -> u64 {
    n(&ctx.get("/api/v1/status")["events_stored"])
}

#[test]
fn a_report_resent_after_a_reconnect_or_a_restart_is_stored_once() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let mut a = RawAgent::connect(&ctx, "resender");
    for seq in 1..=3 {
        a.send(&report("feedc0de", seq, 10));
    }
    a.wait_ack(3);
    assert_eq!(events_stored(&ctx), 30);
    // The link drops before the agent saw the acks of 2 and 3: it resends them, then 4.
    drop(a);
    let mut a = RawAgent::connect(&ctx, "resender");
    for seq in 2..=4 {
        a.send(&report("feedc0de", seq, 10));
    }
    a.wait_ack(4);
    assert_eq!(events_stored(&ctx), 40, "2 and 3 were stored before");
    drop(a);
    // A daemon killed and started again remembers the stream: 4 again stores nothing.
    ctx.kill_daemon();
    ctx.start_daemon();
    let mut a = RawAgent::connect(&ctx, "resender");
    a.send(&report("feedc0de", 4, 10));
    a.send(&report("feedc0de", 5, 10));
    a.wait_ack(5);
    assert_eq!(events_stored(&ctx), 50);
    // Another stream of the same process counts on its own.
    a.send(&report("0ddba11", 1, 5));
    a.wait_ack(1);
    assert_eq!(events_stored(&ctx), 55);
}

#[test]
fn a_peer_that_floods_without_reading_keeps_daemon_memory_bounded() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let daemon_pid = ctx.daemon.as_ref().expect("daemon").pid();
    let idle = rss_kb(daemon_pid).expect("rss");
    let peak = Arc::new(AtomicU64::new(idle));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = rss_kb(daemon_pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut a = RawAgent::connect(&ctx, "flooder");
    // Never read from here on: every bad line wants an error back, every report an ack.
    let flood = {
        let mut s = a.stream.try_clone().expect("clone");
        std::thread::spawn(move || {
            let bad = "{\"type\":\"frobnicate\"}\n".repeat(1000);
            let mut sent = 0u64;
            for round in 0..200u64 {
                if s.write_all(bad.as_bytes()).is_err() {
                    break;
                }
                if s.write_all(report("f100d", round + 1, 2000).as_bytes())
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            sent
        })
    };
    // The daemon answers its owner while the flood goes on.
    for _ in 0..3 {
        let out = ctx.scry(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status during the flood: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Let the flooder block on a full socket (it does not read), then see the status again.
    let out = ctx.scry(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    // Close: the daemon must let go of what it held for this peer.
    let _ = a.stream.shutdown(std::net::Shutdown::Both);
    let sent = flood.join().expect("flooder");
    let mut rest = Vec::new();
    let _ = a.reader.read_to_end(&mut rest);
    drop(a);
    let out = ctx.scry(&["status", "--json"]);
    assert!(out.status.success(), "status after: {}", text(&out));
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    // 200 rounds of 1000 errors and 2000 events: unbounded queues held hundreds of MB here.
    assert!(
        peak < idle + 160 * 1024,
        "daemon RSS grew from {idle} kB to {peak} kB (rounds sent: {sent})"
    );
}

#[test]
fn soak_smoke() {
    let python = pythons().into_iter().next().expect("a python");
    let out = Command::new("python3")
        .arg(repo().join("bench/soak"))
        .args([
            "--scry",
            env!("CARGO_BIN_EXE_scry"),
            "--python",
            &python,
            "--agents",
            "3",
            "--rate",
            "3000",
            "--seconds",
            "3",
            "--kill-daemon-at",
            "1.5",
            "--settle-seconds",
            "1",
            "--settle-timeout",
            "60",
            "--json",
        ])
        .env_remove("SCRY_HOME")
        .output()
        .expect("run bench/soak");
    assert!(out.status.success(), "bench/soak: {}", text(&out));
    let f: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench/soak --json: {e}: {}", text(&out)));
    assert_eq!(f["unaccounted"], 0, "{f}");
    assert!(n(&f["hits"]) > 0, "{f}");
    assert_eq!(f["daemon_restarts"], 1, "{f}");
    assert_eq!(f["status_failures"], 0, "{f}");
}
