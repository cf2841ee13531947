//! Body formats: what a receiver's target gets. `alertmanager` forwards the
//! routed notification byte for byte; `template` renders a MiniJinja template
//! with the notification as context; the presets are templates compiled into
//! the binary for the chat tools teams read (`presets.rs`).
//!
//! Rendering is sandboxed: no loader, includes or imports (no file or
//! network access), no macros (no recursion) and no `namespace` (no state
//! carried across loop iterations), a fuel budget per render (no endless
//! loops), an output cap (no giant bodies), and MiniJinja's own cap on string
//! repetition (100 MB). Templates are compiled
//! and rendered against sample notifications when a configuration loads, so
//! that a broken template is refused with its line before any alert needs it.

mod helpers;
pub mod presets;

use std::borrow::Cow;
use std::io::Write;

use serde::{Deserialize, Serialize};

pub use presets::{Answer, Preset, PRESETS};

/// Most a rendered body may be. Every preset's target takes far less (see
/// `presets.rs`); a template that gets here is broken.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Most instructions one render may run (every preset renders a 300-alert
/// group in under 2,500): a loop that would not end fails instead.
pub const FUEL: u64 = 2_000_000;
/// Largest template source.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// MiniJinja's recursion limit, lowered: macros calling themselves are
/// stopped early.
const RECURSION_LIMIT: usize = 100;

/// `payload.format` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    #[default]
    Alertmanager,
    Template,
    Slack,
    Msteams,
    Discord,
    Googlechat,
    Dingtalk,
    Feishu,
    Wecom,
}

impl FormatName {
    pub fn as_str(self) -> &'static str {
        match self {
            FormatName::Alertmanager => "alertmanager",
            FormatName::Template => "template",
            FormatName::Slack => "slack",
            FormatName::Msteams => "msteams",
            FormatName::Discord => "discord",
            FormatName::Googlechat => "googlechat",
            FormatName::Dingtalk => "dingtalk",
            FormatName::Feishu => "feishu",
            FormatName::Wecom => "wecom",
        }
    }

    pub fn preset(self) -> Option<&'static Preset> {
        presets::preset(self.as_str())
    }
}

/// How a receiver's body is made, ready to use.
pub struct Payload {
    pub format: FormatName,
    /// The Content-Type of every attempt.
    pub content_type: String,
    /// How a 2xx answer's body is read (error codes of DingTalk, Feishu, WeCom).
    pub answer: Answer,
    renderer: Option<Renderer>,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload").field("format", &self.format).field("content_type", &self.content_type).finish()
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::alertmanager()
    }
}

struct Renderer {
    env: minijinja::Environment<'static>,
    /// The content type says JSON: the output must parse as JSON.
    json: bool,
}

/// Why a body could not be rendered, with the template's line when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

impl Payload {
    /// The body as routed, byte for byte.
    pub fn alertmanager() -> Payload {
        Payload {
            format: FormatName::Alertmanager,
            content_type: "application/json".into(),
            answer: Answer::Status,
            renderer: None,
        }
    }

    /// A template (a preset's or the receiver's own), compiled and checked
    /// against the sample notifications. Errors are `(field, message)`.
    pub fn template(
        format: FormatName,
        source: &str,
        content_type: &str,
        answer: Answer,
    ) -> Result<Payload, (&'static str, String)> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(("template", format!("{} bytes; at most {MAX_TEMPLATE_BYTES}", source.len())));
        }
        if source.trim().is_empty() {
            return Err(("template", "is empty".into()));
        }
        let mut env = minijinja::Environment::new();
        helpers::register(&mut env);
        // State carried across a loop's iterations could double a string on
        // every one of them.
        env.remove_global("namespace");
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        // Named without an extension: no auto-escaping; `tojson` is explicit.
        env.add_template_owned("body", source.to_string()).map_err(|e| ("template", describe(&e)))?;
        let json = is_json(content_type);
        let payload =
            Payload { format, content_type: content_type.to_string(), answer, renderer: Some(Renderer { env, json }) };
        for (name, sample) in checked_samples() {
            payload
                .render(sample.as_bytes(), "sample")
                .map_err(|e| ("template", format!("rendering the sample notification {name:?}: {e}")))?;
        }
        Ok(payload)
    }

    /// The body for a receiver's target from the notification as routed to it
    /// (Alertmanager's JSON).
    pub fn render<'a>(&self, routed: &'a [u8], receiver_name: &str) -> Result<Cow<'a, [u8]>, RenderError> {
        let Some(renderer) = &self.renderer else { return Ok(Cow::Borrowed(routed)) };
        // Straight from JSON into MiniJinja's values: no serde_json::Value
        // in between.
        let notification: minijinja::Value =
            serde_json::from_slice(routed).map_err(|e| RenderError(format!("the notification is not JSON: {e}")))?;
        let context = minijinja::context! { receiver_name => receiver_name, ..notification };
        let template = renderer.env.get_template("body").map_err(|e| RenderError(describe(&e)))?;
        let mut out = Capped { bytes: Vec::with_capacity(4096), over: false };
        if let Err(e) = template.render_captured_to(context, &mut out) {
            if out.over {
                return Err(RenderError(format!("output too large: more than {MAX_OUTPUT_BYTES} bytes")));
            }
            return Err(RenderError(describe(&e)));
        }
        if renderer.json {
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&out.bytes) {
                let line = e.line();
                let text = String::from_utf8_lossy(&out.bytes);
                let near: String = text.lines().nth(line.saturating_sub(1)).unwrap_or("").chars().take(80).collect();
                return Err(RenderError(format!(
                    "the output is not valid JSON ({e}; output line {line}: {near:?}); build strings with tojson"
                )));
            }
        }
        Ok(Cow::Owned(out.bytes))
    }
}

