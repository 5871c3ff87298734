//! `scry attach PID` and `scry detach PID`: turning an unprepared Python process into an awake
//! agent, and back.
//!
//! An attach: (1) refuse early what cannot work (no such process, not Python, unsupported
//! version, remote debugging disabled, no permission) without touching the target; (2) place
//! the agent package, a bootstrap script and a unix socket in a fresh directory *inside the
//! target's own root* ([`Placement`]: `/proc/PID/root/tmp/scry-attach-<random>`, created
//! exclusively, mode 0700, by the target's own user: every file operation there runs with the
//! target's credentials, relative to directory fds, see [`scry_proc::place`]), so a chroot, a
//! container or a process in its own PID namespace reads the files and reaches the socket at
//! `/tmp/scry-attach-...`, and a target can make scry write only where it could itself;
//! (3) register a one-time nonce ([`Pending`]) that the agent must present in its `hello`
//! (origin `injected`) from the target's pid, so no other local process can pose as it;
//! (4) make the target run the bootstrap through an [`Injector`]; (5) wait for the agent's
//! hello; then remove the directory (the connected socket lives on). On every failure the
//! directory, the socket and the nonce are removed, and the bootstrap itself refuses to run
//! after its deadline.
//!
//! The injector is chosen by [`injector_for`]: the native PEP 768 writer for CPython 3.14+;
//! another implementation of [`Injector`] (gdb for older versions) plugs in there.
//!
//! Detach asks the agent to remove every hook and close its connection (the `agent.detach`
//! call), then waits until it is gone; detaching a followed root undoes the whole follow.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use scry_proc::inject::{pep768, InjectError, Injector};
use scry_proc::place;

use scry_api::{AttachPlan, AttachReport, AttachRequest, Detached};
use serde_json::{json, Value};
use tokio::net::UnixListener;
use tokio::sync::oneshot;

use super::{Error, ErrorKind, Result};
use crate::link::Peer;
use crate::state::attaches::Pending;
use crate::state::registry::ProcState;
use crate::{link, Shared};

/// How long an agent has, after the target picked the bootstrap up, to say hello.
const HELLO_WAIT: Duration = Duration::from_secs(15);
/// The default time the target has to pick the bootstrap up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long detach waits for the agent to go.
const DETACH_WAIT: Duration = Duration::from_secs(10);

/// An injector's refusal as a service error (its kind names the reason; its hint says what to do).
pub(crate) fn inject_error(e: InjectError) -> Error {
    let hint = e.hint();
    Error {
        kind: ErrorKind::from_name(e.kind()),
        message: e.to_string(),
        hint,
    }
}

/// The injector for `pid`, after checking (without writing anything) that it can work.
///
/// `auto` (`only` = `None`): the native PEP 768 writer for CPython 3.14+, gdb for 3.8-3.13
/// (`scry_proc::inject::for_version`, an error saying how to install gdb when it is missing).
/// `only` names one injector to use (`pep768`, `gdb`).
pub fn injector_for(pid: u32, only: Option<&str>) -> Result<Box<dyn Injector>, InjectError> {
    // Whichever injector is asked for: a pid that does not exist is said as such, not as a
    // failure of that injector (nor of the placement after it).
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(InjectError::NoSuchProcess { pid });
    }
    match only {
        Some("pep768") => {
            pep768::check(pid)?;
            Ok(Box::new(pep768::Pep768))
        }
        Some("gdb") => scry_proc::inject::gdb::Gdb::from_path()
            .map(|g| Box::new(g) as Box<dyn Injector>)
            .ok_or(InjectError::GdbMissing {
                pid,
                version: "?".into(),
            }),
        _ => {
            let info = scry_proc::python::Detector::new().detect(pid);
            let minor = info.as_ref().and_then(|p| p.major_minor());
            match minor {
                // Not Python, not recognised, or 3.14+: the native injector says precisely why.
                None | Some((3, 14..)) => {
                    pep768::check(pid)?;
                    Ok(Box::new(pep768::Pep768))
                }
                Some(v) => scry_proc::inject::for_version(pid, v),
            }
        }
    }
}

/// The injector names `POST /api/v1/attach` accepts in `injector` (besides `auto`).
pub const INJECTORS: &[&str] = &["pep768", "gdb"];

