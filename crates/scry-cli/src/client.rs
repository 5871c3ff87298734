//! Talking to the daemon: finding it, starting it when it is not running, and calling its HTTP
//! API with errors that say what to do.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scry_api::{AttachReport, AttachRequest, ErrorBody, NewProbe, ProbeList, ProbeView, Removed};
use scry_daemon::{env, DaemonFile, Home};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::CliError;
use crate::printer::Printer;
use crate::ready_pipe::Outcome;

/// Whether a daemon answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// It answered.
    Up,
    /// Something listens (the connection was made, or the socket's backlog is full) but gave
    /// no answer in time: the daemon is alive and overloaded.
    Busy,
    /// Nothing listens: no socket file, or the connection was refused.
    NotRunning,
}

/// How long `scry status` and the other liveness checks wait for an answer.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take; shorter than [`REACH_TIMEOUT`] so that an address where
/// nobody answers at all ("not running") is told from a daemon that is slow to answer ("busy").
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a failed request means nothing listens (as opposed to a daemon that is slow).
fn nothing_listens(e: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    return true
                }
                // The socket's backlog is full: a daemon is there, swamped.
                std::io::ErrorKind::WouldBlock => return false,
                _ => break,
            }
        }
        cur = err.source();
    }
    // Could not connect at all (also within the connect timeout: an address nobody answers
    // at); a timeout or a reset after connecting is a daemon that is there but busy.
    e.is_connect()
}

/// Where the daemon is and how to reach it.
///
/// By default through the daemon's local API socket (`$SCRY_HOME/run/api.sock`), where the
/// daemon checks that the caller is its owner or root and no token is needed. With
/// `SCRY_DAEMON=http://HOST:PORT` through its TCP listener, which wants the token on every
/// request (`SCRY_TOKEN`, else `$SCRY_HOME/token`).
pub struct DaemonClient {
    /// Where the daemon is, for messages: `unix:<socket>` or the `http://` URL.
    pub base: String,
    /// Whether the address came from `SCRY_DAEMON` (then the CLI never starts a daemon itself).
    pub explicit: bool,
    /// What request URLs start with (`http://localhost` over the socket: the host is a formality).
    url_base: String,
    home: Home,
    http: reqwest::Client,
    token: Option<String>,
}

