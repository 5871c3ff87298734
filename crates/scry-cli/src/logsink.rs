//! Where the daemon's log lines go: a sink that never fails the process and never floods.
//!
//! - **Never fatal.** A write that fails (disk full, a closed stderr) is counted and dropped;
//!   nothing here panics or prints elsewhere (tracing-subscriber's own fallback `eprintln!`
//!   would panic on a full disk, which aborted a `--daemon` daemon).
//! - **Rate-limited per cause.** Each log call site may write [`BURST`] lines per [`WINDOW`];
//!   what it says beyond that is counted and summed up in one line when the window is over
//!   ("… (x1234 in the last 10 s)"), so 2 M bad agent lines cost a few lines, not 500 MB.
//! - **Rotated.** A log file is renamed to `NAME.1` (the older `NAME.1` to `NAME.2`) once it
//!   would exceed [`MAX_LOG_BYTES`]; at most [`KEEP`] old files are kept.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// Size at which a log file is rotated.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// Old log files kept (`daemon.log.1`, `daemon.log.2`).
pub const KEEP: u32 = 2;
/// Lines one call site may write per window before it is only counted.
pub const BURST: u32 = 10;
/// The rate-limit window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How long after a failed open the file is tried again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// A log line's destination.
enum Target {
    Stderr,
    File {
        path: PathBuf,
        file: Option<File>,
        size: u64,
        max_bytes: u64,
        last_open_try: Option<Instant>,
    },
}

struct Site {
    window_start: Instant,
    written: u32,
    suppressed: u64,
    what: String,
}

struct Inner {
    target: Target,
    sites: HashMap<Identifier, Site>,
    /// Lines that could not be written (the disk was full, stderr closed, …).
    failed_writes: u64,
}

/// A `MakeWriter` for tracing-subscriber's fmt layer; cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Mutex<Inner>>,
}

impl LogSink {
    /// Log lines to stderr (a foreground daemon, every other command).
    pub fn stderr() -> LogSink {
        LogSink::new(Target::Stderr)
    }

    /// Log lines to `path` (appended, mode 0600), rotated at `max_bytes`.
    pub fn file(path: &Path, max_bytes: u64) -> LogSink {
        let mut target = Target::File {
            path: path.to_owned(),
            file: None,
            size: 0,
            max_bytes: max_bytes.max(1024),
            last_open_try: None,
        };
        reopen(&mut target);
        LogSink::new(target)
    }