/// A directory inside the target's root holding the agent package, the bootstrap and the
/// socket the agent connects to. Removed (with the socket) when dropped.
///
/// Every file operation in it is [`scry_proc::place`]'s: done with the target's credentials,
/// relative to directory fds, never following a link, so a target can make scry create,
/// read or remove only what it could itself.
pub struct Placement {
    dir: place::Placement,
    listener: Option<UnixListener>,
}

/// A placement failure as a service error (an io error's cause belongs in the message: the API
/// has no error chain).
pub(crate) fn place_error(e: place::PlaceError) -> Error {
    let message = match &e {
        place::PlaceError::Io { source, .. } => format!("{e}: {source}"),
        _ => e.to_string(),
    };
    Error {
        kind: ErrorKind::from_name(e.kind()),
        message,
        hint: e.hint(),
    }
}

impl Placement {
    /// Creates the directory (exclusively, mode 0700, as the target's user), writes the
    /// agent package and a bootstrap carrying `nonce` that refuses to run after
    /// `expires_epoch`, and binds the socket.
    pub fn create(pid: u32, nonce: &str, expires_epoch: f64) -> Result<Placement> {
        let dir = place::Placement::create(pid, "scry-attach", "agent").map_err(place_error)?;
        let agent = crate::bundle::AGENT_FILES
            .iter()
            .filter(|(rel, _)| rel.starts_with("scry/"))
            .map(|(rel, contents)| (*rel, contents.as_bytes()));
        dir.write_files(agent).map_err(place_error)?;
        let listener = dir.bind("agent.sock").map_err(place_error)?;
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(listener))
            .map_err(|e| {
                internal(format!(
                    "cannot listen on {}: {e}",
                    dir.host_dir().join("agent.sock").display()
                ))
            })?;
        let bootstrap = bootstrap_source(
            &dir.target_dir().to_string_lossy(),
            &dir.target_path("agent.sock").to_string_lossy(),
            nonce,
            expires_epoch,
            scry_proc::pid_in_own_namespace(pid),
        );
        dir.write_files([("bootstrap.py", bootstrap.as_bytes())])
            .map_err(place_error)?;
        Ok(Placement {
            dir,
            listener: Some(listener),
        })
    }

    /// The directory as the target sees it (`/tmp/scry-attach-...`).
    pub fn target_dir(&self) -> &Path {
        self.dir.target_dir()
    }

    /// The bootstrap's path as the target sees it.
    pub fn bootstrap_in_target(&self) -> PathBuf {
        self.dir.target_path("bootstrap.py")
    }

    fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

/// The bootstrap the target runs (in a fresh namespace, on its main thread): it starts a
/// thread that imports the placed agent and connects. JSON strings are Python literals.
///
/// Two guards keep the placement scry's alone, so that its removal is final: the bootstrap does
/// nothing in a process other than `own_pid` (the target's pid as it sees itself: a child that
/// the target forked before running the bootstrap inherits the request, PEP 768's as gdb's),
/// and the agent is imported without writing bytecode next to it (the import system would
/// otherwise re-create `scry/__pycache__/`, and the directories above it, in a placement
/// removed meanwhile).
fn bootstrap_source(
    package_dir: &str,
    socket: &str,
    nonce: &str,
    expires_epoch: f64,
    own_pid: Option<u32>,
) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let own_pid = own_pid.map_or_else(|| "None".to_owned(), |p| p.to_string());
    format!(
        r#"# scry attach bootstrap: one use, removed by scry once the agent connects.
def _scry_attach_bootstrap():
    import os, sys, threading, time
    if time.time() > {expires:.3}:
        return  # the attach that placed this gave up: do nothing
    own_pid = {own_pid}
    if own_pid is not None and os.getpid() != own_pid:
        return  # a child forked before its parent ran this: the attach is not for it
    package_dir = {pkg}
    modules_before = set(sys.modules)

    def run():
        import importlib.machinery as machinery

        class _NoBytecode(machinery.SourceFileLoader):
            def set_data(self, *args, **kwargs):
                pass  # nothing is written into the placement

        finders = dict(
            (d, machinery.FileFinder(d, (_NoBytecode, machinery.SOURCE_SUFFIXES)))
            for d in (package_dir, os.path.join(package_dir, "scry"))
        )
        sys.path_importer_cache.update(finders)
        sys.path.insert(0, package_dir)
        try:
            from scry import _attach
            _attach.attach({sock}, {nonce}, package_dir, modules_before)
        except BaseException as exc:
            for d, f in finders.items():
                if sys.path_importer_cache.get(d) is f:
                    del sys.path_importer_cache[d]
            try:
                sys.stderr.write("scry attach: the agent could not start: %r\n" % (exc,))
            except BaseException:
                pass
        finally:
            while package_dir in sys.path:
                sys.path.remove(package_dir)

    threading.Thread(target=run, name="scry-attach", daemon=True).start()


_scry_attach_bootstrap()
"#,
        expires = expires_epoch,
        pkg = q(package_dir),
        sock = q(socket),
        nonce = q(nonce),
    )
}

