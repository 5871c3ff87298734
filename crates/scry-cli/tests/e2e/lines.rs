//! `scry lines`: the executable lines of a function and where a variable is bound and read,
//! asked in a live process (through the daemon and the agent's `find_lines` call).

use std::time::Duration;

use serde_json::Value;

use crate::support::{pythons, text, wait_for, Ctx};

fn column(table: &Value, name: &str) -> Vec<Value> {
    let idx = table["columns"]
        .as_array()
        .and_then(|c| c.iter().position(|c| c == name))
        .unwrap_or_else(|| panic!("no column {name} in {table}"));
    table["rows"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r[idx].clone()).collect())
        .unwrap_or_default()
}

#[test]
fn lines_of_a_function_and_a_variable_in_a_live_process() {
    for py in pythons() {
        let mut ctx = Ctx::new();
        ctx.start_daemon();
        let target = ctx.python(&py, "orders_loop.py", &["lines-e2e"]);
        let pid = target.pid().to_string();
        wait_for(&format!("{py}: awake"), Duration::from_secs(20), || {
            (ctx.state_of(target.pid()).as_deref() == Some("awake")).then_some(())
        });

        let answer = ctx.scry_json(&[
            "lines",
            "orders_loop.py:price",
            "--var",
            "total",
            "--pid",
            &pid,
        ]);
        assert_eq!(answer["function"], "price", "{py}: {answer}");
        assert_eq!(answer["file_differs"], false, "{py}: {answer}");
        let lines: Vec<u64> = column(&answer["lines"], "line")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(lines, vec![17, 18, 19], "{py}: {answer}");
        assert_eq!(
            column(&answer["bindings"], "line"),
            vec![Value::from(18)],
            "{py}"
        );
        assert_eq!(
            column(&answer["bindings"], "after_line"),
            vec![Value::from(19)],
            "{py}"
        );
        assert_eq!(
            column(&answer["reads"], "line"),
            vec![Value::from(19)],
            "{py}"
        );
        let src = column(&answer["bindings"], "source");
        assert!(
            src[0].as_str().unwrap_or("").starts_with("total = round("),
            "{py}: {src:?}"
        );

        // Text output: a table with the excerpt, and the only awake process is picked.
        let out = ctx.scry(&["lines", "orders_loop.py:price", "--var", "subtotal"]);
        let shown = text(&out);
        assert!(out.status.success(), "{py}: {shown}");
        assert!(shown.contains("subtotal = sum("), "{py}: {shown}");

        // Errors: an unknown function, an unknown file, a bad variable name.
        let out = ctx.scry(&["lines", "orders_loop.py:nope", "--pid", &pid]);
        assert!(!out.status.success());
        assert!(
            text(&out).contains("no function `nope`"),
            "{py}: {}",
            text(&out)
        );
        let out = ctx.scry(&["lines", "nowhere.py", "--pid", &pid]);
        assert!(!out.status.success());
        assert!(
            text(&out).contains("no loaded module matches"),
            "{py}: {}",
            text(&out)
        );
        let out = ctx.scry(&[
            "lines",
            "orders_loop.py:price",
            "--var",
            "a-b",
            "--pid",
            &pid,
        ]);
        assert!(!out.status.success());
        assert!(
            text(&out).contains("`var` must be a name"),
            "{py}: {}",
            text(&out)
        );
    }
}
