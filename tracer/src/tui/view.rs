//! Drawing: a pure function of [`App`]; no I/O, no locks.

use std::time::Duration;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{
        Block, Borders, Cell, Clear, List, ListItem, ListState, Paragraph, Row, Table, TableState,
        Tabs, Wrap,
    },
    Frame,
};

use super::{
    app::{App, Mode, View},
    snapshot::{EndpointRow, Snapshot},
};
use crate::engine::{endpoints::BUCKET_MS, Finding, Severity};

const MIN_WIDTH: u16 = 20;
const MIN_HEIGHT: u16 = 6;

fn severity_style(s: Severity) -> (&'static str, Style) {
    match s {
        Severity::Critical => (
            "CRIT",
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
        Severity::Warning => ("WARN", Style::default().fg(Color::Yellow)),
        Severity::Info => ("INFO", Style::default().fg(Color::Cyan)),
    }
}

fn human(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        frame.render_widget(Paragraph::new("conntrace: terminal too small"), area);
        return;
    }
    let [header, tabs, main, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, &app.snapshot);
    draw_tabs(frame, tabs, app);
    match app.view {
        View::Findings => draw_findings(frame, main, app),
        View::Endpoints => draw_endpoints(frame, main, app),
        View::Connections => draw_connections(frame, main, app),
        View::Events => draw_events(frame, main, app),
    }
    draw_footer(frame, footer, app);
    match app.mode {
        Mode::Detail => draw_detail(frame, main, app),
        Mode::Help => draw_help(frame, main, app),
        Mode::Normal | Mode::Filter(_) => {}
    }
}

fn draw_header(frame: &mut Frame, area: Rect, s: &Snapshot) {
    // Most important first, so a narrow terminal cuts the least useful end.
    let h = &s.header;
    let mut spans = vec![
        Span::styled("conntrace", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(" │ {} ev/s │ ", human(h.events_per_sec))),
    ];
    let lost_style = if h.lost > 0 {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    spans.push(Span::styled(format!("lost {}", h.lost), lost_style));
    if h.not_kept > 0 {
        spans.push(Span::styled(
            format!(" · {} not kept", h.not_kept),
            Style::default().fg(Color::Yellow),
        ));
    }
    if h.programs > 0 {
        spans.push(Span::raw(format!(" │ {} progs", h.programs)));
    }
    if let Some(pct) = h.bpf_cpu_pct {
        spans.push(Span::raw(format!(" │ bpf {pct:.2}% cpu")));
    }
    if !h.playback.is_empty() {
        spans.push(Span::raw(format!(" │ {}", h.playback)));
    }
    #[expect(clippy::cast_precision_loss, reason = "display")]
    let events = h.events as f64;
    spans.push(Span::raw(format!(
        " │ {} events │ {}",
        human(events),
        h.source
    )));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_tabs(frame: &mut Frame, area: Rect, app: &App) {
    let titles: Vec<Line> = View::ALL
        .iter()
        .map(|v| {
            let n = match v {
                View::Findings => app.snapshot.findings.len(),
                View::Endpoints => app.snapshot.endpoints.len(),
                View::Connections => app.snapshot.connections_total,
                View::Events => app.snapshot.events.len(),
            };
            Line::from(format!("{} ({n})", v.title()))
        })
        .collect();
    let selected = View::ALL.iter().position(|v| *v == app.view).unwrap_or(0);
    let tabs = Tabs::new(titles)
        .select(selected)
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .divider("│");
    frame.render_widget(tabs, area);
}

fn selected_style() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

/// Splits `text` into lines of at most `width` characters at spaces.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(8);
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// A finding as a list item: severity, kind and endpoint, then the summary wrapped.
fn finding_item(f: &Finding, width: u16) -> ListItem<'static> {
    let (word, style) = severity_style(f.severity);
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{word} "), style),
        Span::styled(
            format!("{} ", f.kind.as_str()),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(f.endpoint.clone()),
    ])];
    lines.extend(
        wrap(&f.summary, usize::from(width.saturating_sub(5)))
            .into_iter()
            .map(|l| Line::from(format!("     {l}"))),
    );
    ListItem::new(lines)
}

fn draw_findings(frame: &mut Frame, area: Rect, app: &App) {
    let items: Vec<ListItem> = app
        .snapshot
        .findings
        .iter()
        .map(|f| finding_item(f, area.width))
        .collect();
    let block = Block::default()
        .borders(Borders::TOP)
        .title(" Findings — Enter: evidence and fix ");
    if items.is_empty() {
        frame.render_widget(
            Paragraph::new("no findings yet: conntrace is watching").block(block),
            area,
        );
        return;
    }
    let mut state = ListState::default().with_selected(Some(app.selection()));
    frame.render_stateful_widget(
        List::new(items)
            .block(block)
            .highlight_style(selected_style()),
        area,
        &mut state,
    );
}

