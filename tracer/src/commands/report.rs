//! `conntrace report FILE`: findings from a recorded log, as text, markdown or JSON.

use std::{fmt::Write as _, io::Write as _, path::Path};

use anyhow::{Context as _, Result};

use crate::{
    engine::{Config, Engine, Finding, Severity},
    eventlog::{LogReader, Record},
    pipeline::dispatch,
};

/// Output format of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

/// What a replay of a log produced.
/// Bad lines kept (and printed) at most; the rest are counted.
pub const KEPT_BAD_LINES: usize = 20;

pub struct Replay {
    pub engine: Engine,
    /// The log's header: host, kernel, and the facts its kernel could not give.
    pub header: crate::eventlog::Header,
    /// Bad lines, reported with their numbers (the first [`KEPT_BAD_LINES`]); every
    /// good line was used.
    pub bad_lines: Vec<crate::eventlog::LineError>,
    /// Every bad line, also those not kept.
    pub bad_total: u64,
    pub newer_version: Option<u32>,
    /// The recording's last `losses` line: what it lost (cumulative).
    pub losses: Option<crate::event::Losses>,
    /// Time reading and parsing the log, and time in the engine alone.
    pub read_time: std::time::Duration,
    pub engine_time: std::time::Duration,
}

/// Records parsed before they go through the engine together, so the engine's own
/// time can be measured without a clock read per event.
const BATCH: usize = 4096;

/// Feeds every event and sample of the log at `path` through a fresh engine.
pub fn replay(path: &Path, cfg: Config) -> Result<Replay> {
    let started = std::time::Instant::now();
    let mut reader = LogReader::open(path)?;
    let newer_version = reader
        .is_newer_version()
        .then_some(reader.header.conntrace_log);
    let mut engine = Engine::new(cfg);
    let mut bad_lines = Vec::new();
    let mut bad_total = 0u64;
    let mut engine_time = std::time::Duration::ZERO;
    let mut batch = Vec::with_capacity(BATCH);
    let mut sink = dispatch::Findings::default();
    let mut run = |batch: &mut Vec<Record>, engine: &mut Engine| {
        let t = std::time::Instant::now();
        for record in batch.drain(..) {
            // The sink keeps nothing that can fail.
            let _ = dispatch::dispatch(engine, None, &record, &mut sink);
        }
        engine_time += t.elapsed();
    };
    for record in &mut reader {
        match record {
            Ok(r) => {
                batch.push(r);
                if batch.len() == BATCH {
                    run(&mut batch, &mut engine);
                }
            }
            Err(e) => {
                bad_total += 1;
                if bad_lines.len() < KEPT_BAD_LINES {
                    bad_lines.push(e);
                }
            }
        }
    }
    run(&mut batch, &mut engine);
    Ok(Replay {
        losses: sink.losses,
        header: reader.header.clone(),
        engine,
        bad_lines,
        bad_total,
        newer_version,
        read_time: started.elapsed().saturating_sub(engine_time),
        engine_time,
    })
}

pub fn run(path: &Path, format: Format, stats: bool) -> Result<()> {
    let replay = replay(path, Config::default())?;
    if stats {
        let e = replay.engine.stats();
        let rate = |d: std::time::Duration| {
            #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
            let r = e.events as f64 / d.as_secs_f64().max(1e-9);
            r
        };
        crate::errln!(
            "conntrace: {} events, {} samples; reading {:.3} s ({:.0} events/s), engine {:.3} s ({:.0} events/s); {} connections tracked, {} evicted",
            e.events,
            e.samples,
            replay.read_time.as_secs_f64(),
            rate(replay.read_time),
            replay.engine_time.as_secs_f64(),
            rate(replay.engine_time),
            replay.engine.conns().len(),
            e.evicted,
        );
    }
    if let Some(v) = replay.newer_version {
        crate::errln!(
            "conntrace: warning: {} is log version {v}, newer than this conntrace reads (1); unknown fields were skipped",
            path.display()
        );
    }
    for bad in &replay.bad_lines {
        crate::errln!(
            "conntrace: warning: {}: {bad}; the line was skipped",
            path.display()
        );
    }
    if replay.bad_total > replay.bad_lines.len() as u64 {
        crate::errln!(
            "conntrace: warning: {}: {} more bad lines were skipped ({} in all)",
            path.display(),
            replay.bad_total - replay.bad_lines.len() as u64,
            replay.bad_total
        );
    }
    let findings = replay.engine.findings();
    let out = render_limited(&findings, &replay.header, replay.losses.as_ref(), format)?;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(out.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing the report"),
    }
}

