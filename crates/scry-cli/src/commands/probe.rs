//! `scry probe add|list|rm|enable|disable`.

use scry_api::{NewProbe, RateMode, Ttl};
use scry_daemon::Home;
use serde_json::{json, Value};

use super::CmdResult;
use crate::cli::{ProbeAddArgs, ProbeCmd, ProbeKeyArgs};
use crate::client::DaemonClient;
use crate::error::{CliError, ExitStatus};
use crate::printer::{table, Printer};

/// Runs a probe subcommand.
pub async fn probe(home: &Home, cmd: &ProbeCmd, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    match cmd {
        ProbeCmd::Add(a) => add(&client, a, printer).await,
        ProbeCmd::List(_) => list(&client, printer).await,
        ProbeCmd::Show(s) => show(&client, &s.probe, printer).await,
        ProbeCmd::Rm(k) => change(&client, k, "rm", printer).await,
        ProbeCmd::Enable(k) => change(&client, k, "enable", printer).await,
        ProbeCmd::Disable(k) => change(&client, k, "disable", printer).await,
    }
}

fn rate(a: &ProbeAddArgs) -> RateMode {
    if let Some(n) = a.sample {
        RateMode::Sample { n }
    } else if let Some(per_second) = a.rate {
        RateMode::Rate { per_second }
    } else if let Some(n) = a.first {
        RateMode::First { n }
    } else {
        RateMode::Every
    }
}

async fn add(client: &DaemonClient, a: &ProbeAddArgs, printer: &mut Printer) -> CmdResult {
    let request = NewProbe {
        location: a.location.clone(),
        expressions: a.expressions.clone(),
        name: a.name.clone(),
        condition: a.condition.clone(),
        pid: a.pid,
        process: a.process.clone(),
        all: a.all,
        rate: Some(rate(a)),
        ttl: a.ttl.clone().map(Ttl::Duration),
        stack: a.stack,
        locals: a.locals,
        repr: a.repr,
        unsafe_calls: a.unsafe_calls,
        group: a.group.clone(),
        ..NewProbe::default()
    };
    let body = serde_json::to_value(&request)
        .map_err(|e| CliError::new(format!("cannot encode the probe request: {e}")))?;
    let probe = client.post("/api/v1/probes", &body).await?;
    if printer.json {
        printer.json_value(&probe)?;
        return Ok(ExitStatus::Success);
    }
    let id = probe["id"].as_str().unwrap_or("?");
    let label = probe["name"]
        .as_str()
        .map(|n| format!("{n} ({id})"))
        .unwrap_or_else(|| id.to_owned());
    printer.line(format!("probe {label} added at {}", a.location))?;
    if a.unsafe_calls {
        printer.line("note: --unsafe: its expressions may call any function")?;
    }
    for n in probe["notes"].as_array().into_iter().flatten() {
        printer.line(format!("note: {}", n.as_str().unwrap_or("")))?;
    }
    let statuses = probe["processes"].as_array().cloned().unwrap_or_default();
    if statuses.is_empty() {
        printer.line("no process has it yet: it arms in every matching process that connects")?;
    }
    for s in &statuses {
        printer.line(format!("  pid {}: {}", s["pid"], status_text(s)))?;
    }
    if let Some(h) = probe["hint"].as_str() {
        printer.note(format!("hint: {h}"));
    }
    printer.note(format!(
        "hint: `scry events --probe {} --follow` shows its values live",
        probe["name"].as_str().unwrap_or(id)
    ));
    Ok(ExitStatus::Success)
}

/// A probe's state in one process, in words.
fn status_text(s: &Value) -> String {
    let state = s["state"].as_str().unwrap_or("?");
    let mut text = state.to_owned();
    if state == "armed" {
        if let (Some(f), Some(l)) = (s["file"].as_str(), s["line"].as_u64()) {
            text = format!("armed at {f}:{l}");
            if let Some(req) = s["requested_line"].as_u64() {
                text.push_str(&format!(" (line {req} is not executable; snapped to {l})"));
            }
        }
    }
    if let Some(r) = s["reason"].as_str() {
        text.push_str(&format!(": {r}"));
    }
    text
}

