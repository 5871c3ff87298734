//! `scry mcp`: MCP over stdio for AI agents, relayed to the daemon's `/mcp` endpoint (started
//! when needed), so an agent registers one command and every tool runs in the daemon.
//!
//! The relay reads JSON-RPC messages, one per line, from stdin and POSTs each to `/mcp` with
//! the session id the daemon gave at `initialize`; every JSON-RPC message of the answer (a JSON
//! body, or the `data` of each server-sent event) is written to stdout as one line. Requests
//! after `initialize` run concurrently (a long `wait_for_hits` does not hold up a `ping`); one
//! writer task owns stdout, so lines never interleave. stdout carries nothing but protocol
//! messages: notes go to stderr. When stdin ends, the session is closed (`DELETE /mcp`).

use std::sync::Arc;

use futures_util::StreamExt;
use scry_daemon::Home;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Mutex};

use super::CmdResult;
use crate::client::DaemonClient;
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;

const SESSION: &str = "mcp-session-id";

/// Runs `scry mcp`.
pub async fn mcp(home: &Home, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let client = Arc::new(client);
    let session: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        // The protocol stream itself, not presentation: the one place `scry mcp` writes stdout.
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => {
                printer.note(format!("scry mcp: cannot read stdin: {e}"));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                let _ = out_tx.send(
                    json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("parse error: {e}")}})
                        .to_string(),
                );
                continue;
            }
        };
        let has_session = session.lock().await.is_some();
        let job = relay(client.clone(), session.clone(), message, out_tx.clone());
        if has_session {
            tasks.spawn(job);
        } else {
            // `initialize` first, alone: its answer carries the session id the rest need.
            job.await;
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Some(id) = session.lock().await.clone() {
        let _ = client
            .request(reqwest::Method::DELETE, "/mcp")
            .header(SESSION, id)
            .send()
            .await;
    }
    drop(out_tx);
    let _ = writer.await;
    Ok(ExitStatus::Success)
}

/// POSTs one message and forwards every JSON-RPC message of the answer.
async fn relay(
    client: Arc<DaemonClient>,
    session: Arc<Mutex<Option<String>>>,
    message: Value,
    out: mpsc::UnboundedSender<String>,
) {
    let id = message.get("id").cloned();
    if let Err(e) = forward(&client, &session, &message, &out).await {
        // A request must be answered, or the agent waits forever; a notification needs none.
        if let Some(id) = id.filter(|_| message.get("method").is_some()) {
            let _ = out.send(
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": e.message}})
                    .to_string(),
            );
        }
    }
}

async fn forward(
    client: &DaemonClient,
    session: &Mutex<Option<String>>,
    message: &Value,
    out: &mpsc::UnboundedSender<String>,
) -> Result<(), CliError> {
    let mut req = client
        .request(reqwest::Method::POST, "/mcp")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(message.to_string());
    if let Some(id) = session.lock().await.clone() {
        req = req.header(SESSION, id);
    }
    let resp = req.send().await.map_err(|e| {
        CliError::new(format!(
            "the scry daemon is unreachable at {}: {e}",
            client.base
        ))
    })?;
    if let Some(id) = resp.headers().get(SESSION).and_then(|v| v.to_str().ok()) {
        *session.lock().await = Some(id.to_owned());
    }
    let status = resp.status();
    let is_sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if is_sse {
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        let mut data = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| CliError::new(format!("the daemon's answer broke off: {e}")))?;
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(pos) = buf.find('\n') {
                let line: String = buf.drain(..=pos).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    emit(&mut data, out);
                } else if let Some(d) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
        }
        emit(&mut data, out);
        return Ok(());
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| CliError::new(format!("the daemon's answer broke off: {e}")))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        if status.is_success() {
            return Ok(()); // 202: a notification or response was accepted
        }
        return Err(CliError::new(format!("the daemon answered HTTP {status}")));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v.get("jsonrpc").is_some() || v.is_array() => {
            let _ = out.send(v.to_string());
            Ok(())
        }
        Ok(v) => Err(CliError::new(format!(
            "the daemon answered HTTP {status}: {}",
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or(&v.to_string())
        ))),
        Err(_) => Err(CliError::new(format!(
            "the daemon answered HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ))),
    }
}

/// Sends one server-sent event's data if it is a JSON-RPC message (priming events are empty).
fn emit(data: &mut String, out: &mpsc::UnboundedSender<String>) {
    if !data.trim().is_empty() {
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            let _ = out.send(v.to_string());
        }
    }
    data.clear();
}