    fn new(target: Target) -> LogSink {
        LogSink {
            inner: Arc::new(Mutex::new(Inner {
                target,
                sites: HashMap::new(),
                failed_writes: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lines that could not be written so far.
    #[cfg(test)]
    pub fn failed_writes(&self) -> u64 {
        self.lock().failed_writes
    }

    /// Decides whether a line of this call site is written now (rate limit), and writes the
    /// summaries of call sites whose window ended with lines suppressed.
    fn admit(&self, meta: &Metadata<'_>) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut summaries = Vec::new();
        for site in inner.sites.values_mut() {
            if site.suppressed > 0 && now.duration_since(site.window_start) >= WINDOW {
                summaries.push(format!(
                    "{} WARN scry::log: {} (x{} in the last {} s, not logged)\n",
                    timestamp(),
                    site.what,
                    site.suppressed,
                    now.duration_since(site.window_start).as_secs()
                ));
                site.suppressed = 0;
                site.written = 0;
                site.window_start = now;
            }
        }
        for line in summaries {
            inner.write_line(line.as_bytes());
        }
        let site = inner.sites.entry(meta.callsite()).or_insert_with(|| Site {
            window_start: now,
            written: 0,
            suppressed: 0,
            what: format!(
                "more lines like the last from {} ({}:{})",
                meta.target(),
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0)
            ),
        });
        if now.duration_since(site.window_start) >= WINDOW {
            site.window_start = now;
            site.written = 0;
        }
        if site.written < BURST {
            site.written += 1;
            true
        } else {
            site.suppressed += 1;
            false
        }
    }
}

impl Inner {
    /// Writes one whole line; a failure is counted, never raised.
    fn write_line(&mut self, buf: &[u8]) {
        let ok = match &mut self.target {
            Target::Stderr => io::stderr().write_all(buf).is_ok(),
            target @ Target::File { .. } => {
                rotate_if_needed(target, buf.len() as u64);
                match target {
                    Target::File {
                        file: Some(f),
                        size,
                        ..
                    } => match f.write_all(buf) {
                        Ok(()) => {
                            *size += buf.len() as u64;
                            true
                        }
                        Err(_) => false,
                    },
                    _ => false,
                }
            }
        };
        if !ok {
            self.failed_writes += 1;
        }
    }
}

/// Opens (or reopens) the log file; without success, tried again after [`REOPEN_EVERY`].
fn reopen(target: &mut Target) {
    if let Target::File {
        path,
        file,
        size,
        last_open_try,
        ..
    } = target
    {
        *last_open_try = Some(Instant::now());
        *file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&*path)
            .ok();
        *size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
    }
}

fn rotate_if_needed(target: &mut Target, incoming: u64) {
    let Target::File {
        path,
        file,
        size,
        max_bytes,
        last_open_try,
    } = target
    else {
        return;
    };
    if file.is_none() {
        if last_open_try.is_none_or(|t| t.elapsed() >= REOPEN_EVERY) {
            reopen(target);
        }
        return;
    }
    if *size + incoming <= *max_bytes {
        return;
    }
    // NAME.1 -> NAME.2, NAME -> NAME.1; renames need no free space.
    for n in (1..KEEP).rev() {
        let _ = std::fs::rename(numbered(path, n), numbered(path, n + 1));
    }
    if std::fs::rename(&*path, numbered(path, 1)).is_err() {
        // Cannot rotate (odd filesystem): start the file over rather than grow without end.
        if let Some(f) = file.as_ref() {
            let _ = f.set_len(0);
        }
        *size = 0;
        return;
    }
    reopen(target);
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn timestamp() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

/// One log line being formatted; written (or dropped) whole when it is done.
pub struct LineWriter {
    sink: Option<LogSink>,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.sink.is_some() {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            if !self.buf.is_empty() {
                sink.lock().write_line(&self.buf);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            sink: Some(self.clone()),
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        LineWriter {
            sink: self.admit(meta).then(|| self.clone()),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt;

    fn with_sink(sink: &LogSink, f: impl FnOnce()) {
        let subscriber = fmt()
            .with_writer(sink.clone())
            .with_ansi(false)
            .log_internal_errors(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
    }

    #[test]
    fn a_flood_from_one_call_site_writes_a_burst_and_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("daemon.log");
        let sink = LogSink::file(&path, MAX_LOG_BYTES);
        with_sink(&sink, || {
            for i in 0..100_000 {
                tracing::warn!(target: "agent_link", "bad line {i}");
            }
            tracing::info!(target: "daemon", "another cause is still logged");
        });
        let text = std::fs::read_to_string(&path).expect("log");
        assert_eq!(text.matches("bad line").count(), BURST as usize, "{text}");
        assert!(text.contains("another cause is still logged"));
        // The summary comes when the window is over; here the window is still open.
        let sites = sink.lock();
        let suppressed: u64 = sites.sites.values().map(|s| s.suppressed).sum();
        assert_eq!(suppressed, 100_000 - u64::from(BURST));
    }

    #[test]
    fn a_summary_line_says_how_many_were_not_logged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("daemon.log");
        let sink = LogSink::file(&path, MAX_LOG_BYTES);
        with_sink(&sink, || {
            for i in 0..(BURST + 1234) {
                tracing::warn!(target: "agent_link", "bad line {i}");
            }
        });
        // End the window as if 10 s had passed.
        for site in sink.lock().sites.values_mut() {
            site.window_start -= WINDOW;
        }
        with_sink(&sink, || tracing::info!(target: "daemon", "later"));
        let text = std::fs::read_to_string(&path).expect("log");
        assert!(
            text.contains("(x1234 in the last 10 s, not logged)"),
            "{text}"
        );
    }

    #[test]
    fn the_file_rotates_at_its_limit_and_keeps_two() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("daemon.log");
        let sink = LogSink::file(&path, 4096);
        for round in 0..50 {
            let line = format!("{round:04} {}\n", "x".repeat(500));
            sink.lock().write_line(line.as_bytes());
        }
        let len = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(len(path.clone()) <= 4096);
        assert!(len(numbered(&path, 1)) > 0 && len(numbered(&path, 1)) <= 4096);
        assert!(len(numbered(&path, 2)) > 0);
        assert!(!numbered(&path, 3).exists());
        let newest = std::fs::read_to_string(&path).expect("log");
        assert!(newest.contains("0049 "));
    }

    #[test]
    fn a_failing_destination_is_counted_not_fatal() {
        // /dev/full fails every write with ENOSPC, like a full disk.
        let sink = LogSink::file(Path::new("/dev/full"), MAX_LOG_BYTES);
        with_sink(&sink, || {
            tracing::error!(target: "store", "cannot write");
            tracing::error!(target: "store", "still cannot write");
        });
        assert_eq!(sink.failed_writes(), 2);
    }
}
