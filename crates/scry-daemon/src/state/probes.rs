//! The probe registry: definitions (stored, the daemon is their source of truth), which
//! processes each applies to, and each probe's status and counters per process.
//!
//! Agents receive the complete set of probes meant for them (`probes_sync`) whenever that set
//! changes and every time they connect, so a restarted worker gets its probes back without
//! anyone asking. Everything that costs time in the target (rates, conditions, TTL) is decided
//! in the agent; the daemon only says what should exist.

use std::collections::{BTreeMap, HashMap};

use scry_proto::{CaptureOptions, MetricKind, MetricSpec, ProbeSpec, ProbeStatus, RateMode};

use super::registry::ProcessView;
use crate::now;

pub use scry_api::{ProbeDef, ProbeInProcess, Target};

/// Whether `target` names the process.
pub fn targets(target: &Target, p: &ProcessView) -> bool {
    match target {
        Target::Pid { pid } => p.pid == *pid || p.ns_pid == Some(*pid),
        Target::Name { name } => p.name.as_deref() == Some(name.as_str()),
        Target::All => true,
    }
}

/// All probes and their statuses.
#[derive(Debug, Default)]
pub struct ProbeTable {
    defs: BTreeMap<String, ProbeDef>,
    statuses: HashMap<(String, i64), ProbeInProcess>,
}

impl ProbeTable {
    /// Loads definitions from the store.
    pub fn load(records: Vec<scry_store::ProbeRecord>) -> ProbeTable {
        let mut t = ProbeTable::default();
        for r in records {
            match serde_json::from_value::<ProbeDef>(r.spec) {
                // Stored by a version that checked less: never sent to an agent again.
                Ok(def)
                    if crate::expr::check_probe(
                        &def.spec.expressions,
                        def.spec.condition.as_deref(),
                        def.spec.unsafe_calls,
                    )
                    .is_err() =>
                {
                    tracing::warn!(target: "daemon", probe = %r.id, "ignoring a stored probe whose expressions the checker refuses; add it again");
                }
                Ok(mut def) => {
                    def.enabled = r.enabled;
                    t.defs.insert(def.spec.id.clone(), def);
                }
                Err(e) => {
                    tracing::warn!(target: "daemon", probe = %r.id, "ignoring a stored probe that no longer parses: {e}")
                }
            }
        }
        t
    }

    /// Every definition, oldest first.
    pub fn defs(&self) -> Vec<ProbeDef> {
        let mut v: Vec<ProbeDef> = self.defs.values().cloned().collect();
        v.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        v
    }

    /// Finds probes by id or name.
    pub fn resolve(&self, key: &str) -> Option<&ProbeDef> {
        self.defs.get(key).or_else(|| {
            self.defs
                .values()
                .find(|d| d.spec.name.as_deref() == Some(key))
        })
    }

    /// Probes of a group.
    pub fn group(&self, group: &str) -> Vec<ProbeDef> {
        self.defs
            .values()
            .filter(|d| d.group.as_deref() == Some(group))
            .cloned()
            .collect()
    }

    /// Inserts or replaces a definition.
    pub fn put(&mut self, def: ProbeDef) {
        self.defs.insert(def.spec.id.clone(), def);
    }

    /// Removes a definition and its statuses.
    pub fn remove(&mut self, id: &str) -> Option<ProbeDef> {
        self.statuses.retain(|(p, _), _| p != id);
        self.defs.remove(id)
    }

    /// The specs a process must have now.
    pub fn specs_for(&self, p: &ProcessView, at: f64) -> Vec<ProbeSpec> {
        self.defs
            .values()
            .filter(|d| d.active(at) && targets(&d.target, p))
            .map(|d| d.spec.clone())
            .collect()
    }

    /// Records statuses reported by a process.
    pub fn update(&mut self, p: &ProcessView, statuses: Vec<ProbeStatus>) {
        self.update_if_older(p, statuses, None);
    }

    /// Records statuses, except over one recorded after `unless_after` (daemon time).
    pub fn update_if_older(
        &mut self,
        p: &ProcessView,
        statuses: Vec<ProbeStatus>,
        unless_after: Option<f64>,
    ) {
        let t = now();
        for s in statuses {
            if !self.defs.contains_key(&s.probe) {
                continue;
            }
            if let Some(after) = unless_after {
                let newer = self
                    .statuses
                    .get(&(s.probe.clone(), p.id))
                    .is_some_and(|old| old.updated_at > after);
                if newer {
                    continue;
                }
            }
            self.statuses.insert(
                (s.probe.clone(), p.id),
                ProbeInProcess {
                    process_id: p.id,
                    pid: p.pid,
                    name: p.name.clone(),
                    status: s,
                    updated_at: t,
                },
            );
        }
    }

