//! The daemon's configuration: `$SCRY_HOME/config.toml` (written with commented defaults on the
//! first start), overridden by command-line flags.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::DaemonError;

/// Default HTTP address of the daemon.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:7390";

/// What is written to a new `config.toml`: every setting, commented, at its default.
pub const DEFAULT_CONFIG_TOML: &str = r#"# scry daemon configuration. Every setting is shown at its default; uncomment to change.
# Flags given to `scry serve` override this file.

[http]
# Address of the HTTP API, the web UI and MCP. Non-loopback callers need the token.
# addr = "127.0.0.1:7390"

[agents]
# Agents connect through the unix socket $SCRY_HOME/run/agent.sock. To also accept agents over
# TCP (e.g. from other hosts or containers without the socket), give an address; such agents
# must present the token (SCRY_TOKEN or $SCRY_HOME/token).
# tcp = "0.0.0.0:7391"
# How often agents flush their event buffers, in milliseconds.
# flush_interval_ms = 50
# Most events in one report.
# max_batch = 4096
# An agent silent this long sends a heartbeat, in milliseconds.
# heartbeat_ms = 5000

[retention]
# Events older than this are deleted ("7d", "12h", "30m", "0" = keep forever).
# max_age = "7d"
# At most this many events are kept per probe (the oldest go first); 0 = no limit.
# max_events_per_probe = 100000
# The database's pages in use are kept under this many MiB by deleting the oldest events,
# whatever their probes; 0 = no limit.
# max_db_mb = 512
"#;

/// The daemon's settings after the file and the flags were applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// HTTP API address.
    pub http_addr: String,
    /// Optional TCP address for agents.
    pub agent_tcp: Option<String>,
    /// Agent flush interval.
    pub flush_interval_ms: u64,
    /// Agent batch size.
    pub max_batch: u64,
    /// Agent heartbeat interval.
    pub heartbeat_ms: u64,
    /// Maximum age of events (`None`: forever).
    pub max_age: Option<Duration>,
    /// Maximum events per probe (`None`: no limit).
    pub max_events_per_probe: Option<u64>,
    /// Maximum size of the database's pages in use, in MiB (`None`: no limit).
    pub max_db_mb: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: DEFAULT_HTTP_ADDR.into(),
            agent_tcp: None,
            flush_interval_ms: 50,
            max_batch: 4096,
            heartbeat_ms: 5000,
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_events_per_probe: Some(100_000),
            max_db_mb: Some(512),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    agents: AgentsSection,
    #[serde(default)]
    retention: RetentionSection,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    addr: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AgentsSection {
    tcp: Option<String>,
    flush_interval_ms: Option<u64>,
    max_batch: Option<u64>,
    heartbeat_ms: Option<u64>,
}
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetentionSection {
    max_age: Option<String>,
    max_events_per_probe: Option<u64>,
    max_db_mb: Option<u64>,
}

/// The longest duration accepted anywhere (TTLs, retention ages, waits): 10 years. Beyond it a
/// value is a typo or an attack (`1e308`, 2^64 s), and `Duration` arithmetic would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86400);

/// The largest `retention.max_db_mb` accepted (16 TiB).
pub const MAX_DB_MB: u64 = 16 * 1024 * 1024;

/// Parses a time: a duration ago (`30s`, `5m`, `2h`: a unit is required), an RFC 3339 time
/// (`2026-11-21T12:00:00Z`), or epoch seconds (a bare number).
pub fn parse_time(text: &str) -> Result<f64, String> {
    let t = text.trim();
    // A bare number is epoch seconds; a duration always has a unit.
    if let Ok(secs) = t.parse::<f64>() {
        return if secs.is_finite() {
            Ok(secs)
        } else {
            Err(format!("`{text}` is not a time"))
        };
    }
    if let Ok(d) = parse_duration(t) {
        return Ok(crate::now() - d.as_secs_f64());
    }
    humantime::parse_rfc3339_weak(t)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .ok_or_else(|| {
            format!("`{text}` is neither a duration ago (30s, 5m, 2h), a time (2026-11-21T12:00:00Z) nor epoch seconds")
        })
}

/// Parses a duration such as `7d`, `12h`, `30m`, `45s`, `250ms` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 30s, 5m, 12h, 7d)"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        "w" => n * 7.0 * 86400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m, h, d or w)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    check_seconds(secs).map_err(|e| format!("`{text}`: {e}"))
}

