//! `scry probe add|list|rm|enable|disable`.

use scry_api::{MetricKind, NewProbe, ProbeInProcess, ProbeState, ProbeView, RateMode, Ttl};
use scry_daemon::Home;

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
        metric: a.metric.as_deref().map(|m| match m {
            "count" => MetricKind::Count,
            "gauge" => MetricKind::Gauge,
            _ => MetricKind::Histogram,
        }),
        labels: a.labels.clone(),
        buckets: a.buckets.clone(),
        ..NewProbe::default()
    };
    let probe = client.add_probe(&request).await?;
    if printer.json {
        printer.json_value(&probe)?;
        return Ok(ExitStatus::Success);
    }
    let spec = &probe.def.spec;
    let id = spec.id.as_str();
    let label = spec
        .name
        .as_deref()
        .map(|n| format!("{n} ({id})"))
        .unwrap_or_else(|| id.to_owned());
    printer.line(format!("probe {label} added at {}", a.location))?;
    if a.unsafe_calls {
        printer.line("note: --unsafe: its expressions may call any function")?;
    }
    for n in &probe.notes {
        printer.line(format!("note: {n}"))?;
    }
    if probe.processes.is_empty() {
        printer.line("no process has it yet: it arms in every matching process that connects")?;
    }
    for s in &probe.processes {
        printer.line(format!("  pid {}: {}", s.pid, status_text(s)))?;
    }
    if let Some(h) = &probe.hint {
        printer.note(format!("hint: {h}"));
    }
    printer.note(format!(
        "hint: `scry events --probe {} --follow` shows its values live",
        spec.name.as_deref().unwrap_or(id)
    ));
    Ok(ExitStatus::Success)
}

/// A probe's state in one process, in words.
fn status_text(p: &ProbeInProcess) -> String {
    let s = &p.status;
    let mut text = state_word(s.state).to_owned();
    if s.state == ProbeState::Armed {
        if let (Some(f), Some(l)) = (&s.file, s.line) {
            text = format!("armed at {f}:{l}");
            if let Some(req) = s.requested_line {
                text.push_str(&format!(" (line {req} is not executable; snapped to {l})"));
            }
        }
    }
    if let Some(r) = &s.reason {
        text.push_str(&format!(": {r}"));
    }
    text
}

/// A probe state as the API names it.
fn state_word(state: ProbeState) -> &'static str {
    match state {
        ProbeState::Pending => "pending",
        ProbeState::Armed => "armed",
        ProbeState::Error => "error",
        ProbeState::Expired => "expired",
        ProbeState::Disabled => "disabled",
    }
}

async fn list(client: &DaemonClient, printer: &mut Printer) -> CmdResult {
    let answer = client.probes().await?;
    if printer.json {
        printer.json_value(&answer)?;
        return Ok(ExitStatus::Success);
    }
    let probes = answer.probes;
    if probes.is_empty() {
        printer.line("no probes")?;
        printer.note("hint: `scry probe add FILE.py:LINE EXPR` adds one");
        return Ok(ExitStatus::Success);
    }
    let mut rows = Vec::new();
    for p in &probes {
        let spec = &p.def.spec;
        let enabled = state_label(p);
        let t = &p.totals;
        // `--unsafe` is the owner's explicit choice: always visible.
        let enabled = if spec.unsafe_calls {
            format!("{enabled} UNSAFE")
        } else {
            enabled.to_owned()
        };
        rows.push(vec![
            spec.id.clone(),
            spec.name.clone().unwrap_or_else(|| "-".into()),
            enabled,
            spec.location.clone(),
            format!("{}/{}/{}/{}", t.hits, t.recorded, t.dropped, t.errors),
            spec.expressions.join(", "),
        ]);
        for s in &p.processes {
            let c = &s.status;
            rows.push(vec![
                String::new(),
                format!("pid {}", s.pid),
                String::new(),
                status_text(s),
                format!("{}/{}/{}/{}", c.hits, c.recorded, c.dropped, c.errors),
                String::new(),
            ]);
        }
        if p.gone > 0 {
            rows.push(vec![
                String::new(),
                format!("gone: {}", p.gone),
                String::new(),
                "exited (their hits are in the totals)".into(),
                String::new(),
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
    let p = client.probe(key).await?;
    if printer.json {
        printer.json_value(&p)?;
        return Ok(ExitStatus::Success);
    }
    let spec = &p.def.spec;
    printer.line(format!(
        "probe     {} ({})",
        spec.name.as_deref().unwrap_or("-"),
        spec.id
    ))?;
    printer.line(format!("location  {}", spec.location))?;
    for e in &spec.expressions {
        printer.line(format!("expr      {e}"))?;
    }
    if let Some(c) = &spec.condition {
        printer.line(format!("if        {c}"))?;
    }
    let enabled = state_label(&p);
    printer.line(format!("state     {enabled}"))?;
    printer.line(if spec.unsafe_calls {
        "unsafe    yes: its expressions may call any function (created with --unsafe)"
    } else {
        "unsafe    no"
    })?;
    let t = &p.totals;
    printer.line(format!(
        "hits      {} (recorded {}, dropped {}, errors {})",
        t.hits, t.recorded, t.dropped, t.errors
    ))?;
    for s in &p.processes {
        printer.line(format!("  pid {}: {}", s.pid, status_text(s)))?;
    }
    if p.gone > 0 {
        printer.line(format!("  gone: {}", gone_text(p.gone)))?;
    }
    Ok(ExitStatus::Success)
}

/// What the count of exited processes that had a probe means.
fn gone_text(n: u64) -> String {
    let (who, have) = if n == 1 {
        ("process", "has")
    } else {
        ("processes", "have")
    };
    format!("{n} {who} that had it {have} exited (their hits are in the totals)")
}

async fn change(
    client: &DaemonClient,
    k: &ProbeKeyArgs,
    action: &str,
    printer: &mut Printer,
) -> CmdResult {
    let (removed, switched) = match (&k.probe, &k.group, action) {
        (Some(p), _, "rm") => (Some(client.remove_probe(p).await?), None),
        (Some(p), _, act) => (None, Some(client.switch_probe(p, act == "enable").await?)),
        (None, Some(g), "rm") => (Some(client.remove_group(g).await?), None),
        (None, Some(g), act) => (None, Some(client.switch_group(g, act == "enable").await?)),
        (None, None, _) => return Err(CliError::new("name a probe (id or name) or a --group")),
    };
    if let Some(removed) = removed {
        if printer.json {
            printer.json_value(&removed)?;
        } else {
            printer.line(format!("removed {}", removed.removed.join(", ")))?;
        }
    }
    if let Some(switched) = switched {
        if printer.json {
            printer.json_value(&switched)?;
        } else {
            let n = switched.probes.len();
            printer.line(format!(
                "{action}d {n} probe{}",
                if n == 1 { "" } else { "s" }
            ))?;
        }
    }
    Ok(ExitStatus::Success)
}

/// A probe's on/off state as `probe list` and `probe show` print it.
fn state_label(p: &ProbeView) -> &'static str {
    if p.expired {
        "expired"
    } else if p.def.enabled {
        "on"
    } else {
        "off"
    }
}
