use serde_json::Value;

use super::*;

fn preset_payload(p: &Preset) -> Payload {
    let format = serde_json::from_value(Value::String(p.name.into())).unwrap();
    Payload::template(format, p.template, p.content_type, p.answer).unwrap_or_else(|e| panic!("{}: {e:?}", p.name))
}

fn chars(v: &Value) -> usize {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).chars().count()
}

/// The fields each target requires, and its limits, checked on one body.
fn check(name: &str, body: &Value, sample: &str) {
    let at = format!("{name} for {sample}");
    match name {
        "slack" => {
            assert!(chars(&body["text"]) <= 300, "{at}");
            let a = &body["attachments"][0];
            assert!(a["color"].as_str().unwrap().starts_with('#'), "{at}");
            assert!(chars(&a["text"]) <= 4000, "{at}");
            assert!(!a["text"].as_str().unwrap().is_empty(), "{at}");
        }
        "msteams" => {
            assert_eq!(body["type"], "message", "{at}");
            let a = &body["attachments"][0];
            assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive", "{at}");
            assert_eq!(a["content"]["type"], "AdaptiveCard", "{at}");
            assert_eq!(a["content"]["version"], "1.4", "{at}");
            assert!(a["content"]["body"].as_array().unwrap().len() >= 2, "{at}");
            assert!(serde_json::to_vec(body).unwrap().len() < 28 * 1024, "{at}: over Teams' 28 KB");
        }
        "discord" => {
            assert!(chars(&body["content"]) <= 2000, "{at}");
            let e = &body["embeds"][0];
            let (title, description, footer) =
                (chars(&e["title"]), chars(&e["description"]), chars(&e["footer"]["text"]));
            assert!(title <= 256 && description <= 4096 && footer <= 2048, "{at}");
            assert!(title + description + footer <= 6000, "{at}");
            assert!(e["color"].is_u64(), "{at}");
            if let Some(url) = e.get("url") {
                assert!(url.as_str().unwrap().starts_with("http"), "{at}");
            }
        }
        "googlechat" => assert!((1..=4096).contains(&chars(&body["text"])), "{at}"),
        "dingtalk" => {
            assert_eq!(body["msgtype"], "markdown", "{at}");
            assert!(!body["markdown"]["title"].as_str().unwrap().is_empty(), "{at}");
            assert!(body["markdown"]["text"].as_str().unwrap().len() <= 4000, "{at}");
        }
        "feishu" => {
            assert_eq!(body["msg_type"], "interactive", "{at}");
            assert!(body["card"]["header"]["title"]["content"].is_string(), "{at}");
            assert!(serde_json::to_vec(body).unwrap().len() < 20 * 1024, "{at}: over Feishu's 20 KB");
        }
        "wecom" => {
            assert_eq!(body["msgtype"], "markdown", "{at}");
            let content = body["markdown"]["content"].as_str().unwrap();
            assert!(!content.is_empty() && content.len() <= 4096, "{at}: {} bytes", content.len());
        }
        other => panic!("no checks for preset {other}"),
    }
}

#[test]
fn every_preset_renders_every_sample_as_valid_json_within_its_targets_limits() {
    let mut samples = samples();
    // A notification the relay cut down: truncatedAlerts set.
    let mut cut: Value = serde_json::from_str(&large_group(3)).unwrap();
    cut["truncatedAlerts"] = 7.into();
    samples.push(("truncated", cut.to_string()));
    // No externalURL and no generatorURL: links are left out, not broken.
    let mut bare: Value = serde_json::from_str(&large_group(2)).unwrap();
    bare["externalURL"] = "".into();
    for a in bare["alerts"].as_array_mut().unwrap() {
        a["generatorURL"] = "".into();
    }
    samples.push(("bare", bare.to_string()));
    for preset in &PRESETS {
        let payload = preset_payload(preset);
        for (sample, text) in &samples {
            let out = payload.render(text.as_bytes(), "team-chat").unwrap();
            let body: Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("{} for {sample}: {e}\n{}", preset.name, String::from_utf8_lossy(&out)));
            check(preset.name, &body, sample);
            let shown = String::from_utf8_lossy(&out);
            if *sample == "large" {
                assert!(shown.contains("more"), "{}: 300 alerts end in \"and N more\"", preset.name);
                assert!(shown.contains("[FIRING:257] DiskFilling"), "{}: title with the count:\n{shown}", preset.name);
            }
            if *sample == "resolved" {
                assert!(shown.contains("[RESOLVED] HighLatency"), "{}: {shown}", preset.name);
            }
            if *sample == "firing" {
                assert!(shown.contains("p99 latency above 1s"), "{}: the summary is shown", preset.name);
                assert!(shown.contains("silences/new?filter="), "{}: a silence link", preset.name);
                let labels = if preset.name == "msteams" { "\"value\": \"api\"" } else { "service=api" };
                assert!(shown.contains(labels), "{}: the labels that tell alerts apart:\n{shown}", preset.name);
            }
            if *sample == "bare" {
                assert!(!shown.contains("silences/new") && !shown.contains("(http://)"), "{}: {shown}", preset.name);
            }
        }
    }
}

#[test]
fn unicode_quotes_and_newlines_survive_into_the_json_strings() {
    for preset in &PRESETS {
        let payload = preset_payload(preset);
        let sample = large_group(2);
        let out = payload.render(sample.as_bytes(), "r").unwrap();
        let text = serde_json::from_slice::<Value>(&out).unwrap().to_string();
        for needle in ["磁盘将满", "Заполнено", "🔥", "\\\"{{ not a template }}\\\""] {
            assert!(text.contains(needle), "{}: {needle} lost in {text}", preset.name);
        }
    }
}

