//! All output of the CLI goes through [`Printer`]: data to stdout, messages to stderr, JSON
//! when asked. Commands never print directly, so output stays apart from work and can be
//! tested against a buffer.
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

    /// A line of data on stdout.
    pub fn line(&mut self, text: impl AsRef<str>) -> io::Result<()> {
        writeln!(self.out, "{}", text.as_ref())?;
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

    /// A message for the person on stderr (never mixed with data).
    pub fn note(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.err, "{}", text.as_ref());
        let _ = self.err.flush();
    }
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
