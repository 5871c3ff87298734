//! Probes: `POST /api/v1/probes` takes a [`NewProbe`]; every probe endpoint answers with
//! [`ProbeView`]s (`GET /api/v1/probes` as `{"probes": [ProbeView]}`).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use scry_proto::{CaptureLimits, MetricKind, ProbeSpec, ProbeStatus, RateMode};

/// A request to add a probe (`POST /api/v1/probes`, the MCP tool `add_probe`, `scry probe add`).
///
/// Unknown fields are refused. Only `location` and `expressions` are required; which processes
/// it applies to is `pid`, or `process` (every process registered under the name), or both (the
/// one process of the name with that pid), or `all` (the default when neither is given).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProbe {
    /// Where: `path.py:LINE`, `@path.py#LINE`, `module.sub:function` or `path.py:function`.
    pub location: String,
    /// Python expressions evaluated at each hit (at least one).
    pub expressions: Vec<String>,
    /// A unique name, usable wherever the probe's id is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Record a hit only when this expression is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Only the process with this pid (with `process`: it must be registered under that name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Only the processes registered under this name, every one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// Every process (the default when neither `pid` nor `process` is given).
    #[serde(default, skip_serializing_if = "is_false")]
    pub all: bool,
    /// Which hits are recorded: every one (the default), one in N, at most R a second, the first N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateMode>,
    /// How long it lives: seconds, or a duration such as `5m` (at most 10 years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Ttl>,
    /// Capture the stack at each hit.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stack: bool,
    /// Capture the locals (redacted) at each hit.
    #[serde(default, skip_serializing_if = "is_false")]
    pub locals: bool,
    /// Call user `__repr__` for values that are not plain data.
    #[serde(default, skip_serializing_if = "is_false")]
    pub repr: bool,
    /// Allow its expressions to call any function (the owner's explicit choice).
    #[serde(default, rename = "unsafe", skip_serializing_if = "is_false")]
    pub unsafe_calls: bool,
    /// A group, to enable, disable or remove several probes at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A metric probe instead of events: `count` (hits), `gauge` (the last value of its one
    /// expression) or `histogram` (its values in buckets). Aggregated in the agent, exposed on
    /// `GET /metrics` as `scry_metric_NAME` (the probe's name, else its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricKind>,
    /// A metric probe's labels, `name=expression` (e.g. `region=order.region`): a label value
    /// is the expression's value when it is a string, number, bool or None, else its type; at
    /// most 100 label sets per process, more are counted under `__overflow__`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// A histogram's upper bounds, increasing (default 0.005 to 10, as Prometheus's clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<f64>>,
    /// How much of each value is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CaptureLimits>,
    /// Created disabled.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A probe's time to live, as the API takes it: a number of seconds, or a duration text such as
