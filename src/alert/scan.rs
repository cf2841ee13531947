//! The webhook body in one pass: what the relay reads is parsed, and each
//! alert's text is kept as it came, while the JSON is checked.
//!
//! The serde path reads every alert twice (once to find its text, once for
//! its fields) and was a quarter of the relay's instructions per webhook.
//! This scan handles the payloads Alertmanager and Grafana send; anything it
//! does not handle (a key twice, a label that is not a string, a lone
//! surrogate escape, nesting past `MAX_DEPTH`, anything that is not JSON) makes
//! it give up with `None`, and the serde path then parses the body and names
//! the field of an error. It never accepts what the serde path refuses, nor
//! reads a body differently: tests and the payload fuzz target hold it to that.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::{Alert, Extra, Label, LabelSet, Notification, Status, MAX_DEPTH};

/// The notification in `body`, or `None` to leave it to the serde path.
pub(super) fn notification(body: &[u8]) -> Option<Notification> {
    let text = std::str::from_utf8(body).ok()?;
    let mut scan = Scan { text, bytes: body, at: 0 };
    let notification = scan.payload()?;
    scan.space();
    (scan.at == body.len()).then_some(notification)
}

struct Scan<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Skips whitespace, then takes `byte`.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.space();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// An object's members: calls `member` with each key, positioned at its
    /// value (whitespace skipped); the object's `{` is taken already.
    fn members(&mut self, mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Option<()>) -> Option<()> {
        self.space();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.expect(b'"')?;
            let key = self.string()?;
            self.expect(b':')?;
            self.space();
            member(self, key)?;
            self.space();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array's elements, like `members`; the `[` is taken already.
    fn elements(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.space();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            self.space();
            element(self)?;
            self.space();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn payload(&mut self) -> Option<Notification> {
        self.expect(b'{')?;
        let (mut status, mut alerts, mut labels, mut annotations, mut truncated, mut group_key) =
            (None, None, None, None, None, None);
        let mut extra = Extra::default();
        self.members(|scan, key| {
            match key.as_ref() {
                "status" => once(&mut status, scan.status()?),
                "alerts" => once(&mut alerts, scan.alerts()?),
                "commonLabels" => once(&mut labels, scan.label_set()?),
                "commonAnnotations" => once(&mut annotations, scan.label_set()?),
                "truncatedAlerts" => once(&mut truncated, scan.unsigned()?),
                "groupKey" => {
                    scan.expect(b'"')?;
                    once(&mut group_key, scan.string()?.into_owned())
                }
                _ => {
                    let start = scan.at;
                    scan.skip_value(2)?;
                    // Checked JSON text already; small (the payload's own fields).
                    let raw = RawValue::from_string(scan.text[start..scan.at].to_string()).ok()?;
                    extra.0.push((key.into_owned(), raw));
                    Some(())
                }
            }
        })?;
        Some(Notification {
            status: status?,
            alerts: alerts?,
            common_labels: labels.unwrap_or_default(),
            common_annotations: annotations.unwrap_or_default(),
            truncated_alerts: truncated.unwrap_or(0),
            group_key,
            extra,
        })
    }

    fn alerts(&mut self) -> Option<Vec<Alert>> {
        if self.peek()? != b'[' {
            return None;
        }
        self.at += 1;
        let mut alerts = Vec::new();
        self.elements(|scan| {
            alerts.push(scan.alert()?);
            Some(())
        })?;
        Some(alerts)
    }

    fn alert(&mut self) -> Option<Alert> {
        let start = self.at;
        if self.peek()? != b'{' {
            return None;
        }
        self.at += 1;
        let (mut status, mut labels, mut annotations) = (None, None, None);
        self.members(|scan, key| match key.as_ref() {
            "status" => once(&mut status, scan.status()?),
            "labels" => once(&mut labels, scan.label_set()?),
            "annotations" => once(&mut annotations, scan.label_set()?),
            // The alert is depth 3: payload, alerts, alert.
            _ => scan.skip_value(4),
        })?;
        Some(Alert {
            status: status?,
            labels: labels.unwrap_or_default(),
            annotations: annotations.unwrap_or_default(),
            raw: self.text[start..self.at].into(),
        })
    }

    fn status(&mut self) -> Option<Status> {
        if self.peek()? != b'"' {
            return None;
        }
        self.at += 1;
        match self.string()?.as_ref() {
            "firing" => Some(Status::Firing),
            "resolved" => Some(Status::Resolved),
            _ => None,
        }
    }

    /// An object of string values, each key once.
    fn label_set(&mut self) -> Option<LabelSet> {
        if self.peek()? != b'{' {
            return None;
        }
        self.at += 1;
        let mut set = LabelSet::new();
        self.members(|scan, key| {
            if scan.peek()? != b'"' {
                return None;
            }
            scan.at += 1;
            let value = Label::new(scan.string()?);
            set.insert_new(Label::new(key), value).then_some(())
        })?;
        Some(set)
    }

    /// A JSON integer that fits a u64 (what serde reads into one).
    fn unsigned(&mut self) -> Option<u64> {
        let start = self.at;
        self.number()?;
        self.text[start..self.at].parse().ok()
    }

    /// A string's contents, unescaped; the opening quote is taken already.
    /// Borrowed from the body when it has no escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.at;
        let end = self.plain_run()?;
        if self.bytes[end] == b'"' {
            self.at = end + 1;
            return Some(Cow::Borrowed(&self.text[start..end]));
        }
        let mut owned = String::from(&self.text[start..end]);
        self.at = end;
        loop {
            // At a backslash.
            self.at += 1;
            owned.push(self.escape()?);
            let start = self.at;
            let end = self.plain_run()?;
            owned.push_str(&self.text[start..end]);
            self.at = end;
            if self.bytes[end] == b'"' {
                self.at = end + 1;
                return Some(Cow::Owned(owned));
            }
        }
    }

    /// Checks and skips a string's contents, building nothing (a field the
    /// relay forwards as it came, as `generatorURL` with Go's `\u0026`).
    fn skip_string(&mut self) -> Option<()> {
        loop {
            self.at = self.plain_run()?;
            if self.bytes[self.at] == b'"' {
                self.at += 1;
                return Some(());
            }
            self.at += 1;
            self.escape()?;
        }
    }

    /// The character an escape stands for: `at` just past the backslash,
    /// left past the escape.
    fn escape(&mut self) -> Option<char> {
        let escaped = match self.peek()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            // A surrogate (alone or in a pair) is the serde path's.
            b'u' => return char::from_u32(u32::from(self.hex4()?)),
            _ => return None,
        };
        self.at += 1;
        Some(escaped)
    }

    /// From `at`, the index of the next `"` or `\`; `None` at a control
    /// character (JSON allows none raw in a string) or the end.
    fn plain_run(&self) -> Option<usize> {
        let mut at = self.at;
        // Eight bytes at a time while none of them ends the run; then byte by
        // byte. (Most strings here are shorter than a vectorized search takes
        // to start.)
        while let Some(chunk) = self.bytes.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().ok()?);
            if ends_run(word) {
                break;
            }
            at += 8;
        }
        loop {
            match *self.bytes.get(at)? {
                b'"' | b'\\' => return Some(at),
                0..0x20 => return None,
                _ => at += 1,
            }
        }
    }

    /// The four hex digits after `\u`, `at` on the `u`; leaves `at` past them.
    fn hex4(&mut self) -> Option<u16> {
        let digits = self.text.get(self.at + 1..self.at + 5)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.at += 5;
        u16::from_str_radix(digits, 16).ok()
    }

    /// Checks and skips one value of any kind, at nesting `depth` if it is an
    /// object or array.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.skip_string()
            }
            b'{' if depth <= MAX_DEPTH => {
                self.at += 1;
                self.members(|scan, _| scan.skip_value(depth + 1))
            }
            b'[' if depth <= MAX_DEPTH => {
                self.at += 1;
                self.elements(|scan| scan.skip_value(depth + 1))
            }
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.text[self.at..].starts_with(word).then(|| self.at += word.len())
    }

    /// A JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

