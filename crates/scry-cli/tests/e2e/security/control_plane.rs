//! An embedded client's control plane and the agent link, attacked by `scry-attacker`:
//!
//! - the attacker calls a root client's control plane (`wake` with its own `daemon_url`,
//!   `sleep`, `status`, `info`): on the unix socket the file modes stop it, and with the modes
//!   loosened the peer check answers 403; on a TCP control plane the token is needed on
//!   loopback too. Its fake daemon never gets a connection and its unsafe probe never runs;
//! - a root client that root pointed at the attacker's fake TCP daemon sends it only `auth`:
//!   no hello, no token, no argv, and runs nothing;
//! - the attacker cannot register with the root daemon's TCP agent listener without the token
//!   (a hello with a guessed token, a bogus proof, no proof);
//! - off loopback the link is TLS end to end, and plain TCP is refused there.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{assert_absent, attacker, skipped, Attacker};
use crate::support::{pythons, repo, text, wait_for, Ctx, Proc};

/// The attacker's fake daemon and its calls to a control plane. argv: `unix PATH` or
/// `tcp HOST PORT`, then the scratch directory and the side-effect file. The fake daemon listens
/// on `SCRATCH/fake.sock` and on TCP; it records every connection and line in
/// `SCRATCH/fake.log`, and answers a hello with a welcome and an unsafe probe that would create
/// the side-effect file. Prints `[[status, body or error], ...]` for the five requests.
const CONTROL_ATTACK: &str = r#"
import http.client, json, os, socket, sys, threading
kind = sys.argv[1]
if kind == "unix":
    target, rest = sys.argv[2], sys.argv[3:]
else:
    target, rest = (sys.argv[2], int(sys.argv[3])), sys.argv[4:]
scratch, effect, line = rest[0], rest[1], rest[2]
record = os.path.join(scratch, "fake.log")

def note(data):
    with open(record, "ab") as f:
        f.write(data)

def serve(listener):
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        note(b"CONNECTION\n")
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                break
            note(data)
            buf += data
            if b"\n" in buf:
                welcome = {"type": "welcome", "protocol": 1, "daemon_version": "0", "session_id": "s-evil",
                           "settings": {"flush_interval_ms": 20, "max_batch": 10, "heartbeat_ms": 5000}}
                probe = {"type": "probes_sync", "id": 1, "probes": [{"id": "p-evil", "location": "trust_client.py:" + line,
                         "expressions": ["__import__('os').system('touch " + effect + "')"], "unsafe": True}]}
                conn.sendall((json.dumps(welcome) + "\n" + json.dumps(probe) + "\n").encode())
                buf = b""

unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
unix.bind(os.path.join(scratch, "fake.sock"))
unix.listen(4)
tcp = socket.socket()
tcp.bind(("127.0.0.1", 0))
tcp.listen(4)
for l in (unix, tcp):
    threading.Thread(target=serve, args=(l,), daemon=True).start()

class Conn(http.client.HTTPConnection):
    def connect(self):
        if kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(target)
        else:
            self.sock = socket.create_connection(target, timeout=10)