/// `90s`, `5m`, `2h` (the daemon checks the range and parses the text).
#[derive(Debug, Clone, PartialEq)]
pub enum Ttl {
    /// Seconds (JSON number).
    Seconds(f64),
    /// A duration text (JSON string).
    Duration(String),
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ttl::Seconds(v) => s.serialize_f64(*v),
            Ttl::Duration(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ttl, D::Error> {
        struct TtlVisitor;
        impl Visitor<'_> for TtlVisitor {
            type Value = Ttl;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("seconds or a duration like `5m`")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ttl, E> {
                Ok(Ttl::Seconds(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ttl, E> {
                Ok(Ttl::Seconds(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ttl, E> {
                Ok(Ttl::Seconds(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ttl, E> {
                Ok(Ttl::Duration(v.to_owned()))
            }
        }
        d.deserialize_any(TtlVisitor)
    }
}

/// Which processes a probe applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// One process.
    Pid {
        /// Its pid (as the daemon sees it).
        pid: u32,
    },
    /// Every process registered under this name.
    Name {
        /// The name.
        name: String,
    },
    /// Every process.
    All,
}

/// A probe as the daemon keeps it (and stores it): what agents apply, where, and whether.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeDef {
    /// What agents apply (its fields appear at the top level of the JSON).
    #[serde(flatten)]
    pub spec: ProbeSpec,
    /// Where it applies.
    pub target: Target,
    /// A group, to enable, disable or remove several at once.
    #[serde(default)]
    pub group: Option<String>,
    /// Whether agents should have it.
    pub enabled: bool,
    /// The TTL it was created with, in seconds.
    #[serde(default)]
    pub ttl_s: Option<f64>,
    /// Creation time (epoch seconds).
    pub created_at: f64,
}

impl ProbeDef {
    /// Whether it should be armed at `at` (epoch seconds): enabled and not expired.
    pub fn active(&self, at: f64) -> bool {
        self.enabled && self.spec.expires_at.is_none_or(|t| t > at)
    }
}

/// A probe's status in one process, with the process it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeInProcess {
    /// Store row id of the process.
    pub process_id: i64,
    /// Its pid.
    pub pid: u32,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// The status the agent reported (its fields appear at the top level of the JSON). A probe
    /// that is off in the daemon shows `disabled` or `expired` rather than the agent's last
    /// `armed` or `pending`.
    #[serde(flatten)]
    pub status: ProbeStatus,
    /// When the agent reported it (epoch seconds).
    pub updated_at: f64,
}

/// A probe's counters over every process, with what became of the recorded hits:
/// `recorded = stored + removed_by_retention + not_stored_disk_full + dropped_by_daemon + in flight`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeTotals {
    /// Times its line ran in a process where it was armed.
    pub hits: u64,
    /// Hits that passed the condition and the rate and were captured.
    pub recorded: u64,
    /// Captured hits the agents dropped (their buffer was full).
    pub dropped: u64,
    /// Hits whose capture failed.
    pub errors: u64,
    /// Hits that reached the daemon and could not be stored (counted in memory).
    #[serde(default)]
    pub dropped_by_daemon: u64,
    /// Events of the probe in the store now (`null` when the store could not say).
    #[serde(default)]
    pub stored: Option<u64>,
    /// Events retention removed.
    #[serde(default)]
    pub removed_by_retention: Option<u64>,
    /// Events a full disk kept out.
    #[serde(default)]
    pub not_stored_disk_full: Option<u64>,
}

/// A probe as every probe endpoint shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeView {
    /// The definition (its fields appear at the top level of the JSON).
    #[serde(flatten)]
    pub def: ProbeDef,
    /// Its TTL passed.
    pub expired: bool,
    /// Counters over every process that had it, gone ones included.
    pub totals: ProbeTotals,
    /// Its status in each live process (awake or sleeping) that had it.
    pub processes: Vec<ProbeInProcess>,
    /// How many processes that had it have exited since: they are not in `processes`, but
    /// their counters are still in `totals`.
    #[serde(default)]
    pub gone: u64,
    /// Adding it: what the daemon noticed about the location (e.g. no process has that file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Adding it: what to do about the notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// `GET /api/v1/probes`, and enabling or disabling probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeList {
    /// The probes.
    pub probes: Vec<ProbeView>,
}

/// Removing probes: the ids removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    /// Their ids.
    pub removed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_leaves_out_what_is_not_set() {
        let req = NewProbe {
            location: "app.py:12".into(),
            expressions: vec!["order.total".into()],
            pid: Some(42),
            rate: Some(RateMode::First { n: 3 }),
            ttl: Some(Ttl::Duration("5m".into())),
            unsafe_calls: true,
            ..NewProbe::default()
        };
        let text = serde_json::to_string(&req).expect("json");
        assert_eq!(
            text,
            r#"{"location":"app.py:12","expressions":["order.total"],"pid":42,"rate":{"mode":"first","n":3},"ttl":"5m","unsafe":true}"#
        );
        let back: NewProbe = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, req);
    }

    #[test]
    fn ttl_is_seconds_or_text_and_nothing_else() {
        let parse = |t: &str| {
            serde_json::from_str::<NewProbe>(&format!(
                r#"{{"location":"a.py:1","expressions":["x"],"ttl":{t}}}"#
            ))
        };
        assert_eq!(parse("90").expect("int").ttl, Some(Ttl::Seconds(90.0)));
        assert_eq!(
            parse("-1").expect("negative (refused later)").ttl,
            Some(Ttl::Seconds(-1.0))
        );
        assert_eq!(
            parse("1e308").expect("huge (refused later)").ttl,
            Some(Ttl::Seconds(1e308))
        );
        assert_eq!(
            parse("18446744073709551616").expect("2^64").ttl,
            Some(Ttl::Seconds(18446744073709551616.0))
        );
        assert_eq!(
            parse(r#""5m""#).expect("text").ttl,
            Some(Ttl::Duration("5m".into()))
        );
        assert_eq!(parse("null").expect("null").ttl, None);
        let err = parse("true").expect_err("a bool").to_string();
        assert!(err.contains("seconds or a duration like `5m`"), "{err}");
        let err = serde_json::from_str::<NewProbe>(
            r#"{"location":"a.py:1","expressions":["x"],"colour":"red"}"#,
        )
        .expect_err("unknown field")
        .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }
}
