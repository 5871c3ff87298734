//! Bad input to the agent socket and to the HTTP API: clear errors, and the daemon keeps
//! serving.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{http_post_json, http_request, Ctx};

/// Sends `payload`, half-closes, and reads every reply until the daemon closes.
fn exchange(sock: &std::path::Path, payload: &[u8]) -> Vec<Value> {
    exchange_until(sock, payload, |_| false)
}

/// Sends `payload` and reads replies until `done` says so (then closes) or the daemon closes
/// (after our half-close, when `done` never matches).
fn exchange_until(
    sock: &std::path::Path,
    payload: &[u8],
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The daemon closes after a fatal error (an over-long line) while we may still be writing.
    if let Err(e) = s.write_all(payload) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write: {e}");
    }
    let wait_for_done = done(&[json!({"probe": true})]);
    if !wait_for_done {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut replies = Vec::new();
    for line in BufReader::new(s).lines().map_while(Result::ok) {
        replies.push(
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("daemon sent non-JSON {line:?}: {e}")),
        );
        if wait_for_done && done(&replies) {
            break;
        }
    }
    replies
}

fn hello() -> Value {
    json!({"type":"hello","protocol":1,"agent_version":"test","pid":std::process::id(),"ppid":1,
           "host":"test","name":"garbage-test","origin":"embedded",
           "python":{"version":"3.0.0","implementation":"cpython","executable":"/bin/false"},
           "argv":["garbage"],"cwd":"/","started_at":1.0})
}

#[test]
fn agent_socket_answers_garbage_with_errors_and_keeps_serving() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let sock = ctx.home().join("run/agent.sock");

    let replies = exchange(&sock, b"this is not json\n");
    assert_eq!(replies[0]["type"], "error");
    assert_eq!(replies[0]["kind"], "malformed");

    let replies = exchange(&sock, b"{\"type\":\"ping\",\"id\":1}\n");
    assert_eq!(
        replies[0]["kind"], "unknown_type",
        "ping is not an agent message: {replies:?}"
    );

    let replies = exchange(&sock, b"{\"type\":\"heartbeat\"}\n");
    assert_eq!(
        replies[0]["kind"], "unexpected",
        "hello must come first: {replies:?}"
    );

    let mut old = hello();
    old["protocol"] = json!(99);
    let replies = exchange(&sock, format!("{old}\n").as_bytes());
    assert_eq!(replies[0]["type"], "refused");
    assert!(
        replies[0]["reason"].as_str().unwrap_or("").contains("99"),
        "{replies:?}"
    );
    assert_eq!(replies[0]["accepted_protocols"], json!([1]));

    // After a good hello, bad lines get errors and the connection stays usable.
    let mut session = format!("{}\n", hello());
    session.push_str("not json either\n");
    session.push_str("{\"type\":\"frobnicate\",\"id\":5}\n");
    session.push_str("{\"type\":\"report\",\"seq\":-1,\"events\":[]}\n");
    session.push_str(&format!("{}\n", json!({"type":"report","seq":1,"dropped":0,"events":[{"kind":"pulse","t":12.5,"source":null,"data":{"x":1}}]})));
    let replies = exchange_until(&sock, session.as_bytes(), |r| {
        r.iter()
            .any(|m| m["probe"] == true || (m["type"] == "ack" && m["seq"] == 1))
    });
    let types: Vec<&str> = replies
        .iter()
        .map(|r| r["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types[0], "welcome", "{replies:?}");
    let kinds: Vec<&str> = replies
        .iter()
        .filter(|r| r["type"] == "error")
        .map(|r| r["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        ["malformed", "unknown_type", "malformed"],
        "{replies:?}"
    );
    assert!(
        replies.iter().any(|r| r["type"] == "ack" && r["seq"] == 1),
        "the good report is acked: {replies:?}"
    );
    assert!(
        replies
            .iter()
            .any(|r| r["type"] == "error" && r["kind"] == "unknown_type" && r["in_reply_to"] == 5),
        "{replies:?}"
    );

    // The acknowledged event is in the store, with the target's hit time.
    let events = ctx.get("/api/v1/events?kind=pulse");
    assert_eq!(events["events"][0]["t_hit"], 12.5, "{events}");

    // An over-long line (over 16 MiB) is refused without taking the daemon down.
    let mut big = format!("{}\n", hello()).into_bytes();
    big.extend(std::iter::repeat_n(b'x', 17 * 1024 * 1024));
    big.push(b'\n');
    let replies = exchange(&sock, &big);
    assert!(
        replies.iter().any(|r| r["kind"] == "too_large"),
        "{replies:?}"
    );

    assert_eq!(ctx.get("/api/v1/health")["ok"], true);
}

#[test]
fn http_api_answers_garbage_with_json_errors_and_keeps_serving() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let http = ctx.http();

    let (status, body) = http_post_json(&http, "/api/v1/wake", "{not json").expect("post");
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json error body");
    assert_eq!(v["error"]["kind"], "bad_request");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("JSON"),
        "{body}"
    );

    let (status, body) =
        http_post_json(&http, "/api/v1/wake", "{\"target\": [1,2]}").expect("post");
    assert_eq!(status, 400, "{body}");

    let (status, body) =
        http_post_json(&http, "/api/v1/wake", "{\"target\": \"x\", \"extra\": 1}").expect("post");
    assert_eq!(status, 400, "unknown fields are refused: {body}");

    let (status, body) =
        http_request(&http, "GET", "/api/v1/events?limit=lots", None, "").expect("get");
    assert_eq!(status, 400, "{body}");

    let (status, body) =
        http_request(&http, "GET", "/api/v1/processes/notapid", None, "").expect("get");
    assert_eq!(status, 400, "{body}");

    let (status, body) = http_request(&http, "GET", "/nothing/here", None, "").expect("get");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"));

    // Not HTTP at all, on both listeners.
    let mut s = std::os::unix::net::UnixStream::connect(&http).expect("connect");
    s.write_all(b"\x00\x01\x02 garbage garbage\r\n\r\n")
        .expect("write");
    drop(s);
    let mut s = std::net::TcpStream::connect(ctx.tcp()).expect("connect");
    s.write_all(b"\x00\x01\x02 garbage garbage\r\n\r\n")
        .expect("write");
    drop(s);

    assert_eq!(ctx.get("/api/v1/health")["ok"], true);
}

#[test]
fn agent_endpoint_names_the_tcp_port_actually_bound() {
    let ctx = Ctx::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
        .to_string();
    let mut child = ctx
        .cmd(&["serve", "--port", &port, "--agent-tcp", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve");
    let addr = format!("127.0.0.1:{port}");
    let v: Value = crate::support::wait_for("daemon", Duration::from_secs(20), || {
        let (_, body) = crate::support::http_get(&addr, "/api/v1/agent-endpoint").ok()?;
        serde_json::from_str(&body).ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    let tcp = v["tcp"].as_str().expect("tcp");
    assert!(tcp.starts_with("127.0.0.1:") && !tcp.ends_with(":0"), "{v}");
}
