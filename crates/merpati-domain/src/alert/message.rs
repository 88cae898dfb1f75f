//! What a notification says, in Indonesian or English, and how each kind of notifier gets
//! it: Slack's `text` and `blocks`, Telegram's HTML, an e-mail's text and HTML, a webhook's
//! JSON. A message is fixed when the notification is made, so that every retry says the
//! same; rendering is pure.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{BackupChannel, Severity};
use crate::ids::IncidentId;

/// Devices named in one message; the rest are counted ("+N more").
pub const MAX_LISTED: usize = 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    En,
    Id,
}

impl Language {
    pub fn parse(s: &str) -> Option<Language> {
        match s {
            "en" => Some(Language::En),
            "id" => Some(Language::Id),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Id => "id",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Devices went down: the incident's first notification.
    Alert,
    /// More devices went down in an incident already notified.
    Update,
    /// A resolved incident's devices dropped again.
    Reopened,
    /// Still down (`repeat_every`).
    Reminder,
    /// Unacknowledged for a step's `after`.
    Escalation,
    /// Every device is back.
    Recovery,
    /// Dropping and returning too often: told once.
    Flapping,
    /// `POST /v1/notifiers/{id}/test`.
    Test,
    /// Another notifier of the account gave up a notification.
    NotifierFailing,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Alert => "alert",
            Kind::Update => "update",
            Kind::Reopened => "reopened",
            Kind::Reminder => "reminder",
            Kind::Escalation => "escalation",
            Kind::Recovery => "recovery",
            Kind::Flapping => "flapping",
            Kind::Test => "test",
            Kind::NotifierFailing => "notifier_failing",
        }
    }

