//! What templates can call besides MiniJinja's built-ins (`tojson`, `sort`,
//! `groupby`, `join`, `length`, …): from minijinja-contrib `truncate`,
//! `pluralize` and `datetimeformat`; and ours for alerts: `rfc3339`, `since`,
//! `limit_bytes`, `silence_url`, `heading` and `distinct_labels` (the last
//! two are what every preset's title and label line are made of).

use std::time::{Duration, SystemTime};

use minijinja::value::{Kwargs, Value};
use minijinja::{Error, ErrorKind, State};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub fn register(env: &mut minijinja::Environment<'static>) {
    env.add_filter("truncate", minijinja_contrib::filters::truncate);
    env.add_filter("pluralize", minijinja_contrib::filters::pluralize);
    env.add_filter("datetimeformat", minijinja_contrib::filters::datetimeformat);
    env.add_filter("rfc3339", rfc3339);
    env.add_filter("since", since);
    env.add_filter("limit_bytes", limit_bytes);
    env.add_function("silence_url", silence_url);
    env.add_function("heading", heading);
    env.add_function("distinct_labels", distinct_labels);
}

fn lookup_str(state: &State, path: &[&str]) -> Option<String> {
    let mut value = state.lookup(path[0])?;
    for key in &path[1..] {
        value = value.get_attr(key).ok()?;
    }
    value.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// `{{ heading() }}`: Alertmanager's default title, `[FIRING:3] HighLatency`
/// (`[RESOLVED] HighLatency`): the status, the firing count, and the common
/// `alertname` (else the group's, else Grafana's `title`, else "alerts").
fn heading(state: &State) -> Result<String, Error> {
    let status = lookup_str(state, &["status"]).unwrap_or_else(|| "firing".into());
    let name = lookup_str(state, &["commonLabels", "alertname"])
        .or_else(|| lookup_str(state, &["groupLabels", "alertname"]))
        .or_else(|| lookup_str(state, &["title"]))
        .unwrap_or_else(|| "alerts".into());
    let mut text = format!("[{}", status.to_uppercase());
    if status == "firing" {
        let firing = state
            .lookup("alerts")
            .and_then(|alerts| alerts.try_iter().ok().map(|it| it.filter(is_firing).count()))
            .unwrap_or(0);
        text.push_str(&format!(":{firing}"));
    }
    text.push_str("] ");
    text.push_str(&name);
    Ok(text)
}

fn is_firing(alert: &Value) -> bool {
    alert.get_attr("status").ok().and_then(|s| s.as_str().map(|s| s == "firing")).unwrap_or(false)
}

/// `{{ distinct_labels(alert) }}`: the alert's labels that are not common to
/// the group, as `k=v k=v` sorted by name: what tells the alerts apart.
fn distinct_labels(state: &State, alert: Value) -> Result<String, Error> {
    let common = state.lookup("commonLabels");
    let labels = alert.get_attr("labels")?;
    let mut pairs = Vec::new();
    if let Ok(keys) = labels.try_iter() {
        for key in keys {
            let name = key.as_str().unwrap_or_default().to_string();
            if common.as_ref().is_some_and(|c| c.get_attr(&name).is_ok_and(|v| !v.is_undefined())) {
                continue;
            }
            let value = labels.get_item(&key)?;
            pairs.push((name, value.as_str().unwrap_or_default().to_string()));
        }
    }
    pairs.sort();
    Ok(pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
}

fn timestamp(text: &str) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("{text:?} is not an RFC 3339 time: {e}")))
}

/// Alertmanager's "zero" time (`endsAt` of a firing alert) and anything
/// before 1970: no time at all.
fn is_zero(t: OffsetDateTime) -> bool {
    t.unix_timestamp() <= 0
}

