//! Statistics over captured values: count, min, max, mean and percentiles of each numeric
//! expression; the most frequent values of the others.

use std::collections::{BTreeMap, HashMap};

use scry_api::{ExpressionStats, NumericStats, ValueCounts};
use serde_json::Value;

/// The numeric value of a typed capture (`{"t":"int","v":3}`), if it has one.
pub fn number(typed: &Value) -> Option<f64> {
    match typed["t"].as_str()? {
        "int" | "float" => typed["v"].as_f64(),
        "bool" => typed["v"].as_bool().map(|b| f64::from(u8::from(b))),
        _ => None,
    }
}

/// A short text key for a non-numeric value (for value counts).
fn label(typed: &Value) -> String {
    match typed["t"].as_str() {
        Some("str") => typed["v"].as_str().unwrap_or_default().to_owned(),
        Some("none") => "None".into(),
        Some("error") => format!("<{}>", typed["type"].as_str().unwrap_or("error")),
        Some("obj") => format!("<{}>", typed["type"].as_str().unwrap_or("object")),
        Some(t) => format!("<{t}>"),
        None => typed.to_string(),
    }
}

/// The `q`-quantile (0..=1) of sorted values, by nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Summarizes the `values` objects of many probe events, per expression.
pub fn summarize<'a>(values: impl Iterator<Item = &'a Value>) -> BTreeMap<String, ExpressionStats> {
    let mut numbers: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut others: BTreeMap<String, HashMap<String, u64>> = BTreeMap::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for obj in values {
        let Some(map) = obj.as_object() else { continue };
        for (expr, typed) in map {
            *seen.entry(expr.clone()).or_default() += 1;
            match number(typed) {
                Some(n) if n.is_finite() => numbers.entry(expr.clone()).or_default().push(n),
                _ => {
                    *others
                        .entry(expr.clone())
                        .or_default()
                        .entry(label(typed))
                        .or_default() += 1
                }
            }
        }
    }
    seen.into_iter()
        .map(|(expr, count)| {
            let numeric = numbers.remove(&expr).and_then(numeric_stats);
            let values = others.remove(&expr).map(|counts| {
                let mut top: Vec<(String, u64)> = counts.into_iter().collect();
                top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let distinct = top.len();
                top.truncate(10);
                ValueCounts { distinct, top }
            });
            let stats = ExpressionStats {
                count,
                numeric,
                values,
            };
            (expr, stats)
        })
        .collect()
}

/// Statistics of some numbers (None when there are none).
fn numeric_stats(mut v: Vec<f64>) -> Option<NumericStats> {
    v.sort_by(f64::total_cmp);
    let sum: f64 = v.iter().sum();
    Some(NumericStats {
        count: v.len(),
        min: *v.first()?,
        max: *v.last()?,
        mean: sum / v.len() as f64,
        p50: quantile(&v, 0.50)?,
        p95: quantile(&v, 0.95)?,
        p99: quantile(&v, 0.99)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_stats_of_known_values() {
        let events: Vec<Value> = (1..=100)
            .map(|i| json!({"x": {"t": "int", "v": i}, "s": {"t": "str", "v": if i % 4 == 0 { "a" } else { "b" }}}))
            .collect();
        let s = summarize(events.iter());
        let x = s["x"].numeric.expect("x is numeric");
        assert_eq!(x.count, 100);
        assert_eq!(x.min, 1.0);
        assert_eq!(x.max, 100.0);
        assert_eq!(x.mean, 50.5);
        assert_eq!(x.p50, 50.0);
        assert_eq!(x.p95, 95.0);
        assert_eq!(x.p99, 99.0);
        let strings = s["s"].values.as_ref().expect("s has values");
        assert_eq!(strings.top[0], ("b".to_owned(), 75));
        assert_eq!(strings.distinct, 2);
    }

    #[test]
    fn errors_and_mixed_types_are_counted_not_averaged() {
        let events = [
            json!({"x": {"t": "float", "v": 2.5}}),
            json!({"x": {"t": "error", "type": "KeyError", "message": "k"}}),
            json!({"x": {"t": "float", "v": "nan"}}),
        ];
        let s = summarize(events.iter());
        assert_eq!(s["x"].count, 3);
        assert_eq!(s["x"].numeric.map(|n| n.count), Some(1));
        let top = &s["x"].values.as_ref().expect("values").top;
        assert_eq!(top[0], ("<KeyError>".to_owned(), 1));
    }

    #[test]
    fn quantiles() {
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[3.0], 0.99), Some(3.0));
        assert_eq!(quantile(&[1.0, 2.0], 0.5), Some(1.0));
    }
}