/// [`render`], followed by what the recording's kernel could not see and what the
/// recording lost (JSON: `degraded` and `losses` beside `findings`), so a
/// postmortem knows its blind spots.
pub fn render_limited(
    findings: &[Finding],
    header: &crate::eventlog::Header,
    losses: Option<&crate::event::Losses>,
    format: Format,
) -> Result<String> {
    let degraded = &header.degraded;
    let lost = losses.filter(|l| !l.is_empty());
    if degraded.is_empty() && lost.is_none() {
        return render(findings, format);
    }
    Ok(match format {
        Format::Json => {
            let mut doc = serde_json::json!({ "findings": findings });
            if !degraded.is_empty() {
                doc["degraded"] = serde_json::json!(degraded);
            }
            if let Some(l) = lost {
                doc["losses"] = serde_json::json!(l);
            }
            let mut s = serde_json::to_string_pretty(&doc)?;
            s.push('\n');
            s
        }
        Format::Text => {
            let mut s = text(findings);
            if !degraded.is_empty() {
                let _ = writeln!(s, "not seen by this recording (kernel {}):", header.kernel);
                for d in degraded {
                    let _ = writeln!(s, "  {d}");
                }
            }
            if let Some(line) = lost.and_then(crate::event::Losses::describe) {
                let _ = writeln!(s, "{line}");
            }
            crate::text::printable_text(&s).into_owned()
        }
        Format::Markdown => {
            let mut s = markdown(findings);
            if !degraded.is_empty() {
                let _ = writeln!(
                    s,
                    "\n## Not seen by this recording (kernel `{}`)\n",
                    header.kernel
                );
                for d in degraded {
                    let _ = writeln!(s, "- `{}`: {}", d.fact, d.detail);
                }
            }
            if let Some(line) = lost.and_then(crate::event::Losses::describe) {
                let _ = writeln!(s, "\n## Losses\n\n{line}");
            }
            crate::text::printable_text(&s).into_owned()
        }
    })
}

pub fn render(findings: &[Finding], format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&serde_json::json!({ "findings": findings }))?;
            s.push('\n');
            s
        }
        // Anything from the kernel or a log (names, pods, paths) is shown, not sent:
        // control characters are escaped before the text reaches a terminal.
        Format::Text => crate::text::printable_text(&text(findings)).into_owned(),
        Format::Markdown => crate::text::printable_text(&markdown(findings)).into_owned(),
    })
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRITICAL",
        Severity::Warning => "WARNING",
        Severity::Info => "INFO",
    }
}

fn evidence_line(f: &Finding) -> String {
    f.evidence
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One finding, as the text report and `watch` print it.
pub fn text_one(f: &Finding) -> String {
    format!(
        "{:<8} {:<21} {}\n  {}\n  evidence: {}\n  fix: {}\n  seen: {} .. {} ({} times)\n",
        severity_word(f.severity),
        f.kind.as_str(),
        f.endpoint,
        f.summary,
        evidence_line(f),
        f.recommendation,
        time(f.first_seen),
        time(f.last_seen),
        f.count,
    )
}

fn text(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "no findings\n".to_owned();
    }
    let mut s = format!(
        "{} finding{}\n\n",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" }
    );
    for f in findings {
        s.push_str(&text_one(f));
        s.push('\n');
    }
    s
}

fn markdown(findings: &[Finding]) -> String {
    let mut s = String::from("# conntrace findings\n\n");
    if findings.is_empty() {
        s.push_str("No findings.\n");
        return s;
    }
    s.push_str("| severity | kind | endpoint | summary |\n|---|---|---|---|\n");
    for f in findings {
        let _ = writeln!(
            s,
            "| {} | `{}` | `{}` | {} |",
            severity_word(f.severity),
            f.kind.as_str(),
            f.endpoint,
            f.summary.replace('|', "\\|")
        );
    }
    for f in findings {
        let _ = write!(
            s,
            "\n## {} `{}` — `{}`\n\n{}\n\n",
            severity_word(f.severity),
            f.kind.as_str(),
            f.endpoint,
            f.summary
        );
        if let Some(p) = &f.process {
            let _ = writeln!(s, "- process: {}", p.describe());
        }
        let _ = write!(
            s,
            "- seen: {} .. {} ({} times)\n- evidence:\n",
            time(f.first_seen),
            time(f.last_seen),
            f.count
        );
        for (k, v) in &f.evidence {
            let _ = writeln!(s, "  - `{k}`: `{v}`");
        }
        let _ = write!(s, "\n**Fix:** {}\n", f.recommendation);
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{eventlog::Header, kernel::support::Degraded};

    fn header(degraded: Vec<Degraded>) -> Header {
        let mut h = Header::for_this_host(250, UNIX_EPOCH + Duration::from_secs(1));
        h.kernel = "5.10.0-32-cloud-amd64".into();
        h.degraded = degraded;
        h
    }

    #[test]
    fn a_report_names_what_the_recordings_kernel_could_not_see() {
        let h = header(vec![Degraded::new(
            crate::kernel::support::RESET_REASON,
            "resets sent carry no reason",
        )]);
        let text = render_limited(&[], &h, None, Format::Text).unwrap();
        assert!(text.contains("not seen by this recording (kernel 5.10.0-32-cloud-amd64)"));
        assert!(text.contains("reset-reason: resets sent carry no reason"));
        let md = render_limited(&[], &h, None, Format::Markdown).unwrap();
        assert!(md.contains("- `reset-reason`: resets sent carry no reason"));
        let json: serde_json::Value =
            serde_json::from_str(&render_limited(&[], &h, None, Format::Json).unwrap()).unwrap();
        assert_eq!(json["findings"], serde_json::json!([]));
        assert_eq!(json["degraded"][0]["fact"], "reset-reason");
    }

    #[test]
    fn a_complete_recording_has_no_limits_section() {
        let h = header(Vec::new());
        assert_eq!(
            render_limited(&[], &h, None, Format::Text).unwrap(),
            "no findings\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_limited(&[], &h, None, Format::Json).unwrap()).unwrap();
        assert!(json.get("degraded").is_none());
    }
}