#[test]
fn answers_with_error_codes_are_read() {
    let dingtalk = presets::preset("dingtalk").unwrap().answer;
    assert_eq!(dingtalk.read(br#"{"errcode":0,"errmsg":"ok"}"#), presets::Verdict::Taken);
    assert_eq!(
        dingtalk.read(br#"{"errcode":310000,"errmsg":"keywords not in content"}"#),
        presets::Verdict::Refused("errcode 310000: keywords not in content".into())
    );
    assert!(matches!(
        dingtalk.read(br#"{"errcode":410100,"errmsg":"send too fast"}"#),
        presets::Verdict::RateLimited(_)
    ));
    assert!(matches!(dingtalk.read(br#"{"errcode":-1,"errmsg":"system busy"}"#), presets::Verdict::Busy(_)));
    assert_eq!(dingtalk.read(b"<html>not json</html>"), presets::Verdict::Taken);
    let feishu = presets::preset("feishu").unwrap().answer;
    assert!(matches!(feishu.read(br#"{"code":11232,"msg":"frequency limited"}"#), presets::Verdict::RateLimited(_)));
    assert_eq!(
        feishu.read(br#"{"StatusCode":19001,"StatusMessage":"param invalid"}"#),
        presets::Verdict::Refused("StatusCode 19001: param invalid".into())
    );
    assert_eq!(feishu.read(br#"{"code":0,"msg":"success","data":{}}"#), presets::Verdict::Taken);
    assert_eq!(Answer::Status.read(br#"{"errcode":1}"#), presets::Verdict::Taken);
}

fn template_error(source: &str, content_type: &str) -> String {
    Payload::template(FormatName::Template, source, content_type, Answer::Status).unwrap_err().1
}

#[test]
fn template_errors_name_the_line_and_what_is_wrong() {
    let e = template_error("{\"a\": 1}\n{% for a in alerts %}\n{{ a }}", "text/plain");
    assert!(e.starts_with("line ") && e.contains("syntax error"), "{e}");
    let e = template_error("{\"text\": \"{{ status }}\",\n\"n\": {{ alerts | no_such_filter }}}", "application/json");
    assert!(e.contains("line 2") && e.contains("no_such_filter"), "{e}");
    // A JSON content type must render valid JSON: a raw string breaks it.
    let e = template_error(
        "{\"text\": \"{{ commonAnnotations.summary or alerts[0].annotations.summary }}\"}",
        "application/json",
    );
    assert!(e.contains("not valid JSON") && e.contains("tojson"), "{e}");
    // The same template as text/plain is fine.
    assert!(Payload::template(FormatName::Template, "{{ status }}", "text/plain", Answer::Status).is_ok());
    assert!(template_error("   ", "text/plain").contains("empty"));
    assert!(template_error(&"x".repeat(MAX_TEMPLATE_BYTES + 1), "text/plain").contains("at most"));
}

#[test]
fn the_sandbox_stops_endless_loops_giant_output_and_file_access() {
    let e = template_error(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
        "text/plain",
    );
    assert!(e.contains("fuel") || e.contains("out of fuel"), "{e}");
    let e = template_error("{% for i in range(20000) %}{{ \"x\" * 100 }}{% endfor %}", "text/plain");
    assert!(e.contains("output too large"), "{e}");
    let e = template_error("{{ \"x\" * 1000000000 }}", "text/plain");
    assert!(e.contains("too large"), "{e}");
    let e = template_error("{% include \"/etc/passwd\" %}", "text/plain");
    // Built without includes, imports and a loader: no file can be named.
    assert!(e.contains("unknown statement include"), "{e}");
    // No macros (no recursion) and no namespace (no state carried across a
    // loop's iterations): a string cannot be doubled over and over.
    let e = template_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "text/plain");
    assert!(e.contains("unknown statement macro"), "{e}");
    let e = template_error(
        "{% set ns = namespace(s=\"x\") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "text/plain",
    );
    assert!(e.contains("namespace"), "{e}");
}

#[test]
fn the_alertmanager_format_is_the_routed_body_itself() {
    let payload = Payload::alertmanager();
    let body = br#"{"a": 1,  "kept": "as is"}"#;
    assert!(matches!(payload.render(body, "r").unwrap(), std::borrow::Cow::Borrowed(b) if b == body));
}

#[test]
fn the_design_example_template_renders() {
    let source = r#"{"text": {{ ("[" ~ status | upper ~ "] " ~ commonLabels.alertname) | tojson }}}"#;
    let p = Payload::template(FormatName::Template, source, "application/json", Answer::Status).unwrap();
    let out = p.render(FIRING.as_bytes(), "r").unwrap();
    assert_eq!(String::from_utf8(out.into_owned()).unwrap(), r#"{"text": "[FIRING] HighLatency"}"#);
}

/// `cargo test --lib print_presets -- --ignored --nocapture` shows every preset's body.
#[test]
#[ignore]
fn print_presets() {
    for preset in &PRESETS {
        let sample = large_group(6);
        let out = preset_payload(preset).render(sample.as_bytes(), "team-chat").unwrap();
        println!("--- {}\n{}", preset.name, String::from_utf8_lossy(&out));
    }
}
