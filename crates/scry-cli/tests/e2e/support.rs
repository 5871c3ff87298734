//! The test context: a temporary `SCRY_HOME`, the real `scry` binary, real Python processes
//! that are killed on drop, and a tiny HTTP client for the daemon's API (over its local socket,
//! as the CLI talks to it, or over TCP with the token).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `scry` binary under test.
pub fn scry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scry"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The interpreters to run against: `SCRY_TEST_PYTHONS` (colon-separated), else `python3`.
pub fn pythons() -> Vec<String> {
    match std::env::var("SCRY_TEST_PYTHONS") {
        Ok(v) if !v.trim().is_empty() => v
            .split(':')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => vec!["python3".to_owned()],
    }
}

/// Says that a test did not run, and why: a failure under `CI` (which has root, the whole
/// matrix and a second address, so every test must run there), a `SKIPPED:` line on stderr
/// elsewhere. Returns None, for `let Some(x) = ... else { return }`.
#[allow(clippy::print_stderr)] // what a skipped test says
pub fn skipped<T>(why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("skipped under CI, where it must run: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// Polls `cond` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
    pub label: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One test's world.
pub struct Ctx {
    pub home: tempfile::TempDir,
    pub daemon: Option<Proc>,
}

impl Ctx {
    pub fn new() -> Ctx {
        // Under /tmp so that interpreters running in a chroot (the test matrix binds /tmp) see it.
        let home = tempfile::Builder::new()
            .prefix("scry-e2e-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Ctx { home, daemon: None }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Writes a config.toml with a free HTTP port, for tests where a command starts the daemon
    /// itself (so that it never collides with a daemon on the default port). Returns the port.
    pub fn config_free_port(&self) -> u16 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        std::fs::create_dir_all(self.home()).expect("home");
        std::fs::write(
            self.home().join("config.toml"),
            format!("[http]\naddr = \"127.0.0.1:{port}\"\n"),
        )
        .expect("config");
        port
    }

    /// A `scry` command with this context's environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(scry_bin());
        c.args(args)
            .env("SCRY_HOME", self.home())
            .env_remove("SCRY_DAEMON")
            .env_remove("SCRY_TOKEN")
            .env_remove("SCRY_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs `scry ARGS` to completion.
    pub fn scry(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run scry")
    }

    /// Runs `scry ARGS --json` and parses stdout, asserting success.
    pub fn scry_json(&self, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = self.scry(&all);
        assert!(out.status.success(), "scry {args:?} failed: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("scry {args:?}: bad JSON ({e}): {}", text(&out)))
    }

    /// Starts `scry serve --port 0` in the foreground (as our child) and waits until it serves.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&["--port", "0"]);
    }

    /// Starts `scry serve ARGS` in the foreground (as our child, logging to `test-daemon.log`),
    /// waits until its local API answers, and returns what it wrote in `run/daemon.json`.
    pub fn start_daemon_with(&mut self, args: &[&str]) -> Value {
        let daemon_file = self.home().join("run/daemon.json");
        let _ = std::fs::remove_file(&daemon_file);
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let child = self
            .cmd(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.home().join("test-daemon.log"))
                    .expect("log"),
            ))
            .spawn()
            .expect("spawn daemon");
        self.daemon = Some(Proc {
            child,
            label: "daemon".into(),
        });
        wait_for("the daemon to serve", Duration::from_secs(60), || {
            let v: Value =
                serde_json::from_str(&std::fs::read_to_string(&daemon_file).ok()?).ok()?;
            let api = v["api_socket"].as_str()?.to_owned();
            http_get(&api, "/api/v1/health").ok().map(|_| v)
        })
    }

    /// Kills the daemon with SIGKILL (no cleanup on its side).
    pub fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
    }

    fn daemon_file(&self) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(self.home().join("run/daemon.json")).expect("daemon.json"),
        )
        .expect("json")
    }

    /// The daemon's local API socket from `run/daemon.json` (an address for [`http_request`]:
    /// the owner's way in, no token).
    pub fn http(&self) -> String {
        self.daemon_file()["api_socket"]
            .as_str()
            .expect("api_socket")
            .to_owned()
    }

    /// The daemon's TCP address (`HOST:PORT`), which wants the token on every request.
    pub fn tcp(&self) -> String {
        self.daemon_file()["http"]
            .as_str()
            .expect("http")
            .to_owned()
    }

    /// The daemon's token (`$SCRY_HOME/token`).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.home().join("token"))
            .expect("token file")
            .trim()
            .to_owned()
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.http(), path).expect("GET");
        assert!(status < 400, "GET {path}: {status} {body}");
        serde_json::from_str(&body).expect("json body")
    }

    /// Starts a Python script from `tests/scripts/` with the agent importable.
    pub fn python(&self, interpreter: &str, script: &str, args: &[&str]) -> Proc {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/scripts")
            .join(script);
        let log = std::fs::File::create(self.home().join(format!("{script}.log"))).expect("log");
        let child = Command::new(interpreter)
            .arg(&path)
            .args(args)
            .env("PYTHONPATH", repo().join("python"))
            .env("SCRY_HOME", self.home())
            .env("PYTHONUNBUFFERED", "1")
            .env_remove("SCRY_DAEMON")
            .env_remove("SCRY_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {interpreter}: {e}"));
        Proc {
            child,
            label: script.into(),
        }
    }

    /// The output a script wrote to stderr (for failure messages).
    pub fn script_log(&self, script: &str) -> String {
        std::fs::read_to_string(self.home().join(format!("{script}.log"))).unwrap_or_default()
    }

    /// The process list as `scry ps --json` shows it.
    pub fn ps(&self) -> Vec<Value> {
        self.scry_json(&["ps"])["processes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The state `scry ps` shows for `pid`, preferring a live entry.
    pub fn state_of(&self, pid: u32) -> Option<String> {
        let ps = self.ps();
        let mine: Vec<&Value> = ps.iter().filter(|p| p["pid"] == pid).collect();
        mine.iter()
            .find(|p| p["state"] != "gone")
            .or(mine.first())
            .and_then(|p| p["state"].as_str().map(str::to_owned))
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.kill_daemon();
        // Whatever a failed test left running in this home: detached daemons and clients.
        let mut pids: Vec<u32> = Vec::new();
        if let Ok(text) = std::fs::read_to_string(self.home().join("run/daemon.pid")) {
            pids.extend(text.trim().parse::<u32>().ok());
        }
        if let Ok(rd) = std::fs::read_dir(self.home().join("clients")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                pids.extend(
                    name.strip_suffix(".json")
                        .and_then(|p| p.parse::<u32>().ok()),
                );
            }
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// stdout and stderr of a finished command, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A minimal HTTP/1.1 request over a fresh connection: (status, body). `addr` is `HOST:PORT`
/// (TCP) or the path of a unix socket (the daemon's local API).
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    extra_headers: &str,
) -> std::io::Result<(u16, String)> {
    let body = body.unwrap_or("");
    let host = if addr.starts_with('/') {
        "localhost"
    } else {
        addr
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    let mut raw = Vec::new();
    if addr.starts_with('/') {
        let mut s = std::os::unix::net::UnixStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        s.read_to_end(&mut raw)?;
    } else {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        s.read_to_end(&mut raw)?;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, None, "")
}

pub fn http_post_json(addr: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    http_request(
        addr,
        "POST",
        path,
        Some(body),
        "Content-Type: application/json\r\n",
    )
}

/// The minor version of an interpreter (`14` for 3.14), asked of the interpreter itself; 0 when
/// it cannot tell.
pub fn minor_of(python: &str) -> u32 {
    let out = Command::new(python)
        .args(["-c", "import sys; print(sys.version_info[1])"])
        .output()
        .expect("python");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}
