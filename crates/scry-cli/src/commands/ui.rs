//! `scry ui`: the web UI's URL, opened in a browser when one is available.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use scry_api::UiLoginLink;
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
    let link: UiLoginLink = client.post_as("/api/v1/ui/login", &json!({})).await?;
    let path = &link.path;
    // Over SCRY_DAEMON the browser goes where the CLI went; else to the daemon's TCP address.
    let base = if client.explicit {
        client.base.clone()
    } else {
        format!("http://{}", link.http)
    };
    let url = ui_url(&base, path);
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

/// The sign-in link: `path` (a one-time `/login?once=…`) on the daemon's `base` URL. A daemon
/// bound to every address is reached here through loopback.
pub fn ui_url(base: &str, path: &str) -> String {
    let base = base
        .trim_end_matches('/')
        .replace("//0.0.0.0:", "//127.0.0.1:")
        .replace("//[::]:", "//[::1]:");
    format!("{base}{path}")
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
            ui_url("http://127.0.0.1:7390/", "/login?once=ab"),
            "http://127.0.0.1:7390/login?once=ab"
        );
        assert_eq!(
            ui_url("http://0.0.0.0:7390", "/login?once=ab"),
            "http://127.0.0.1:7390/login?once=ab"
        );
        assert_eq!(
            ui_url("http://[::]:7390", "/login?once=ab"),
            "http://[::1]:7390/login?once=ab"
        );
    }
}
