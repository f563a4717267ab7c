//! Snapshot tests of every view on a fixed-size `TestBackend`. The inputs are
//! synthetic and carry fixed clocks, so nothing volatile reaches the screen; the
//! header's rates are set by hand.

use std::collections::VecDeque;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{backend::TestBackend, Terminal};

use super::{
    app::{App, View},
    snapshot::{self, Header, Snapshot, SortKey},
    view,
};
use crate::{
    engine::{testing::Sock, Config, Engine},
    event::{Event, TcpState::*},
};

/// The keep-alive incident on synthetic events: three pooled connections closed by
/// the server at 2 s idle and reused 500 ms later, plus one still open.
fn incident() -> (Engine, VecDeque<Event>) {
    let mut engine = Engine::new(Config::default());
    let mut tail = VecDeque::new();
    let mut feed = |e: Event, engine: &mut Engine| {
        engine.ingest(&e);
        tail.push_back(e);
    };
    for i in 0..3u16 {
        let c = Sock::new(
            u64::from(i) + 1,
            4242,
            "pool-client",
            &format!("10.0.0.1:{}", 40000 + i),
            "10.0.0.5:8080",
        );
        let t = u64::from(i) * 3000;
        for e in c.connect(t) {
            feed(e, &mut engine);
        }
        feed(c.state(t + 2000, Established, CloseWait, 2000), &mut engine);
        feed(c.reset_received(t + 2500, CloseWait, 2500), &mut engine);
    }
    let open = Sock::new(9, 77, "worker", "10.0.0.1:41000", "10.0.0.9:5432");
    for e in open.connect(8600) {
        feed(e, &mut engine);
    }
    feed(open.retransmit(9000, 1200, 2), &mut engine);
    (engine, tail)
}

fn header() -> Header {
    Header {
        source: "live on node-1".into(),
        playback: String::new(),
        events: 1234,
        events_per_sec: 56.0,
        lost: 0,
        not_kept: 0,
        programs: 9,
        bpf_cpu_pct: Some(0.12),
    }
}

fn app_with(view: View) -> App {
    let (engine, tail) = incident();
    let mut app = App::new(false);
    app.on_snapshot(snapshot::build(&engine, &tail, "", SortKey::Age, header()));
    app.view = view;
    app
}

fn render(app: &App, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    terminal.draw(|f| view::draw(f, app)).expect("draw");
    let buf = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width)
            .map(|x| buf[(x, y)].symbol().to_owned())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The header counts the events missing apart from what was seen but not kept whole
/// (owners, early-dropped table entries), and says nothing of the latter at 0.
#[test]
fn header_says_lost_events_apart_from_what_was_not_kept() {
    let (engine, tail) = incident();
    let mut app = App::new(false);
    let h = Header {
        lost: 3,
        not_kept: 12,
        ..header()
    };
    app.on_snapshot(snapshot::build(&engine, &tail, "", SortKey::Age, h));
    let out = render(&app, 140, 6);
    let top = out.lines().next().unwrap_or_default();
    assert!(top.contains("lost 3 · 12 not kept │"), "{top}");
    let out = render(&app_with(View::Findings), 140, 6);
    let top = out.lines().next().unwrap_or_default();
    assert!(
        top.contains("lost 0 │") && !top.contains("not kept"),
        "{top}"
    );
}

#[test]
fn findings_view() {
    insta::assert_snapshot!(render(&app_with(View::Findings), 100, 16));
}

#[test]
fn findings_view_at_80x24() {
    insta::assert_snapshot!(render(&app_with(View::Findings), 80, 24));
}

#[test]
fn finding_detail_with_evidence_timeline_and_fix() {
    let mut app = app_with(View::Findings);
    app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    insta::assert_snapshot!(render(&app, 110, 34));
}

#[test]
fn endpoints_view_shows_the_idle_close_spike() {
    let out = render(&app_with(View::Endpoints), 100, 10);
    assert!(out.contains("2.00s"), "{out}");
    insta::assert_snapshot!(out);
}

