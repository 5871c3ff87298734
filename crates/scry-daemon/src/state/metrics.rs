//! Measurements the daemon keeps only for `GET /metrics` (the rest of what it exposes there is
//! read from the registry, the probe table and the store when scraped).

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the attach-duration buckets: PEP 768 attaches take tens of
/// milliseconds, gdb ones around a second, a blocked target up to its timeout.
pub const ATTACH_BUCKETS: [f64; 9] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A cumulative histogram of durations, lock-free.
#[derive(Default)]
pub struct Histogram {
    /// Observations at or under each bound of [`ATTACH_BUCKETS`] (not cumulative here).
    buckets: [AtomicU64; ATTACH_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A histogram's values as exposed: cumulative bucket counts, count and sum.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or under it)`, cumulative, in bound order.
    pub buckets: Vec<(f64, u64)>,
    /// Every observation.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = ATTACH_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = (seconds.max(0.0) * 1e6).round() as u64;
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The values now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let buckets = ATTACH_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (*bound, running)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Attach durations by outcome.
#[derive(Default)]
pub struct AttachTimes {
    /// Attaches whose agent connected.
    pub ok: Histogram,
    /// Attaches that failed.
    pub failed: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_sum_is_kept() {
        let h = Histogram::default();
        for s in [0.01, 0.3, 0.3, 4.0, 100.0] {
            h.observe(s);
        }
        let snap = h.snapshot();
        assert_eq!(snap.count, 5);
        assert!((snap.sum - 104.61).abs() < 1e-6);
        assert_eq!(snap.buckets[0], (0.05, 1));
        assert_eq!(snap.buckets[3], (0.5, 3));
        // 100 s is over every bound: only in +Inf (the count).
        assert_eq!(snap.buckets.last(), Some(&(30.0, 4)));
    }
}

/// The latest aggregate of each metric probe in each process (`metric` events are cumulative:
/// the last one says it all), for `GET /metrics`. Never stored: a metric probe ships no event a
/// hit, and the store keeps what its events were for.
#[derive(Default)]
pub struct MetricProbes {
    latest: std::sync::Mutex<std::collections::BTreeMap<(String, i64), ProcessAggregate>>,
}

/// One process's aggregate of one metric probe.
#[derive(Debug, Clone)]
pub struct ProcessAggregate {
    /// The process's pid.
    pub pid: u32,
    /// The `data` of its last `metric` event (docs/protocol.md "Metric probes").
    pub data: serde_json::Value,
}

impl MetricProbes {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<(String, i64), ProcessAggregate>>
    {
        self.latest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a process's latest aggregate of a probe.
    pub fn update(&self, probe: &str, process_id: i64, pid: u32, data: serde_json::Value) {
        self.lock().insert(
            (probe.to_owned(), process_id),
            ProcessAggregate { pid, data },
        );
    }

    /// Forgets a removed probe.
    pub fn forget(&self, probe: &str) {
        self.lock().retain(|(p, _), _| p != probe);
    }

    /// Every process's aggregate of `probe`, by process.
    pub fn of(&self, probe: &str) -> Vec<ProcessAggregate> {
        self.lock()
            .iter()
            .filter(|((p, _), _)| p == probe)
            .map(|(_, a)| a.clone())
            .collect()
    }
}