/// Serves the attach socket: each connection is an ordinary agent link (the hello's nonce and
/// the peer's pid are checked by the link through [`Pending::claim`]).
async fn accept_attach(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let pid = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok());
        let (r, w) = stream.into_split();
        tokio::spawn(link::serve(shared.clone(), r, w, Peer::Unix { pid }));
    }
}

fn awake_process(shared: &Shared, pid: u32) -> Option<(i64, String)> {
    let reg = shared.registry();
    reg.find(&pid.to_string())
        .into_iter()
        .find(|e| e.view.state == ProcState::Awake && e.agent.is_some())
        .map(|e| (e.view.id, e.view.origin.clone()))
}

/// Attaches to `pid`: see the module docs.
pub async fn attach(
    shared: &Arc<Shared>,
    pid: u32,
    timeout: Duration,
    only: Option<String>,
) -> Result<AttachReport> {
    let started = Instant::now();
    let result = attach_once(shared, pid, timeout, only).await;
    let seconds = started.elapsed().as_secs_f64();
    match &result {
        Ok(r) if r.already_attached => {}
        Ok(_) => shared.attach_times.ok.observe(seconds),
        Err(_) => shared.attach_times.failed.observe(seconds),
    }
    result
}

async fn attach_once(
    shared: &Arc<Shared>,
    pid: u32,
    timeout: Duration,
    only: Option<String>,
) -> Result<AttachReport> {
    let started = Instant::now();
    if pid == std::process::id() {
        return Err(Error::bad_request("that is the scry daemon itself"));
    }
    if let Some((process_id, _)) = awake_process(shared, pid) {
        return Ok(AttachReport {
            pid,
            process_id,
            already_attached: true,
            following: None,
            already_following: None,
            injector: None,
            python_version: None,
            picked_up_ms: None,
            connected_ms: None,
            placed_in: None,
        });
    }
    let injector = tokio::task::spawn_blocking(move || injector_for(pid, only.as_deref()))
        .await
        .map_err(|e| internal(format!("the attach task failed: {e}")))?
        .map_err(inject_error)?;

    let nonce = format!("n-{:032x}", rand::thread_rng().gen::<u128>());
    let expires = Instant::now() + timeout + HELLO_WAIT;
    let expires_epoch = crate::now() + (timeout + HELLO_WAIT).as_secs_f64();
    let mut placement = Placement::create(pid, &nonce, expires_epoch)?;
    let connected = shared.attaches.add(nonce.clone(), pid, expires);
    // Forget the nonce on every way out, so a late hello is refused.
    struct Forget<'a>(&'a Pending, &'a str);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            self.0.forget(self.1);
        }
    }
    let _forget = Forget(&shared.attaches, &nonce);
    let accept = placement
        .take_listener()
        .map(|l| tokio::spawn(accept_attach(shared.clone(), l)));
    struct Abort(Option<tokio::task::JoinHandle<()>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            if let Some(h) = self.0.take() {
                h.abort();
            }
        }
    }
    let _accept = Abort(accept);

    let script = placement.bootstrap_in_target();
    tracing::info!(target: "daemon", pid, injector = injector.name(), script = %script.display(), "attaching");
    let injection =
        match tokio::task::spawn_blocking(move || injector.inject(pid, &script, timeout))
            .await
            .map_err(|e| internal(format!("the attach task failed: {e}")))?
        {
            Ok(i) => i,
            // It was there for the checks and the placement: gone now means it exited meanwhile.
            Err(InjectError::NoSuchProcess { pid }) => {
                return Err(inject_error(InjectError::Exited { pid }))
            }
            // A target dying mid-injection loses its memory first: that reads as "no interpreter"
            // or a bad layout. Say what happened once it is gone (a zombie within moments).
            Err(
                e @ (InjectError::NotPython { .. }
                | InjectError::NotRunning { .. }
                | InjectError::BadLayout { .. }
                | InjectError::Io { .. }),
            ) => {
                let deadline = Instant::now() + Duration::from_millis(200);
                while scry_proc::alive(pid, None) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if scry_proc::alive(pid, None) {
                    return Err(inject_error(e));
                }
                return Err(inject_error(InjectError::Exited { pid }));
            }
            Err(e) => return Err(inject_error(e)),
        };

    let process_id = wait_connected(pid, connected).await?;
    let placed_in = placement.target_dir().to_owned();
    drop(placement);
    let report = AttachReport {
        pid,
        process_id,
        already_attached: false,
        following: None,
        already_following: None,
        injector: Some(injection.injector.to_owned()),
        python_version: Some(injection.python_version.clone()),
        picked_up_ms: Some(injection.picked_up_after.as_secs_f64() * 1e3),
        connected_ms: Some(started.elapsed().as_secs_f64() * 1e3),
        placed_in: Some(placed_in),
    };
    shared.system_event(
        scry_store::Level::Info,
        "attached",
        format!(
            "attached to pid {pid} (Python {}, {}) in {:.0} ms",
            injection.python_version,
            injection.injector,
            started.elapsed().as_secs_f64() * 1e3
        ),
        serde_json::to_value(&report).unwrap_or(Value::Null),
    );
    Ok(report)
}

