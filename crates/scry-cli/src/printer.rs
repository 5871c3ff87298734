//! All output of the CLI goes through [`Printer`]: data to stdout, messages to stderr, JSON
//! when asked. Commands never print directly, so output stays apart from work and can be
//! tested against a buffer.
//!
//! Lines and notes carry strings that came from other processes and callers (process names,
//! probe names, values, log messages, error messages): their control characters are shown
//! escaped (`\x1b`, `\r`), so that nothing printed can move the cursor, retitle the terminal or
//! hide text. Only [`Printer::raw`] writes as is: a REPL's terminal stream and the CLI's own
//! screen handling.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{self, Write};

use serde::Serialize;

/// Where output goes.
pub struct Printer {
    out: Box<dyn Write>,
    err: Box<dyn Write>,
    /// Whether data is printed as JSON.
    pub json: bool,
}

impl Printer {
    /// Writes to the process's stdout and stderr.
    pub fn stdio(json: bool) -> Printer {
        Printer {
            out: Box::new(io::stdout()),
            err: Box::new(io::stderr()),
            json,
        }
    }

    /// Writes to the given writers (tests).
    #[cfg(test)]
    pub fn to(out: Box<dyn Write>, err: Box<dyn Write>, json: bool) -> Printer {
        Printer { out, err, json }
    }

    /// A line of data on stdout (control characters escaped).
    pub fn line(&mut self, text: impl AsRef<str>) -> io::Result<()> {
        writeln!(self.out, "{}", escape_controls(text.as_ref()))?;
        self.out.flush()
    }

    /// A JSON document on stdout.
    pub fn json_value<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
        self.line(text)
    }

    /// Terminal text as is (a REPL's output, a prompt): stdout, no newline added, flushed.
    pub fn raw(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    /// A message for the person on stderr (never mixed with data; control characters escaped).
    pub fn note(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.err, "{}", escape_controls(text.as_ref()));
        let _ = self.err.flush();
    }
}

/// `text` with every control character but newline and tab written out (`\x1b`, `\r`,
/// `\u{9b}`), as Python's `repr` would: a string from another process cannot drive the terminal.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let is_bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(is_bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\r' if is_bad(c) => out.push_str("\\r"),
            c if is_bad(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Formats rows as aligned columns; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let fmt = |cells: Vec<String>| {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![fmt(header.iter().map(|s| s.to_string()).collect())];
    out.extend(rows.iter().map(|r| fmt(r.clone())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn data_goes_to_stdout_and_notes_to_stderr() {
        let (out, err) = (Buf::default(), Buf::default());
        let mut p = Printer::to(Box::new(out.clone()), Box::new(err.clone()), true);
        p.json_value(&serde_json::json!({"a": 1})).expect("write");
        p.note("started the daemon");
        assert_eq!(
            String::from_utf8_lossy(&out.0.borrow()),
            "{\n  \"a\": 1\n}\n"
        );
        assert_eq!(
            String::from_utf8_lossy(&err.0.borrow()),
            "started the daemon\n"
        );
    }

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(escape_controls("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(
            escape_controls("a\x1b]0;pwned\x07b\rc\u{9b}31m"),
            "a\\x1b]0;pwned\\x07b\\rc\\x9b31m"
        );
        let (out, err) = (Buf::default(), Buf::default());
        let mut p = Printer::to(Box::new(out.clone()), Box::new(err.clone()), false);
        p.line("name \x1b[2J").expect("line");
        p.note("hint \x1b[31m");
        assert_eq!(String::from_utf8_lossy(&out.0.borrow()), "name \\x1b[2J\n");
        assert_eq!(String::from_utf8_lossy(&err.0.borrow()), "hint \\x1b[31m\n");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["4242".into(), "checkout".into(), "awake".into()],
            vec!["7".into(), "-".into(), "gone".into()],
        ];
        let lines = table(&["PID", "NAME", "STATE"], &rows);
        assert_eq!(lines[0], "PID   NAME      STATE");
        assert_eq!(lines[1], "4242  checkout  awake");
        assert_eq!(lines[2], "7     -         gone");
    }
}