requests = [
    ("POST", "/scry/wake", {"daemon_url": "unix://" + os.path.join(scratch, "fake.sock")}, None),
    ("POST", "/scry/wake", {"daemon_url": "tcp://127.0.0.1:%d" % tcp.getsockname()[1]}, "guessed-token"),
    ("POST", "/scry/sleep", None, None),
    ("GET", "/scry/status", None, None),
    ("GET", "/scry/info", None, "guessed-token"),
]
out = []
for method, path, body, token in requests:
    c = Conn("127.0.0.1", timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    try:
        c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = c.getresponse()
        out.append([r.status, r.read().decode("utf-8", "replace")])
    except OSError as exc:
        out.append([None, "%s: %s" % (type(exc).__name__, exc)])
    finally:
        c.close()
print(json.dumps(out))
"#;

/// The attacker's fake TCP agent daemon for a root client to connect to. argv: the record file,
/// `bogus` (answer `auth` with a challenge whose proof is made up) or `welcome` (answer anything
/// with a welcome and an unsafe probe), the side-effect file, the probed line. Prints its port,
/// records everything it receives, and ends after its first connection closes.
const FAKE_TCP_DAEMON: &str = r#"
import json, socket, sys
record, mode, effect, line = sys.argv[1:5]
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(1)
print(l.getsockname()[1], flush=True)
l.settimeout(60)
conn, _ = l.accept()
conn.settimeout(30)
probe = {"type": "probes_sync", "id": 1, "probes": [{"id": "p-evil", "location": "trust_client.py:" + line,
         "expressions": ["__import__('os').system('touch " + effect + "')"], "unsafe": True}]}
welcome = {"type": "welcome", "protocol": 1, "daemon_version": "0", "session_id": "s-evil",
           "settings": {"flush_interval_ms": 20, "max_batch": 10, "heartbeat_ms": 5000}}
got = b""
try:
    while True:
        data = conn.recv(65536)
        if not data:
            break
        got += data
        with open(record, "wb") as f:
            f.write(got)
        if b"\n" in data:
            if mode == "bogus":
                answer = [{"type": "challenge", "nonce": "ab" * 32, "proof": "cd" * 32}, probe]
            else:
                answer = [welcome, probe]
            conn.sendall("".join(json.dumps(m) + "\n" for m in answer).encode())
except OSError:
    pass
with open(record, "wb") as f:
    f.write(got)
"#;

/// The attacker as an agent of the root daemon's TCP listener. argv: host, port. Three tries;
/// prints what the daemon answered to each.
const ROGUE_AGENT: &str = r#"
import json, os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
hello = {"type": "hello", "protocol": 1, "agent_version": "0.1.0", "pid": os.getpid(), "ppid": 1, "host": "evil",
         "name": "attacker-agent", "origin": "embedded",
         "python": {"version": "3.11.7", "implementation": "cpython", "executable": "/usr/bin/python3"},
         "argv": ["evil"], "cwd": "/", "started_at": 1.0}

def exchange(lines):
    s = socket.create_connection((host, port), timeout=10)
    answers = []
    buf = b""
    try:
        for line in lines:
            s.sendall((json.dumps(line) + "\n").encode())
            while b"\n" not in buf:
                data = s.recv(65536)
                if not data:
                    return answers + ["<closed>"]
                buf += data
            first, buf = buf.split(b"\n", 1)
            answers.append(json.loads(first.decode()))
        return answers
    finally:
        s.close()

out = []
out.append(exchange([dict(hello, token="guessed-token")]))
out.append(exchange([{"type": "auth", "nonce": "12" * 32}, dict(hello, proof="ef" * 32)]))
out.append(exchange([{"type": "auth", "nonce": "34" * 32}, hello]))
print(json.dumps(out))
"#;

/// The line of `trust_client.py` that runs over and over (where the fake daemons probe).
fn loop_line() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/trust_client.py");
    let src = std::fs::read_to_string(path).expect("script");
    let index = src
        .lines()
        .position(|l| l.contains("time.sleep(0.05)"))
        .expect("the loop line");
    (index + 1).to_string()
}

/// A root embedded client (`trust_client.py NAME MODE MARKER`) with extra environment.
fn root_client(ctx: &Ctx, name: &str, mode: &str, marker: &str, env: &[(&str, &str)]) -> Proc {
    let py = pythons().into_iter().next().expect("an interpreter");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/trust_client.py");
    let log = std::fs::File::create(ctx.home().join(format!("{name}.log"))).expect("log");
    let mut cmd = Command::new(&py);
    cmd.arg(&script)
        .args([name, mode, marker])
        .env("PYTHONPATH", repo().join("python"))
        .env("SCRY_HOME", ctx.home())
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("SCRY_DAEMON")
        .env_remove("SCRY_TOKEN")
        .env_remove("SCRY_CONTROL_HOST")
        .env_remove("SCRY_CONTROL_PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {py}: {e}"));
    Proc {
        child,
        label: name.into(),
    }
}

/// Waits for the client's `READY` line; returns it (and the `WAKE:` line before it, if any).
fn ready(ctx: &Ctx, name: &str) -> String {
    let path = ctx.home().join(format!("{name}.log"));
    wait_for(
        &format!("{name} to be ready"),
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(&path).ok()?;
            log.contains("READY").then_some(log)
        },
    )
}

/// Starts a daemon as root with a TCP agent listener on `addr`; returns its TCP address.
fn daemon_with_agent_tcp(ctx: &mut Ctx, addr: &str) -> String {
    let info = ctx.start_daemon_with(&["--port", "0", "--agent-tcp", addr]);
    info["agent_tcp"].as_str().expect("agent_tcp").to_owned()
}