async fn wait_connected(pid: u32, mut connected: oneshot::Receiver<i64>) -> Result<i64> {
    let deadline = tokio::time::Instant::now() + HELLO_WAIT;
    loop {
        tokio::select! {
            got = &mut connected => {
                return got.map_err(|_| internal("the attach was abandoned".into()));
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if !scry_proc::alive(pid, None) {
            return Err(inject_error(InjectError::Exited { pid }));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::NoHello,
                format!(
                    "process {pid} ran the bootstrap but its agent did not connect within {} s",
                    HELLO_WAIT.as_secs()
                ),
            )
            .hint("the target's stderr says why (a line starting with `scry attach:`)"));
        }
    }
}

fn internal(message: String) -> Error {
    Error::new(ErrorKind::Internal, message)
}

/// How long `scry detach ROOT` waits for the attaches its follow had in progress (an attach
/// gives the target [`super::follow`]'s 5 s, then [`HELLO_WAIT`] for the hello).
const FOLLOW_ATTACHES_WAIT: Duration = Duration::from_secs(25);

/// Detaches the agent of `pid`: every hook removed, connection closed. Returns what happened.
///
/// A followed `pid` stops being followed (else the follow would attach again). When `pid` is
/// the root of that follow, every other agent the follow injected in its tree is detached too,
/// once the attaches it had in progress have ended: `scry attach --follow ROOT` is undone by
/// `scry detach ROOT`. Detaching one process of a followed tree stops the follow and detaches
/// that process only.
pub async fn detach(shared: &Arc<Shared>, pid: u32) -> Result<Detached> {
    let pid = positive_pid(pid)?;
    let stopped = shared.follows.stop(pid);
    let unfollowed = !stopped.is_empty();
    let mut tree: Vec<u32> = Vec::new();
    for f in stopped {
        let mut attaching = f.attaching;
        if f.state.root != pid {
            attaching.detach_all();
            continue;
        }
        tree.extend(&f.state.attached);
        let deadline = tokio::time::Instant::now() + FOLLOW_ATTACHES_WAIT;
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, attaching.join_next()).await
        {
            if let Ok((attached, true)) = joined {
                tree.push(attached);
            }
        }
        // Still attaching after that long: aborted (its nonce is withdrawn, its placement removed).
        attaching.abort_all();
    }
    tree.sort_unstable();
    tree.dedup();
    tree.retain(|p| *p != pid);
    // Only the agents a follow could have made: an embedded client in the tree is its own.
    let injected: Vec<u32> = tree
        .into_iter()
        .filter(|p| awake_process(shared, *p).is_some_and(|(_, origin)| origin == "injected"))
        .collect();
    let results = futures_util::future::join_all(
        injected
            .iter()
            .map(|p| async move { (*p, detach_one(shared, *p).await) }),
    )
    .await;
    let mut tree_detached = Vec::new();
    let mut tree_failed = std::collections::BTreeMap::new();
    for (p, result) in results {
        match result {
            Ok(_) => tree_detached.push(p),
            Err(e) => {
                tree_failed.insert(p, e.message);
            }
        }
    }
    if unfollowed && awake_process(shared, pid).is_none() {
        return Ok(Detached {
            pid,
            process_id: None,
            detached: false,
            origin: None,
            unfollowed: Some(true),
            tree_detached,
            tree_failed,
        });
    }
    let (process_id, origin) = detach_one(shared, pid).await?;
    Ok(Detached {
        pid,
        process_id: Some(process_id),
        detached: true,
        origin: Some(origin),
        unfollowed: unfollowed.then_some(true),
        tree_detached,
        tree_failed,
    })
}

