//! The probe registry: definitions (stored, the daemon is their source of truth), which
//! processes each applies to, and each probe's status and counters per process.
//!
//! Agents receive the complete set of probes meant for them (`probes_sync`) whenever that set
//! changes and every time they connect, so a restarted worker gets its probes back without
//! anyone asking. Everything that costs time in the target (rates, conditions, TTL) is decided
//! in the agent; the daemon only says what should exist.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use scry_proto::{CaptureOptions, DaemonMessage, ProbeSpec, ProbeState, ProbeStatus, RateMode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::registry::{ProcState, ProcessView};
use crate::{now, Shared};

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

impl Target {
    /// Whether the process is targeted.
    pub fn matches(&self, p: &ProcessView) -> bool {
        match self {
            Target::Pid { pid } => p.pid == *pid || p.ns_pid == Some(*pid),
            Target::Name { name } => p.name.as_deref() == Some(name.as_str()),
            Target::All => true,
        }
    }
}

/// A probe as the daemon keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeDef {
    /// What agents apply.
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
    /// Creation time.
    pub created_at: f64,
}

impl ProbeDef {
    /// Whether it should be armed now.
    pub fn active(&self, at: f64) -> bool {
        self.enabled && self.spec.expires_at.is_none_or(|t| t > at)
    }
}

/// A probe's status in one process, with the process it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessProbeStatus {
    /// Store row id of the process.
    pub process_id: i64,
    /// Its pid.
    pub pid: u32,
    /// Its name.
    pub name: Option<String>,
    /// The status the agent reported.
    #[serde(flatten)]
    pub status: ProbeStatus,
    /// When the agent reported it.
    pub updated_at: f64,
}

