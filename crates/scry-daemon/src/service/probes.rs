//! Probes: adding one (checked, armed in every process it targets, refused when an agent's
//! Python refuses its expressions), listing, enabling, disabling and removing them one by one or
//! by group; keeping every connected agent's set in sync; expiring them.
//!
//! Agents receive the complete set of probes meant for them (`probes_sync`) whenever that set
//! changes and every time they connect; the table itself is [`crate::state::probes`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use scry_api::{NewProbe, ProbeDef, ProbeInProcess, ProbeList, ProbeTotals, ProbeView, Removed};
use scry_proto::{DaemonMessage, ProbeState, ProbeStatus, RateMode};
use serde_json::{json, Value};

use super::{blocking, Error, ErrorKind, Result};
use crate::state::probes::{self as table, BuildError};
use crate::state::registry::{ProcState, ProcessView};
use crate::{now, Shared};

fn not_found(key: &str) -> Error {
    Error::not_found(format!("no probe with id or name `{key}`")).hint("see `scry probe list`")
}

/// The probe with this id or name.
pub fn resolve(shared: &Shared, key: &str) -> Result<ProbeDef> {
    shared
        .probes()
        .resolve(key)
        .cloned()
        .ok_or_else(|| not_found(key))
}

/// The registry ids of the processes that have not exited (awake or sleeping).
fn live_process_ids(shared: &Shared) -> HashSet<i64> {
    shared
        .registry()
        .views()
        .into_iter()
        .filter(|v| v.state != ProcState::Gone)
        .map(|v| v.id)
        .collect()
}

/// The probe's view: its definition, its status in every live process, how many gone ones had
/// it, and what became of its hits.
pub fn view(shared: &Shared, def: ProbeDef) -> ProbeView {
    view_among(shared, def, &live_process_ids(shared))
}

fn view_among(shared: &Shared, def: ProbeDef, live: &HashSet<i64>) -> ProbeView {
    let statuses = shared.probes().statuses_of(&def.spec.id);
    let mut v = describe(def, statuses, live);
    v.totals.dropped_by_daemon = shared.dropped_for(&v.def.spec.id);
    // What the store holds now, what retention removed and what a full disk kept out, so that
    // `recorded` can be checked: recorded = stored + removed_by_retention +
    // not_stored_disk_full + dropped_by_daemon + in flight.
    let stored = shared.store.totals_of(&v.def.spec.id).ok();
    v.totals.stored = stored.map(|t| t.stored);
    v.totals.removed_by_retention = stored.map(|t| t.removed_by_retention);
    v.totals.not_stored_disk_full = stored.map(|t| t.not_stored_disk_full);
    v
}

/// The view of a definition and its statuses, without the store's counts: the totals count
/// every process, the list only the `live` ones (registry ids), the rest are counted as gone.
pub fn describe(def: ProbeDef, statuses: Vec<ProbeInProcess>, live: &HashSet<i64>) -> ProbeView {
    let expired = def.spec.expires_at.is_some_and(|t| t <= now());
    let mut totals = ProbeTotals::default();
    for s in &statuses {
        totals.hits += s.status.hits;
        totals.recorded += s.status.recorded;
        totals.dropped += s.status.dropped;
        totals.errors += s.status.errors;
    }
    let (mut statuses, gone): (Vec<_>, Vec<_>) = statuses
        .into_iter()
        .partition(|s| live.contains(&s.process_id));
    // The agents' last word, but a probe that is off is not armed anywhere any more.
    if !def.enabled {
        let shown = if expired {
            ProbeState::Expired
        } else {
            ProbeState::Disabled
        };
        for s in &mut statuses {
            if matches!(s.status.state, ProbeState::Armed | ProbeState::Pending) {
                s.status.state = shown;
            }
        }
    }
    ProbeView {
        def,
        expired,
        totals,
        processes: statuses,
        gone: gone.len() as u64,
        notes: Vec::new(),
        hint: None,
    }
}

/// Whether a status says the probe itself is invalid (the same in every process).
pub fn is_invalid(s: &ProbeStatus) -> bool {
    s.state == ProbeState::Error && s.error_kind.as_deref() == Some("invalid_expression")
}

