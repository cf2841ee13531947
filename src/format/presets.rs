//! The presets: templates compiled into the binary, one per chat tool, each
//! kept within its target's documented limits (the limit and its source are
//! in a comment at the top of each template, `presets/*.j2`). Every preset
//! shows the status (colour or emoji), a title from `alertname` and the count,
//! the first alerts with their summary and description and the labels that
//! tell them apart, links to the alert's source and to Alertmanager, and
//! "and N more" for the rest.

/// A compiled-in template.
#[derive(Debug)]
pub struct Preset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub template: &'static str,
    /// How the target's 2xx answer is read.
    pub answer: Answer,
    /// The target's limits the preset keeps to, in words.
    pub limits: &'static str,
}

/// How a target's 2xx answer says whether the message was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The HTTP status alone.
    Status,
    /// `{"<code>": 0, "<message>": "ok"}`: any other code is an error.
    /// `retry` codes are rate limits or the target being busy: retried.
    Code {
        code: &'static [&'static str],
        message: &'static [&'static str],
        rate_limited: &'static [i64],
        busy: &'static [i64],
    },
}

/// What a 2xx answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Taken,
    /// Retried as a rate limit.
    RateLimited(String),
    /// Retried as a server error.
    Busy(String),
    /// Not retried: the target refused the message.
    Refused(String),
}

impl Answer {
    /// Reads a 2xx answer's body. Answers without the code (not JSON, another
    /// shape) are taken: only a code that says so is an error.
    pub fn read(&self, body: &[u8]) -> Verdict {
        let Answer::Code { code, message, rate_limited, busy } = self else { return Verdict::Taken };
        let Ok(serde_json::Value::Object(answer)) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Verdict::Taken;
        };
        let Some((field, value)) = code.iter().find_map(|f| answer.get(*f).map(|v| (*f, v))) else {
            return Verdict::Taken;
        };
        let Some(number) = value.as_i64() else { return Verdict::Taken };
        if number == 0 {
            return Verdict::Taken;
        }
        let text = message.iter().find_map(|f| answer.get(*f).and_then(|v| v.as_str())).unwrap_or("");
        let said = format!("{field} {number}: {text}");
        if rate_limited.contains(&number) {
            Verdict::RateLimited(said)
        } else if busy.contains(&number) {
            Verdict::Busy(said)
        } else {
            Verdict::Refused(said)
        }
    }
}

pub const PRESETS: [Preset; 7] = [
    Preset {
        name: "slack",
        content_type: "application/json",
        template: include_str!("presets/slack.j2"),
        answer: Answer::Status,
        limits: "text and attachments of Slack, Mattermost and Rocket.Chat incoming webhooks; at most 4,000 \
                 characters of alert text (Rocket.Chat's default message limit is 5,000)",
    },
    Preset {
        name: "msteams",
        content_type: "application/json",
        template: include_str!("presets/msteams.j2"),
        answer: Answer::Status,
        limits: "an Adaptive Card 1.4 in a message, as Teams Workflows webhooks take it; under Teams' 28 KB message \
                 size: the first 10 alerts",
    },
    Preset {
        name: "discord",
        content_type: "application/json",
        template: include_str!("presets/discord.j2"),
        answer: Answer::Status,
        limits: "one embed: title at most 256 characters, description at most 4,096, all embed text at most 6,000",
    },
    Preset {
        name: "googlechat",
        content_type: "application/json",
        template: include_str!("presets/googlechat.j2"),
        answer: Answer::Status,
        limits: "a text message of at most 4,000 characters (Google Chat takes 4,096 characters of text)",
    },
    Preset {
        name: "dingtalk",
        content_type: "application/json",
        template: include_str!("presets/dingtalk.j2"),
        // errcode 130101 and 410100: "send too fast" (20 messages a minute per
        // robot, then 10 minutes of refusal); -1: system busy.
        answer: Answer::Code { code: &["errcode"], message: &["errmsg"], rate_limited: &[130101, 410100], busy: &[-1] },
        limits: "a markdown message of at most 4,000 bytes; 20 messages a minute per robot",
    },
    Preset {
        name: "feishu",
        content_type: "application/json",
        template: include_str!("presets/feishu.j2"),
        // code 11232: frequency limited (100 a minute, 5 a second per bot).
        // Older bots answer StatusCode/StatusMessage.
        answer: Answer::Code {
            code: &["code", "StatusCode"],
            message: &["msg", "StatusMessage"],
            rate_limited: &[11232],
            busy: &[],
        },
        limits: "an interactive card, request body under 20 KB: at most 8,000 bytes of alert text",
    },
    Preset {
        name: "wecom",
        content_type: "application/json",
        template: include_str!("presets/wecom.j2"),
        // errcode 45009: api freq out of limit (20 messages a minute); -1: system busy.
        answer: Answer::Code { code: &["errcode"], message: &["errmsg"], rate_limited: &[45009], busy: &[-1] },
        limits: "a markdown message of at most 4,096 bytes (UTF-8); 20 messages a minute per robot",
    },
];

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}
