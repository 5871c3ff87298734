//! `scry top [PID]`: the tree of `scry ps --tree PID` (or every Python process) refreshed live
//! in the terminal until `q`.
//!
//! The full-screen view is the one output that does not go through [`Printer`]: ratatui draws
//! on the terminal itself (raw mode, alternate screen), and only when stdout is a terminal.
//! Errors and the closing note still go through the printer, after the screen is restored.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use ratatui::backend::CrosstermBackend;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Paragraph, Row, Table};
use ratatui::Terminal;
use scry_daemon::Home;
use scry_proc::tree::{Sampler, Selection};

use super::ps::{known, rows_of, tree_cells, Known, TREE_HEADER};
use super::CmdResult;
use crate::cli::TopArgs;
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;

/// Raw mode and the alternate screen, switched off again on drop (also when unwinding).
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        terminal::enable_raw_mode()?;
        let screen = Screen;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// Whether a key ends `top`: `q`, Esc or ctrl-c (raw mode turns ctrl-c into a key).
fn quits(code: KeyCode, modifiers: KeyModifiers) -> bool {
    matches!(code, KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc)
        || (code == KeyCode::Char('c') && modifiers.contains(KeyModifiers::CONTROL))
}

/// Runs the live view until a quitting key.
pub async fn top(home: &Home, args: &TopArgs, printer: &mut Printer) -> CmdResult {
    if !std::io::stdout().is_terminal() {
        return Err(CliError::new("scry top needs a terminal")
            .hint("`scry ps --tree PID` prints the same tree once (and --json for scripts)"));
    }
    if !(args.interval.is_finite() && args.interval >= 0.1) {
        return Err(CliError::new(format!(
            "invalid --interval {}: expected seconds, 0.1 or more",
            args.interval
        )));
    }
    let selection = match args.pid {
        Some(pid) => Selection::Tree(pid),
        None => Selection::Python,
    };
    let mut sampler = Sampler::new();
    // A missing root is reported before the screen is taken over.
    let mut sample = sampler
        .sample(selection)
        .map_err(|e| CliError::new(e.to_string()).hint("is the pid right? `ps -ef` lists them"))?;
    let interval = Duration::from_secs_f64(args.interval);
    let ended = {
        let _screen = Screen::enter()?;
        let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
        term.clear()?;
        let mut refreshes: u64 = 0;
        // The first frame shows no CPU % yet: the next sample comes quickly.
        let mut wait = Duration::from_millis(200);
        loop {
            let (known, daemon) = known(home).await;
            refreshes += 1;
            draw(
                &mut term, args.pid, &sample, &known, daemon, refreshes, interval,
            )?;
            if wait_for_quit(wait)? {
                break None;
            }
            wait = interval;
            match sampler.sample(selection) {
                Ok(s) => sample = s,
                Err(_) => break args.pid,
            }
        }
    };
    if let Some(pid) = ended {
        printer.note(format!("scry: process {pid} exited"));
    }
    Ok(ExitStatus::Success)
}

/// Waits up to `wait` for a key; true when it quits.
fn wait_for_quit(wait: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !event::poll(left)? {
            return Ok(false);
        }
        if let Event::Key(key) = event::read()? {
            if key.kind != KeyEventKind::Release && quits(key.code, key.modifiers) {
                return Ok(true);
            }
        }
    }
}

fn draw(
    term: &mut Terminal<CrosstermBackend<std::io::Stdout>>,
    root: Option<u32>,
    sample: &[scry_proc::tree::TreeProcess],
    known: &HashMap<u32, Known>,
    daemon: bool,
    refreshes: u64,
    interval: Duration,
) -> std::io::Result<()> {
    let rows = rows_of(sample.to_vec(), known, scry_daemon::now());
    let cells = tree_cells(&rows);
    let what = match root {
        Some(pid) => format!("the tree under {pid}"),
        None => "every Python process".to_owned(),
    };
    let title = format!(
        "scry top: {what} · {} process{} · every {:.1}s · refresh {refreshes}",
        cells.len(),
        if cells.len() == 1 { "" } else { "es" },
        interval.as_secs_f64()
    );
    let footer = format!(
        "q quit · daemon {} · WAIT = state and kernel wait channel",
        if daemon { "running" } else { "not running" }
    );
    let table_rows: Vec<Row> = cells
        .into_iter()
        .map(|c| {
            let python = c.get(4).is_some_and(|v| v != "-");
            let style = if python {
                Style::default().fg(Color::Cyan)
            } else {
                Style::default()
            };
            // Command lines and names come from the processes: shown, never sent as controls.
            let c: Vec<String> = c
                .into_iter()
                .map(|v| crate::printer::escape_controls(&v).into_owned())
                .collect();
            Row::new(c).style(style)
        })
        .collect();
    let widths = [
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(14),
        Constraint::Length(24),
        Constraint::Min(10),
    ];
    let table = Table::new(table_rows, widths).header(
        Row::new(TREE_HEADER.to_vec()).style(Style::default().add_modifier(Modifier::BOLD)),
    );
    term.draw(|f| {
        let [head, body, foot] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(1),
            Constraint::Length(1),
        ])
        .areas(f.area());
        f.render_widget(
            Paragraph::new(title.as_str()).style(Style::default().add_modifier(Modifier::BOLD)),
            head,
        );
        f.render_widget(table, body);
        f.render_widget(
            Paragraph::new(footer.as_str()).style(Style::default().fg(Color::DarkGray)),
            foot,
        );
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        assert!(quits(KeyCode::Char('q'), KeyModifiers::NONE));
        assert!(quits(KeyCode::Esc, KeyModifiers::NONE));
        assert!(quits(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(!quits(KeyCode::Char('c'), KeyModifiers::NONE));
        assert!(!quits(KeyCode::Char('x'), KeyModifiers::NONE));
    }
}