/// `{{ alert.startsAt | rfc3339 }}`: the time in UTC to the second,
/// `2026-11-27T03:59:40Z`; empty for Alertmanager's zero time.
fn rfc3339(value: &str) -> Result<String, Error> {
    let t = timestamp(value)?;
    if is_zero(t) {
        return Ok(String::new());
    }
    let t = t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// `{{ alert.startsAt | since }}`: how long ago, as `5m`, `2h 3m` or `3d 4h`;
/// `{{ alert.startsAt | since(alert.endsAt) }}`: how long it lasted (a
/// firing alert's zero `endsAt` means until now).
fn since(start: &str, end: Option<&str>) -> Result<String, Error> {
    let start = timestamp(start)?;
    let end = match end.map(timestamp).transpose()? {
        Some(t) if !is_zero(t) => t,
        _ => OffsetDateTime::from(SystemTime::now()),
    };
    let seconds = (end - start).whole_seconds().max(0) as u64;
    Ok(short_duration(Duration::from_secs(seconds)))
}

/// Two units at most, the largest first: `45s`, `5m`, `2h 3m`, `3d 4h`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// `{{ text | limit_bytes(4000) }}`: at most that many bytes of UTF-8, cut at
/// a character boundary, ending in `end` (default "…") when cut. For targets
/// whose limits count bytes (WeCom, DingTalk), where `truncate` counts
/// characters.
fn limit_bytes(value: &str, limit: usize, kwargs: Kwargs) -> Result<String, Error> {
    let end: Option<String> = kwargs.get("end")?;
    kwargs.assert_all_used()?;
    let end = end.unwrap_or_else(|| "…".to_string());
    if value.len() <= limit {
        return Ok(value.to_string());
    }
    let mut cut = limit.saturating_sub(end.len());
    while cut > 0 && !value.is_char_boundary(cut) {
        cut -= 1;
    }
    Ok(format!("{}{end}", &value[..cut]))
}

/// `{{ silence_url(alert) }}`: the Alertmanager page that creates a silence
/// for the alert's labels, under the notification's `externalURL` (empty
/// when there is none).
fn silence_url(state: &State, alert: Value) -> Result<String, Error> {
    let base = state.lookup("externalURL").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    if base.is_empty() {
        return Ok(String::new());
    }
    let labels = alert.get_attr("labels")?;
    let mut filter = String::from("{");
    if let Ok(keys) = labels.try_iter() {
        for key in keys {
            let value = labels.get_item(&key)?;
            if filter.len() > 1 {
                filter.push(',');
            }
            filter.push_str(key.as_str().unwrap_or_default());
            filter.push_str("=\"");
            for c in value.as_str().unwrap_or_default().chars() {
                if matches!(c, '\\' | '"') {
                    filter.push('\\');
                }
                filter.push(c);
            }
            filter.push('"');
        }
    }
    filter.push('}');
    Ok(format!("{}/#/silences/new?filter={}", base.trim_end_matches('/'), percent_encode(&filter)))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        let d = |s| short_duration(Duration::from_secs(s));
        assert_eq!(
            [d(0), d(45), d(300), d(3600), d(7380), d(90_000), d(86_400 * 3)],
            ["0s", "45s", "5m", "1h", "2h 3m", "1d 1h", "3d"]
        );
    }

    #[test]
    fn byte_limits_cut_at_character_boundaries() {
        let kw = || Kwargs::from_iter(Vec::<(&str, Value)>::new());
        assert_eq!(limit_bytes("磁盘将满", 12, kw()).unwrap(), "磁盘将满");
        let cut = limit_bytes("磁盘将满", 10, kw()).unwrap();
        assert!(cut.len() <= 10 && cut.ends_with('…'), "{cut}");
        assert_eq!(cut, "磁盘…");
    }

    #[test]
    fn times_and_silence_links() {
        assert_eq!(rfc3339("2026-11-27T05:59:40.014258703+02:00").unwrap(), "2026-11-27T03:59:40Z");
        assert_eq!(rfc3339("0001-01-01T00:00:00Z").unwrap(), "");
        assert!(rfc3339("yesterday").unwrap_err().to_string().contains("not an RFC 3339 time"));
        assert_eq!(since("2026-11-27T03:59:40Z", Some("2026-11-27T04:05:10Z")).unwrap(), "5m");
        let mut env = minijinja::Environment::new();
        register(&mut env);
        let url = env
            .render_str(
                "{{ silence_url(alerts[0]) }}",
                minijinja::context! { externalURL => "http://am:9093/", alerts => vec![minijinja::context!{ labels => minijinja::context!{ alertname => "A", job => "x\"y" } }] },
            )
            .unwrap();
        assert_eq!(url, "http://am:9093/#/silences/new?filter=%7Balertname%3D%22A%22%2Cjob%3D%22x%5C%22y%22%7D");
    }

    #[test]
    fn headings_and_distinct_labels() {
        let mut env = minijinja::Environment::new();
        register(&mut env);
        let alert = |status: &str, pod: &str| {
            minijinja::context! { status => status, labels => minijinja::context! { alertname => "A", pod => pod, ns => "x" } }
        };
        let ctx = minijinja::context! {
            status => "firing",
            commonLabels => minijinja::context! { alertname => "A", ns => "x" },
            alerts => vec![alert("firing", "p1"), alert("resolved", "p2"), alert("firing", "p3")],
        };
        let out = env.render_str("{{ heading() }}|{{ distinct_labels(alerts[0]) }}", ctx).unwrap();
        assert_eq!(out, "[FIRING:2] A|pod=p1");
        let resolved = minijinja::context! { status => "resolved", groupLabels => minijinja::context! { alertname => "G" }, alerts => Vec::<Value>::new() };
        assert_eq!(env.render_str("{{ heading() }}", resolved).unwrap(), "[RESOLVED] G");
        let grafana = minijinja::context! { status => "firing", title => "[FIRING:1] Grafana rule", alerts => Vec::<Value>::new() };
        assert_eq!(env.render_str("{{ heading() }}", grafana).unwrap(), "[FIRING:0] [FIRING:1] Grafana rule");
    }
}