fn daemon_log(ctx: &Ctx) -> String {
    std::fs::read_to_string(ctx.home().join("test-daemon.log")).unwrap_or_default()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(
        path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(mode),
    )
    .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Runs the control-plane attack; returns the answers and what the fake daemon recorded.
fn attack_control(attacker: &Attacker, target: &[&str], scratch: &Path) -> (Vec<Value>, String) {
    let effect = scratch.join("pwned");
    let line = loop_line();
    let mut args: Vec<&str> = target.to_vec();
    let scratch_s = scratch.display().to_string();
    let effect_s = effect.display().to_string();
    args.extend([scratch_s.as_str(), effect_s.as_str(), line.as_str()]);
    let out = attacker.python(CONTROL_ATTACK, &args);
    assert!(
        out.status.success(),
        "the attack script failed: {}",
        text(&out)
    );
    let answers: Vec<Value> = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("attack output ({e}): {}", text(&out)));
    let recorded = std::fs::read_to_string(scratch.join("fake.log")).unwrap_or_default();
    assert_absent(&effect, "the fake daemon's unsafe probe ran");
    (answers, recorded)
}

#[test]
fn another_user_cannot_wake_sleep_or_redirect_a_root_client() {
    let Some(attacker) = attacker() else { return };
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let client = root_client(&ctx, "cp-victim", "sleep", "marker", &[]);
    let log = ready(&ctx, "cp-victim");
    let socket = ctx
        .home()
        .join(format!("run/clients/{}.sock", client.pid()));
    assert!(log.contains(&socket.display().to_string()), "{log}");

    // As it is: the private run directory keeps the attacker from even connecting.
    let scratch = attacker.scratch_dir();
    let sock = socket.display().to_string();
    let (answers, recorded) = attack_control(&attacker, &["unix", &sock], scratch.path());
    assert_eq!(answers.len(), 5);
    for a in &answers {
        assert!(a[0].is_null(), "{answers:?}");
        assert!(
            a[1].as_str().unwrap_or("").contains("Permission denied"),
            "{answers:?}"
        );
    }
    assert_eq!(recorded, "", "the fake daemon was contacted");

    // With every mode on the way loosened (a careless home), the peer check still refuses.
    for dir in [
        ctx.home().to_owned(),
        ctx.home().join("run"),
        ctx.home().join("run/clients"),
    ] {
        chmod(&dir, 0o711);
    }
    chmod(&socket, 0o666);
    let scratch = attacker.scratch_dir();
    let (answers, recorded) = attack_control(&attacker, &["unix", &sock], scratch.path());
    for a in &answers {
        assert_eq!(a[0], 403, "{answers:?}");
        let body: Value = serde_json::from_str(a[1].as_str().unwrap_or("")).expect("json");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(&format!("you are uid {}", attacker.uid)) && message.contains("root"),
            "{message}"
        );
    }
    assert_eq!(recorded, "", "the fake daemon was contacted");
    chmod(ctx.home(), 0o700);
    assert_eq!(ctx.state_of(client.pid()).as_deref(), Some("sleeping"));

    // Its owner still wakes it, through the daemon, which reaches it on the unix socket.
    let out = ctx.scry(&["wake", "cp-victim"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for("awake", Duration::from_secs(10), || {
        (ctx.state_of(client.pid()).as_deref() == Some("awake")).then_some(())
    });
}

#[test]
fn a_tcp_control_plane_needs_the_token_on_loopback() {
    let Some(attacker) = attacker() else { return };
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let client = root_client(
        &ctx,
        "cp-tcp",
        "sleep",
        "marker",
        &[
            ("SCRY_CONTROL_PORT", "0"),
            ("SCRY_TOKEN", "tcp-control-token-5c1e"),
        ],
    );
    let log = ready(&ctx, "cp-tcp");
    let port = log
        .lines()
        .find_map(|l| l.strip_prefix("READY None "))
        .unwrap_or_else(|| panic!("a TCP control plane: {log}"))
        .trim()
        .to_owned();
    let scratch = attacker.scratch_dir();
    let (answers, recorded) =
        attack_control(&attacker, &["tcp", "127.0.0.1", &port], scratch.path());
    for a in &answers {
        assert_eq!(a[0], 403, "{answers:?}");
        let body = a[1].as_str().unwrap_or("");
        assert!(
            body.contains("Authorization: Bearer") || body.contains("wrong token"),
            "{body}"
        );
    }
    assert_eq!(recorded, "", "the fake daemon was contacted");
    assert_eq!(ctx.state_of(client.pid()).as_deref(), Some("sleeping"));
}

/// Starts the attacker's fake TCP daemon; returns it and its port.
fn fake_tcp_daemon(attacker: &Attacker, record: &Path, mode: &str, effect: &Path) -> (Proc, u16) {
    let mut child = attacker
        .command("python3")
        .arg("-c")
        .arg(FAKE_TCP_DAEMON)
        .arg(record)
        .arg(mode)
        .arg(effect)
        .arg(loop_line())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the fake daemon");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the fake daemon's port");
    let port = line.trim().parse().expect("a port");
    (
        Proc {
            child,
            label: "fake daemon".into(),
        },
        port,
    )
}

