//! Finding the line: `POST /api/v1/lines` (and the MCP tool `find_lines`) takes a
//! [`LinesRequest`] and answers [`FoundLines`], which the process's agent computed from the code
//! it has loaded (docs/agents.md "Finding the line").

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What to find: the body of `POST /api/v1/lines` and the arguments of the MCP tool
/// `find_lines` (its input schema comes from these doc comments).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LinesRequest {
    /// A file ("app/orders.py", matched by path suffix) or a function ("orders:checkout",
    /// "orders:Cart.add", "app/orders.py:checkout", nested: "orders:outer.inner").
    pub target: String,
    /// A variable ("total") or attribute path ("order.total") to locate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var: Option<String>,
    /// The process (default: the only awake one that can answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// At most this many rows per table (default 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 5000)))]
    pub limit: Option<u32>,
}

/// `POST /api/v1/lines`: a file's or function's executable lines and, with `var`, where the
/// variable is bound and read, as the process loaded the code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoundLines {
    /// The target as asked.
    pub target: String,
    /// The file, as the process loaded it (its code objects' `co_filename`).
    pub file: String,
    /// The function, when the target named one.
    pub function: Option<String>,
    /// Where the source shown came from: `file`, `linecache` or `bytecode`.
    pub source: String,
    /// The file on disk differs from the loaded code (the loaded code wins; see `note`).
    pub file_differs: bool,
    /// The file's last line as loaded (a probe past it is refused).
    pub last_line: Option<u64>,
    /// Something to know about the answer (e.g. the file was edited since it was loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Executable lines: columns `line`, `function`, `source`.
    pub lines: LineTable,
    /// The variable asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var: Option<String>,
    /// With `var`: where it is bound; columns `line`, `probe_line`, `after_line` (where a probe
    /// sees the new value), `how`, `function`, `scope`, `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindings: Option<LineTable>,
    /// With `var`: where it is read; columns `line`, `probe_line`, `function`, `scope`,
    /// `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reads: Option<LineTable>,
    /// What to do when `var` was found nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The process that answered.
    pub pid: u32,
}

/// A table of lines: named columns, rows of cells.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LineTable {
    /// The column names.
    pub columns: Vec<String>,
    /// The rows (at most the request's `limit`), each a cell per column.
    pub rows: Vec<Vec<Value>>,
    /// Rows before the limit.
    pub total: u64,
    /// The limit cut rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl LineTable {
    /// The cell of `row` in column `name`.
    pub fn cell<'a>(&self, row: &'a [Value], name: &str) -> Option<&'a Value> {
        let i = self.columns.iter().position(|c| c == name)?;
        row.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_answer_reads_and_writes_back_the_same() {
        let answer = serde_json::json!({
            "target": "shop:checkout", "file": "/srv/shop.py", "function": "checkout",
            "source": "file", "file_differs": false, "last_line": 40,
            "lines": {"columns": ["line", "function", "source"], "rows": [[3, "checkout", "x = 1"]], "total": 1},
            "var": "x",
            "bindings": {"columns": ["line", "after_line"], "rows": [[3, 4]], "total": 1},
            "reads": {"columns": ["line"], "rows": [], "total": 0},
            "pid": 7,
        });
        let found: FoundLines = serde_json::from_value(answer.clone()).expect("parses");
        let b = found.bindings.as_ref().expect("bindings");
        assert_eq!(
            b.cell(&b.rows[0], "after_line"),
            Some(&serde_json::json!(4))
        );
        assert_eq!(serde_json::to_value(&found).expect("json"), answer);
    }
}