impl DaemonClient {
    /// Resolves the daemon's address: `SCRY_DAEMON`, else the local API socket of `$SCRY_HOME`.
    pub fn locate(home: &Home) -> Result<DaemonClient, CliError> {
        // Connecting and answering are timed apart: see `nothing_listens`.
        let builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT);
        let (base, url_base, explicit, builder) = match env::var(env::SCRY_DAEMON) {
            Some(url) => {
                let url = url.trim_end_matches('/').to_owned();
                (url.clone(), url, true, builder)
            }
            None => {
                let socket = home.api_socket();
                (
                    format!("unix:{}", socket.display()),
                    "http://localhost".to_owned(),
                    false,
                    builder.unix_socket(socket),
                )
            }
        };
        if !url_base.starts_with("http://") {
            return Err(
                CliError::new(format!("SCRY_DAEMON must be an http:// URL, not `{base}`"))
                    .hint("e.g. SCRY_DAEMON=http://127.0.0.1:7390 (with the daemon's token in SCRY_TOKEN); unset it to use the local daemon of $SCRY_HOME"),
            );
        }
        let http = builder
            .build()
            .map_err(|e| CliError::new(format!("cannot create an HTTP client: {e}")))?;
        // Only TCP wants the token; the socket knows who we are.
        let token = if explicit {
            scry_daemon::auth::load_token(home, false).ok().flatten()
        } else {
            None
        };
        Ok(DaemonClient {
            base,
            explicit,
            url_base,
            home: home.clone(),
            http,
            token,
        })
    }

    /// After a daemon was started: the token it may have just created.
    fn refresh(&mut self) {
        if self.explicit && self.token.is_none() {
            self.token = scry_daemon::auth::load_token(&self.home, false)
                .ok()
                .flatten();
        }
    }

    /// Whether a daemon answers at the address.
    pub async fn is_up(&self) -> bool {
        self.reach().await == Reach::Up
    }

    /// Whether a daemon answers at the address, is there but busy, or is not running.
    pub async fn reach(&self) -> Reach {
        let mut req = self
            .http
            .get(self.url("/api/v1/health"))
            .timeout(REACH_TIMEOUT);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            // Over TCP a daemon that refuses a wrong token still answers: it is up, and the
            // call that follows says what is wrong.
            Ok(r) if r.status().is_success() || (self.explicit && r.status().is_client_error()) => {
                Reach::Up
            }
            // Something answers, but not as a healthy daemon would (e.g. 503): busy.
            Ok(_) => Reach::Busy,
            Err(e) if nothing_listens(&e) => Reach::NotRunning,
            Err(_) => Reach::Busy,
        }
    }

    fn busy_error(&self) -> CliError {
        CliError::new(format!(
            "the scry daemon at {} is busy: it accepts connections but did not answer within {} s",
            self.base,
            REACH_TIMEOUT.as_secs()
        ))
        .hint("it is running (do not start another); try again shortly. Many open connections or a full disk can cause this: `scry status` and its log tell")
    }

    /// Makes sure a daemon runs, starting one in the background (and saying so) if needed.
    pub async fn ensure_running(&mut self, printer: &mut Printer) -> Result<(), CliError> {
        match self.reach().await {
            Reach::Up => return Ok(()),
            // Starting another daemon would only fail (this one holds the home).
            Reach::Busy => return Err(self.busy_error()),
            Reach::NotRunning => {}
        }
        // SCRY_DAEMON naming this machine: start the daemon there; another host: say so.
        let local = loopback_addr(&self.base);
        if self.explicit && local.is_none() {
            return Err(
                CliError::new(format!("no scry daemon answers at {}", self.base)).hint(
                    "start it there with `scry serve`, or unset SCRY_DAEMON to use a local one",
                ),
            );
        }
        let extra: Vec<String> = match (self.explicit, local) {
            (true, Some(addr)) => vec!["--http".into(), addr],
            _ => Vec::new(),
        };
        let info = start_daemon(&self.home, &extra)?;
        self.refresh();
        printer.note(format!(
            "scry: started the daemon in the background (pid {}, http://{}, log {})",
            info.pid,
            info.http,
            self.home.log_file().display()
        ));
        Ok(())
    }

    /// GET a JSON document.
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(self.http.get(self.url(path))).await
    }

    /// A request to `path` on the daemon with the token attached (for `scry mcp`'s relay, which
    /// streams the answer itself).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// GET a JSON document that may take up to `timeout` to come (a long poll).
    pub async fn get_with_timeout(&self, path: &str, timeout: Duration) -> Result<Value, CliError> {
        self.call_within(self.http.get(self.url(path)), timeout)
            .await
    }

    /// POST a JSON body and read the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.call(self.http.post(self.url(path)).json(body)).await
    }

    /// DELETE and read the JSON answer.
    pub async fn delete(&self, path: &str) -> Result<Value, CliError> {
        self.call(self.http.delete(self.url(path))).await
    }

    /// GET a streaming response (no overall timeout), e.g. a REPL session's terminal stream.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, CliError> {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            CliError::new(format!(
                "cannot reach the scry daemon at {}: {}",
                self.base,
                root_cause(&e)
            ))
        })?;
        if !resp.status().is_success() {
            return Err(CliError::new(format!(
                "the daemon refused the stream {path}: HTTP {}",
                resp.status()
            )));
        }
        Ok(resp)
    }

    /// GET a document of a known type.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        decode(path, self.get(path).await?)
    }

    /// GET a document of a known type that may take up to `timeout` (a wait).
    pub async fn get_as_within<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, CliError> {
        decode(path, self.get_with_timeout(path, timeout).await?)
    }

    /// POST a typed body and read an answer of a known type.
    pub async fn post_as<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        let body = serde_json::to_value(body)
            .map_err(|e| CliError::new(format!("cannot encode the request to {path}: {e}")))?;
        decode(path, self.post(path, &body).await?)
    }

    /// POST a typed body and read an answer of a known type that may take up to `timeout`.
    pub async fn post_within<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, CliError> {
        let body = serde_json::to_value(body)
            .map_err(|e| CliError::new(format!("cannot encode the request to {path}: {e}")))?;
        let answer = self
            .call_within(self.http.post(self.url(path)).json(&body), timeout)
            .await?;
        decode(path, answer)
    }

    /// DELETE and read an answer of a known type.
    pub async fn delete_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        decode(path, self.delete(path).await?)
    }

    /// Adds a probe (`POST /api/v1/probes`).
    pub async fn add_probe(&self, probe: &NewProbe) -> Result<ProbeView, CliError> {
        self.post_as("/api/v1/probes", probe).await
    }

    /// Every probe.
    pub async fn probes(&self) -> Result<ProbeList, CliError> {
        self.get_as("/api/v1/probes").await
    }

    /// One probe by id or name.
    pub async fn probe(&self, key: &str) -> Result<ProbeView, CliError> {
        self.get_as(&format!("/api/v1/probes/{}", enc(key))).await
    }

    /// Removes a probe by id or name.
    pub async fn remove_probe(&self, key: &str) -> Result<Removed, CliError> {
        self.delete_as(&format!("/api/v1/probes/{}", enc(key)))
            .await
    }

    /// Removes every probe of a group.
    pub async fn remove_group(&self, group: &str) -> Result<Removed, CliError> {
        self.delete_as(&format!("/api/v1/probes?group={}", enc(group)))
            .await
    }

    /// Enables (`on`) or disables a probe by id or name.
    pub async fn switch_probe(&self, key: &str, on: bool) -> Result<ProbeList, CliError> {
        let action = if on { "enable" } else { "disable" };
        self.post_as(
            &format!("/api/v1/probes/{}/{action}", enc(key)),
            &Value::Null,
        )
        .await
    }

    /// Enables (`on`) or disables every probe of a group.
    pub async fn switch_group(&self, group: &str, on: bool) -> Result<ProbeList, CliError> {
        let action = if on { "enable" } else { "disable" };
        self.post_as(
            &format!("/api/v1/groups/{}/{action}", enc(group)),
            &Value::Null,
        )
        .await
    }

    /// Attaches to a process (`POST /api/v1/attach`), or with `follow` to it and its tree from
    /// now on (`POST /api/v1/follow`).
    pub async fn attach(
        &self,
        request: &AttachRequest,
        follow: bool,
        timeout: Duration,
    ) -> Result<AttachReport, CliError> {
        let path = if follow {
            "/api/v1/follow"
        } else {
            "/api/v1/attach"
        };
        self.post_within(path, request, timeout).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url_base)
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, CliError> {
        self.call_within(req, Duration::from_secs(60)).await
    }

    async fn call_within(
        &self,
        mut req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Value, CliError> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.timeout(timeout).send().await.map_err(|e| {
            if !nothing_listens(&e) {
                return CliError::new(format!(
                    "the scry daemon at {} did not answer: {}",
                    self.base,
                    root_cause(&e)
                ))
                .hint("it is running but busy (or the request takes long); `scry status` tells");
            }
            CliError::new(format!(
                "cannot reach the scry daemon at {}: {}",
                self.base,
                root_cause(&e)
            ))
            .hint("is it running? `scry status` tells; `scry serve --daemon` starts it")
        })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        Err(match serde_json::from_value::<ErrorBody>(body) {
            // A token refused at an address SCRY_DAEMON chose: most likely another home's (or
            // another user's) daemon, which the generic hint would not say.
            Ok(ErrorBody { error })
                if status == reqwest::StatusCode::UNAUTHORIZED && self.explicit =>
            {
                CliError::new(format!("{} (at {}, from SCRY_DAEMON)", error.message, self.base))
                    .hint(format!(
                        "that daemon is not the one of this SCRY_HOME ({}): unset SCRY_DAEMON to use this home's daemon, or set SCRY_HOME to that daemon's home",
                        self.home.root().display()
                    ))
            }
            Ok(ErrorBody { error }) => {
                let mut err = CliError::new(error.message);
                if let Some(h) = error.hint {
                    err = err.hint(h);
                }
                err
            }
            Err(_) => CliError::new(format!("the daemon answered HTTP {status}")),
        })
    }
}