/// Every probe.
pub fn list(shared: &Shared) -> ProbeList {
    let defs = shared.probes().defs();
    let live = live_process_ids(shared);
    ProbeList {
        probes: defs
            .into_iter()
            .map(|d| view_among(shared, d, &live))
            .collect(),
    }
}

/// One probe by id or name.
pub fn get(shared: &Shared, key: &str) -> Result<ProbeView> {
    Ok(view(shared, resolve(shared, key)?))
}

/// Adds a probe: checks it, arms it in every connected process it targets, and keeps it only
/// when no agent's Python refused its expressions.
pub async fn add(shared: &Shared, req: NewProbe) -> Result<ProbeView> {
    if let (Some(pid), Some(name)) = (req.pid, req.process.as_deref()) {
        check_named(shared, pid, name)?;
    }
    let def = {
        let table = shared.probes();
        table::build(req, &table).map_err(|e| match e {
            BuildError::Invalid(m) => Error::bad_request(m),
            BuildError::Expression(e) => {
                Error::new(ErrorKind::InvalidExpression, e.reason).hint(crate::expr::HINT)
            }
        })?
    };
    let check = super::lines::check_location(shared, &def.spec.location, &def.target).await?;
    let id = def.spec.id.clone();
    shared.probes().put(def.clone());
    // Every connected process it targets arms it now; an expression that Python rejects is
    // rejected by the first agent that sees it, before the probe is kept.
    let results = sync_all(shared).await;
    let invalid = results
        .iter()
        .flat_map(|(_, statuses)| statuses.iter())
        .find(|s| s.probe == id && is_invalid(s))
        .cloned();
    if let Some(bad) = invalid {
        shared.probes().remove(&id);
        sync_all(shared).await;
        return Err(Error::new(
            ErrorKind::InvalidExpression,
            bad.reason.unwrap_or_else(|| "invalid expression".into()),
        )
        .hint(crate::expr::HINT));
    }
    persist(shared, &def).await?;
    shared.system_event(
        scry_store::Level::Info,
        "probe_added",
        format!(
            "probe {} added at {}",
            def.spec.name.as_deref().unwrap_or(&id),
            def.spec.location
        ),
        json!({"probe": id}),
    );
    let mut v = view(shared, def);
    if !check.notes.is_empty() {
        v.notes = check.notes;
        v.hint = check.hint;
    }
    Ok(v)
}

/// A name narrowed to a pid: the pid must be a live process registered under that name.
fn check_named(shared: &Shared, pid: u32, name: &str) -> Result<()> {
    let named: Vec<u32> = shared
        .registry()
        .find(name)
        .iter()
        .map(|e| e.view.pid)
        .collect();
    if named.contains(&pid) {
        return Ok(());
    }
    let which = if named.is_empty() {
        format!("no live process is registered as `{name}`")
    } else {
        let pids: Vec<String> = named.iter().map(u32::to_string).collect();
        format!("the processes named `{name}` are pids {}", pids.join(", "))
    };
    Err(
        Error::not_found(format!("pid {pid} is not named `{name}`: {which}"))
            .hint("see `scry ps`; leave out `pid` to probe every process of the name"),
    )
}

/// Removes one probe by id or name.
pub async fn remove(shared: &Shared, key: &str) -> Result<Removed> {
    let def = resolve(shared, key)?;
    remove_defs(shared, vec![def]).await
}

/// Removes every probe of a group.
pub async fn remove_group(shared: &Shared, group: &str) -> Result<Removed> {
    let defs = group_defs(shared, group)?;
    remove_defs(shared, defs).await
}

async fn remove_defs(shared: &Shared, defs: Vec<ProbeDef>) -> Result<Removed> {
    let mut removed = Vec::new();
    for def in &defs {
        shared.probes().remove(&def.spec.id);
        shared.metric_probes.forget(&def.spec.id);
        unpersist(shared, &def.spec.id).await?;
        removed.push(def.spec.id.clone());
    }
    sync_all(shared).await;
    Ok(Removed { removed })
}