    /// Statuses of one probe, by process.
    pub fn statuses_of(&self, id: &str) -> Vec<ProbeInProcess> {
        let mut v: Vec<ProbeInProcess> = self
            .statuses
            .iter()
            .filter(|((p, _), _)| p == id)
            .map(|(_, s)| s.clone())
            .collect();
        v.sort_by_key(|s| s.pid);
        v
    }

    /// Probes whose TTL has passed but that are still enabled.
    pub fn newly_expired(&self, at: f64) -> Vec<String> {
        self.defs
            .values()
            .filter(|d| d.enabled && d.spec.expires_at.is_some_and(|t| t <= at))
            .map(|d| d.spec.id.clone())
            .collect()
    }

    /// Number of definitions.
    pub fn len(&self) -> usize {
        self.defs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }
}

/// A request to add a probe, as the API takes it (the contract lives in `scry-api`).
pub use scry_api::{NewProbe, Ttl};

/// Why a probe cannot be added.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A field is malformed (location, name, target, rate, ttl, limits).
    #[error("{0}")]
    Invalid(String),
    /// An expression or the condition does not pass the checker ([`crate::expr`]).
    #[error(transparent)]
    Expression(#[from] crate::expr::ExprError),
}

impl From<String> for BuildError {
    fn from(s: String) -> BuildError {
        BuildError::Invalid(s)
    }
}

impl From<&str> for BuildError {
    fn from(s: &str) -> BuildError {
        BuildError::Invalid(s.to_owned())
    }
}

/// Checks what can be checked without Python (the expressions too: [`crate::expr`], whether or
/// not an agent is connected) and builds the definition.
pub fn build(req: NewProbe, table: &ProbeTable) -> Result<ProbeDef, BuildError> {
    let location = req.location.trim().to_owned();
    validate_location(&location)?;
    let mut expressions: Vec<String> = req
        .expressions
        .iter()
        .map(|e| e.trim().to_owned())
        .collect();
    if expressions.iter().any(String::is_empty) {
        return Err("an expression is empty".into());
    }
    let metric = metric_of(&req, &mut expressions)?;
    if expressions.is_empty() && metric.is_none() {
        return Err("give at least one expression, e.g. `order.total`".into());
    }
    let condition = req
        .condition
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    crate::expr::check_probe(&expressions, condition.as_deref(), req.unsafe_calls)?;
    if let Some(name) = &req.name {
        if name.trim().is_empty() || name.contains(char::is_whitespace) {
            return Err(format!("probe name `{name}` must be a non-empty word").into());
        }
        if table.resolve(name).is_some() {
            return Err(format!(
                "a probe named `{name}` already exists; remove it first or choose another name"
            )
            .into());
        }
    }
    if req.all && (req.pid.is_some() || req.process.is_some()) {
        return Err("give `all`, or `pid` and/or `process`, not both".into());
    }
    // A name with a pid narrows the name to that one process (the caller checks that the pid
    // is one of them): the probe then belongs to the pid.
    let target = match (req.pid, req.process) {
        (Some(pid), _) => Target::Pid { pid },
        (None, Some(name)) => Target::Name { name },
        (None, None) => Target::All,
    };
    let rate = req.rate.unwrap_or_default();
    match &rate {
        RateMode::Sample { n: 0 } | RateMode::First { n: 0 } => {
            return Err("the rate count must be at least 1".into())
        }
        RateMode::Rate { per_second } if !(per_second.is_finite() && *per_second > 0.0) => {
            return Err("the rate must be a positive number of hits per second".into())
        }
        _ => {}
    }
    let ttl_s = match &req.ttl {
        None => None,
        Some(Ttl::Seconds(secs)) => {
            if *secs <= 0.0 {
                return Err("ttl must be positive".into());
            }
            Some(
                crate::config::check_seconds(*secs)
                    .map_err(|e| format!("ttl: {e}"))?
                    .as_secs_f64(),
            )
        }
        Some(Ttl::Duration(s)) => Some(
            crate::config::parse_duration(s)
                .map_err(|e| format!("ttl: {e}"))?
                .as_secs_f64(),
        ),
    };
    if ttl_s.is_some_and(|t| t <= 0.0) {
        return Err("ttl must be positive".into());
    }
    let limits = req.limits.unwrap_or_default();
    if limits.items == 0 || limits.string == 0 {
        return Err("capture limits must be at least 1".into());
    }
    let created_at = now();
    Ok(ProbeDef {
        spec: ProbeSpec {
            id: crate::new_id("p"),
            name: req.name,
            location,
            expressions,
            condition,
            capture: CaptureOptions {
                stack: req.stack,
                locals: req.locals,
                repr: req.repr,
            },
            rate,
            expires_at: ttl_s.map(|t| created_at + t),
            unsafe_calls: req.unsafe_calls,
            limits,
            metric,
        },
        target,
        group: req.group,
        enabled: !req.disabled,
        ttl_s,
        created_at,
    })
}

