//! Kept stack dumps: `POST /api/v1/dumps` takes a dump document (docs/dump.md) and answers a
//! [`DumpAdded`]; `GET /api/v1/dumps` answers a [`DumpList`], `GET /api/v1/dumps/{id}` a
//! [`DumpView`].

use serde::{Deserialize, Serialize};

/// A dump was kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpAdded {
    /// Its id, for `GET /api/v1/dumps/{id}` (`scry dumps ID`).
    pub id: i64,
}

/// A kept dump in a listing: what it covers, without its stacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpSummary {
    /// Its id.
    pub id: i64,
    /// When it was taken (epoch seconds).
    pub taken_at: f64,
    /// The pid it was asked for.
    pub root_pid: u32,
    /// It covers the tree below the root (`scry dump --tree`).
    pub tree: bool,
    /// How many processes it lists.
    pub processes: u32,
    /// How many of them are Python processes whose stacks were read.
    pub python_processes: u32,
    /// The root's command line.
    pub command: String,
}

/// `GET /api/v1/dumps`: the newest dumps first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpList {
    /// The dumps.
    pub dumps: Vec<DumpSummary>,
}

/// `GET /api/v1/dumps/{id}`: one kept dump, whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpView {
    /// Its id.
    pub id: i64,
    /// The dump document exactly as it was kept (docs/dump.md; `schema` says its version). Kept
    /// as JSON: a dump kept by another version of scry is still shown as it was stored, and
    /// the reader decides whether it understands it.
    pub dump: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_and_a_dump_write_back_byte_for_byte() {
        let list = r#"{"dumps":[{"id":2,"taken_at":1795272325.85,"root_pid":4242,"tree":true,"processes":3,"python_processes":2,"command":"python3 app.py"}]}"#;
        let parsed: DumpList = serde_json::from_str(list).expect("parse");
        assert_eq!(parsed.dumps[0].root_pid, 4242);
        assert_eq!(serde_json::to_string(&parsed).expect("json"), list);
        let one = r#"{"id":2,"dump":{"schema":1,"root_pid":4242,"future_field":[1,2]}}"#;
        let parsed: DumpView = serde_json::from_str(one).expect("parse");
        assert_eq!(serde_json::to_string(&parsed).expect("json"), one);
    }
}
