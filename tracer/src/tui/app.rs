//! UI state and key handling (`update`); drawing is in `view`.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::snapshot::{Snapshot, SortKey};

/// The four views, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Findings,
    Endpoints,
    Connections,
    Events,
}

impl View {
    pub const ALL: [Self; 4] = [
        Self::Findings,
        Self::Endpoints,
        Self::Connections,
        Self::Events,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Self::Findings => "Findings",
            Self::Endpoints => "Endpoints",
            Self::Connections => "Connections",
            Self::Events => "Events",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// What the keyboard is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a filter; the text so far.
    Filter(String),
    Help,
    /// The selected finding's evidence, timeline and fix.
    Detail,
}

/// Requests to the engine thread.
#[derive(Debug, Clone, PartialEq)]
pub enum UiCommand {
    Filter(String),
    Sort(SortKey),
    /// Pause or resume playback (replay) or intake of new frames (live).
    Pause(bool),
    Export,
    /// Multiply the replay speed.
    Speed(f64),
    JumpToEnd,
}

pub struct App {
    pub view: View,
    pub mode: Mode,
    pub selected: [usize; 4],
    pub filter: String,
    pub sort: SortKey,
    pub paused: bool,
    pub replay: bool,
    pub snapshot: Snapshot,
    pub quit: bool,
}

impl App {
    pub fn new(replay: bool) -> Self {
        Self {
            view: View::Findings,
            mode: Mode::Normal,
            selected: [0; 4],
            filter: String::new(),
            sort: SortKey::default(),
            paused: false,
            replay,
            snapshot: Snapshot::default(),
            quit: false,
        }
    }

    /// Rows in the current view (for moving the selection).
    fn rows(&self) -> usize {
        match self.view {
            View::Findings => self.snapshot.findings.len(),
            View::Endpoints => self.snapshot.endpoints.len(),
            View::Connections => self.snapshot.connections.len(),
            View::Events => self.snapshot.events.len(),
        }
    }

    /// The selection of the current view, kept within its rows.
    pub fn selection(&self) -> usize {
        self.selected[self.view.index()].min(self.rows().saturating_sub(1))
    }

    fn move_selection(&mut self, delta: isize) {
        let rows = self.rows();
        let i = self.view.index();
        let cur = self.selected[i].min(rows.saturating_sub(1));
        self.selected[i] = cur.saturating_add_signed(delta).min(rows.saturating_sub(1));
    }

    /// A new frame from the engine thread (ignored while paused when live).
    pub fn on_snapshot(&mut self, snapshot: Snapshot) {
        if self.paused && !self.replay {
            if snapshot.status.is_some() {
                self.snapshot.status = snapshot.status;
            }
            return;
        }
        self.snapshot = snapshot;
    }

    /// Handles one key; returns what the engine thread must do.
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<UiCommand> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return vec![];
        }
        match &mut self.mode {
            Mode::Filter(text) => {
                match key.code {
                    KeyCode::Esc => self.mode = Mode::Normal,
                    KeyCode::Enter => {
                        self.filter = std::mem::take(text);
                        self.mode = Mode::Normal;
                        self.selected = [0; 4];
                        return vec![UiCommand::Filter(self.filter.clone())];
                    }
                    KeyCode::Backspace => {
                        text.pop();
                    }
                    KeyCode::Char(c) => text.push(c),
                    _ => {}
                }
                return vec![];
            }
            Mode::Help | Mode::Detail => {
                if matches!(
                    key.code,
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q' | '?')
                ) {
                    self.mode = Mode::Normal;
                }
                return vec![];
            }
            Mode::Normal => {}
        }
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Tab => self.view = View::ALL[(self.view.index() + 1) % 4],
            KeyCode::BackTab => self.view = View::ALL[(self.view.index() + 3) % 4],
            KeyCode::Char(c @ '1'..='4') => self.view = View::ALL[usize::from(c as u8 - b'1')],
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::PageDown => self.move_selection(20),
            KeyCode::PageUp => self.move_selection(-20),
            KeyCode::Home => self.selected[self.view.index()] = 0,
            KeyCode::End => self.selected[self.view.index()] = self.rows().saturating_sub(1),
            KeyCode::Enter if self.view == View::Findings && !self.snapshot.findings.is_empty() => {
                self.mode = Mode::Detail;
            }
            KeyCode::Char('/') => self.mode = Mode::Filter(self.filter.clone()),
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                return vec![UiCommand::Sort(self.sort)];
            }
            KeyCode::Char('p' | ' ') => {
                self.paused = !self.paused;
                return vec![UiCommand::Pause(self.paused)];
            }
            KeyCode::Char('e') => return vec![UiCommand::Export],
            KeyCode::Char('+' | '=') if self.replay => return vec![UiCommand::Speed(2.0)],
            KeyCode::Char('-') if self.replay => return vec![UiCommand::Speed(0.5)],
            KeyCode::Char('G') if self.replay => return vec![UiCommand::JumpToEnd],
            KeyCode::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                return vec![UiCommand::Filter(String::new())];
            }
            _ => {}
        }
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use crossterm::event::KeyEvent;

    use super::*;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    #[test]
    fn filter_is_typed_then_applied() {
        let mut app = App::new(false);
        assert!(app.on_key(key(KeyCode::Char('/'))).is_empty());
        for c in "8080".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        assert_eq!(app.mode, Mode::Filter("8080".into()));
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            vec![UiCommand::Filter("8080".into())]
        );
        assert_eq!(app.filter, "8080");
        assert_eq!(
            app.on_key(key(KeyCode::Esc)),
            vec![UiCommand::Filter(String::new())]
        );
    }

    #[test]
    fn tab_cycles_views_and_q_quits() {
        let mut app = App::new(true);
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.view, View::Endpoints);
        app.on_key(key(KeyCode::BackTab));
        app.on_key(key(KeyCode::BackTab));
        assert_eq!(app.view, View::Events);
        assert_eq!(
            app.on_key(key(KeyCode::Char('G'))),
            vec![UiCommand::JumpToEnd]
        );
        app.on_key(key(KeyCode::Char('q')));
        assert!(app.quit);
    }

    #[test]
    fn selection_stays_in_range_on_empty_data() {
        let mut app = App::new(false);
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::End));
        assert_eq!(app.selection(), 0);
        assert!(app.on_key(key(KeyCode::Enter)).is_empty());
        assert_eq!(app.mode, Mode::Normal, "no detail without a finding");
    }
}