/// The idle-close histogram as block characters, `width` cells for 0..10 s.
pub fn histogram(counts: &[u32], width: usize) -> String {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if width == 0 || counts.is_empty() {
        return String::new();
    }
    let per_cell = counts.len().div_ceil(width).max(1);
    let cells: Vec<u32> = counts.chunks(per_cell).map(|c| c.iter().sum()).collect();
    let max = cells.iter().copied().max().unwrap_or(0).max(1);
    cells
        .iter()
        .map(|&n| {
            if n == 0 {
                '·'
            } else {
                BARS[(n as usize * 8).div_ceil(max as usize).clamp(1, 8)]
            }
        })
        .collect()
}

fn endpoint_row(r: &EndpointRow, hist_width: usize) -> Row<'static> {
    let close = r
        .idle_timeout_ms
        .map(|ms| format!("{:.2}s", Duration::from_millis(ms).as_secs_f64()))
        .or_else(|| {
            r.stats.idle_peak().map(|(ms, _)| {
                format!(
                    "~{:.2}s",
                    Duration::from_millis(ms + BUCKET_MS / 2).as_secs_f64()
                )
            })
        })
        .unwrap_or_default();
    Row::new(vec![
        Cell::from(r.endpoint.clone()),
        Cell::from(r.open.to_string()),
        Cell::from(histogram(&r.stats.idle_closes, hist_width)),
        Cell::from(close),
        Cell::from(format!(
            "{}/{}",
            r.stats.resets_sent, r.stats.resets_received
        )),
        Cell::from(r.stats.connect_errors.to_string()),
        Cell::from(r.stats.retransmits.to_string()),
        Cell::from(if r.stats.max_reuse_gap_ms > 0 {
            format!(
                "{:.2}s",
                Duration::from_millis(r.stats.max_reuse_gap_ms).as_secs_f64()
            )
        } else {
            String::new()
        }),
        Cell::from(
            r.stats
                .listen
                .map(|(q, b, drops)| format!("{q}/{b} {drops}"))
                .unwrap_or_default(),
        ),
    ])
}

