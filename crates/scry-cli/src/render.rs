//! Text rendering of captured values and event lines (the JSON output needs none of this).
//!
//! Values print as Python's `repr` would (`'text'`, `b'\x00ab'`, `<Mode.FULL: 1>`), from the
//! typed encoding of docs/protocol.md "Typed values", and every value and line is bounded
//! ([`VALUE_CHARS`], [`LINE_CHARS`]): a captured ASGI scope must not fill the terminal.
//! [`plain`] is the same value as natural JSON, for the exports.

use scry_api::Event;
use serde_json::Value;

/// At most this many characters of one rendered value (then `…`).
pub const VALUE_CHARS: usize = 200;
/// At most this many characters of one line of text output (then `…`).
pub const LINE_CHARS: usize = 400;
/// At most this many frames of a captured stack under an event.
const STACK_FRAMES: usize = 10;

/// `text` cut to `max` characters, the last one `…` when it was cut.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some(_) => {
            let keep = max.saturating_sub(1);
            let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
            format!("{}…", &text[..end])
        }
    }
}

/// Renders a typed value (`{"t": "int", "v": 3}`, see docs/protocol.md) as Python's `repr`
/// would, bounded to [`VALUE_CHARS`].
pub fn value(v: &Value) -> String {
    bounded(&repr(v), VALUE_CHARS)
}

/// `name=value, …` of a map of typed values (arguments, locals, pulse values), bounded to
/// [`VALUE_CHARS`] per value.
pub fn named_values(map: &Value, separator: &str) -> String {
    map.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={}", value(v)))
                .collect::<Vec<_>>()
                .join(separator)
        })
        .unwrap_or_default()
}

/// The short name of a type label (`app.models.Mode` -> `Mode`), as `repr` shows classes.
fn short_type(label: &str) -> &str {
    label.rsplit('.').next().unwrap_or(label)
}