/// Issue 21: a listener whose accept queue is full shows its queue and drops.
#[test]
fn endpoints_view_shows_a_full_accept_queue() {
    let (mut engine, tail) = incident();
    for (at, overflows) in [(9_000, 10), (11_000, 35)] {
        engine.record(&crate::event::Record::Listeners(
            crate::engine::testing::listeners(at, "10.0.0.9:5432", (5, 4), overflows),
        ));
    }
    let mut app = App::new(false);
    app.on_snapshot(snapshot::build(&engine, &tail, "", SortKey::Age, header()));
    app.view = View::Endpoints;
    let out = render(&app, 110, 10);
    assert!(out.contains("5/4 25"), "{out}");
}

#[test]
fn connections_view_sorted_by_idle() {
    let (mut engine, tail) = incident();
    // The inspection saw the worker awaiting a reply for 31 s.
    let mut conn =
        crate::engine::testing::waiting_conn(77, "10.0.0.1:41000", "10.0.0.9:5432", 31_000, false);
    conn.last_recv_ms = 31_200;
    engine.record(&crate::event::Record::Waiting(
        crate::engine::testing::waiting(9_000, vec![conn]),
    ));
    let mut app = App::new(false);
    app.sort = SortKey::Idle;
    app.on_snapshot(snapshot::build(&engine, &tail, "", SortKey::Idle, header()));
    app.view = View::Connections;
    insta::assert_snapshot!(render(&app, 100, 10));
}

#[test]
fn events_view_filtered_by_port() {
    let (engine, tail) = incident();
    let mut app = App::new(false);
    app.filter = "5432".into();
    app.on_snapshot(snapshot::build(
        &engine,
        &tail,
        "5432",
        SortKey::Age,
        header(),
    ));
    app.view = View::Events;
    let out = render(&app, 100, 10);
    assert!(!out.contains("8080"), "filtered out: {out}");
    insta::assert_snapshot!(out);
}

#[test]
fn help_overlay() {
    let mut app = app_with(View::Findings);
    app.replay = true;
    app.on_key(KeyEvent::new(KeyCode::Char('?'), KeyModifiers::NONE));
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn empty_feed_renders_every_view() {
    let mut app = App::new(false);
    app.on_snapshot(Snapshot::default());
    for view in View::ALL {
        app.view = view;
        let out = render(&app, 80, 24);
        assert!(out.contains("conntrace"), "{out}");
    }
    app.view = View::Findings;
    assert!(render(&app, 80, 24).contains("no findings yet"));
}

#[test]
fn tiny_and_resized_terminals_never_panic() {
    let mut app = app_with(View::Findings);
    assert_eq!(render(&app, 1, 1).trim(), "c");
    assert!(render(&app, 19, 5).contains("conntrace"));
    for view in View::ALL {
        app.view = view;
        for (w, h) in [
            (1, 1),
            (2, 30),
            (200, 2),
            (20, 6),
            (33, 7),
            (80, 24),
            (250, 80),
        ] {
            render(&app, w, h);
        }
        app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        render(&app, 21, 6);
        app.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    }
}

#[test]
fn histogram_scales_and_compresses() {
    let mut counts = vec![0u32; 41];
    counts[20] = 8;
    counts[4] = 1;
    let h = view::histogram(&counts, 41);
    assert_eq!(h.chars().count(), 41);
    assert_eq!(h.chars().nth(20), Some('█'));
    assert_eq!(h.chars().nth(4), Some('▁'));
    assert_eq!(view::histogram(&counts, 21).chars().count(), 21);
    assert_eq!(view::histogram(&counts, 0), "");
}

#[test]
fn wrap_breaks_at_spaces_within_width() {
    assert_eq!(view::wrap("aaa bbb ccc ddd", 8), vec!["aaa bbb", "ccc ddd"]);
    assert_eq!(
        view::wrap("averyveryverylongword x", 8),
        vec!["averyveryverylongword", "x"]
    );
    assert_eq!(view::wrap("", 10), vec![""]);
}
