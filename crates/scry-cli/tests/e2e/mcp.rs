//! MCP over HTTP: `/mcp` needs the token like the REST API, loopback or not, and then serves
//! (the SDK's loopback-only Host check is lifted for a daemon bound elsewhere). The MCP
//! session itself is tested with the official MCP Python SDK (python/tests/test_mcp.py).

use serde_json::Value;

use crate::support::{http_request, Ctx};
use crate::web::{non_loopback_ip, start_daemon_on, TOKEN};

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"0"}}}"#;

#[test]
fn mcp_over_http_needs_the_token() {
    // Off loopback where the machine has another address; on loopback the rule is the same.
    let ip = non_loopback_ip().unwrap_or_else(|| "127.0.0.1".to_owned());
    let mut ctx = Ctx::new();
    let http = start_daemon_on(&mut ctx, &ip);
    let headers =
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n";
    let (status, body) = http_request(&http, "POST", "/mcp", Some(INIT), headers).expect("POST");
    assert_eq!(status, 401, "{body}");
    let with_token = format!("{headers}Authorization: Bearer {TOKEN}\r\n");
    let (status, body) =
        http_request(&http, "POST", "/mcp", Some(INIT), &with_token).expect("POST");
    assert_eq!(status, 200, "{body}");
    // The answer is JSON or one server-sent event carrying it.
    let json = body
        .lines()
        .find_map(|l| {
            l.strip_prefix("data:")
                .map(str::trim)
                .filter(|d| d.starts_with('{'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| body.trim().to_owned());
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["result"]["serverInfo"]["name"], "scry", "{v}");
}