async fn list(client: &DaemonClient, printer: &mut Printer) -> CmdResult {
    let answer = client.get("/api/v1/probes").await?;
    if printer.json {
        printer.json_value(&answer)?;
        return Ok(ExitStatus::Success);
    }
    let probes = answer["probes"].as_array().cloned().unwrap_or_default();
    if probes.is_empty() {
        printer.line("no probes")?;
        printer.note("hint: `scry probe add FILE.py:LINE EXPR` adds one");
        return Ok(ExitStatus::Success);
    }
    let mut rows = Vec::new();
    for p in &probes {
        let enabled = state_label(p);
        let exprs: Vec<&str> = p["expressions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let t = &p["totals"];
        // `--unsafe` is the owner's explicit choice: always visible.
        let enabled = if p["unsafe"] == true {
            format!("{enabled} UNSAFE")
        } else {
            enabled.to_owned()
        };
        rows.push(vec![
            p["id"].as_str().unwrap_or("?").to_owned(),
            p["name"].as_str().unwrap_or("-").to_owned(),
            enabled,
            p["location"].as_str().unwrap_or("?").to_owned(),
            format!(
                "{}/{}/{}/{}",
                t["hits"], t["recorded"], t["dropped"], t["errors"]
            ),
            exprs.join(", "),
        ]);
        for s in p["processes"].as_array().cloned().unwrap_or_default() {
            rows.push(vec![
                String::new(),
                format!("pid {}", s["pid"]),
                String::new(),
                status_text(&s),
                format!(
                    "{}/{}/{}/{}",
                    s["hits"], s["recorded"], s["dropped"], s["errors"]
                ),
                String::new(),
            ]);
        }
    }
    for line in table(
        &[
            "ID",
            "NAME",
            "STATE",
            "LOCATION",
            "HITS/REC/DROP/ERR",
            "EXPRESSIONS",
        ],
        &rows,
    ) {
        printer.line(line)?;
    }
    Ok(ExitStatus::Success)
}

async fn show(client: &DaemonClient, key: &str, printer: &mut Printer) -> CmdResult {
    let p = client.get(&format!("/api/v1/probes/{}", enc(key))).await?;
    if printer.json {
        printer.json_value(&p)?;
        return Ok(ExitStatus::Success);
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    printer.line(format!(
        "probe     {} ({})",
        text(&p["name"]),
        text(&p["id"])
    ))?;
    printer.line(format!("location  {}", text(&p["location"])))?;
    for e in p["expressions"].as_array().into_iter().flatten() {
        printer.line(format!("expr      {}", text(e)))?;
    }
    if let Some(c) = p["condition"].as_str() {
        printer.line(format!("if        {c}"))?;
    }
    let enabled = state_label(&p);
    printer.line(format!("state     {enabled}"))?;
    printer.line(if p["unsafe"] == true {
        "unsafe    yes: its expressions may call any function (created with --unsafe)"
    } else {
        "unsafe    no"
    })?;
    let t = &p["totals"];
    printer.line(format!(
        "hits      {} (recorded {}, dropped {}, errors {})",
        t["hits"], t["recorded"], t["dropped"], t["errors"]
    ))?;
    for s in p["processes"].as_array().into_iter().flatten() {
        printer.line(format!("  pid {}: {}", s["pid"], status_text(s)))?;
    }
    Ok(ExitStatus::Success)
}

async fn change(
    client: &DaemonClient,
    k: &ProbeKeyArgs,
    action: &str,
    printer: &mut Printer,
) -> CmdResult {
    let answer = match (&k.probe, &k.group, action) {
        (Some(p), _, "rm") => client.delete(&format!("/api/v1/probes/{}", enc(p))).await?,
        (Some(p), _, act) => {
            client
                .post(&format!("/api/v1/probes/{}/{act}", enc(p)), &json!({}))
                .await?
        }
        (None, Some(g), "rm") => {
            client
                .delete(&format!("/api/v1/probes?group={}", enc(g)))
                .await?
        }
        (None, Some(g), act) => {
            client
                .post(&format!("/api/v1/groups/{}/{act}", enc(g)), &json!({}))
                .await?
        }
        (None, None, _) => return Err(CliError::new("name a probe (id or name) or a --group")),
    };
    if printer.json {
        printer.json_value(&answer)?;
        return Ok(ExitStatus::Success);
    }
    match action {
        "rm" => {
            let ids: Vec<&str> = answer["removed"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            printer.line(format!("removed {}", ids.join(", ")))?;
        }
        act => {
            let n = answer["probes"].as_array().map(Vec::len).unwrap_or(0);
            printer.line(format!("{act}d {n} probe{}", if n == 1 { "" } else { "s" }))?;
        }
    }
    Ok(ExitStatus::Success)
}

/// Percent-encodes a path or query component.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A probe's on/off state as `probe list` and `probe show` print it.
fn state_label(p: &Value) -> &'static str {
    if p["expired"] == true {
        "expired"
    } else if p["enabled"] == true {
        "on"
    } else {
        "off"
    }
}