#[test]
fn a_root_client_tells_a_fake_tcp_daemon_nothing() {
    let Some(attacker) = attacker() else { return };
    for mode in ["bogus", "welcome"] {
        let ctx = Ctx::new();
        let scratch = attacker.scratch_dir();
        let record = scratch.path().join("received");
        let effect = scratch.path().join("pwned");
        let (_fake, port) = fake_tcp_daemon(&attacker, &record, mode, &effect);
        let token = "root-secret-token-8d2b41";
        let marker = "argv-marker-61f0";
        let url = format!("tcp://127.0.0.1:{port}");
        let name = format!("fooled-{mode}");
        let _client = root_client(
            &ctx,
            &name,
            "wake",
            marker,
            &[("SCRY_DAEMON", &url), ("SCRY_TOKEN", token)],
        );
        let log = ready(&ctx, &name);
        assert!(log.contains("WAKE: failed"), "{mode}: {log}");
        let why = if mode == "bogus" {
            "did not prove that it holds the daemon's token"
        } else {
            "instead of `challenge`"
        };
        assert!(log.contains(why), "{mode}: {log}");
        let got = std::fs::read_to_string(&record).unwrap_or_default();
        let types: Vec<String> = got
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["type"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(types, ["auth"], "{mode}: the fake daemon got {got:?}");
        for secret in [token, marker, name.as_str()] {
            assert!(
                !got.contains(secret),
                "{mode}: `{secret}` reached the fake daemon"
            );
        }
        assert_absent(&effect, "the fake daemon's unsafe probe ran");
    }
}

#[test]
fn another_user_cannot_register_on_the_tcp_agent_listener() {
    let Some(attacker) = attacker() else { return };
    let mut ctx = Ctx::new();
    let agent_tcp = daemon_with_agent_tcp(&mut ctx, "127.0.0.1:0");
    let (host, port) = agent_tcp.rsplit_once(':').expect("host:port");
    let out = attacker.python(ROGUE_AGENT, &[host, port]);
    assert!(out.status.success(), "{}", text(&out));
    let tries: Vec<Value> = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .as_bytes(),
    )
    .unwrap_or_else(|e| panic!("rogue agent output ({e}): {}", text(&out)));
    // A hello with a guessed token, without `auth`: refused, and told to authenticate.
    assert_eq!(tries[0][0]["type"], "refused", "{tries:?}");
    assert!(
        tries[0][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("must authenticate first"),
        "{tries:?}"
    );
    // `auth` is answered with a challenge; a made-up proof, or none, is refused.
    for t in &tries[1..] {
        assert_eq!(t[0]["type"], "challenge", "{tries:?}");
        assert_eq!(t[1]["type"], "refused", "{tries:?}");
        assert!(
            t[1]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("did not prove that it holds the daemon's token"),
            "{tries:?}"
        );
    }
    let ps = ctx.ps();
    assert!(
        !ps.iter().any(|p| p["name"] == "attacker-agent"),
        "the rogue agent is registered: {ps:?}"
    );
    let log = daemon_log(&ctx);
    assert!(!log.contains("agent connected"), "{log}");
}

#[test]
fn off_loopback_the_link_is_tls_end_to_end() {
    let Some(attacker) = attacker() else { return };
    let Some(ip) = crate::web::non_loopback_ip() else {
        skipped::<()>("this machine has no address but loopback: the TLS link cannot be tested");
        return;
    };
    let mut ctx = Ctx::new();
    let agent_tcp = daemon_with_agent_tcp(&mut ctx, &format!("{ip}:0"));
    let url = format!("tcp://{agent_tcp}");
    let client = root_client(&ctx, "over-tls", "wake", "m", &[("SCRY_DAEMON", &url)]);
    let log = ready(&ctx, "over-tls");
    assert!(log.contains("WAKE: ok"), "{log}\n{}", daemon_log(&ctx));
    wait_for("awake", Duration::from_secs(10), || {
        (ctx.state_of(client.pid()).as_deref() == Some("awake")).then_some(())
    });
    let dlog = daemon_log(&ctx);
    assert!(dlog.contains("TLS agent link"), "{dlog}");
    let tls = ctx.home().join("tls");
    for f in ["cert.der", "key.der"] {
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::mode(
            &std::fs::metadata(tls.join(f))
                .expect("tls file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // Plain TCP is refused off loopback, whoever tries.
    let (host, port) = agent_tcp.rsplit_once(':').expect("host:port");
    let out = attacker.python(ROGUE_AGENT, &[host, port]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("must connect with TLS"), "{stdout}");
    assert!(!stdout.contains("challenge"), "{stdout}");
}
