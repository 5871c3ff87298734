//! `GET /metrics`: the daemon's state in the Prometheus text exposition format (version 0.0.4),
//! for the monitoring people already run: agents and processes, events stored and lost (by
//! reason), the store's size and health, ingest (a counter: `rate()` gives events a second),
//! attach durations, and each probe's counters.
//!
//! Everything is read when scraped (nothing is kept for it but the attach durations); counters
//! count since the daemon started, as Prometheus expects of a `_total`.
//!
//! Not for: per-hit data (the events API) or the HTTP side (`api/metrics.rs`).

use std::fmt::Write as _;

use super::{blocking, Result};
use crate::state::metrics::HistogramSnapshot;
use crate::Shared;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value escaped as the format wants (`\\`, `\"`, `\n`).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes families: each with its HELP and TYPE once, then its samples.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", parts.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        for (bound, n) in &h.buckets {
            let le = bound.to_string();
            let mut with = labels.to_vec();
            with.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with, *n as f64);
        }
        let mut with = labels.to_vec();
        with.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &with, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }
}

/// Reads one counter of a probe's totals.
type TotalOf = fn(&scry_api::ProbeTotals) -> u64;

/// The exposition now.
pub async fn exposition(shared: &Shared) -> Result<String> {
    let store = shared.store.clone();
    let counts = blocking(move || store.counts()).await?;
    let health = shared.store.health();
    let written = shared.store.writer_stats();
    let (awake, sleeping, gone) = shared.registry().counts();
    let db = shared.store.path().to_path_buf();
    let size: u64 = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|ext| {
            let mut p = db.clone().into_os_string();
            p.push(ext);
            std::fs::metadata(p).ok().map(|m| m.len())
        })
        .sum();
    let mut out = Exposition(String::new());

    out.family("scry_build_info", "gauge", "scry's version (always 1).");
    out.sample(
        "scry_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    out.one(
        "scry_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        shared.uptime().as_secs_f64(),
    );
    out.family(
        "scry_processes",
        "gauge",
        "Processes the daemon knows, by state (awake: an agent is connected).",
    );
    for (state, n) in [("awake", awake), ("sleeping", sleeping), ("gone", gone)] {
        out.sample("scry_processes", &[("state", state)], n as f64);
    }
    out.one(
        "scry_agents_connected",
        "gauge",
        "Agents connected now.",
        awake as f64,
    );
    out.one(
        "scry_agent_links_total",
        "counter",
        "Agent links accepted since the daemon started (reconnects included).",
        shared
            .links_accepted
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    out.one(
        "scry_probes",
        "gauge",
        "Probes defined.",
        counts.probes as f64,
    );
    out.one(
        "scry_events_stored",
        "gauge",
        "Events in the store now (retention deletes the oldest).",
        counts.events as f64,
    );
    out.one(
        "scry_events_ingested_total",
        "counter",
        "Events committed to the store since the daemon started: rate() is the ingest rate.",
        written.events as f64,
    );
    out.family(
        "scry_events_lost_total",
        "counter",
        "Events lost before the store, by reason: dropped by agents (their buffer full, a rate limit), dropped by the daemon (its queue full, a failed commit), not stored (the disk full).",
    );
    let lost = [
        ("dropped_by_agents", counts.dropped),
        ("dropped_by_daemon", crate::dropped(shared)),
        ("not_stored", health.not_stored),
    ];
    for (reason, n) in lost {
        out.sample("scry_events_lost_total", &[("reason", reason)], n as f64);
    }
    out.one(
        "scry_events_retention_deleted_total",
        "counter",
        "Events deleted by retention since the daemon started.",
        health.retention_deleted.values().sum::<u64>() as f64,
    );
    out.one(
        "scry_store_bytes",
        "gauge",
        "Size of the store's files (database, write-ahead log, shared memory).",
        size as f64,
    );
    out.family(
        "scry_store_state",
        "gauge",
        "1 for the store's state now: ok, full (the disk is full) or failing.",
    );
    let now = match health.state {
        scry_store::StoreState::Ok => "ok",
        scry_store::StoreState::Full => "full",
        scry_store::StoreState::Failing => "failing",
    };
    for state in ["ok", "full", "failing"] {
        out.sample(
            "scry_store_state",
            &[("state", state)],
            f64::from(u8::from(state == now)),
        );
    }
    out.family(
        "scry_attach_duration_seconds",
        "histogram",
        "How long attaching to a process took (injection until the agent's hello), by outcome.",
    );
    let ok = shared.attach_times.ok.snapshot();
    let failed = shared.attach_times.failed.snapshot();
    out.histogram("scry_attach_duration_seconds", &[("outcome", "ok")], &ok);
    out.histogram(
        "scry_attach_duration_seconds",
        &[("outcome", "failed")],
        &failed,
    );

    let probes = super::probes::list(shared).probes;
    let per_probe: [(&str, &str, TotalOf); 4] = [
        (
            "scry_probe_hits_total",
            "Times a probe's line ran in its processes (gone ones included).",
            |t| t.hits,
        ),
        (
            "scry_probe_recorded_total",
            "Hits a probe recorded (its condition held, its rate mode let them through).",
            |t| t.recorded,
        ),
        (
            "scry_probe_dropped_total",
            "Hits a probe's agents dropped (rate mode, full buffer).",
            |t| t.dropped,
        ),
        (
            "scry_probe_errors_total",
            "Hits whose condition or expressions raised.",
            |t| t.errors,
        ),
    ];
    for (name, help, value) in per_probe {
        out.family(name, "counter", help);
        for p in &probes {
            let spec = &p.def.spec;
            let name_label = spec.name.as_deref().unwrap_or("");
            out.sample(
                name,
                &[("probe", &spec.id), ("name", name_label)],
                value(&p.totals) as f64,
            );
        }
    }
    for p in &probes {
        if let Some(metric) = &p.def.spec.metric {
            let aggregates = shared.metric_probes.of(&p.def.spec.id);
            metric_probe(&mut out, &p.def.spec, metric, &aggregates);
        }
    }
    Ok(out.0)
}