fn draw_endpoints(frame: &mut Frame, area: Rect, app: &App) {
    let fixed = 22 + 5 + 7 + 9 + 6 + 7 + 6 + 8 + 12;
    let hist = usize::from(area.width.saturating_sub(fixed)).clamp(10, 41);
    let header = Row::new(vec![
        "Endpoint",
        "Open",
        "Idle-close 0..10s",
        "Close@",
        "RST s/r",
        "ConnErr",
        "Retrans",
        "Reuse<=",
        "Queue drops",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows: Vec<Row> = app
        .snapshot
        .endpoints
        .iter()
        .map(|r| endpoint_row(r, hist))
        .collect();
    let widths = [
        Constraint::Length(22),
        Constraint::Length(5),
        Constraint::Length(u16::try_from(hist).unwrap_or(10)),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(12),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(
            Block::default()
                .borders(Borders::TOP)
                .title(" Server endpoints "),
        )
        .row_highlight_style(selected_style());
    let mut state = TableState::default().with_selected(Some(app.selection()));
    frame.render_stateful_widget(table, area, &mut state);
}

fn ms(ms: u64) -> String {
    if ms >= 60_000 {
        format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000)
    } else {
        format!("{:.1}s", Duration::from_millis(ms).as_secs_f64())
    }
}

fn draw_connections(frame: &mut Frame, area: Rect, app: &App) {
    let header = Row::new(vec![
        "Owner", "Local", "Remote", "State", "Age", "Idle", "Rtx", "Closed", "Awaits",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows: Vec<Row> = app
        .snapshot
        .connections
        .iter()
        .map(|c| {
            Row::new(vec![
                Cell::from(if c.pid == 0 {
                    "?".to_owned()
                } else {
                    format!("{}/{}", c.comm, c.pid)
                }),
                Cell::from(c.local.clone()),
                Cell::from(c.remote.clone()),
                Cell::from(c.state.as_str()),
                Cell::from(ms(c.age_ms)),
                Cell::from(ms(c.idle_ms)),
                Cell::from(c.retransmits.to_string()),
                Cell::from(c.closed_by),
                Cell::from(c.waiting_ms.map(ms).unwrap_or_default()),
            ])
        })
        .collect();
    let widths = [
        Constraint::Min(10),
        Constraint::Min(15),
        Constraint::Min(15),
        Constraint::Length(11),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(4),
        Constraint::Length(6),
        Constraint::Length(7),
    ];
    let title = format!(
        " Connections: {} open, sorted by {} (s) ",
        app.snapshot.connections_total,
        app.sort.label()
    );
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::default().borders(Borders::TOP).title(title))
        .row_highlight_style(selected_style());
    let mut state = TableState::default().with_selected(Some(app.selection()));
    frame.render_stateful_widget(table, area, &mut state);
}

fn draw_events(frame: &mut Frame, area: Rect, app: &App) {
    let title = if app.paused {
        " Events (paused: p resumes) "
    } else {
        " Events, newest first (p pauses) "
    };
    let items: Vec<ListItem> = app
        .snapshot
        .events
        .iter()
        .map(|l| ListItem::new(l.clone()))
        .collect();
    let mut state = ListState::default().with_selected(Some(app.selection()));
    let list = List::new(items)
        .block(Block::default().borders(Borders::TOP).title(title))
        .highlight_style(selected_style());
    frame.render_stateful_widget(list, area, &mut state);
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App) {
    let line = match (&app.mode, &app.snapshot.status) {
        (Mode::Filter(text), _) => Line::from(vec![
            Span::styled("filter: ", Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!("{text}█  (Enter apply, Esc cancel)")),
        ]),
        (_, Some(status)) => Line::from(Span::styled(
            status.clone(),
            Style::default().fg(Color::Green),
        )),
        _ => {
            let mut hints = String::from("q quit  Tab view  ↑↓ move  Enter open  / filter  s sort  p pause  e export  ? help");
            if app.replay {
                hints.push_str("  +/- speed  G end");
            }
            if !app.filter.is_empty() {
                hints = format!("[filter: {}]  {hints}", app.filter);
            }
            Line::from(hints)
        }
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn popup(area: Rect) -> Rect {
    let w = area.width.saturating_sub(4).max(1);
    let h = area.height.saturating_sub(2).max(1);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_detail(frame: &mut Frame, area: Rect, app: &App) {
    let i = app.selection();
    let Some(f) = app.snapshot.findings.get(i) else {
        return;
    };
    let (word, style) = severity_style(f.severity);
    let mut lines = vec![
        Line::from(vec![
            Span::styled(format!("{word} {}", f.kind.as_str()), style),
            Span::raw(format!("  {}", f.endpoint)),
        ]),
        Line::from(f.summary.clone()),
        // The fix comes before the evidence: on a small screen it must not be cut.
        Line::from(vec![
            Span::styled(
                "fix: ",
                Style::default()
                    .fg(Color::Green)
                    .add_modifier(Modifier::BOLD),
            ),
            Span::raw(f.recommendation.clone()),
        ]),
        Line::from(""),
    ];
    if let Some(p) = &f.process {
        lines.push(Line::from(format!("process: {}", p.describe())));
    }
    lines.push(Line::from(format!(
        "seen: {} .. {} ({} times)",
        humantime::format_rfc3339_millis(f.first_seen),
        humantime::format_rfc3339_millis(f.last_seen),
        f.count
    )));
    lines.push(Line::from(Span::styled(
        "evidence:",
        Style::default().add_modifier(Modifier::BOLD),
    )));
    for (k, v) in &f.evidence {
        lines.push(Line::from(format!("  {k}: {v}")));
    }
    lines.push(Line::from(Span::styled(
        "timeline:",
        Style::default().add_modifier(Modifier::BOLD),
    )));
    match app.snapshot.timelines.get(i) {
        Some(t) if !t.is_empty() => lines.extend(t.iter().map(|l| Line::from(format!("  {l}")))),
        _ => lines.push(Line::from("  (no recent events of these connections)")),
    }
    let area = popup(area);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Finding (Esc closes) "),
        ),
        area,
    );
}

fn draw_help(frame: &mut Frame, area: Rect, app: &App) {
    let mut text = vec![
        "Tab / Shift-Tab / 1-4  switch view",
        "↑ ↓ j k PgUp PgDn      move",
        "Enter                  open a finding: evidence, timeline, fix",
        "/                      filter (process, port, address, state)",
        "Esc                    clear the filter / close",
        "s                      sort connections (age, idle, retrans, state, owner)",
        "p or space             pause",
        "e                      export the log of everything seen and a report",
        "q                      quit",
    ];
    if app.replay {
        text.push("+ / -                  replay faster / slower");
        text.push("G                      jump to the end of the recording");
    }
    text.extend([
        "",
        "header: lost = events missing (ring buffer full, failed kernel reads,",
        "  skipped nested runs); not kept = socket owners and table entries the",
        "  bounded maps had no room for, DNAT backends not looked up (over the",
        "  lookups' budget); the exit line names each",
    ]);
    let area = popup(area);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(text.into_iter().map(Line::from).collect::<Vec<_>>()).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Keys (Esc closes) "),
        ),
        area,
    );
}