/// A metric probe's shape (`None` for an event probe): checks its kind against the number of
/// value expressions, its labels' names, and its buckets, and appends the labels' expressions to
/// `expressions` (the agent reads them as the trailing ones).
fn metric_of(req: &NewProbe, expressions: &mut Vec<String>) -> Result<Option<MetricSpec>, String> {
    let Some(kind) = req.metric else {
        if !req.labels.is_empty() || req.buckets.is_some() {
            return Err("labels and buckets are for metric probes: add `metric`".into());
        }
        return Ok(None);
    };
    match (kind, expressions.len()) {
        (MetricKind::Count, 0) | (MetricKind::Gauge | MetricKind::Histogram, 1) => {}
        (MetricKind::Count, _) => {
            return Err(
                "a `count` metric counts hits: give no expression (labels with `labels`)".into(),
            )
        }
        (_, _) => {
            return Err(format!(
                "a `{}` metric takes exactly one expression, its value (labels with `labels`)",
                if kind == MetricKind::Gauge {
                    "gauge"
                } else {
                    "histogram"
                }
            ))
        }
    }
    if req.stack || req.locals {
        return Err("a metric probe captures no stack or locals".into());
    }
    let mut names = Vec::new();
    for label in &req.labels {
        let (name, expr) = label
            .split_once('=')
            .map(|(n, e)| (n.trim(), e.trim()))
            .filter(|(n, e)| !n.is_empty() && !e.is_empty())
            .ok_or_else(|| {
                format!("label `{label}`: write NAME=EXPRESSION, e.g. `region=order.region`")
            })?;
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with("__");
        if !valid {
            return Err(format!(
                "label name `{name}`: letters, digits and `_`, not starting with a digit or `__`"
            ));
        }
        if ["le", "pid", "probe"].contains(&name) || names.iter().any(|n| n == name) {
            return Err(format!(
                "label name `{name}` is taken (by scry's own labels le, pid, probe, or twice)"
            ));
        }
        names.push(name.to_owned());
        expressions.push(expr.to_owned());
    }
    let buckets = match &req.buckets {
        Some(_) if kind != MetricKind::Histogram => {
            return Err("buckets are for `histogram` metrics".into())
        }
        Some(b) if b.is_empty() || b.len() > 50 => return Err("give 1 to 50 bucket bounds".into()),
        Some(b) if !b.iter().all(|x| x.is_finite()) || b.windows(2).any(|w| w[0] >= w[1]) => {
            return Err("bucket bounds must be finite and increasing".into())
        }
        other => other.clone(),
    };
    Ok(Some(MetricSpec {
        kind,
        labels: names,
        buckets,
    }))
}