/// Checks a number of seconds against [`MAX_DURATION`] and makes it a `Duration`.
pub fn check_seconds(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{secs} is not a valid number of seconds"));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "{secs} s is more than the maximum of {} s (10 years)",
            MAX_DURATION.as_secs()
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{secs} s: {e}"))
}

impl Config {
    /// Parses a config file's text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, DaemonError> {
        let bad = |message: String| DaemonError::Config {
            path: path.to_owned(),
            message,
        };
        let file: FileConfig = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut c = Config::default();
        if let Some(a) = file.http.addr {
            c.http_addr = a;
        }
        c.agent_tcp = file.agents.tcp;
        if let Some(v) = file.agents.flush_interval_ms {
            c.flush_interval_ms = v.max(1);
        }
        if let Some(v) = file.agents.max_batch {
            c.max_batch = v.max(1);
        }
        if let Some(v) = file.agents.heartbeat_ms {
            c.heartbeat_ms = v.max(100);
        }
        if let Some(a) = file.retention.max_age {
            let d = parse_duration(&a).map_err(|e| bad(format!("retention.max_age: {e}")))?;
            c.max_age = (!d.is_zero()).then_some(d);
        }
        if let Some(n) = file.retention.max_events_per_probe {
            c.max_events_per_probe = (n > 0).then_some(n);
        }
        if let Some(n) = file.retention.max_db_mb {
            // 16 TiB: beyond any disk scry will see, and bytes still fit a u64.
            if n > MAX_DB_MB {
                return Err(bad(format!(
                    "retention.max_db_mb: {n} is more than the maximum of {MAX_DB_MB}"
                )));
            }
            c.max_db_mb = (n > 0).then_some(n);
        }
        Ok(c)
    }

    /// Loads `path`, writing the commented defaults there first when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Config, DaemonError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Private whatever the umask, like everything in $SCRY_HOME.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .and_then(|mut f| f.write_all(DEFAULT_CONFIG_TOML.as_bytes()))
                    .map_err(|source| DaemonError::Io {
                        path: path.to_owned(),
                        source,
                    })?;
                Ok(Config::default())
            }
            Err(source) => Err(DaemonError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let now = crate::now();
        let five_min = parse_time("5m").expect("5m");
        assert!((now - 300.0 - five_min).abs() < 5.0);
        assert_eq!(parse_time("2026-11-21T12:00:00Z"), Ok(1_795_262_400.0));
        assert_eq!(parse_time("1795262400.5"), Ok(1_795_262_400.5));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn default_file_parses_to_defaults() {
        let c = Config::from_toml(DEFAULT_CONFIG_TOML, Path::new("config.toml")).expect("parse");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn values_override_defaults() {
        let text = "[http]\naddr = \"127.0.0.1:9999\"\n[agents]\ntcp = \"0.0.0.0:7391\"\n[retention]\nmax_age = \"12h\"\nmax_events_per_probe = 0\nmax_db_mb = 64\n";
        let c = Config::from_toml(text, Path::new("c.toml")).expect("parse");
        assert_eq!(c.http_addr, "127.0.0.1:9999");
        assert_eq!(c.agent_tcp.as_deref(), Some("0.0.0.0:7391"));
        assert_eq!(c.max_age, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(c.max_events_per_probe, None);
        assert_eq!(c.max_db_mb, Some(64));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_file() {
        for text in [
            "[http]\nadress = \"x\"\n",
            "[retention]\nmax_age = \"soon\"\n",
            "[retention]\nmax_age = \"4000d\"\n",
            "[retention]\nmax_db_mb = 99999999999\n",
            "not toml [",
        ] {
            let err = Config::from_toml(text, Path::new("/h/config.toml")).expect_err(text);
            assert!(err.to_string().contains("/h/config.toml"), "{err}");
            assert!(err.hint().is_some());
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        // Bounded: huge values are refused with the maximum, never a panic or an overflow.
        for huge in [
            "1e308",
            "18446744073709551616",
            "99999999999999999999999d",
            "11000d",
        ] {
            let err = parse_duration(huge).expect_err(huge);
            assert!(
                err.contains("maximum") || err.contains("unknown unit"),
                "{huge}: {err}"
            );
        }
        assert_eq!(
            parse_duration("3650d"),
            Ok(Duration::from_secs(3650 * 86400))
        );
    }

    #[test]
    fn missing_file_is_created_with_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let c = Config::load_or_create(&path).expect("load");
        assert_eq!(c, Config::default());
        let written = std::fs::read_to_string(&path).expect("written");
        assert!(written.contains("# addr = \"127.0.0.1:7390\""));
    }
}