async fn set_enabled(shared: &Shared, defs: Vec<ProbeDef>, enabled: bool) -> Result<ProbeList> {
    let mut changed = Vec::new();
    for mut def in defs {
        def.enabled = enabled;
        shared.probes().put(def.clone());
        persist(shared, &def).await?;
        changed.push(def);
    }
    sync_all(shared).await;
    Ok(ProbeList {
        probes: changed.into_iter().map(|d| view(shared, d)).collect(),
    })
}

/// Enables one probe (not one whose TTL passed).
pub async fn enable(shared: &Shared, key: &str) -> Result<ProbeList> {
    let def = resolve(shared, key)?;
    if def.spec.expires_at.is_some_and(|t| t <= now()) {
        return Err(
            Error::new(ErrorKind::Expired, format!("probe `{key}` has expired"))
                .hint("add it again with a new --ttl"),
        );
    }
    set_enabled(shared, vec![def], true).await
}

/// Disables one probe (it stays, with its counters).
pub async fn disable(shared: &Shared, key: &str) -> Result<ProbeList> {
    let def = resolve(shared, key)?;
    set_enabled(shared, vec![def], false).await
}

/// The probes of a group; none is an error.
fn group_defs(shared: &Shared, group: &str) -> Result<Vec<ProbeDef>> {
    let defs = shared.probes().group(group);
    if defs.is_empty() {
        return Err(Error::not_found(format!("no probe in group `{group}`"))
            .hint("see `scry probe list --json` for the groups"));
    }
    Ok(defs)
}

/// Enables every probe of a group.
pub async fn enable_group(shared: &Shared, group: &str) -> Result<ProbeList> {
    let defs = group_defs(shared, group)?;
    set_enabled(shared, defs, true).await
}

/// Disables every probe of a group.
pub async fn disable_group(shared: &Shared, group: &str) -> Result<ProbeList> {
    let defs = group_defs(shared, group)?;
    set_enabled(shared, defs, false).await
}

/// Resolves a probe id or name for event queries (unknown names are an error).
pub fn resolve_source(shared: &Shared, probe: Option<String>) -> Result<Option<String>> {
    match probe {
        None => Ok(None),
        Some(key) => match shared.probes().resolve(&key) {
            Some(d) => Ok(Some(d.spec.id.clone())),
            // A removed probe's events may still be stored under its id.
            None if key.starts_with("p-") => Ok(Some(key)),
            None => Err(not_found(&key)),
        },
    }
}

