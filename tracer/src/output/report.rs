//! Findings rendered for people and programs: text, markdown or JSON, with what the
//! recording could not see and what it lost (`report`, the UI's export, `watch`).

use std::fmt::Write as _;

use anyhow::Result;

use crate::engine::{Finding, Severity};

/// Output format of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
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

/// Severity, kind and endpoint of a finding, as markdown names them.
fn head(f: &Finding) -> (&'static str, &'static str, &str) {
    (severity_word(f.severity), f.kind.as_str(), &f.endpoint)
}

fn markdown(findings: &[Finding]) -> String {
    let mut s = String::from("# conntrace findings\n\n");
    if findings.is_empty() {
        s.push_str("No findings.\n");
        return s;
    }
    s.push_str("| severity | kind | endpoint | summary |\n|---|---|---|---|\n");
    // Severity, kind and endpoint: a table row, then each finding's heading.
    for f in findings {
        let (severity, kind, endpoint) = head(f);
        let summary = f.summary.replace('|', "\\|");
        let _ = writeln!(s, "| {severity} | `{kind}` | `{endpoint}` | {summary} |");
    }
    for f in findings {
        let (severity, kind, endpoint) = head(f);
        let _ = write!(
            s,
            "\n## {severity} `{kind}` — `{endpoint}`\n\n{}\n\n",
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

    use super::*;
    use crate::{eventlog::Header, kernel::support::Degraded};

    fn header(degraded: Vec<Degraded>) -> Header {
        let mut h = Header::for_this_host();
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
