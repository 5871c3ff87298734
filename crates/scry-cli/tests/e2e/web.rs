//! The web UI in real headless Chromium (Debian's `chromium` through `chromedriver`), against a
//! real daemon and a real Python process, in one browser session: the processes page lists the
//! live process, a probe added through the form streams events into the table (and a chart).
//! The browser gets in only through the one-time sign-in link of `scry ui` (a session cookie);
//! without it the TCP listener answers nothing but a page saying how to sign in, loopback or not.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{http_get, http_request, pythons, text, wait_for, Ctx};
use crate::webdriver::{artifacts_dir, Browser};

pub(crate) const TOKEN: &str = "web-e2e-token-3f9a";

/// This host's address on its default route (no packet is sent: a UDP connect only picks the
/// source address), so that the browser reaches the daemon as a non-loopback caller.
pub(crate) fn non_loopback_ip() -> Option<String> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

/// Starts `scry serve --http IP:0` with a known token file; returns the HTTP address.
pub(crate) fn start_daemon_on(ctx: &mut Ctx, ip: &str) -> String {
    std::fs::create_dir_all(ctx.home()).expect("home");
    let token_file = ctx.home().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    std::fs::set_permissions(
        &token_file,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .expect("chmod");
    let info = ctx.start_daemon_with(&["--http", &format!("{ip}:0")]);
    info["http"].as_str().expect("http").to_owned()
}

/// The line of `tests/scripts/orders_loop.py` marked `# PROBE: total`.
fn total_line() -> u32 {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/orders_loop.py");
    let src = std::fs::read_to_string(path).expect("script");
    src.lines()
        .position(|l| l.contains("# PROBE: total"))
        .expect("marked line") as u32
        + 1
}

#[test]
fn web_ui_in_chromium() {
    // The page is the same for every interpreter: the first one runs the probe target, the
    // last (the newest, where exceptions are seen with their type) the traced one.
    let py = pythons().into_iter().next().expect("an interpreter");
    let flow_py = pythons().into_iter().last().expect("an interpreter");
    let mut ctx = Ctx::new();
    // Off loopback where the machine has another address; loopback is no different.
    let ip = non_loopback_ip().unwrap_or_else(|| "127.0.0.1".to_owned());
    let http = start_daemon_on(&mut ctx, &ip);

    // Without the sign-in, nothing: the page says how to get in, the API wants the token.
    let (status, body) = http_get(&http, "/").expect("GET /");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("scry ui"), "{body}");
    assert!(!body.contains("/ui/app.js"), "{body}");
    let (status, _) = http_get(&http, "/ui/app.js").expect("GET");
    assert_eq!(status, 401, "no file without the sign-in");
    let (status, _) = http_get(&http, "/api/v1/processes").expect("GET");
    assert_eq!(status, 401, "the API refuses a caller without token");
    let (status, _) = http_get(&http, &format!("/api/v1/processes?token={TOKEN}")).expect("GET");
    assert_eq!(status, 401, "`?token=` is for the event streams only");
    let (status, _) = http_request(
        &http,
        "GET",
        "/api/v1/processes",
        None,
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    )
    .expect("GET");
    assert_eq!(status, 200);

    let target = ctx.python(&py, "orders_loop.py", &["web-e2e"]);
    let pid = target.pid();
    let flow_target = ctx.python(&flow_py, "flow_app.py", &["web-flow"]);
    let flow_pid = flow_target.pid();
    wait_for("the targets awake", Duration::from_secs(60), || {
        (ctx.state_of(pid).as_deref() == Some("awake")
            && ctx.state_of(flow_pid).as_deref() == Some("awake"))
        .then_some(())
    });

    let browser = Browser::start(ctx.home());
    let out = ctx.scry(&["ui", "--no-open", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let ui: Value = serde_json::from_slice(&out.stdout).expect("json");
    let url = ui["url"].as_str().expect("url").to_owned();
    assert!(
        url.starts_with(&format!("http://{http}/login?once=")),
        "{url}"
    );
    browser.go(&url);

    // Processes: the live process is listed, awake, with its Python version and a Sleep button.
    let row = browser.wait_script(
        "the processes page to list the target",
        Duration::from_secs(60),
        &format!(
            "const r = document.getElementById('proc-{pid}');
             return r && r.dataset.state === 'awake' ? r.innerText : null;"
        ),
    );
    let row = row.as_str().unwrap_or_default().to_owned();
    assert!(row.contains("web-e2e") && row.contains("awake"), "{row}");
    assert!(row.contains("3."), "the Python version is shown: {row}");
    let sleep_button = browser.script(
        &format!("return !!document.getElementById('sleep-{pid}')"),
        json!([]),
    );
    assert_eq!(sleep_button, json!(true));
    // The sign-in link was redirected away: no secret stays in the address bar or history,
    // and the page cannot read its session (HttpOnly).
    let address = browser.script("return location.pathname + location.search", json!([]));
    assert_eq!(
        address,
        json!("/"),
        "the one-time link is not left in the URL"
    );
    let cookies = browser.script("return document.cookie", json!([]));
    assert_eq!(cookies, json!(""), "the session cookie is HttpOnly");

    // Attach from the page: a process that never loaded scry shows up awake.
    let plain = ctx.python(&flow_py, "plain_loop.py", &[]);
    browser.wait_script(
        "the attach form (the daemon offers /api/v1/attach)",
        Duration::from_secs(60),
        "return !document.getElementById('attach-form').hidden",
    );
    browser.type_into("#attach-pid", &plain.pid().to_string());
    browser.click("#attach-go");
    let attached = browser.wait_script(
        "the attached process listed awake",
        Duration::from_secs(60),
        &format!(
            "const r = document.getElementById('proc-{}');
             const out = document.getElementById('attach-result').textContent;
             return r && r.dataset.state === 'awake' ? out : null;",
            plain.pid()
        ),
    );
    assert!(
        attached
            .as_str()
            .unwrap_or_default()
            .starts_with("attached to"),
        "{attached}"
    );
    browser.screenshot(None, &artifacts_dir().join("processes.png"));

    // The live stream is connected (with `?token=` when not on loopback).
    browser.wait_script(
        "the live stream",
        Duration::from_secs(60),
        "return document.getElementById('conn').textContent === 'live'",
    );

    // Probes: add one through the form, for this process.
    browser.click("a[data-page=probes]");
    browser.wait_script(
        "the probe form's process list",
        Duration::from_secs(60),
        &format!("return !!document.querySelector('#probe-target option[value=\"{pid}\"]')"),
    );
    browser.type_into(
        "#probe-location",
        &format!("orders_loop.py:{}", total_line()),
    );
    browser.type_into("#probe-expressions", "subtotal\norder['id']");
    browser.type_into("#probe-name", "webtotals");
    browser.script(
        "const s = document.getElementById('probe-target'); s.value = arguments[0];",
        json!([pid.to_string()]),
    );
    browser.click("#probe-add");
    let armed = browser.wait_script(
        "the probe armed in the target",
        Duration::from_secs(60),
        "for (const r of document.querySelectorAll('#probe-body tr')) {
           if (r.innerText.includes('webtotals') && r.innerText.includes('armed')) return r.innerText;
         }
         return null;",
    );
    let error = browser.script(
        "return document.getElementById('probe-error').textContent",
        json!([]),
    );
    assert_eq!(error, json!(""), "the form reports no error");
    browser.screenshot(None, &artifacts_dir().join("probes.png"));
    assert!(armed.to_string().contains(&pid.to_string()), "{armed}");
    let listed = ctx.scry_json(&["probe", "list"]);
    let probe_id = listed["probes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "webtotals"))
        .and_then(|p| p["id"].as_str())
        .unwrap_or_else(|| panic!("the daemon keeps the probe: {listed}"))
        .to_owned();

    // Events: hits stream into the table as they happen, and `subtotal` gets a chart.
    browser.click("a[data-page=events]");
    let first = browser.wait_script(
        "probe events in the table",
        Duration::from_secs(60),
        &format!(
            "return document.querySelectorAll('#events-body tr[data-source=\"{probe_id}\"]').length"
        ),
    );
    // The table keeps the newest 300 rows, so growth is read from the live counter.
    let seen = "return parseInt(document.getElementById('events-count').textContent) || 0";
    assert!(first.as_u64().unwrap_or(0) > 0);
    let first = browser.script(seen, json!([])).as_u64().unwrap_or(0);
    browser.wait_script(
        "more events streaming in",
        Duration::from_secs(60),
        &format!(
            "return (parseInt(document.getElementById('events-count').textContent) || 0) >= {}",
            first + 10
        ),
    );
    let cells = browser.script(
        &format!(
            "return document.querySelector('#events-body tr[data-source=\"{probe_id}\"]').innerText"
        ),
        json!([]),
    );
    let cells = cells.as_str().unwrap_or_default();
    assert!(
        cells.contains("subtotal=")
            && cells.contains("order['id']=")
            && cells.contains("webtotals"),
        "{cells}"
    );
    browser.wait_script(
        "a chart for subtotal",
        Duration::from_secs(60),
        "const c = document.querySelector('.chart[data-key=\"webtotals · subtotal\"] canvas');
         return c && c.width > 0;",
    );
    // `scry.pulse("request", n=n)` of the other process: pulse events get a chart too.
    browser.wait_script(
        "a chart for the pulses",
        Duration::from_secs(60),
        "return !!document.querySelector('.chart[data-key=\"pulse request · n\"] canvas');",
    );
    let shot = browser.screenshot(None, &artifacts_dir().join("events.png"));
    assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n") && shot.len() > 1000);

    // Remove the probe from the page.
    browser.click("a[data-page=probes]");
    browser.wait_script(
        "the remove button",
        Duration::from_secs(60),
        &format!("return !!document.getElementById('remove-{probe_id}')"),
    );
    browser.click(&format!("#remove-{probe_id}"));
    wait_for("the probe removed", Duration::from_secs(60), || {
        let listed = ctx.scry_json(&["probe", "list"]);
        listed["probes"]
            .as_array()
            .is_some_and(|a| a.iter().all(|p| p["name"] != "webtotals"))
            .then_some(())
    });

    let flow_version = ctx
        .ps()
        .iter()
        .find(|p| p["pid"] == flow_pid && p["state"] == "awake")
        .and_then(|p| p["python_version"].as_str().map(str::to_owned))
        .unwrap_or_default();
    call_flow(&ctx.http(), &browser, flow_pid, &flow_version);

    // A still page for screenshots: no live stream, and a marker once its data is shown.
    browser.go(&format!("http://{http}/?live=0#/processes"));
    let still = browser.wait_script(
        "the still processes page to settle",
        Duration::from_secs(30),
        "return document.documentElement.dataset.settled === 'processes'
             ? document.getElementById('conn').textContent : null;",
    );
    assert_eq!(still, json!("still (live=0)"));

    // `scry ui` again: a new one-time link to the same page.
    let out = ctx.scry(&["ui", "--no-open", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let again = v["url"].as_str().unwrap_or_default();
    assert!(
        again.starts_with(&format!("http://{http}/login?once=")) && again != url,
        "{v}"
    );
    assert_eq!(v["opened"], json!(false));
}

/// The node of function `name` in the call-flow view: (state, calls, duration text, exception
/// text), or None while it is not shown.
fn flow_node(browser: &Browser, name: &str) -> Option<(String, u64, String, String)> {
    let v = browser.script(
        "const n = document.querySelector('#flow .node[data-fn=\"' + arguments[0] + '\"]');
         return n ? [n.dataset.state, Number(n.dataset.calls), n.querySelector('.dur').textContent,
                     n.querySelector('.exc').textContent] : null;",
        json!([name]),
    );
    let a = v.as_array()?;
    Some((
        a[0].as_str()?.to_owned(),
        a[1].as_u64()?,
        a[2].as_str()?.to_owned(),
        a[3].as_str()?.to_owned(),
    ))
}

/// Starts a trace from the call-flow page and watches nodes appear and change state on call,
/// return and exception; hover and editor link; a screenshot as an artifact; stop.
fn call_flow(api: &str, browser: &Browser, pid: u32, version: &str) {
    browser.click("a[data-page=flow]");
    browser.wait_script(
        "the trace form (the daemon offers /api/v1/traces)",
        Duration::from_secs(60),
        &format!(
            "return !document.getElementById('trace-form').hidden &&
                    !!document.querySelector('#trace-target option[value=\"{pid}\"]')"
        ),
    );
    browser.script(
        "document.getElementById('trace-target').value = arguments[0];",
        json!([pid.to_string()]),
    );
    browser.type_into("#trace-include", "flow_app.py");
    browser.click("#trace-start");
    browser.wait_script(
        "the page to say it traces",
        Duration::from_secs(60),
        "return document.getElementById('trace-state').textContent.startsWith('tracing tr-')",
    );

    // An exception that escapes validate() turns its node red and keeps the text.
    let wait = Duration::from_secs(60);
    let validate = wait_for("validate() raised in the view", wait, || {
        flow_node(browser, "validate").filter(|n| n.0 == "raised")
    });
    // Before 3.12 the profile hook sees that a function left by an exception, not which.
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let want = if minor >= 12 {
        "ValueError: bad request"
    } else {
        "exception"
    };
    assert!(validate.3.contains(want), "{version}: {validate:?}");
    // compute() returns: green, with a duration, and called again and again (each call pulses).
    let first = wait_for("compute() returned in the view", wait, || {
        flow_node(browser, "compute").filter(|n| n.0 == "returned" && !n.2.is_empty())
    });
    wait_for("compute() called again", wait, || {
        flow_node(browser, "compute").filter(|n| n.1 > first.1)
    });
    // slow_step() is seen running while on the stack, then settles.
    wait_for("slow_step() running", wait, || {
        flow_node(browser, "slow_step").filter(|n| n.0 == "running")
    });
    wait_for("slow_step() returned", wait, || {
        flow_node(browser, "slow_step").filter(|n| n.0 == "returned")
    });
    // handle() is a caller: indented less than the functions it calls.
    let indents = browser.script(
        "const m = (f) => parseInt(document.querySelector('#flow .node[data-fn=\"' + f + '\"]').style.marginLeft || '0');
         return [m('handle'), m('compute')];",
        json!([]),
    );
    assert!(indents[0].as_i64() < indents[1].as_i64(), "{indents}");

    let png = browser.screenshot(Some("#flow-wrap"), &artifacts_dir().join("callflow.png"));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 2000,
        "a real PNG"
    );

    // Hovering shows module, file:line, arguments, return value and duration.
    let tip = browser.script(
        "const n = document.querySelector('#flow .node[data-fn=\"compute\"]');
         const r = n.getBoundingClientRect();
         n.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: r.x + 5, clientY: r.y + 5}));
         const t = document.getElementById('flow-tip');
         return t.hidden ? null : t.textContent;",
        json!([]),
    );
    let tip = tip.as_str().unwrap_or_default().to_owned();
    for part in [
        "module   __main__",
        "flow_app.py:",
        "args     req=",
        "returned ",
        "took ",
    ] {
        assert!(tip.contains(part), "{part:?} in {tip}");
    }
    // Clicking opens the source through the editor template (default: VS Code).
    let href = browser.script(
        "return document.querySelector('#flow .node[data-fn=\"compute\"]').dataset.href",
        json!([]),
    );
    let href = href.as_str().unwrap_or_default();
    assert!(
        href.starts_with("vscode://file/") && href.contains("/tests/scripts/flow_app.py:"),
        "{href}"
    );

    // The editor template comes from the settings page (kept in localStorage).
    browser.click("a[data-page=settings]");
    browser.script(
        "document.getElementById('editor-template').value = 'myeditor://open?file={path}&line={line}';",
        json!([]),
    );
    browser.click("#settings-form button[type=submit]");
    browser.click("a[data-page=flow]");
    let custom = browser.wait_script(
        "the editor link from the template",
        Duration::from_secs(60),
        "const h = document.querySelector('#flow .node[data-fn=\"compute\"]').dataset.href;
         return h.startsWith('myeditor://') ? h : null;",
    );
    assert!(
        custom
            .as_str()
            .unwrap_or_default()
            .contains("flow_app.py&line="),
        "{custom}"
    );

    // Stop: the trace is stopped for the daemon too.
    browser.click("#trace-stop");
    wait_for("the trace stopped", wait, || {
        let (_, body) = http_request(api, "GET", "/api/v1/traces", None, "").ok()?;
        let list: Value = serde_json::from_str(&body).ok()?;
        let traces = list["traces"].as_array().cloned().unwrap_or_default();
        (!traces.is_empty() && traces.iter().all(|t| t["state"] != "running")).then_some(())
    });
    browser.wait_script(
        "the page to say the trace stopped",
        wait,
        "return document.getElementById('trace-state').textContent === ''",
    );
}