/// The live hits of a probe and/or a pid: which live events a follower gets.
pub fn live_hits(
    shared: &Shared,
    probe: Option<String>,
    pid: Option<u32>,
) -> Result<impl FnMut(&crate::LiveEvent) -> Option<&'static str> + Send + 'static> {
    let source = resolve_source(shared, probe)?;
    let ids = pid.map(|p| super::processes::row_ids_for_pid(shared, p));
    Ok(move |ev: &crate::LiveEvent| {
        if ev.topic != "event" {
            return None;
        }
        if source
            .as_ref()
            .is_some_and(|s| ev.data["source"].as_str() != Some(s.as_str()))
        {
            return None;
        }
        if let Some(ids) = &ids {
            let ev_pid = ev.data["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
            let id = ev.data["process_id"].as_i64().unwrap_or(-1);
            if ev_pid != pid && !ids.contains(&id) {
                return None;
            }
        }
        Some("event")
    })
}

/// Sends `probes_sync` to one process (if its agent supports probes) and records the
/// statuses it answers with. Returns them.
pub async fn sync(shared: &Shared, process_id: i64) -> Option<Vec<ProbeStatus>> {
    let (view, agent) = {
        let mut reg = shared.registry();
        let e = reg.get_mut(process_id)?;
        if !e.view.capabilities.iter().any(|c| c == "probes") {
            return None;
        }
        (e.view.clone(), e.agent.clone()?)
    };
    let specs = shared.probes().specs_for(&view, now());
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
    shared
        .probes()
        .update_if_older(&view, statuses.clone(), Some(asked_at));
    publish_statuses(shared, &view, &statuses);
    end_spent(shared, &statuses).await;
    Some(statuses)
}

/// Syncs every connected process that a probe targets (or that had it).
pub async fn sync_all(shared: &Shared) -> Vec<(ProcessView, Vec<ProbeStatus>)> {
    let ids: Vec<(i64, ProcessView)> = shared
        .registry()
        .views()
        .into_iter()
        .filter(|v| v.state == ProcState::Awake && v.capabilities.iter().any(|c| c == "probes"))
        .map(|v| (v.id, v))
        .collect();
    let mut out = Vec::new();
    let futures = ids
        .into_iter()
        .map(|(id, v)| async move { (v, sync(shared, id).await) });
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
pub fn statuses_reported(shared: &Arc<Shared>, process_id: i64, statuses: Vec<ProbeStatus>) {
    let Some(view) = shared
        .registry()
        .get_mut(process_id)
        .map(|e| e.view.clone())
    else {
        return;
    };
    shared.probes().update(&view, statuses.clone());
    publish_statuses(shared, &view, &statuses);
    if statuses.iter().any(|s| s.state == ProbeState::Expired) {
        let shared = Arc::clone(shared);
        tokio::spawn(async move { end_spent(&shared, &statuses).await });
    }
}

/// A `first N` probe that an agent reports expired has done its job: it is disabled, so
/// that no process (nor the same one after a sleep and wake) records N more.
async fn end_spent(shared: &Shared, statuses: &[ProbeStatus]) {
    for s in statuses.iter().filter(|s| s.state == ProbeState::Expired) {
        let def = {
            let mut t = shared.probes();
            match t.resolve(&s.probe).cloned() {
                Some(mut d) if d.enabled && matches!(d.spec.rate, RateMode::First { .. }) => {
                    d.enabled = false;
                    t.put(d.clone());
                    d
                }
                _ => continue,
            }
        };
        if let Err(e) = persist(shared, &def).await {
            tracing::warn!(target: "store", "cannot store probe {}: {e}", s.probe);
        }
        shared.system_event(
            scry_store::Level::Info,
            "probe_spent",
            format!(
                "probe {} recorded its first hits and was disabled",
                def.spec.name.as_deref().unwrap_or(&s.probe)
            ),
            json!({"probe": s.probe}),
        );
        // The other processes drop it too.
        Box::pin(sync_all(shared)).await;
    }
}

fn publish_statuses(shared: &Shared, view: &ProcessView, statuses: &[ProbeStatus]) {
    for s in statuses {
        shared.publish(
            "probe_status",
            json!({"process_id": view.id, "pid": view.pid, "status": s}),
        );
    }
}

/// Disables probes whose TTL passed and tells the agents.
pub async fn expire(shared: &Shared) {
    let at = now();
    let expired = shared.probes().newly_expired(at);
    if expired.is_empty() {
        return;
    }
    for id in &expired {
        let def = {
            let mut t = shared.probes();
            let Some(mut def) = t.resolve(id).cloned() else {
                continue;
            };
            def.enabled = false;
            t.put(def.clone());
            def
        };
        if let Err(e) = persist(shared, &def).await {
            tracing::warn!(target: "store", "cannot store probe {id}: {e}");
        }
        shared.system_event(
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
    sync_all(shared).await;
}

/// Writes a definition to the store.
pub async fn persist(shared: &Shared, def: &ProbeDef) -> Result<()> {
    let rec = scry_store::ProbeRecord {
        id: def.spec.id.clone(),
        name: def.spec.name.clone(),
        spec: serde_json::to_value(def).unwrap_or(Value::Null),
        enabled: def.enabled,
        group_name: def.group.clone(),
        created_at: def.created_at,
        updated_at: now(),
    };
    let store = shared.store.clone();
    blocking(move || store.put_probe(&rec)).await
}

/// Removes a definition from the store.
pub async fn unpersist(shared: &Shared, id: &str) -> Result<()> {
    let store = shared.store.clone();
    let id = id.to_owned();
    blocking(move || store.delete_probe(&id).map(|_| ())).await
}
