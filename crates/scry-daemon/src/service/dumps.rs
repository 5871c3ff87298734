//! Stack dumps kept by the daemon (`scry dump` stores them so that a dump taken during an
//! incident can be read later): add a dump document (`docs/dump.md`), list them newest first
//! (without the stacks), read one.

use scry_api::{DumpAdded, DumpList, DumpSummary, DumpView};
use scry_proc::stacks::{Dump, ProcessKind, DUMP_SCHEMA};
use scry_store::DumpRecord;
use serde_json::Value;

use super::{blocking, Error, Result};
use crate::Shared;

/// Stores a dump document (kept as it was given, once it reads as a dump); answers its id.
pub async fn add(shared: &Shared, data: Value) -> Result<DumpAdded> {
    let dump: Dump = serde_json::from_value(data.clone()).map_err(|e| {
        Error::bad_request(format!(
            "not a dump document (schema {DUMP_SCHEMA}, docs/dump.md): {e}"
        ))
    })?;
    let command = dump
        .processes
        .first()
        .map(|p| p.cmdline.join(" "))
        .unwrap_or_default();
    let record = DumpRecord {
        taken_at: dump.taken_at,
        root_pid: dump.root_pid,
        tree: dump.tree,
        processes: dump.processes.len() as u32,
        python_processes: dump
            .processes
            .iter()
            .filter(|p| p.kind == ProcessKind::Python)
            .count() as u32,
        command,
        data,
    };
    let store = shared.store.clone();
    let id = blocking(move || store.put_dump(&record)).await?;
    Ok(DumpAdded { id })
}

/// The newest dumps (`limit`, default 100), without their stacks.
pub async fn list(shared: &Shared, limit: Option<usize>) -> Result<DumpList> {
    let store = shared.store.clone();
    let limit = limit.unwrap_or(100);
    let rows = blocking(move || store.dumps(limit)).await?;
    let dumps = rows
        .into_iter()
        .map(|r| DumpSummary {
            id: r.id,
            taken_at: r.dump.taken_at,
            root_pid: r.dump.root_pid,
            tree: r.dump.tree,
            processes: r.dump.processes,
            python_processes: r.dump.python_processes,
            command: r.dump.command,
        })
        .collect();
    Ok(DumpList { dumps })
}

/// One stored dump, whole.
pub async fn get(shared: &Shared, id: i64) -> Result<DumpView> {
    let store = shared.store.clone();
    let row = blocking(move || store.dump(id)).await?;
    match row {
        Some(r) => Ok(DumpView {
            id: r.id,
            dump: r.dump.data,
        }),
        None => {
            Err(Error::not_found(format!("no dump {id}"))
                .hint("`scry dumps` lists the stored dumps"))
        }
    }
}

/// Dumps the stacks of `pid` (and its Python children with `children`) from outside, without
/// stopping it for more than the read: what `scry dump` does, for MCP's `dump_stacks`.
pub async fn take(pid: u32, options: scry_proc::stacks::DumpOptions) -> Result<Dump> {
    tokio::task::spawn_blocking(move || scry_proc::stacks::dump(pid, options))
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(|e| {
            Error::new(scry_api::ErrorKind::Dump, scry_proc::stacks::error_text(&e))
                .hint("the process must exist and be yours (or ptrace must be allowed)")
        })
}