fn repr(v: &Value) -> String {
    let cut = |s: String| match v["len"].as_u64() {
        Some(n) => format!("{s}…({n})"),
        None => s,
    };
    match v["t"].as_str() {
        Some("none") => "None".into(),
        Some("bool") => if v["v"].as_bool() == Some(true) {
            "True"
        } else {
            "False"
        }
        .into(),
        Some("int") => match &v["v"] {
            Value::String(s) => s.clone(),
            n => n.to_string(),
        },
        Some("float") => match &v["v"] {
            Value::String(s) => s.clone(),
            n => n.to_string(),
        },
        Some("str") => cut(py_str(v["v"].as_str().unwrap_or_default())),
        Some("bytes") => {
            let hex = v["v"].as_str().unwrap_or_default();
            let text = match from_hex(hex) {
                Some(b) => py_bytes(&b),
                None => format!("bytes.fromhex({})", py_str(hex)),
            };
            let text = match v["type"].as_str() {
                Some("bytearray") => format!("bytearray({text})"),
                _ => text,
            };
            cut(text)
        }
        Some(t @ ("list" | "tuple" | "set")) => {
            let frozen = v["frozen"].as_bool() == Some(true);
            let (open, close) = match t {
                "list" => ("[", "]"),
                "tuple" => ("(", ")"),
                _ => ("{", "}"),
            };
            let body = match v["v"].as_array() {
                Some(items) => {
                    let mut parts: Vec<String> = items.iter().map(repr).collect();
                    parts.extend(more(v, items.len()));
                    if t == "set" && parts.is_empty() {
                        return if frozen { "frozenset()" } else { "set()" }.into();
                    }
                    let trailing = if t == "tuple" && items.len() == 1 && parts.len() == 1 {
                        ","
                    } else {
                        ""
                    };
                    format!("{open}{}{trailing}{close}", parts.join(", "))
                }
                None => format!("{open}{}{close}", beyond_depth(v)),
            };
            if frozen {
                format!("frozenset({body})")
            } else {
                body
            }
        }
        Some("dict") => match v["v"].as_array() {
            Some(pairs) => {
                let mut parts: Vec<String> = pairs
                    .iter()
                    .map(|kv| format!("{}: {}", repr(&kv[0]), repr(&kv[1])))
                    .collect();
                parts.extend(more(v, pairs.len()));
                format!("{{{}}}", parts.join(", "))
            }
            None => format!("{{{}}}", beyond_depth(v)),
        },
        Some("enum") => {
            let class = short_type(v["type"].as_str().unwrap_or("Enum"));
            let name = v["name"].as_str().unwrap_or("?");
            match &v["v"] {
                Value::Null => format!("<{class}.{name}>"),
                // Earlier agents sent an int enum's value as a bare number.
                typed @ Value::Object(_) => format!("<{class}.{name}: {}>", repr(typed)),
                bare => format!("<{class}.{name}: {bare}>"),
            }
        }
        Some("obj") => {
            let ty = v["type"].as_str().unwrap_or("object");
            if let Some(r) = v["repr"].as_str() {
                return r.to_owned();
            }
            match v["fields"].as_object() {
                Some(fields) if !fields.is_empty() => {
                    let shown: Vec<String> = fields
                        .iter()
                        .map(|(k, x)| format!("{k}={}", repr(x)))
                        .collect();
                    format!("{}({})", short_type(ty), shown.join(", "))
                }
                _ => format!("<{ty}>"),
            }
        }
        Some("cycle") => match v["type"].as_str() {
            Some("list") => "[...]".into(),
            Some("tuple") => "(...)".into(),
            Some("dict" | "set") => "{...}".into(),
            Some(other) => format!("<{} ...>", short_type(other)),
            None => "...".into(),
        },
        Some("redacted") => "<redacted>".into(),
        Some("error") => format!(
            "!{}: {}",
            v["type"].as_str().unwrap_or("Error"),
            v["message"].as_str().unwrap_or_default()
        ),
        Some(other) => {
            // Summaries (arrays, tensors, frames) and future kinds: show what they carry.
            let fields: Vec<String> = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| *k != "t")
                        .map(|(k, x)| match x {
                            Value::String(s) => format!("{k}={s}"),
                            _ => format!("{k}={x}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            if fields.is_empty() {
                format!("<{other}>")
            } else {
                format!("<{other} {}>", fields.join(" "))
            }
        }
        None => v.to_string(),
    }
}

/// `…N more` when a container holds more items than were captured.
fn more(v: &Value, shown: usize) -> Option<String> {
    match v["len"].as_u64() {
        Some(n) if n as usize > shown => Some(format!("…{} more", n as usize - shown)),
        _ => None,
    }
}

/// The inside of a container cut by the capture's depth limit (it has `len`, no items).
fn beyond_depth(v: &Value) -> String {
    match v["len"].as_u64() {
        Some(0) => String::new(),
        Some(1) => "…1 item".into(),
        Some(n) => format!("…{n} items"),
        None => "…".into(),
    }
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// Python's `repr` of a str: single quotes unless it holds `'` and no `"`; `\n`, `\t`, `\r`,
/// `\\` and the quote escaped; characters that are not printable as `\xNN`, `\uNNNN`,
/// `\UNNNNNNNN` (Python's own test is the Unicode category: control, format, separators other
/// than the space are not printable; this is that test for the characters met in practice).
pub fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !printable(c) => {
                let n = u32::from(c);
                if n < 0x100 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn printable(c: char) -> bool {
    !(c.is_control()
        || (c.is_whitespace() && c != ' ')
        || matches!(
            c,
            '\u{ad}'
                | '\u{600}'..='\u{605}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e000}'..='\u{f8ff}'
        ))
}

/// Python's `repr` of bytes: printable ASCII as it is, `\t`, `\n`, `\r`, `\\` and the quote
/// escaped, every other byte as `\xNN`.
pub fn py_bytes(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    let mut out = String::with_capacity(b.len() + 3);
    out.push('b');
    out.push(char::from(quote));
    for &byte in b {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            q if q == quote => {
                out.push('\\');
                out.push(char::from(q));
            }
            0x20..=0x7e => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out.push(char::from(quote));
    out
}

/// A typed value as natural JSON, for the exports: numbers, strings, booleans, null, lists
/// (tuples and sets too) and objects (a dict whose keys are not all strings keys them by their
/// `repr`); anything else (bytes, enums, objects, summaries) is its `repr` as a string. Cut
/// containers end with a `"…N more"` item; a cut string ends with `…`.
pub fn plain(v: &Value) -> Value {
    match v["t"].as_str() {
        Some("none") => Value::Null,
        Some("bool") => Value::Bool(v["v"].as_bool() == Some(true)),
        // Big ints come as decimal strings, non-finite floats as "nan"/"inf": kept as they are.
        Some("int" | "float") => v["v"].clone(),
        Some("str") => {
            let s = v["v"].as_str().unwrap_or_default();
            Value::String(if v["len"].is_u64() {
                format!("{s}…")
            } else {
                s.to_owned()
            })
        }
        Some("list" | "tuple" | "set") if v["v"].is_array() => {
            let items = v["v"].as_array().map(Vec::as_slice).unwrap_or_default();
            let mut out: Vec<Value> = items.iter().map(plain).collect();
            out.extend(more(v, items.len()).map(Value::String));
            Value::Array(out)
        }
        Some("dict") if v["v"].is_array() => {
            let pairs = v["v"].as_array().map(Vec::as_slice).unwrap_or_default();
            let mut out = serde_json::Map::new();
            for kv in pairs {
                let key = match kv[0]["t"].as_str() {
                    Some("str") => kv[0]["v"].as_str().unwrap_or_default().to_owned(),
                    _ => repr(&kv[0]),
                };
                out.insert(key, plain(&kv[1]));
            }
            if let Some(m) = more(v, pairs.len()) {
                out.insert("…".into(), Value::String(m));
            }
            Value::Object(out)
        }
        None if !v.is_object() => v.clone(),
        _ => Value::String(repr(v)),
    }
}

/// [`plain`] of each value of a map of typed values (arguments, pulse values).
pub fn plain_map(map: &Value) -> Value {
    match map.as_object() {
        Some(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), plain(v))).collect()),
        None => map.clone(),
    }
}

/// Wall-clock seconds as `HH:MM:SS.mmm` (UTC).
pub fn time_of_day(t: f64) -> String {
    let ms = (t.max(0.0) * 1000.0).round() as u64;
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

/// The lines of a stored event: one with its time, process, place, values and name, then (when
/// the probe captured them) its locals on one line and its stack, innermost first, a frame a
/// line (`file:line function`). Every line is bounded to [`LINE_CHARS`].
pub fn event_lines(e: &Event) -> Vec<String> {
    let data = &e.data;
    let pid = data["pid"]
        .as_u64()
        .or(e.pid.map(u64::from))
        .map(|p| format!("pid {p}"))
        .unwrap_or_else(|| format!("proc #{}", e.process_id));
    let file = data["file"]
        .as_str()
        .map(|f| f.rsplit('/').next().unwrap_or(f))
        .unwrap_or("?");
    let place = match data["line"].as_u64() {
        Some(l) => format!("{file}:{l}"),
        None => e.kind.clone(),
    };
    let mut parts = vec![time_of_day(e.t_hit), pid, place];
    if let Some(map) = data["values"].as_object() {
        for (k, v) in map {
            parts.push(format!("{k}={}", value(v)));
        }
    }
    if let Some(n) = data["name"].as_str() {
        parts.push(n.to_owned());
    }
    let mut lines = vec![parts.join("  ")];
    if data["locals"].as_object().is_some_and(|m| !m.is_empty()) {
        lines.push(format!(
            "    locals: {}",
            named_values(&data["locals"], "  ")
        ));
    }
    if let Some(frames) = data["stack"].as_array() {
        for f in frames.iter().take(STACK_FRAMES) {
            lines.push(format!(
                "    at {}:{} {}",
                f["file"].as_str().unwrap_or("?"),
                f["line"],
                f["function"].as_str().unwrap_or("?")
            ));
        }
        if frames.len() > STACK_FRAMES {
            lines.push(format!(
                "    … {} more frames (--json shows them)",
                frames.len() - STACK_FRAMES
            ));
        }
    }
    lines.iter().map(|l| bounded(l, LINE_CHARS)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_typed_values_as_python_repr() {
        assert_eq!(value(&json!({"t":"int","v":5})), "5");
        assert_eq!(
            value(&json!({"t":"int","v":"123456789012345678901"})),
            "123456789012345678901"
        );
        assert_eq!(value(&json!({"t":"float","v":0.5})), "0.5");
        assert_eq!(value(&json!({"t":"float","v":"nan"})), "nan");
        assert_eq!(value(&json!({"t":"none"})), "None");
        assert_eq!(value(&json!({"t":"bool","v":true})), "True");
        assert_eq!(value(&json!({"t":"str","v":"ab","len":900})), "'ab'…(900)");
        assert_eq!(
            value(&json!({"t":"list","v":[{"t":"int","v":1}],"len":3})),
            "[1, …2 more]"
        );
        assert_eq!(
            value(&json!({"t":"dict","v":[[{"t":"str","v":"k"},{"t":"int","v":2}]],"len":1})),
            "{'k': 2}"
        );
        assert_eq!(
            value(&json!({"t":"tuple","v":[{"t":"int","v":1}],"len":1})),
            "(1,)"
        );
        assert_eq!(value(&json!({"t":"set","v":[],"len":0})), "set()");
        assert_eq!(
            value(&json!({"t":"set","frozen":true,"v":[{"t":"int","v":1}],"len":1})),
            "frozenset({1})"
        );
        assert_eq!(value(&json!({"t":"obj","type":"app.Order"})), "<app.Order>");
        assert_eq!(
            value(&json!({"t":"obj","type":"app.Order","fields":{"id":{"t":"int","v":3}}})),
            "Order(id=3)"
        );
        assert_eq!(
            value(&json!({"t":"obj","type":"datetime.date","repr":"datetime.date(2026, 1, 2)"})),
            "datetime.date(2026, 1, 2)"
        );
        assert_eq!(
            value(&json!({"t":"error","type":"KeyError","message":"'x'"})),
            "!KeyError: 'x'"
        );
        assert_eq!(value(&json!({"t":"redacted"})), "<redacted>");
        assert_eq!(value(&json!({"t":"cycle","type":"list"})), "[...]");
        assert_eq!(
            value(&json!({"t":"ndarray","shape":[2,3],"dtype":"float32"})),
            "<ndarray shape=[2,3] dtype=float32>"
        );
    }

    #[test]
    fn strings_are_quoted_and_escaped_as_python_does() {
        assert_eq!(py_str("it's"), "\"it's\"");
        assert_eq!(py_str("say \"hi\" it's"), "'say \"hi\" it\\'s'");
        assert_eq!(py_str("a\tb\nc\\"), "'a\\tb\\nc\\\\'");
        assert_eq!(
            py_str("\u{0}\u{7f}\u{a0}\u{200b}é😀"),
            "'\\x00\\x7f\\xa0\\u200bé😀'"
        );
    }

    #[test]
    fn bytes_print_as_python_repr_not_hex() {
        // b'/price/a'
        assert_eq!(
            value(&json!({"t":"bytes","v":"2f70726963652f61"})),
            "b'/price/a'"
        );
        assert_eq!(
            value(&json!({"t":"bytes","v":"00ff0a5c27","len":4096})),
            "b\"\\x00\\xff\\n\\\\'\"…(4096)"
        );
        assert_eq!(
            value(&json!({"t":"bytes","v":"6869","type":"bytearray"})),
            "bytearray(b'hi')"
        );
        assert_eq!(value(&json!({"t":"bytes","v":"zz"})), "bytes.fromhex('zz')");
    }

    #[test]
    fn enums_print_as_python_repr() {
        let full = json!({"t":"enum","type":"app.modes.Mode","name":"FULL","v":{"t":"int","v":1}});
        assert_eq!(value(&full), "<Mode.FULL: 1>");
        let text = json!({"t":"enum","type":"app.Color","name":"RED","v":{"t":"str","v":"red"}});
        assert_eq!(value(&text), "<Color.RED: 'red'>");
        // What earlier agents sent for an IntEnum, and for a value beyond the depth.
        let bare = json!({"t":"enum","type":"app.Level","name":"HIGH","v":3});
        assert_eq!(value(&bare), "<Level.HIGH: 3>");
        assert_eq!(
            value(&json!({"t":"enum","type":"Mode","name":"FULL"})),
            "<Mode.FULL>"
        );
    }

    #[test]
    fn containers_beyond_the_depth_say_how_many_items_they_hold() {
        let nested =
            json!({"t":"dict","v":[[{"t":"str","v":"outer"},{"t":"dict","len":1}]],"len":1});
        assert_eq!(value(&nested), "{'outer': {…1 item}}");
        assert_eq!(value(&json!({"t":"list","len":5})), "[…5 items]");
        assert_eq!(value(&json!({"t":"tuple","len":0})), "()");
        assert_eq!(value(&json!({"t":"list","v":[],"len":2})), "[…2 more]");
    }

    #[test]
    fn long_values_and_lines_are_bounded() {
        let long = json!({"t":"str","v":"x".repeat(1000)});
        let shown = value(&long);
        assert_eq!(shown.chars().count(), VALUE_CHARS);
        assert!(shown.ends_with('…') && shown.starts_with("'xxx"));
        assert_eq!(bounded("héllo", 3), "hé…");
        assert_eq!(bounded("héllo", 5), "héllo");
        let values: serde_json::Map<String, Value> =
            (0..10).map(|i| (format!("v{i}"), long.clone())).collect();
        let e = Event {
            id: 1,
            process_id: 1,
            kind: "probe".into(),
            source: Some("p-1".into()),
            t_hit: 3661.5,
            t_recv: 3661.5,
            data: json!({"file": "/srv/app.py", "line": 7, "values": values, "name": "p",
                         "locals": values,
                         "stack": [{"file": "/srv/app.py", "line": 7, "function": "handle"},
                                   {"file": "/srv/main.py", "line": 30, "function": "main"}]}),
            pid: Some(42),
            name: None,
        };
        let lines = event_lines(&e);
        assert!(lines[0].starts_with("01:01:01.500  pid 42  app.py:7  v0='xxx"));
        assert!(
            lines.iter().all(|l| l.chars().count() <= LINE_CHARS),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("    locals: v0='xxx"));
        assert_eq!(lines[2], "    at /srv/app.py:7 handle");
        assert_eq!(lines[3], "    at /srv/main.py:30 main");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn plain_json_has_no_typed_encoding() {
        let args = json!({
            "path": {"t":"bytes","v":"2f70"},
            "mode": {"t":"enum","type":"m.Mode","name":"FULL","v":{"t":"int","v":1}},
            "scope": {"t":"dict","v":[[{"t":"str","v":"type"},{"t":"str","v":"http"}],
                                      [{"t":"int","v":1},{"t":"list","v":[{"t":"float","v":0.5},{"t":"none"}],"len":4}],
                                      [{"t":"str","v":"deep"},{"t":"dict","len":2}]],"len":3},
            "n": {"t":"int","v":3},
        });
        assert_eq!(
            plain_map(&args),
            json!({"path": "b'/p'", "mode": "<Mode.FULL: 1>", "n": 3,
                   "scope": {"type": "http", "1": [0.5, null, "…2 more"], "deep": "{…2 items}"}})
        );
    }

    #[test]
    fn time_of_day_is_utc() {
        assert_eq!(time_of_day(3661.5), "01:01:01.500");
    }
}