/// `scry ui` opens a one-time sign-in link with `$BROWSER` (here a script that writes down what
/// it was given), and only prints it with `--no-open` or when there is no browser at all. The link
/// signs one browser in, once: its cookie opens the page and the API, and another site's page
/// cannot use it.
#[test]
fn scry_ui_opens_a_sign_in_link_that_works_once() {
    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let tcp = ctx.tcp();
    let opened = ctx.home().join("opened.txt");
    let browser = ctx.home().join("fake-browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > {}\n", opened.display()),
    )
    .expect("script");
    std::fs::set_permissions(
        &browser,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
    )
    .expect("chmod");

    let out = ctx
        .cmd(&["ui", "--json"])
        .env("BROWSER", &browser)
        .output()
        .expect("scry ui");
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let url = v["url"].as_str().expect("url").to_owned();
    let prefix = format!("http://{tcp}/login?once=");
    assert!(url.starts_with(&prefix), "{url}");
    assert!(
        !url.contains(&ctx.token()),
        "the token never goes in a URL: {url}"
    );
    assert_eq!(v["opened"], json!(true), "{v}");
    let got = wait_for("the browser to be started", Duration::from_secs(20), || {
        std::fs::read_to_string(&opened)
            .ok()
            .filter(|s| !s.is_empty())
    });
    assert_eq!(got, url);

    // The link, followed: a session cookie (HttpOnly, SameSite=Strict) and on to the page.
    let path = &url[format!("http://{tcp}").len()..];
    let raw_get = |path: &str, headers: &str| -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&tcp).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        use std::io::{Read, Write};
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {tcp}\r\nConnection: close\r\n{headers}\r\n"
        )
        .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, out)
    };
    let (status, head) = raw_get(path, "");
    assert_eq!(status, 303, "{head}");
    let cookie_line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(cookie_line.contains("HttpOnly"), "{cookie_line}");
    assert!(cookie_line.contains("SameSite=Strict"), "{cookie_line}");
    let cookie = cookie_line
        .split_once(':')
        .map(|(_, v)| v.trim())
        .and_then(|v| v.split(';').next())
        .expect("cookie")
        .to_owned();
    let (status, page) = raw_get("/", &format!("Cookie: {cookie}\r\n"));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("/ui/app.js"), "{page}");
    let (status, body) = raw_get("/api/v1/processes", &format!("Cookie: {cookie}\r\n"));
    assert_eq!(status, 200, "{body}");
    // Another site's page cannot ride on the cookie.
    let (status, body) = raw_get(
        "/api/v1/processes",
        &format!("Cookie: {cookie}\r\nOrigin: http://evil.example\r\n"),
    );
    assert_eq!(status, 403, "{body}");
    // Used up: the same link signs nobody in again; a made-up cookie opens nothing.
    let (status, body) = raw_get(path, "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("scry ui"), "{body}");
    let (status, _) = raw_get(
        "/",
        &format!(
            "Cookie: {}=0000\r\n",
            cookie.split('=').next().unwrap_or("")
        ),
    );
    assert_eq!(status, 401);

    // No browser anywhere: a new link is printed and the command still succeeds.
    let out = ctx
        .cmd(&["ui"])
        .env_remove("BROWSER")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("scry ui");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&prefix), "{}", text(&out));
    assert!(
        !stdout.contains(&url),
        "a new link each time: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no browser"),
        "{}",
        text(&out)
    );
}
