//! Text rendering of captured values and event lines (the JSON output needs none of this).

use scry_api::Event;
use serde_json::Value;

/// Renders a typed value (`{"t": "int", "v": 3}`, see docs/protocol.md) compactly.
pub fn value(v: &Value) -> String {
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
        Some("int") => v["v"].to_string().trim_matches('"').to_owned(),
        Some("float") => match &v["v"] {
            Value::String(s) => s.clone(),
            n => n.to_string(),
        },
        Some("str") => cut(format!("{:?}", v["v"].as_str().unwrap_or_default())),
        Some("bytes") => cut(format!("b'{}'", v["v"].as_str().unwrap_or_default())),
        Some(t @ ("list" | "tuple" | "set")) => {
            let items: Vec<String> = v["v"]
                .as_array()
                .map(|a| a.iter().map(value).collect())
                .unwrap_or_default();
            let more = more(v, items.len());
            let (open, close) = match t {
                "list" => ("[", "]"),
                "tuple" => ("(", ")"),
                _ => ("{", "}"),
            };
            format!("{open}{}{more}{close}", items.join(", "))
        }
        Some("dict") => {
            let items: Vec<String> = v["v"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|kv| format!("{}: {}", value(&kv[0]), value(&kv[1])))
                        .collect()
                })
                .unwrap_or_default();
            let more = more(v, items.len());
            format!("{{{}{more}}}", items.join(", "))
        }
        Some("obj") => {
            let ty = v["type"].as_str().unwrap_or("object");
            match v["repr"].as_str() {
                Some(r) => r.to_owned(),
                None => format!("<{ty}>"),
            }
        }
        Some("error") => format!(
            "!{}: {}",
            v["type"].as_str().unwrap_or("Error"),
            v["message"].as_str().unwrap_or_default()
        ),
        Some(other) => {
            // Summaries (arrays, tensors, frames) and future kinds: show what they carry.
            let mut fields: Vec<String> = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| *k != "t")
                        .map(|(k, x)| format!("{k}={x}"))
                        .collect()
                })
                .unwrap_or_default();
            fields.sort();
            format!("<{other} {}>", fields.join(" "))
        }
        None => v.to_string(),
    }
}

fn more(v: &Value, shown: usize) -> String {
    match v["len"].as_u64() {
        Some(n) if n as usize > shown => format!(", …{} more", n as usize - shown),
        _ => String::new(),
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

/// One line for a stored event.
pub fn event_line(e: &Event) -> String {
    let data = &e.data;
    let t = e.t_hit;
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
    let mut parts = vec![time_of_day(t), pid, place];
    if let Some(map) = data["values"].as_object() {
        for (k, v) in map {
            parts.push(format!("{k}={}", value(v)));
        }
    }
    if let Some(n) = data["name"].as_str() {
        parts.push(n.to_owned());
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_typed_values() {
        assert_eq!(value(&json!({"t":"int","v":5})), "5");
        assert_eq!(value(&json!({"t":"float","v":0.5})), "0.5");
        assert_eq!(value(&json!({"t":"float","v":"nan"})), "nan");
        assert_eq!(value(&json!({"t":"none"})), "None");
        assert_eq!(value(&json!({"t":"bool","v":true})), "True");
        assert_eq!(
            value(&json!({"t":"str","v":"ab","len":900})),
            "\"ab\"…(900)"
        );
        assert_eq!(
            value(&json!({"t":"list","v":[{"t":"int","v":1}],"len":3})),
            "[1, …2 more]"
        );
        assert_eq!(
            value(&json!({"t":"dict","v":[[{"t":"str","v":"k"},{"t":"int","v":2}]]})),
            "{\"k\": 2}"
        );
        assert_eq!(value(&json!({"t":"obj","type":"app.Order"})), "<app.Order>");
        assert_eq!(
            value(&json!({"t":"error","type":"KeyError","message":"'x'"})),
            "!KeyError: 'x'"
        );
        assert_eq!(
            value(&json!({"t":"ndarray","shape":[2,3],"dtype":"float32"})),
            "<ndarray dtype=\"float32\" shape=[2,3]>"
        );
    }

    #[test]
    fn time_of_day_is_utc() {
        assert_eq!(time_of_day(3661.5), "01:01:01.500");
    }
}