/// Detaches the agent of `pid` and waits until it is gone: its process row and origin.
async fn detach_one(shared: &Arc<Shared>, pid: u32) -> Result<(i64, String)> {
    let Some((process_id, origin)) = awake_process(shared, pid) else {
        return Err(Error::new(
            ErrorKind::NotAttached,
            format!("process {pid} has no scry agent connected"),
        )
        .hint("`scry ps` lists the processes scry is attached to"));
    };
    super::calls::call(shared, process_id, "agent.detach", json!({}), DETACH_WAIT)
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::DetachFailed,
                format!("process {pid} did not detach: {e}"),
            )
        })?;
    let deadline = Instant::now() + DETACH_WAIT;
    while awake_process(shared, pid).is_some() {
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::DetachFailed,
                format!(
                    "process {pid} accepted to detach but is still connected after {} s",
                    DETACH_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((process_id, origin))
}

/// Checks an attach request: the pid, the timeout (default [`DEFAULT_TIMEOUT`]) and the
/// injector (`None` for `auto`).
pub fn check_request(req: &AttachRequest) -> Result<(u32, Duration, Option<String>)> {
    let pid = positive_pid(req.pid)?;
    let timeout = timeout_of(req.timeout_ms, DEFAULT_TIMEOUT)?;
    let only = match req.injector.as_deref() {
        None | Some("auto") => None,
        Some(name) if INJECTORS.contains(&name) => Some(name.to_owned()),
        Some(other) => {
            return Err(Error::bad_request(format!(
                "unknown injector `{other}`: use auto or one of {INJECTORS:?}"
            )))
        }
    };
    Ok((pid, timeout, only))
}

/// Which injector an attach to `pid` would use and what to tell the user before it runs,
/// checked as an attach checks (nothing is written to the process).
pub async fn plan(pid: u32, injector: Option<String>) -> Result<AttachPlan> {
    let (pid, _, only) = check_request(&AttachRequest {
        pid,
        timeout_ms: None,
        injector,
    })?;
    let chosen = tokio::task::spawn_blocking(move || injector_for(pid, only.as_deref()))
        .await
        .map_err(|e| internal(format!("the attach check failed: {e}")))?
        .map_err(inject_error)?;
    Ok(AttachPlan {
        pid,
        injector: chosen.name().to_owned(),
        notice: chosen.notice(),
    })
}

/// A request's `timeout_ms` (1 to 600 000 ms), or `default` when it gives none.
pub fn timeout_of(timeout_ms: Option<f64>, default: Duration) -> Result<Duration> {
    match timeout_ms {
        None => Ok(default),
        Some(ms) if ms > 0.0 && ms <= 600_000.0 => Ok(Duration::from_secs_f64(ms / 1e3)),
        Some(_) => Err(Error::bad_request(
            "`timeout_ms` must be a number of milliseconds between 1 and 600000",
        )),
    }
}

/// A pid that can name a process (0 cannot).
pub fn positive_pid(pid: u32) -> Result<u32> {
    if pid == 0 {
        return Err(Error::bad_request("`pid` must be a positive process id"));
    }
    Ok(pid)
}

/// Attaches as a request asks (`POST /api/v1/attach`, the MCP tool `attach`).
pub async fn attach_request(shared: &Arc<Shared>, req: &AttachRequest) -> Result<AttachReport> {
    let (pid, timeout, only) = check_request(req)?;
    attach(shared, pid, timeout, only).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_quotes_its_values() {
        let src = bootstrap_source("/tmp/d \"x\"", "/tmp/d/agent.sock", "n-1", 12.5, Some(7));
        assert!(src.contains(r#"package_dir = "/tmp/d \"x\"""#), "{src}");
        assert!(src.contains("if time.time() > 12.500:"), "{src}");
        assert!(src.contains(r#"_attach.attach("/tmp/d/agent.sock", "n-1", package_dir"#));
        assert!(src.contains("own_pid = 7\n"), "{src}");
        let src = bootstrap_source("/tmp/d", "/tmp/d/agent.sock", "n-1", 12.5, None);
        assert!(src.contains("own_pid = None\n"), "{src}");
    }
}