/// An answer read as the type the API documents for it (`scry-api`).
fn decode<T: DeserializeOwned>(path: &str, answer: Value) -> Result<T, CliError> {
    serde_json::from_value(answer).map_err(|e| {
        CliError::new(format!(
            "the daemon's answer to {path} is not what this scry expects: {e}"
        ))
        .hint("the daemon may run another version of scry: `scry status` shows it; restart it with `scry stop` then `scry serve --daemon`")
    })
}

/// Percent-encodes a path or query component.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// What the running daemon wrote about itself, if that daemon is still alive.
pub fn read_daemon_file(home: &Home) -> Option<DaemonFile> {
    let text = std::fs::read_to_string(home.daemon_file()).ok()?;
    let info: DaemonFile = serde_json::from_str(&text).ok()?;
    scry_proc::alive(info.pid, None).then_some(info)
}

/// Starts `scry serve` detached from this terminal (its own session, reparented away from us
/// so it is never our zombie), logging to `$SCRY_HOME/daemon.log`, and waits until it serves.
pub fn start_daemon(home: &Home, extra_args: &[String]) -> Result<DaemonFile, CliError> {
    home.ensure().map_err(CliError::from_daemon)?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(format!("cannot find the scry executable: {e}")))?;
    // A full disk may not even allow creating the log: the daemon runs anyway (its own log
    // sink tries the file again every second), with what comes before logging lost.
    let (log, log_err): (Stdio, Stdio) = match open_log(&home.log_file()) {
        Ok((a, b)) => (a.into(), b.into()),
        Err(_) => (Stdio::null(), Stdio::null()),
    };
    let previous = std::fs::read_to_string(home.daemon_file()).ok();
    let mut cmd = Command::new(&exe);
    // The daemon writes its log itself (rotated, never fatal when the disk is full); stdout
    // and stderr still go to the file for what comes before logging starts (or a panic).
    cmd.arg("serve")
        .arg("--log-file")
        .arg(home.log_file())
        .args(extra_args)
        .env(env::SCRY_HOME, home.root())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let cannot_start =
        |e: std::io::Error| CliError::new(format!("cannot start `{} serve`: {e}", exe.display()));
    let (waiter, write_end) = crate::ready_pipe::pair().map_err(cannot_start)?;
    let fd = write_end.as_raw_fd();
    cmd.env(crate::ready_pipe::ENV, fd.to_string());
    // SAFETY: only an async-signal-safe fcntl runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || crate::ready_pipe::inherit_in_child(fd));
    }
    spawn_detached(&mut cmd).map_err(cannot_start)?;
    // Only the daemon holds the write end now: its exit closes the pipe.
    drop(write_end);
    let wait = Duration::from_secs(15);
    match waiter.wait(wait) {
        Outcome::Ready => wait_until_serving(home, previous.as_deref(), Duration::from_secs(5)),
        Outcome::Failed { message, hint } => {
            let err = CliError::new(format!("the daemon could not start: {message}"));
            Err(match hint {
                Some(h) => err.hint(h),
                None => err.hint(format!("its log may say more: {}", tail(&home.log_file()))),
            })
        }
        Outcome::Died => Err(CliError::new("the daemon exited as it started")
            .hint(format!("its log may say why: {}", tail(&home.log_file())))),
        Outcome::TimedOut => Err(CliError::new(format!(
            "the daemon did not start within {} s",
            wait.as_secs()
        ))
        .hint(format!("its log may say why: {}", tail(&home.log_file())))),
    }
}

