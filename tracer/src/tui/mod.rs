//! The terminal UI: `conntrace` (live) and `conntrace replay FILE`.
//!
//! Two threads: the engine thread ([`feed`]) owns the engine, the probes or the
//! replayed log, and a spool of everything seen (for export); it sends
//! [`snapshot::Snapshot`]s. The UI thread only draws the latest snapshot ([`view`],
//! at most 20 frames a second) and turns keys into [`app::UiCommand`]s. Rendering
//! does no I/O and holds no locks.

pub mod app;
pub mod feed;
pub mod snapshot;
pub mod view;

#[cfg(test)]
mod tests;

use std::{
    path::Path,
    sync::mpsc::{self, Receiver, Sender, TryRecvError},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};
use crossterm::event::{self, Event as TermEvent, KeyEventKind};

use self::{
    app::{App, UiCommand},
    feed::TuiSink,
    snapshot::Snapshot,
};
use crate::{
    eventlog,
    kernel::session,
    pipeline::{filter::Filter, live},
};

const FRAME: Duration = Duration::from_millis(50);

/// Restores the terminal when dropped, also on error and (through ratatui's hook)
/// on panic.
struct Terminal(ratatui::DefaultTerminal);

impl Terminal {
    fn new() -> Self {
        Self(ratatui::init())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Waits up to `ms` for terminal input: `Some(true)` readable, `Some(false)` nothing
/// (or a signal), `None` when the terminal hung up.
fn terminal_input(ms: i32) -> Option<bool> {
    let mut p = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&raw mut p, 1, ms) };
    if n < 0 {
        return Some(false);
    }
    if p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return None;
    }
    Some(p.revents & libc::POLLIN != 0)
}

fn ui_loop(
    mut app: App,
    snapshots: &Receiver<Snapshot>,
    commands: &Sender<UiCommand>,
) -> Result<()> {
    let mut terminal = Terminal::new();
    let started = Instant::now();
    let mut frames = 0u64;
    let mut dirty = true;
    let mut last_draw = Instant::now()
        .checked_sub(FRAME)
        .unwrap_or_else(Instant::now);
    while !app.quit {
        // SIGTERM or SIGHUP (a closed session); in raw mode Ctrl-C is a key. A
        // terminal that hung up is seen by `terminal_input` below.
        if crate::signals::requested().is_some() {
            app.quit = true;
        }
        loop {
            match snapshots.try_recv() {
                Ok(s) => {
                    app.on_snapshot(s);
                    dirty = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => app.quit = true,
            }
        }
        if dirty && last_draw.elapsed() >= FRAME {
            terminal.0.draw(|f| view::draw(f, &app))?;
            frames += 1;
            last_draw = Instant::now();
            dirty = false;
        }
        // Wait for input ourselves: on a hung-up terminal crossterm's poll never
        // returns (its reads come back empty at once and it retries), so the UI would
        // spin forever; poll(2) reports the hang-up and the UI ends.
        match terminal_input(20) {
            None => app.quit = true,
            Some(false) => {}
            Some(true) => {
                while event::poll(Duration::ZERO)? {
                    match event::read()? {
                        TermEvent::Key(k) if k.kind == KeyEventKind::Press => {
                            for c in app.on_key(k) {
                                let _ = commands.send(c);
                            }
                            dirty = true;
                        }
                        TermEvent::Resize(..) => dirty = true,
                        _ => {}
                    }
                }
            }
        }
    }
    drop(terminal);
    if std::env::var_os("CONNTRACE_UI_STATS").is_some() {
        let secs = started.elapsed().as_secs_f64();
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let fps = frames as f64 / secs;
        crate::errln!("conntrace: ui drew {frames} frames in {secs:.1} s ({fps:.1} fps)");
    }
    Ok(())
}

fn export_dir() -> std::path::PathBuf {
    std::env::current_dir().unwrap_or_else(|_| std::env::temp_dir())
}

/// `conntrace` / `conntrace tui`: the UI on live kernel events.
pub fn run_live(filter: Filter, options: live::Options) -> Result<()> {
    session::check_privileges()?;
    let header = eventlog::Header::for_this_host();
    let (snap_tx, snap_rx) = mpsc::sync_channel(2);
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let sink = TuiSink::new(
        format!("live on {}", header.host),
        &header,
        snap_tx,
        cmd_rx,
        export_dir(),
    )?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let mut sink = sink;
            live::run(&filter, None, options, &mut sink, |_| {
                let _ = ready_tx.send(());
            })
            .map(|_| ())
        })?;
    // Load errors (privileges, BTF) are printed plainly, before the screen changes.
    if ready_rx.recv().is_err() {
        return engine
            .join()
            .map_err(|_| anyhow!("the engine thread panicked"))?
            .and(Err(anyhow!("the engine stopped before attaching")));
    }
    run_ui(App::new(false), snap_rx, cmd_tx, engine)
}

/// `conntrace replay FILE`: the same UI on a recorded log.
pub fn run_replay(path: &Path) -> Result<()> {
    // Open once here so a bad file is a plain error before the screen changes.
    let header = eventlog::LogReader::open(path)?.header;
    let (snap_tx, snap_rx) = mpsc::sync_channel(2);
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let sink = TuiSink::new(
        format!("replay {}", path.display()),
        &header,
        snap_tx,
        cmd_rx,
        export_dir(),
    )?;
    let owned = path.to_path_buf();
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || feed::replay(&owned, sink))
        .context("starting the engine thread")?;
    run_ui(App::new(true), snap_rx, cmd_tx, engine)
}

/// The UI on this thread until it quits, then the engine thread's outcome.
fn run_ui(
    app: App,
    snap_rx: Receiver<Snapshot>,
    cmd_tx: Sender<UiCommand>,
    engine: std::thread::JoinHandle<Result<()>>,
) -> Result<()> {
    let result = ui_loop(app, &snap_rx, &cmd_tx);
    drop(cmd_tx);
    drop(snap_rx);
    let engine_result = engine
        .join()
        .map_err(|_| anyhow!("the engine thread panicked"))?;
    result.and(engine_result)
}