/// Whether a content type is JSON (`application/json`, `…+json`).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// A MiniJinja error as one line: where, what kind, what.
fn describe(e: &minijinja::Error) -> String {
    let mut text = String::new();
    if let Some(line) = e.line() {
        text.push_str(&format!("line {line}: "));
    }
    text.push_str(&e.kind().to_string());
    if let Some(detail) = e.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    if e.kind() == minijinja::ErrorKind::OutOfFuel {
        text.push_str(&format!(" (a render may run {FUEL} instructions: is there a loop that does not end?)"));
    }
    text
}

/// A writer that refuses more than `MAX_OUTPUT_BYTES`.
struct Capped {
    bytes: Vec<u8>,
    over: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_OUTPUT_BYTES {
            self.over = true;
            return Err(std::io::Error::other("output too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const FIRING: &str = include_str!("samples/firing.json");
const MIXED: &str = include_str!("samples/mixed-resolved.json");
const GRAFANA: &str = include_str!("samples/grafana-firing.json");

/// `samples()`, built once: every template of every load renders them.
fn checked_samples() -> &'static [(&'static str, String)] {
    static SAMPLES: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
    SAMPLES.get_or_init(samples)
}

/// One of `samples()` by name (the live preview's choices).
pub fn sample(name: &str) -> Option<&'static str> {
    checked_samples().iter().find(|(n, _)| *n == name).map(|(_, text)| text.as_str())
}

/// The notifications every template is rendered against when it loads: the
/// captured Alertmanager and Grafana payloads, a group that has resolved,
/// and a 300-alert group with unicode, quotes and newlines in its texts.
pub fn samples() -> Vec<(&'static str, String)> {
    vec![
        ("firing", FIRING.to_string()),
        ("mixed", MIXED.to_string()),
        ("grafana", GRAFANA.to_string()),
        ("resolved", resolved_group()),
        ("large", large_group(300)),
    ]
}

/// The captured firing notification, resolved.
pub fn resolved_group() -> String {
    let mut v: serde_json::Value = serde_json::from_str(FIRING).expect("sample is JSON");
    v["status"] = "resolved".into();
    if let Some(alerts) = v["alerts"].as_array_mut() {
        for a in alerts {
            a["status"] = "resolved".into();
            a["endsAt"] = "2026-11-27T04:09:40.014258703Z".into();
        }
    }
    v.to_string()
}

/// A group of `n` firing alerts whose texts hold what breaks naive templates:
/// quotes, backslashes, newlines, markup and characters outside ASCII.
pub fn large_group(n: usize) -> String {
    let alerts: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "status": if i % 7 == 3 { "resolved" } else { "firing" },
                "labels": {
                    "alertname": "DiskFilling", "severity": if i % 3 == 0 { "critical" } else { "warning" },
                    "instance": format!("node-{i:03}.example:9100"), "namespace": "生产", "mountpoint": "/var/lib/\"data\"",
                },
                "annotations": {
                    "summary": format!("Disk {i} is 95% full — \"{{{{ not a template }}}}\" <b>bold</b> & \\ back\\slash"),
                    "description": format!("Line one for {i}\nLine two with tab\tand emoji 🔥\nЗаполнено на 95%, 磁盘将满"),
                    "runbook_url": "https://runbooks.example/disk?x=1&y=\"2\"",
                },
                "startsAt": "2026-11-27T03:59:40.014258703Z",
                "endsAt": if i % 7 == 3 { "2026-11-27T04:30:00Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": format!("http://prometheus:9090/graph?g0.expr=node_filesystem_avail_bytes%7Binstance%3D%22node-{i:03}%22%7D"),
                "fingerprint": format!("{i:016x}"),
            })
        })
        .collect();
    serde_json::json!({
        "receiver": "relay", "status": "firing", "alerts": alerts,
        "groupLabels": {"alertname": "DiskFilling"},
        "commonLabels": {"alertname": "DiskFilling", "namespace": "生产"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "version": "4",
        "groupKey": "{}:{alertname=\"DiskFilling\"}",
        "truncatedAlerts": 0,
    })
    .to_string()
}

#[cfg(test)]
mod tests;