/// A metric name part from a probe's name (or id): letters, digits and `_`.
fn metric_name(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// One metric probe's family: each process's series, labelled with the probe's labels, the
/// probe's id and the pid (Prometheus sums over pids: `sum by (le) (...)`).
fn metric_probe(
    out: &mut Exposition,
    spec: &scry_api::ProbeSpec,
    metric: &scry_api::MetricSpec,
    aggregates: &[crate::state::metrics::ProcessAggregate],
) {
    use scry_api::MetricKind;
    let base = format!(
        "scry_metric_{}",
        metric_name(spec.name.as_deref().unwrap_or(&spec.id))
    );
    let help = format!("Metric probe {} at {}.", spec.id, spec.location);
    let (name, kind) = match metric.kind {
        MetricKind::Count => (format!("{base}_total"), "counter"),
        MetricKind::Gauge => (base.clone(), "gauge"),
        MetricKind::Histogram => (base.clone(), "histogram"),
    };
    out.family(&name, kind, &help);
    for a in aggregates {
        let pid = a.pid.to_string();
        for series in a.data["series"].as_array().into_iter().flatten() {
            let values: Vec<&str> = series["labels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap_or(""))
                .collect();
            let mut labels: Vec<(&str, &str)> = metric
                .labels
                .iter()
                .map(String::as_str)
                .zip(values.iter().copied())
                .collect();
            labels.push(("probe", &spec.id));
            labels.push(("pid", &pid));
            match metric.kind {
                MetricKind::Count => {
                    out.sample(&name, &labels, series["count"].as_f64().unwrap_or(0.0))
                }
                MetricKind::Gauge => {
                    if let Some(v) = series["value"].as_f64() {
                        out.sample(&name, &labels, v);
                    }
                }
                MetricKind::Histogram => {
                    let bounds = a.data["buckets"].as_array().cloned().unwrap_or_default();
                    let counts = series["buckets"].as_array().cloned().unwrap_or_default();
                    let snap = HistogramSnapshot {
                        buckets: bounds
                            .iter()
                            .zip(&counts)
                            .filter_map(|(b, n)| Some((b.as_f64()?, n.as_u64()?)))
                            .collect(),
                        count: series["count"].as_u64().unwrap_or(0),
                        sum: series["sum"].as_f64().unwrap_or(0.0),
                    };
                    out.histogram(&name, &labels, &snap);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_inf_sum_and_count() {
        let h = crate::state::metrics::Histogram::default();
        h.observe(0.2);
        h.observe(3.0);
        let mut out = Exposition(String::new());
        out.histogram("x_seconds", &[("outcome", "ok")], &h.snapshot());
        assert!(
            out.0
                .contains("x_seconds_bucket{outcome=\"ok\",le=\"0.25\"} 1\n"),
            "{}",
            out.0
        );
        assert!(
            out.0
                .contains("x_seconds_bucket{outcome=\"ok\",le=\"5\"} 2\n"),
            "{}",
            out.0
        );
        assert!(
            out.0
                .contains("x_seconds_bucket{outcome=\"ok\",le=\"+Inf\"} 2\n"),
            "{}",
            out.0
        );
        assert!(
            out.0.contains("x_seconds_sum{outcome=\"ok\"} 3.2\n"),
            "{}",
            out.0
        );
        assert!(
            out.0.contains("x_seconds_count{outcome=\"ok\"} 2\n"),
            "{}",
            out.0
        );
    }
}