/// All probes and their statuses.
#[derive(Debug, Default)]
pub struct ProbeTable {
    defs: BTreeMap<String, ProbeDef>,
    statuses: HashMap<(String, i64), ProcessProbeStatus>,
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
            .filter(|d| d.active(at) && d.target.matches(p))
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
                ProcessProbeStatus {
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
    pub fn statuses_of(&self, id: &str) -> Vec<ProcessProbeStatus> {
        let mut v: Vec<ProcessProbeStatus> = self
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
    let expressions: Vec<String> = req
        .expressions
        .iter()
        .map(|e| e.trim().to_owned())
        .collect();
    if expressions.is_empty() || expressions.iter().any(String::is_empty) {
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
    let targets =
        usize::from(req.pid.is_some()) + usize::from(req.process.is_some()) + usize::from(req.all);
    if targets > 1 {
        return Err("give at most one of pid, process and all".into());
    }
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
        },
        target,
        group: req.group,
        enabled: !req.disabled,
        ttl_s,
        created_at,
    })
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

impl Shared {
    /// Sends `probes_sync` to one process (if its agent supports probes) and records the
    /// statuses it answers with. Returns them.
    pub async fn sync_probes(&self, process_id: i64) -> Option<Vec<ProbeStatus>> {
        let (view, agent) = {
            let mut reg = self.registry();
            let e = reg.get_mut(process_id)?;
            if !e.view.capabilities.iter().any(|c| c == "probes") {
                return None;
            }
            (e.view.clone(), e.agent.clone()?)
        };
        let specs = self.probes().specs_for(&view, now());
        let asked_at = now();
        let reply = agent
            .request(
                |id| DaemonMessage::ProbesSync { id, probes: specs },
                Duration::from_secs(10),
            )
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: "daemon", pid = view.pid, "probe sync failed: {e}");
                return None;
            }
        };
        if !reply.ok {
            tracing::warn!(target: "daemon", pid = view.pid, "agent refused probe sync: {:?}", reply.error);
            return None;
        }
        let statuses: Vec<ProbeStatus> = reply
            .result
            .and_then(|r| r.get("statuses").cloned())
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default();
        // Statuses of probes this process no longer has are kept with their last counters (a
        // disabled or expired probe still shows what it recorded); removed probes lose theirs.
        // A status the agent sent on its own after this request is as new as the reply or
        // newer (the reply is applied here, on the asking task, possibly after it): keep it.
        self.probes()
            .update_if_older(&view, statuses.clone(), Some(asked_at));
        self.publish_probe_statuses(&view, &statuses);
        self.end_spent_probes(&statuses).await;
        Some(statuses)
    }

    /// Syncs every connected process that a probe targets (or that had it).
    pub async fn sync_all(&self) -> Vec<(ProcessView, Vec<ProbeStatus>)> {
        let ids: Vec<(i64, ProcessView)> = self
            .registry()
            .views()
            .into_iter()
            .filter(|v| v.state == ProcState::Awake && v.capabilities.iter().any(|c| c == "probes"))
            .map(|v| (v.id, v))
            .collect();
        let mut out = Vec::new();
        let futures = ids
            .into_iter()
            .map(|(id, v)| async move { (v, self.sync_probes(id).await) });
        for (v, r) in futures_util::future::join_all(futures).await {
            if let Some(s) = r {
                out.push((v, s));
            }
        }
        out
    }

    /// An agent reported statuses on its own. Recorded at once, on the link's task, so that
    /// a status is never overtaken by an older one; what a spent probe needs next (disable,
    /// sync the others) runs on a task of its own.
    pub fn probe_statuses_reported(
        self: &std::sync::Arc<Self>,
        process_id: i64,
        statuses: Vec<ProbeStatus>,
    ) {
        let Some(view) = self.registry().get_mut(process_id).map(|e| e.view.clone()) else {
            return;
        };
        self.probes().update(&view, statuses.clone());
        self.publish_probe_statuses(&view, &statuses);
        if statuses.iter().any(|s| s.state == ProbeState::Expired) {
            let shared = std::sync::Arc::clone(self);
            tokio::spawn(async move { shared.end_spent_probes(&statuses).await });
        }
    }

    /// A `first N` probe that an agent reports expired has done its job: it is disabled, so
    /// that no process (nor the same one after a sleep and wake) records N more.
    async fn end_spent_probes(&self, statuses: &[ProbeStatus]) {
        for s in statuses.iter().filter(|s| s.state == ProbeState::Expired) {
            let def = {
                let mut t = self.probes();
                match t.resolve(&s.probe).cloned() {
                    Some(mut d) if d.enabled && matches!(d.spec.rate, RateMode::First { .. }) => {
                        d.enabled = false;
                        t.put(d.clone());
                        d
                    }
                    _ => continue,
                }
            };
            if let Err(e) = self.persist_probe(&def).await {
                tracing::warn!(target: "store", "cannot store probe {}: {e}", s.probe);
            }
            self.system_event(
                scry_store::Level::Info,
                "probe_spent",
                format!(
                    "probe {} recorded its first hits and was disabled",
                    def.spec.name.as_deref().unwrap_or(&s.probe)
                ),
                json!({"probe": s.probe}),
            );
            // The other processes drop it too.
            Box::pin(self.sync_all()).await;
        }
    }

    fn publish_probe_statuses(&self, view: &ProcessView, statuses: &[ProbeStatus]) {
        for s in statuses {
            self.publish(
                "probe_status",
                json!({"process_id": view.id, "pid": view.pid, "status": s}),
            );
        }
    }

    /// Disables probes whose TTL passed and tells the agents.
    pub async fn expire_probes(&self) {
        let at = now();
        let expired = self.probes().newly_expired(at);
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            let def = {
                let mut t = self.probes();
                let Some(mut def) = t.resolve(id).cloned() else {
                    continue;
                };
                def.enabled = false;
                t.put(def.clone());
                def
            };
            if let Err(e) = self.persist_probe(&def).await {
                tracing::warn!(target: "store", "cannot store probe {id}: {e}");
            }
            self.system_event(
                scry_store::Level::Info,
                "probe_expired",
                format!(
                    "probe {} expired (ttl {:?} s)",
                    def.spec.name.as_deref().unwrap_or(id),
                    def.ttl_s
                ),
                json!({"probe": id}),
            );
        }
        self.sync_all().await;
    }

    /// Writes a definition to the store.
    pub async fn persist_probe(&self, def: &ProbeDef) -> Result<(), scry_store::StoreError> {
        let rec = scry_store::ProbeRecord {
            id: def.spec.id.clone(),
            name: def.spec.name.clone(),
            spec: serde_json::to_value(def).unwrap_or(Value::Null),
            enabled: def.enabled,
            group_name: def.group.clone(),
            created_at: def.created_at,
            updated_at: now(),
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put_probe(&rec))
            .await
            .map_err(|_| scry_store::StoreError::WriterGone)?
    }

    /// Removes a definition from the store.
    pub async fn unpersist_probe(&self, id: &str) -> Result<(), scry_store::StoreError> {
        let store = self.store.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || store.delete_probe(&id).map(|_| ()))
            .await
            .map_err(|_| scry_store::StoreError::WriterGone)?
    }
}

/// The API view of a probe: its definition and its status in every process.
pub fn describe(def: &ProbeDef, statuses: Vec<ProcessProbeStatus>) -> Value {
    let mut v = serde_json::to_value(def).unwrap_or(Value::Null);
    let expired = def.spec.expires_at.is_some_and(|t| t <= now());
    v["expired"] = json!(expired);
    let totals = statuses.iter().fold([0u64; 4], |mut acc, s| {
        acc[0] += s.status.hits;
        acc[1] += s.status.recorded;
        acc[2] += s.status.dropped;
        acc[3] += s.status.errors;
        acc
    });
    v["totals"] = json!({"hits": totals[0], "recorded": totals[1], "dropped": totals[2], "errors": totals[3]});
    let mut processes = serde_json::to_value(statuses).unwrap_or(Value::Null);
    // The agents' last word, but a probe that is off is not armed anywhere any more.
    if !def.enabled {
        let shown = if expired { "expired" } else { "disabled" };
        for p in processes.as_array_mut().into_iter().flatten() {
            if p["state"] == "armed" || p["state"] == "pending" {
                p["state"] = json!(shown);
            }
        }
    }
    v["processes"] = processes;
    v
}

/// Whether a status says the probe itself is invalid (the same in every process).
pub fn is_invalid(s: &ProbeStatus) -> bool {
    s.state == ProbeState::Error && s.error_kind.as_deref() == Some("invalid_expression")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(location: &str) -> NewProbe {
        serde_json::from_value(json!({"location": location, "expressions": ["x"]})).expect("req")
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