/// Whether any of the eight bytes is `"`, `\\` or a control character (below
/// 0x20). The classic bit trick: `x - 0x01..` borrows into a byte's high bit
/// only where that byte was 0 (or, for the control test, below 0x20), and
/// `& !x` drops bytes whose own high bit was set (UTF-8's, 0x80 and up).
fn ends_run(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control != 0
}

/// Sets a field seen for the first time; a key twice is the serde path's.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The scan's answer agrees with the serde path's: when it reads a body,
    /// serde reads the same notification from it, every parsed field alike.
    fn agrees(body: &[u8]) -> Result<bool, String> {
        let Some(fast) = notification(body) else { return Ok(false) };
        let slow = Notification::parse_with_serde(body);
        // A version other than Alertmanager's or Grafana's: refused after
        // either path, with the same words.
        if let Err(refused) = super::super::check_version(&fast) {
            return match slow {
                Err(e) if e.to_string() == refused.to_string() => Ok(true),
                _ => Err(format!("versions differ on {}", String::from_utf8_lossy(body))),
            };
        }
        let slow =
            slow.map_err(|e| format!("scan read what serde refuses ({e}): {}", String::from_utf8_lossy(body)))?;
        let fields = |n: &Notification| {
            n.alerts.iter().map(|a| (a.status, a.labels.clone(), a.annotations.clone())).collect::<Vec<_>>()
        };
        if fast != slow || fields(&fast) != fields(&slow) {
            return Err(format!("scan and serde differ on {}", String::from_utf8_lossy(body)));
        }
        Ok(true)
    }

    const READ: &[&str] = &[
        include_str!("../../tests/fixtures/alertmanager-0.25/firing.json"),
        include_str!("../../tests/fixtures/alertmanager-0.25/mixed-resolved.json"),
        r#"{"status":"firing","alerts":[]}"#,
        r#"{"st\u0061tus":"firing","alerts":[]}"#,
        " {\"status\" : \"resolved\" ,\n\t\"alerts\":[ {\"labels\":{},\"status\":\"resolved\"} ] }\r\n",
        r#"{"version":"1","orgId":1,"state":"alerting","status":"firing","alerts":[]}"#,
        r#"{"status":"firing","groupKey":"{}:{a=\"b\"}","alerts":[{"status":"firing","labels":{"a":"\u00e9\\\/\b\f\n\r\t"},"annotations":{"d":"<\u003c>"}}]}"#,
        r#"{"status":"firing","alerts":[{"status":"firing","x":[-0.5e-3,0,1E+9,true,false,null,{"y":[[]]}],"labels":{"k":"v"}}],"n":-12}"#,
        r#"{"status":"firing","alerts":[{"generatorURL":"http://p/graph?g0.expr=up\u0026g0.tab=1","status":"firing","d":"a\"b\\c\/\n"}]}"#,
        r#"{"status":"firing","alerts":[{"status":"firing","fingerprint":"a","fingerprint":"b"}],"truncatedAlerts":18446744073709551615}"#,
        r#"{"big":12345678901234567890123,"dec":1.50,"esc":"\u00e9","huge":1e400,"status":"firing","alerts":[],"big":2}"#,
    ];

    /// Left to serde: refused there, or read there in ways the scan does not.
    const LEFT: &[&str] = &[
        "",
        "{",
        r#"{"status":"firing"}"#,
        r#"{"alerts":[]}"#,
        r#"{"status":"firing","alerts":[]} x"#,
        r#"{"status":"firing","alerts":[],}"#,
        r#"{"status":"firing","status":"firing","alerts":[]}"#,
        r#"{"status":"burning","alerts":[]}"#,
        r#"{"status":{"firing":null},"alerts":[]}"#,
        r#"{"status":"firing","alerts":[{"status":"firing","labels":{"a":1}}]}"#,
        r#"{"status":"firing","alerts":[{"status":"firing","labels":{"a":"1","a":"2"}}]}"#,
        r#"{"status":"firing","alerts":[{"status":"firing","status":"firing"}]}"#,
        r#"{"status":"firing","alerts":[{"labels":{}}]}"#,
        r#"{"status":"firing","alerts":[{"status":"firing","labels":null}]}"#,
        r#"{"status":"firing","alerts":null}"#,
        r#"{"status":"firing","alerts":[],"truncatedAlerts":-0}"#,
        r#"{"status":"firing","alerts":[],"truncatedAlerts":1.0}"#,
        r#"{"status":"firing","alerts":[],"truncatedAlerts":18446744073709551616}"#,
        r#"{"status":"firing","alerts":[],"groupKey":null}"#,
        r#"{"status":"firing","alerts":[],"x":01}"#,
        r#"{"status":"firing","alerts":[],"x":1.}"#,
        r#"{"status":"firing","alerts":[],"x":-}"#,
        r#"{"status":"firing","alerts":[],"x":tru}"#,
        r#"{"status":"firing","alerts":[],"x":"\ud83d\ude00"}"#,
        r#"{"status":"firing","alerts":[],"x":"\ud83d"}"#,
        r#"{"status":"firing","alerts":[],"x":"\x"}"#,
        r#"{"status":"firing","alerts":[],"x":"\u12"}"#,
        "{\"status\":\"firing\",\"alerts\":[],\"x\":\"tab\there\"}",
        "\u{feff}{\"status\":\"firing\",\"alerts\":[]}",
    ];

    #[test]
    fn the_usual_payloads_are_read_in_one_pass_as_serde_reads_them() {
        for body in READ {
            assert_eq!(agrees(body.as_bytes()), Ok(true), "{body}");
        }
        let grafana = include_str!("../format/samples/grafana-firing.json");
        assert_eq!(agrees(grafana.as_bytes()), Ok(true));
    }

    #[test]
    fn the_rest_is_left_to_serde() {
        for body in LEFT {
            assert_eq!(agrees(body.as_bytes()), Ok(false), "{body}");
        }
        assert_eq!(agrees(b"{\"status\":\"firing\",\"alerts\":[],\"x\":\"\xff\"}"), Ok(false));
        let deep = format!(r#"{{"status":"firing","alerts":[],"x":{}1{}}}"#, "[".repeat(64), "]".repeat(64));
        assert_eq!(agrees(deep.as_bytes()), Ok(false), "65 levels");
        let fine = format!(r#"{{"status":"firing","alerts":[],"x":{}1{}}}"#, "[".repeat(63), "]".repeat(63));
        assert_eq!(agrees(fine.as_bytes()), Ok(true), "64 levels");
    }

    proptest! {
        /// The eight-byte test says yes exactly when a byte by itself would.
        /// (False positives would only cost speed; a miss would read past a
        /// quote.)
        #[test]
        fn the_word_test_agrees_with_the_bytes(bytes in proptest::array::uniform8(any::<u8>())) {
            let by_byte = bytes.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(ends_run(u64::from_le_bytes(bytes)), by_byte);
        }
    }

    /// Bytes a mutation puts in: JSON's structure and the scan's edge cases.
    const ALPHABET: &[u8] = b"{}[]\",:\\/ 0-1.eE+tnu\x01\xc3ab";

    proptest! {
        /// Any of the bodies above with a few bytes changed: the scan reads it
        /// as serde does, or leaves it to serde.
        #[test]
        fn a_changed_body_is_read_as_serde_reads_it_or_left_to_serde(
            which in 0..READ.len() + LEFT.len(),
            changes in proptest::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(ALPHABET)), 1..4),
        ) {
            let mut body = READ.iter().chain(LEFT).nth(which).unwrap().as_bytes().to_vec();
            for (at, how, byte) in changes {
                let i = at.index(body.len() + 1);
                match how {
                    0 => body.insert(i, byte),
                    1 if i < body.len() => { body.remove(i); }
                    _ if i < body.len() => body[i] = byte,
                    _ => body.push(byte),
                }
            }
            prop_assert!(agrees(&body).is_ok(), "{}", agrees(&body).unwrap_err());
        }
    }
}