fn wait_until_serving(
    home: &Home,
    previous: Option<&str>,
    timeout: Duration,
) -> Result<DaemonFile, CliError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(home.daemon_file()).ok();
        if text.is_some() && text.as_deref() != previous {
            if let Some(info) = read_daemon_file(home) {
                return Ok(info);
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(CliError::new(format!(
        "the daemon said it serves but wrote no {} within {} s",
        home.daemon_file().display(),
        timeout.as_secs()
    ))
    .hint(format!("its log may say why: {}", tail(&home.log_file()))))
}

/// The last lines of a file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    let mut out = format!("{}", path.display());
    for l in lines.into_iter().rev() {
        out.push_str("\n  ");
        out.push_str(l);
    }
    out
}

/// Starts `cmd` in its own session, detached: it is forked once more and the middle process
/// exits at once (and is reaped here), so the program is adopted by init or a subreaper and is
/// never left as this process's zombie.
pub fn spawn_detached(cmd: &mut Command) -> std::io::Result<()> {
    // SAFETY: only async-signal-safe calls (setsid, fork, _exit) run between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            match nix::unistd::fork().map_err(std::io::Error::from)? {
                nix::unistd::ForkResult::Parent { .. } => nix::libc::_exit(0),
                nix::unistd::ForkResult::Child => Ok(()),
            }
        });
    }
    let mut middle = cmd.spawn()?;
    middle.wait()?;
    Ok(())
}

/// Opens a log file for appending, twice (stdout and stderr of a detached child).
pub fn open_log(path: &Path) -> Result<(std::fs::File, std::fs::File), CliError> {
    let fail = |e: std::io::Error| CliError::new(format!("cannot open {}: {e}", path.display()));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    let again = log.try_clone().map_err(fail)?;
    Ok((log, again))
}

/// `HOST:PORT` of an `http://` URL whose host is a loopback address (or `localhost`).
pub fn loopback_addr(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?.trim_end_matches('/');
    let addr = rest.split('/').next()?;
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host_ip = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host_ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback.then(|| addr.to_owned())
}

#[cfg(test)]
mod tests {
    use super::loopback_addr;

    #[test]
    fn loopback_urls() {
        assert_eq!(
            loopback_addr("http://127.0.0.1:7400"),
            Some("127.0.0.1:7400".into())
        );
        assert_eq!(
            loopback_addr("http://localhost:7400/"),
            Some("localhost:7400".into())
        );
        assert_eq!(
            loopback_addr("http://[::1]:7400"),
            Some("[::1]:7400".into())
        );
        assert_eq!(loopback_addr("http://10.1.2.3:7400"), None);
        assert_eq!(loopback_addr("http://127.0.0.1"), None);
    }
}
