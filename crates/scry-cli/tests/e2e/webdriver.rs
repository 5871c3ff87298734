//! A small W3C WebDriver client for the web UI's tests: Debian's `chromedriver` driving
//! headless `chromium`.
//!
//! WebDriver is JSON over HTTP, and the handful of commands the tests need (new session, go,
//! find, type, click, run a script, screenshot) fit in this file on top of the harness's own
//! blocking HTTP helper; an async client crate (fantoccini, thirtyfour) would bring a second
//! HTTP stack and TLS into the tests for no gain here.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{wait_for, Proc};

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver process and one browser session; both end on drop.
pub struct Browser {
    driver_addr: String,
    session: String,
    _profile: tempfile::TempDir,
    _driver: Proc,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One HTTP/1.1 exchange with chromedriver, which keeps connections open: the answer is read
/// up to its Content-Length rather than to the end of the stream.
fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    extra_headers: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut length: Option<usize> = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok();
            }
        }
    }
    let mut raw = Vec::new();
    match length {
        Some(n) => {
            raw.resize(n, 0);
            r.read_exact(&mut raw)?;
        }
        None => {
            r.read_to_end(&mut raw)?;
        }
    }
    Ok((status, String::from_utf8_lossy(&raw).into_owned()))
}

fn try_call(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let text = body.map(|b| b.to_string());
    let (status, reply) = http_request(
        addr,
        method,
        path,
        text.as_deref(),
        "Content-Type: application/json\r\n",
    )
    .map_err(|e| format!("chromedriver {method} {path}: {e}"))?;
    let v: Value = serde_json::from_str(&reply)
        .map_err(|e| format!("chromedriver {method} {path}: bad JSON ({e}): {reply}"))?;
    if status >= 400 {
        return Err(format!(
            "chromedriver {method} {path} -> {status}: {}",
            v["value"]
        ));
    }
    Ok(v["value"].clone())
}

fn call(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    try_call(addr, method, path, body).unwrap_or_else(|e| panic!("{e}"))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile. The flags keep the
    /// browser from calling home (this network is closed and it would keep retrying).
    pub fn start(log_dir: &Path) -> Browser {
        assert!(
            Path::new(CHROMEDRIVER).is_file() && Path::new(CHROMIUM).is_file(),
            "the web UI tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})"
        );
        let port = free_port();
        let log = std::fs::File::create(log_dir.join("chromedriver.log")).expect("log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start chromedriver");
        let driver = Proc {
            child,
            label: "chromedriver".into(),
        };
        let addr = format!("127.0.0.1:{port}");
        wait_for("chromedriver to serve", Duration::from_secs(60), || {
            let (status, body) = http_request(&addr, "GET", "/status", None, "").ok()?;
            (status == 200 && body.contains("\"ready\":true")).then_some(())
        });
        let profile = tempfile::Builder::new()
            .prefix("scry-chromium-")
            .tempdir_in("/tmp")
            .expect("profile dir");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        // A loaded machine sometimes fails the browser's first start (chromedriver gives up
        // waiting for its DevTools port): one more try.
        let v = try_call(&addr, "POST", "/session", Some(&caps))
            .or_else(|_| try_call(&addr, "POST", "/session", Some(&caps)))
            .unwrap_or_else(|e| panic!("{e}"));
        let session = v["sessionId"].as_str().expect("sessionId").to_owned();
        Browser {
            driver_addr: addr,
            session,
            _profile: profile,
            _driver: driver,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        call(
            &self.driver_addr,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    /// Loads a URL.
    pub fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs a script in the page (`return …` gives the value).
    pub fn script(&self, script: &str, args: Value) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// Polls a script until it returns something truthy; returns that value.
    pub fn wait_script(&self, what: &str, timeout: Duration, script: &str) -> Value {
        wait_for(what, timeout, || {
            let v = self.script(script, json!([]));
            match &v {
                Value::Null | Value::Bool(false) => None,
                Value::Number(n) if n.as_f64() == Some(0.0) => None,
                Value::String(s) if s.is_empty() => None,
                _ => Some(v),
            }
        })
    }

    /// The element a CSS selector finds.
    pub fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        v[ELEMENT_KEY].as_str().expect("element id").to_owned()
    }

    /// Types into an element.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(&json!({ "text": text })),
        );
    }

    /// Clicks an element. The page rebuilds its lists as updates stream in, so an element
    /// replaced between finding and clicking is found again.
    pub fn click(&self, css: &str) {
        let mut last = String::new();
        for _ in 0..5 {
            let id = self.find(css);
            let path = format!("/session/{}/element/{id}/click", self.session);
            match try_call(&self.driver_addr, "POST", &path, Some(&json!({}))) {
                Ok(_) => return,
                Err(e) if e.contains("stale element") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}");
    }

    /// A PNG of an element (or of the viewport when `css` is None), written to `path`.
    pub fn screenshot(&self, css: Option<&str>, path: &Path) -> Vec<u8> {
        use base64::Engine as _;
        let v = match css {
            Some(css) => {
                let id = self.find(css);
                self.cmd("GET", &format!("/element/{id}/screenshot"), None)
            }
            None => self.cmd("GET", "/screenshot", None),
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("valid base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifact dir");
        }
        std::fs::write(path, &png).expect("write screenshot");
        png
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the browser; chromedriver itself is killed by its Proc.
        let _ = http_request(
            &self.driver_addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
            "",
        );
    }
}

/// Where test artifacts go: `target/artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    crate::support::repo().join("target/artifacts")
}
