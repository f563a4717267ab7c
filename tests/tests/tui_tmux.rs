//! The terminal UI driven as a person would, in tmux: replay a recorded lab
//! scenario, see the finding, open it, filter, export, quit — and the terminal is
//! restored.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use tests::{conntrace_bin, run_lab, unique, Recorder};

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(width: u16, height: u16) -> Self {
        let t = Self {
            socket: unique("ct-tmux-"),
        };
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "ui",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "bash --norc --noprofile",
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = tests::run_ok(Command::new("tmux").args(["-L", &self.socket]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.run(&["send-keys", "-t", "ui", k]);
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "ui", "-l", text]);
        std::thread::sleep(Duration::from_millis(150));
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-t", "ui", "-p"])
    }

    /// Waits until the screen shows `text`.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "screen never showed {text:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn replay_in_tmux_find_open_filter_export_quit() {
    let rec = Recorder::start(&[]);
    let lab = run_lab("keepalive-race");
    let recording = rec.stop();
    let port = lab.endpoint.rsplit(':').next().expect("port").to_owned();
    let dir: PathBuf = std::env::temp_dir().join(unique("ct-export-"));
    std::fs::create_dir_all(&dir).expect("export dir");
    // The UI's own temp dir, to see that its spool leaves nothing there.
    let tmp: PathBuf = std::env::temp_dir().join(unique("ct-uitmp-"));
    std::fs::create_dir_all(&tmp).expect("ui temp dir");

    let tmux = Tmux::new(160, 30);
    tmux.type_text(&format!(
        "cd {} && TMPDIR={} {} replay {}; echo EXIT=$?",
        dir.display(),
        tmp.display(),
        conntrace_bin().display(),
        recording.path.display()
    ));
    tmux.keys(&["Enter"]);
    tmux.wait_for("Findings (");
    tmux.keys(&["G"]);
    let screen = tmux.wait_for("keepalive-reuse-race");
    assert!(screen.contains(&lab.endpoint), "{screen}");

    // Open it: evidence, timeline and the fix.
    tmux.keys(&["Enter"]);
    let detail = tmux.wait_for("fix:");
    assert!(
        detail.contains("evidence:")
            && detail.contains("idle_timeout_ms")
            && detail.contains("timeline:"),
        "{detail}"
    );
    tmux.keys(&["Escape"]);

    // Filter by the lab's port, then look at the events.
    tmux.keys(&["/"]);
    tmux.type_text(&port);
    tmux.keys(&["Enter", "Tab", "Tab", "Tab"]);
    let events = tmux.wait_for(&format!("[filter: {port}]"));
    let lines: Vec<&str> = events
        .lines()
        .skip(3)
        .filter(|l| l.contains(" -> "))
        .collect();
    assert!(!lines.is_empty(), "{events}");
    assert!(lines.iter().all(|l| l.contains(&port)), "{events}");

    // Export: the log of everything seen and the report, in the working directory.
    tmux.keys(&["e"]);
    let status = tmux.wait_for("exported");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    let log = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .unwrap_or_else(|| panic!("no log: {status}"));
    let md = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "md"))
        .expect("report");
    let exported = tracer::eventlog::Log::read(log).expect("exported log reads back");
    assert!(
        exported.events().count() >= recording.log.events().count(),
        "every event seen is exported"
    );
    assert!(std::fs::read_to_string(md)
        .expect("md")
        .contains("keepalive-reuse-race"));
    for f in [log, md] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(f).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}: exports are private", f.display());
    }
    // The UI's spool has no name: nothing is left in its temp dir, whatever the exit.
    let spools: Vec<String> = std::fs::read_dir(&tmp)
        .expect("tmp")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    assert!(spools.is_empty(), "spool files left: {spools:?}");
    let _ = std::fs::remove_dir(&tmp);

    // Quit: the shell is back, out of the alternate screen, cursor visible.
    tmux.keys(&["q"]);
    tmux.wait_for("EXIT=0");
    let modes = tmux.run(&[
        "display-message",
        "-p",
        "-t",
        "ui",
        "#{alternate_on} #{cursor_flag}",
    ]);
    assert_eq!(modes.trim(), "0 1", "terminal restored");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A closed terminal (a dropped ssh session) ends the UI: it must not stay behind
/// spinning on a hung-up tty.
#[test]
fn the_ui_ends_when_its_terminal_hangs_up() {
    let rec = Recorder::start(&[]);
    let recording = rec.stop();
    let tmux = Tmux::new(100, 30);
    tmux.type_text(&format!(
        "{} replay {}; echo EXIT=$?",
        conntrace_bin().display(),
        recording.path.display()
    ));
    tmux.keys(&["Enter"]);
    tmux.wait_for("Findings (");
    let pattern = format!("replay {}", recording.path.display());
    // Any process whose command line is this replay (from /proc: no procps needed).
    let running = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|p| {
                std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&pattern)
                })
            })
    };
    assert!(running(), "the UI runs");
    drop(tmux); // kills the server: the terminal hangs up
    let deadline = Instant::now() + Duration::from_secs(5);
    while running() {
        assert!(Instant::now() < deadline, "the UI outlived its terminal");
        std::thread::sleep(Duration::from_millis(100));
    }
}
