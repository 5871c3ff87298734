//! `scry ui`: the web UI's URL, opened in a browser when one is available.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scry_daemon::Home;
use serde_json::json;

use super::{emit, CmdResult};
use crate::cli::UiArgs;
use crate::client::DaemonClient;
use crate::printer::Printer;

/// Prints the UI's URL and opens it unless `--no-open` (never failing when no browser exists).
pub async fn ui(home: &Home, args: &UiArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let url = ui_url(&client.base, client.token());
    let browser = if args.no_open { None } else { browser() };
    let opened = match &browser {
        Some(cmd) => open(cmd, &url),
        None => Err("no browser here".to_owned()),
    };
    let value = json!({
        "url": url,
        "opened": opened.is_ok(),
        "browser": browser.as_ref().map(|b| b.join(" ")),
    });
    emit(printer, &value, |p| {
        p.line(format!("scry UI: {url}"))?;
        match (&browser, &opened) {
            (_, Ok(())) => p.note("opened in a browser"),
            (None, _) if args.no_open => {}
            (None, _) => p.note("no browser to open here (set $BROWSER, or open the URL yourself)"),
            (Some(_), Err(e)) => p.note(format!(
                "could not open a browser ({e}); open the URL yourself"
            )),
        }
        Ok(())
    })
}

/// The page's URL. A daemon on a non-loopback address wants the token: it goes after `#`,
/// which browsers never send anywhere, and the page keeps it in the tab's session storage.
pub fn ui_url(base: &str, token: Option<&str>) -> String {
    let given = base.trim_end_matches('/');
    // A daemon bound to every address is reachable here through loopback, and from elsewhere
    // only with the token.
    let base = given
        .replace("//0.0.0.0:", "//127.0.0.1:")
        .replace("//[::]:", "//[::1]:");
    let needs_token = base != given || crate::client::loopback_addr(&base).is_none();
    match token {
        Some(t) if needs_token => format!("{base}/#token={}", fragment_escape(t)),
        _ => format!("{base}/"),
    }
}

fn fragment_escape(t: &str) -> String {
    t.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The command that opens a URL: `$BROWSER` (its first entry; `%s` is the URL), else
/// `xdg-open` when there is a desktop session. None when nothing fits.
fn browser() -> Option<Vec<String>> {
    if let Some(b) = scry_daemon::env::var("BROWSER") {
        let first = b.split(':').next().unwrap_or("").trim().to_owned();
        if !first.is_empty() {
            return Some(first.split_whitespace().map(str::to_owned).collect());
        }
    }
    let desktop = scry_daemon::env::var("DISPLAY").is_some()
        || scry_daemon::env::var("WAYLAND_DISPLAY").is_some();
    let xdg = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("xdg-open"))
            .find(|p| p.is_file())
    });
    match (desktop, xdg) {
        (true, Some(p)) => Some(vec![p.to_string_lossy().into_owned()]),
        _ => None,
    }
}

/// Starts the browser command in its own process group with no terminal I/O; a launcher
/// that fails at once is reported, one that keeps running (a browser) is left to run.
fn open(cmd: &[String], url: &str) -> Result<(), String> {
    let (prog, rest) = cmd.split_first().ok_or("empty browser command")?;
    let mut args: Vec<String> = rest.iter().map(|a| a.replace("%s", url)).collect();
    if !cmd.iter().any(|a| a.contains("%s")) {
        args.push(url.to_owned());
    }
    let mut child = Command::new(prog)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{prog}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{prog} exited with {status}")),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("{prog}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ui_url;

    #[test]
    fn urls() {
        assert_eq!(
            ui_url("http://127.0.0.1:7390", Some("abc")),
            "http://127.0.0.1:7390/"
        );
        assert_eq!(
            ui_url("http://127.0.0.1:7390/", None),
            "http://127.0.0.1:7390/"
        );
        assert_eq!(
            ui_url("http://10.1.2.3:7390", Some("a+b")),
            "http://10.1.2.3:7390/#token=a%2Bb"
        );
        assert_eq!(
            ui_url("http://0.0.0.0:7390", Some("abc")),
            "http://127.0.0.1:7390/#token=abc"
        );
    }
}