    /// Says a device is down (rather than back, or something about merpati).
    pub fn is_alert(self) -> bool {
        matches!(
            self,
            Kind::Alert | Kind::Update | Kind::Reopened | Kind::Reminder | Kind::Escalation
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDevice {
    pub id: String,
    pub name: String,
    pub channel: String,
    pub engine: String,
    pub down_since: i64,
    pub up_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub kind: Kind,
    pub language: Language,
    pub incident_id: Option<IncidentId>,
    pub severity: Option<Severity>,
    pub business: Option<String>,
    /// At most [`MAX_LISTED`].
    pub devices: Vec<MessageDevice>,
    /// Devices beyond those listed.
    pub more: usize,
    /// For a recovery: how long the outage lasted.
    pub down_ms: Option<i64>,
    /// For a recovery: the alert it follows was never delivered.
    #[serde(default)]
    pub alert_unsent: bool,
    pub affected_conversations: Option<usize>,
    pub backup_channel: Option<BackupChannel>,
    pub incident_url: Option<String>,
    pub ack_url: Option<String>,
    /// Escalation step, or the failing notifier and its error.
    pub detail: Option<String>,
    pub at: i64,
}

impl Message {
    /// A message of `kind` that says nothing more yet.
    pub fn new(kind: Kind, language: Language, at: i64) -> Message {
        Message {
            kind,
            language,
            incident_id: None,
            severity: None,
            business: None,
            devices: Vec::new(),
            more: 0,
            down_ms: None,
            alert_unsent: false,
            affected_conversations: None,
            backup_channel: None,
            incident_url: None,
            ack_url: None,
            detail: None,
            at,
        }
    }
}

/// "37 min 20 s", "2 h 5 min", "3 d 4 h" (or in Indonesian).
pub fn human_duration(ms: i64, lang: Language) -> String {
    let s = (ms.max(0) + 500) / 1000;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let [ud, uh, um, us] = match lang {
        Language::En => ["d", "h", "min", "s"],
        Language::Id => ["hari", "jam", "mnt", "dtk"],
    };
    let parts: Vec<String> = if d > 0 {
        vec![format!("{d} {ud}"), format!("{h} {uh}")]
    } else if h > 0 {
        vec![format!("{h} {uh}"), format!("{m} {um}")]
    } else if m > 0 {
        vec![format!("{m} {um}"), format!("{sec} {us}")]
    } else {
        vec![format!("{sec} {us}")]
    };
    parts
        .into_iter()
        .filter(|p| !p.starts_with("0 ") || s == 0)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A time as people read it in a message: `2026-12-03 10:02:05 UTC`.
pub fn clock_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

struct Words {
    critical: &'static str,
    warning: &'static str,
    device: &'static str,
    devices_of: &'static str,
    is_down: &'static str,
    are_down: &'static str,
    more_down: &'static str,
    down_again: &'static str,
    still_down: &'static str,
    escalated: &'static str,
    back_after: &'static str,
    all_back_after: &'static str,
    was_down_back: &'static str,
    flapping: &'static str,
    down_since: &'static str,
    more: &'static str,
    affected: &'static str,
    backup: &'static str,
    devices_up: &'static str,
    acknowledge: &'static str,
    incident: &'static str,
    test: &'static str,
    notifier_failing: &'static str,
    of: &'static str,
    /// A device "of" a business.
    belongs: &'static str,
}

const EN: Words = Words {
    critical: "CRITICAL",
    warning: "WARNING",
    device: "Device",
    devices_of: "devices of",
    is_down: "is down",
    are_down: "are down",
    more_down: "more devices down",
    down_again: "down again",
    still_down: "still down",
    escalated: "escalated",
    back_after: "is back online after",
    all_back_after: "are back online; the outage lasted",
    was_down_back: "was down {} and is back now",
    flapping: "keeps dropping and coming back (flapping); further changes are not notified until it is stable",
    down_since: "down since",
    more: "more",
    affected: "Affected conversations",
    backup: "Backup channel",
    devices_up: "devices up",
    acknowledge: "Acknowledge",
    incident: "Incident",
    test: "Test notification from merpati: this notifier works.",
    notifier_failing: "A notifier is failing; alerts may not reach it",
    of: "of",
    belongs: "of",
};

const ID: Words = Words {
    critical: "KRITIS",
    warning: "PERINGATAN",
    device: "Perangkat",
    devices_of: "perangkat milik",
    is_down: "terputus",
    are_down: "terputus",
    more_down: "perangkat lain terputus",
    down_again: "terputus lagi",
    still_down: "masih terputus",
    escalated: "dieskalasi",
    back_after: "kembali online setelah",
    all_back_after: "kembali online; gangguan berlangsung",
    was_down_back: "sempat terputus {} dan kini kembali online",
    flapping: "terus terputus dan tersambung kembali (flapping); perubahan berikutnya tidak dinotifikasi sampai stabil",
    down_since: "terputus sejak",
    more: "lainnya",
    affected: "Percakapan terdampak",
    backup: "Channel cadangan",
    devices_up: "perangkat aktif",
    acknowledge: "Akui",
    incident: "Insiden",
    test: "Notifikasi uji dari merpati: notifier ini berfungsi.",
    notifier_failing: "Sebuah notifier gagal; alert mungkin tidak sampai ke sana",
    of: "dari",
    belongs: "milik",
};

fn words(lang: Language) -> &'static Words {
    match lang {
        Language::En => &EN,
        Language::Id => &ID,
    }
}

/// A message as lines of plain text: a headline, then the details.
pub struct Text {
    pub headline: String,
    pub lines: Vec<String>,
    /// (label, url)
    pub links: Vec<(String, String)>,
}

impl Message {
    fn severity_tag(&self) -> String {
        let w = words(self.language);
        match self.severity {
            Some(Severity::Critical) => format!("[{}] ", w.critical),
            Some(Severity::Warning) => format!("[{}] ", w.warning),
            None => String::new(),
        }
    }

    fn subject(&self) -> String {
        let w = words(self.language);
        let business = self.business.clone().unwrap_or_default();
        let total = self.devices.len() + self.more;
        let one = (total == 1).then(|| &self.devices[0]);
        let who = match one {
            Some(d) => format!(
                "{} {} ({}, {}) {} {business}",
                w.device, d.name, d.channel, d.engine, w.belongs
            ),
            None => format!("{total} {} {business}", w.devices_of),
        };
        let tag = self.severity_tag();
        match self.kind {
            Kind::Alert => format!(
                "{tag}{who} {}",
                if one.is_some() { w.is_down } else { w.are_down }
            ),
            Kind::Update => format!("{tag}{business}: {total} {}", w.more_down),
            Kind::Reopened => format!("{tag}{who}: {}", w.down_again),
            Kind::Reminder => format!("{tag}{who}: {}", w.still_down),
            Kind::Escalation => format!("{tag}{who}: {}", w.escalated),
            Kind::Recovery => {
                let down = human_duration(self.down_ms.unwrap_or(0), self.language);
                match (one, self.alert_unsent) {
                    (_, true) => format!("{who} {}", w.was_down_back.replace("{}", &down)),
                    (Some(_), false) => format!("{who} {} {down}", w.back_after),
                    (None, false) => format!("{who} {} {down}", w.all_back_after),
                }
            }
            Kind::Flapping => format!("{tag}{who} {}", w.flapping),
            Kind::Test => w.test.to_string(),
            Kind::NotifierFailing => w.notifier_failing.to_string(),
        }
    }

    fn icon(&self) -> &'static str {
        match self.kind {
            Kind::Recovery => "✅",
            Kind::Flapping => "🟠",
            Kind::Test => "🔔",
            Kind::NotifierFailing => "⚠️",
            _ => match self.severity {
                Some(Severity::Warning) => "🟡",
                _ => "🔴",
            },
        }
    }

    /// The message as plain text parts, for every kind of notifier.
    pub fn text(&self) -> Text {
        let w = words(self.language);
        let mut lines = Vec::new();
        if let Some(detail) = &self.detail {
            lines.push(detail.clone());
        }
        let listed = self.devices.len() + self.more > 1 || self.kind.is_alert();
        if listed && self.kind != Kind::Test {
            for d in &self.devices {
                let mut line = format!(
                    "• {} ({}, {}): {} {}",
                    d.name,
                    d.channel,
                    d.engine,
                    w.down_since,
                    clock_time(d.down_since)
                );
                if let Some(up) = d.up_at {
                    line.push_str(&format!(
                        ", {}",
                        human_duration(up - d.down_since, self.language)
                    ));
                } else if self.kind.is_alert() {
                    line.push_str(&format!(
                        " ({})",
                        human_duration(self.at - d.down_since, self.language)
                    ));
                }
                lines.push(line);
            }
            if self.more > 0 {
                lines.push(format!("+{} {}", self.more, w.more));
            }
        }
        if let Some(n) = self.affected_conversations {
            if self.kind.is_alert() || self.kind == Kind::Recovery {
                lines.push(format!("{}: {n}", w.affected));
            }
        }
        if let Some(b) = &self.backup_channel {
            if self.kind.is_alert() {
                lines.push(format!(
                    "{}: {} ({} {} {} {})",
                    w.backup, b.name, b.devices_up, w.of, b.devices, w.devices_up
                ));
            }
        }
        let mut links = Vec::new();
        if let Some(url) = &self.ack_url {
            if self.kind.is_alert() || self.kind == Kind::Flapping {
                links.push((w.acknowledge.to_string(), url.clone()));
            }
        }
        if let Some(url) = &self.incident_url {
            links.push((w.incident.to_string(), url.clone()));
        }
        Text {
            headline: format!("{} {}{}", self.icon(), "", self.subject()),
            lines,
            links,
        }
    }

    /// Plain text, one block.
    pub fn plain(&self) -> String {
        let t = self.text();
        let mut out = vec![t.headline];
        out.extend(t.lines);
        out.extend(t.links.iter().map(|(label, url)| format!("{label}: {url}")));
        out.join("\n")
    }

    /// A Slack-compatible incoming webhook's body: `text` is the fallback for clients that
    /// cannot show `blocks` (and for notifications); links are buttons, since an incoming
    /// webhook cannot receive a click.
    pub fn slack(&self) -> Value {
        let t = self.text();
        let mut blocks = vec![json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(&t.headline, 150), "emoji": true}
        })];
        if !t.lines.is_empty() {
            let body: Vec<String> = t.lines.iter().map(|l| slack_escape(l)).collect();
            blocks.push(json!({
                "type": "section",
                "text": {"type": "mrkdwn", "text": truncate(&body.join("\n"), 3000)}
            }));
        }
        if !t.links.is_empty() {
            let buttons: Vec<Value> = t
                .links
                .iter()
                .map(|(label, url)| {
                    json!({"type": "button", "text": {"type": "plain_text", "text": label}, "url": url})
                })
                .collect();
            blocks.push(json!({"type": "actions", "elements": buttons}));
        }
        json!({"text": truncate(&self.plain(), 3000), "blocks": blocks})
    }

    /// Telegram `sendMessage` text in its HTML parse mode (at most 4096 characters).
    pub fn telegram_html(&self) -> String {
        let t = self.text();
        let mut out = vec![format!("<b>{}</b>", html_escape(&t.headline))];
        out.extend(t.lines.iter().map(|l| html_escape(l)));
        out.extend(t.links.iter().map(|(label, url)| {
            format!(
                "<a href=\"{}\">{}</a>",
                html_escape(url),
                html_escape(label)
            )
        }));
        truncate(&out.join("\n"), 4096)
    }

    /// An e-mail's subject, text and HTML.
    pub fn email(&self) -> (String, String, String) {
        let t = self.text();
        let subject = t
            .headline
            .trim_start_matches(|c: char| !c.is_ascii_alphanumeric() && c != '[')
            .to_string();
        let mut html = format!("<h2>{}</h2>\n", html_escape(&t.headline));
        if !t.lines.is_empty() {
            html.push_str("<ul>\n");
            for l in &t.lines {
                html.push_str(&format!(
                    "<li>{}</li>\n",
                    html_escape(l.trim_start_matches("• "))
                ));
            }
            html.push_str("</ul>\n");
        }
        for (label, url) in &t.links {
            html.push_str(&format!(
                "<p><a href=\"{}\">{}</a></p>\n",
                html_escape(url),
                html_escape(label)
            ));
        }
        (truncate(&subject, 200), self.plain(), html)
    }

    /// A webhook notifier's body: the message's facts as JSON, in the device events' style.
    pub fn webhook(&self, timestamp_secs: i64) -> Value {
        let devices: Vec<Value> = self
            .devices
            .iter()
            .map(|d| {
                json!({
                    "id": d.id, "name": d.name, "channel": d.channel, "engine": d.engine,
                    "down_since": d.down_since / 1000,
                    "up_at": d.up_at.map(|t| t / 1000),
                })
            })
            .collect();
        json!({
            "event": format!("alert.{}", self.kind.as_str()),
            "timestamp": timestamp_secs,
            "text": self.plain(),
            "incident": {
                "id": self.incident_id,
                "severity": self.severity,
                "business": self.business,
                "devices": devices,
                "more_devices": self.more,
                "down_seconds": self.down_ms.map(|ms| ms / 1000),
                "affected_conversations": self.affected_conversations,
                "backup_channel": self.backup_channel,
                "url": self.incident_url,
                "acknowledge_url": self.ack_url,
            },
        })
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max_chars - 1).collect();
    out.push('…');
    out
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Slack's mrkdwn treats only `&`, `<` and `>` as special.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: Kind, n: usize) -> Message {
        Message {
            kind,
            language: Language::En,
            incident_id: Some(IncidentId::from("inc_1")),
            severity: Some(Severity::Critical),
            business: Some("My Business".into()),
            devices: (0..n.min(MAX_LISTED))
                .map(|i| MessageDevice {
                    id: format!("dev_{i}"),
                    name: format!("Phone {i}"),
                    channel: "WA Sales".into(),
                    engine: "wa".into(),
                    down_since: 1_000_000,
                    up_at: None,
                })
                .collect(),
            more: n.saturating_sub(MAX_LISTED),
            down_ms: Some(2_240_000),
            alert_unsent: false,
            affected_conversations: Some(3),
            backup_channel: Some(BackupChannel {
                id: "ch_b".into(),
                name: "WA Backup".into(),
                devices_up: 2,
                devices: 3,
            }),
            incident_url: Some("https://hub.example/incidents/inc_1".into()),
            ack_url: Some("https://hub.example/ack/t".into()),
            detail: None,
            at: 1_120_000,
        }
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(2_240_000, Language::En), "37 min 20 s");
        assert_eq!(human_duration(360_000, Language::En), "6 min");
        assert_eq!(human_duration(7_500_000, Language::Id), "2 jam 5 mnt");
        assert_eq!(human_duration(0, Language::En), "0 s");
    }

    #[test]
    fn one_device_down_names_it_and_everything_that_helps() {
        let text = message(Kind::Alert, 1).plain();
        assert!(
            text.starts_with("🔴 [CRITICAL] Device Phone 0 (WA Sales, wa) of My Business is down"),
            "{text}"
        );
        assert!(text.contains("Affected conversations: 3"));
        assert!(text.contains("Backup channel: WA Backup (2 of 3 devices up)"));
        assert!(text.contains("Acknowledge: https://hub.example/ack/t"));
    }

    #[test]
    fn past_twenty_devices_the_rest_are_counted() {
        let m = message(Kind::Alert, 50);
        let text = m.plain();
        assert!(
            text.contains("50 devices of My Business are down"),
            "{text}"
        );
        assert!(text.contains("+30 more"));
        assert_eq!(text.matches("• ").count(), 20);
    }

    #[test]
    fn recovery_says_how_long_and_indonesian_reads_indonesian() {
        let mut m = message(Kind::Recovery, 1);
        assert!(m.plain().contains("is back online after 37 min 20 s"));
        m.alert_unsent = true;
        m.down_ms = Some(360_000);
        assert!(m.plain().contains("was down 6 min and is back now"));
        m.language = Language::Id;
        assert!(m.plain().contains("sempat terputus 6 mnt"), "{}", m.plain());
    }

    #[test]
    fn each_notifier_gets_its_own_shape() {
        let m = message(Kind::Alert, 1);
        let slack = m.slack();
        assert!(slack["text"].as_str().unwrap().contains("is down"));
        assert_eq!(slack["blocks"][0]["type"], "header");
        assert_eq!(
            slack["blocks"][2]["elements"][0]["url"],
            "https://hub.example/ack/t"
        );
        let html = m.telegram_html();
        assert!(html.starts_with("<b>🔴 [CRITICAL]"));
        assert!(html.contains("<a href=\"https://hub.example/ack/t\">Acknowledge</a>"));
        let (subject, text, html) = m.email();
        assert!(
            subject.starts_with("[CRITICAL] Device Phone 0"),
            "{subject}"
        );
        assert!(text.contains("Incident: https://hub.example/incidents/inc_1"));
        assert!(html.contains("<li>Phone 0 (WA Sales, wa)"));
        let hook = m.webhook(1_120);
        assert_eq!(hook["event"], "alert.alert");
        assert_eq!(hook["incident"]["devices"][0]["id"], "dev_0");
    }

    #[test]
    fn names_cannot_inject_markup() {
        let mut m = message(Kind::Alert, 1);
        m.devices[0].name = "<b>x</b> & y".into();
        assert!(m.telegram_html().contains("&lt;b&gt;x&lt;/b&gt; &amp; y"));
    }
}