/// Checks the shape of a location: `path.py:LINE`, `@path.py#LINE`, `module.sub:function`,
/// `path.py:function`.
pub fn validate_location(loc: &str) -> Result<(), String> {
    let example =
        "use `path.py:LINE`, `@path.py#LINE`, `module.sub:function` or `path.py:function`";
    if let Some(rest) = loc.strip_prefix('@') {
        let (path, line) = rest
            .rsplit_once('#')
            .ok_or_else(|| format!("`{loc}` is not a location: {example}"))?;
        if path.is_empty() || line.parse::<u32>().map_or(true, |l| l == 0) {
            return Err(format!("`{loc}` is not a location: {example}"));
        }
        return Ok(());
    }
    let (left, right) = loc
        .rsplit_once(':')
        .ok_or_else(|| format!("`{loc}` is not a location: {example}"))?;
    if left.is_empty() || right.is_empty() {
        return Err(format!("`{loc}` is not a location: {example}"));
    }
    if let Ok(line) = right.parse::<u32>() {
        if line == 0 {
            return Err(format!("line numbers start at 1 in `{loc}`"));
        }
        return Ok(());
    }
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '<' || c == '>')
    };
    if !ident(right) {
        return Err(format!(
            "`{right}` in `{loc}` is neither a line number nor a function name: {example}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(location: &str) -> NewProbe {
        serde_json::from_value(json!({"location": location, "expressions": ["x"]})).expect("req")
    }

    #[test]
    fn a_metric_probe_takes_its_value_then_one_expression_per_label() {
        let table = ProbeTable::default();
        let metric = |v: serde_json::Value| {
            let r: NewProbe = serde_json::from_value(v).expect("req");
            build(r, &table)
        };
        let def = metric(
            json!({"location": "a.py:3", "expressions": ["o.total"], "metric": "histogram",
                                "labels": ["region=o.region"], "buckets": [1.0, 5.0]}),
        )
        .expect("a histogram");
        assert_eq!(def.spec.expressions, ["o.total", "o.region"]);
        let m = def.spec.metric.expect("metric");
        assert_eq!(
            (m.kind, m.labels),
            (MetricKind::Histogram, vec!["region".to_owned()])
        );
        assert!(
            metric(json!({"location": "a.py:3", "expressions": [], "metric": "count"})).is_ok()
        );
        for bad in [
            json!({"location": "a.py:3", "expressions": ["x"], "metric": "count"}),
            json!({"location": "a.py:3", "expressions": [], "metric": "gauge"}),
            json!({"location": "a.py:3", "expressions": ["x"], "metric": "gauge", "labels": ["pid=x"]}),
            json!({"location": "a.py:3", "expressions": ["x"], "metric": "gauge", "labels": ["1a=x"]}),
            json!({"location": "a.py:3", "expressions": ["x"], "metric": "gauge", "labels": ["a"]}),
            json!({"location": "a.py:3", "expressions": ["x"], "metric": "histogram", "buckets": [5.0, 1.0]}),
            json!({"location": "a.py:3", "expressions": ["x"], "metric": "gauge", "buckets": [1.0]}),
            json!({"location": "a.py:3", "expressions": ["x"], "labels": ["a=x"]}),
            json!({"location": "a.py:3", "expressions": ["x"], "metric": "gauge", "labels": ["a=__import__('os')"]}),
        ] {
            assert!(metric(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn locations() {
        for ok in [
            "app/orders.py:127",
            "@app/orders.py#127",
            "orders.process:handle",
            "app/orders.py:Order.total",
            "m:<lambda>",
        ] {
            assert!(validate_location(ok).is_ok(), "{ok}");
        }
        for bad in [
            "orders.py",
            ":12",
            "a.py:",
            "@a.py",
            "@a.py#x",
            "a.py:0",
            "a.py:not valid",
        ] {
            assert!(validate_location(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn build_checks_names_targets_rates_and_ttl() {
        let t = ProbeTable::default();
        let def = build(req("a.py:3"), &t).expect("ok");
        assert_eq!(def.target, Target::All);
        assert!(def.enabled);
        let mut r = req("a.py:3");
        r.pid = Some(4);
        r.process = Some("w".into());
        assert_eq!(
            build(r, &t).expect("narrowed").target,
            Target::Pid { pid: 4 }
        );
        let mut r = req("a.py:3");
        r.process = Some("w".into());
        r.all = true;
        assert!(build(r, &t).is_err());
        let mut r = req("a.py:3");
        r.rate = Some(RateMode::Sample { n: 0 });
        assert!(build(r, &t).is_err());
        let mut r = req("a.py:3");
        r.ttl = Some(Ttl::Duration("5m".into()));
        let def = build(r, &t).expect("ttl");
        assert_eq!(def.ttl_s, Some(300.0));
        assert!(def.spec.expires_at.is_some_and(|e| e > now() + 299.0));
        // TTLs are bounded (10 years): huge ones are refused with the maximum, not accepted.
        let two_pow_64: Ttl = serde_json::from_str("18446744073709551616").expect("number");
        for huge in [
            Ttl::Seconds(1e308),
            two_pow_64,
            Ttl::Seconds(u64::MAX as f64),
            Ttl::Duration("4000d".into()),
        ] {
            let mut r = req("a.py:3");
            r.ttl = Some(huge.clone());
            let err = build(r, &t).expect_err("huge ttl");
            assert!(err.to_string().contains("maximum"), "{huge:?}: {err}");
        }
        for bad in [
            Ttl::Seconds(0.0),
            Ttl::Seconds(-1.0),
            Ttl::Duration("soon".into()),
        ] {
            let mut r = req("a.py:3");
            r.ttl = Some(bad.clone());
            assert!(build(r, &t).is_err(), "{bad:?}");
        }
        let mut r = req("a.py:3");
        r.expressions = vec![" ".into()];
        assert!(build(r, &t).is_err());
    }

    #[test]
    fn names_are_unique_and_resolve() {
        let mut t = ProbeTable::default();
        let mut r = req("a.py:3");
        r.name = Some("totals".into());
        let def = build(r.clone(), &t).expect("ok");
        let id = def.spec.id.clone();
        t.put(def);
        assert_eq!(
            t.resolve("totals").map(|d| d.spec.id.clone()),
            Some(id.clone())
        );
        assert_eq!(t.resolve(&id).map(|d| d.spec.id.clone()), Some(id));
        assert!(build(r, &t)
            .expect_err("dup")
            .to_string()
            .contains("already exists"));
    }
}
