//! Alert rules, and which of them decides each field for a device: per field, the most
//! specific rule that sets it (device over channel over business over engine over the
//! account's default), else the documents' defaults.

use serde::{Deserialize, Serialize};

use super::{Match, Policy};
use crate::device::DeviceContext;
use crate::ids::{AlertRuleId, NotifierId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationStep {
    /// After the incident opened, unacknowledged.
    pub after_ms: i64,
    pub notifiers: Vec<NotifierId>,
}

/// A rule as an account keeps it: every field optional, so that a rule may set only what
/// it means to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRule {
    pub id: AlertRuleId,
    #[serde(rename = "match")]
    pub matches: Match,
    pub down_after_ms: Option<i64>,
    pub severity: Option<Severity>,
    pub notifiers: Option<Vec<NotifierId>>,
    /// 0: off.
    pub repeat_every_ms: Option<i64>,
    pub escalation: Option<Vec<EscalationStep>>,
    pub notify_recovery: Option<bool>,
    pub created_at: i64,
    pub updated_at: i64,
    pub revision: i64,
}

/// The least `repeat_every` may be, when on.
pub const MIN_REPEAT_MS: i64 = 5 * 60_000;

/// The documents' thresholds: WhatsApp at once, Telegram after 5 minutes, Slack after 15,
/// anything else after 5.
pub fn default_down_after_ms(engine: &str) -> i64 {
    match engine {
        "wa" | "whatsapp" => 0,
        "slack" => 15 * 60_000,
        _ => 5 * 60_000,
    }
}

/// The documents' critical channels: `wa` and `telegram`.
pub fn default_severity(engine: &str) -> Severity {
    match engine {
        "wa" | "whatsapp" | "telegram" => Severity::Critical,
        _ => Severity::Warning,
    }
}

/// One resolved field: its value, and the rule that set it (None: the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved<T> {
    pub value: T,
    pub rule: Option<AlertRuleId>,
}

/// What applies to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effective {
    pub down_after_ms: Resolved<i64>,
    pub severity: Resolved<Severity>,
    pub notifiers: Resolved<Vec<NotifierId>>,
    pub repeat_every_ms: Resolved<i64>,
    pub escalation: Resolved<Vec<EscalationStep>>,
    pub notify_recovery: Resolved<bool>,
}

impl Effective {
    pub fn policy(&self) -> Policy {
        Policy {
            notifiers: self.notifiers.value.clone(),
            repeat_every_ms: self.repeat_every_ms.value,
            escalation: self.escalation.value.clone(),
            notify_recovery: self.notify_recovery.value,
        }
    }
}

/// Resolves every field for `device`. `all_notifiers`: the account's notifiers, who are
/// told when no rule names any.
pub fn effective(
    rules: &[AlertRule],
    device: &DeviceContext,
    all_notifiers: &[NotifierId],
) -> Effective {
    // Most specific first; among equals, the one naming more fields, then the newest.
    let mut matching: Vec<&AlertRule> =
        rules.iter().filter(|r| r.matches.matches(device)).collect();
    matching.sort_by(|a, b| {
        let key = |r: &AlertRule| {
            let m = &r.matches;
            let named = [
                m.engine.is_some(),
                m.business_id.is_some(),
                m.channel_id.is_some(),
                m.device_id.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            (m.specificity(), named, r.created_at, r.id.clone())
        };
        key(b).cmp(&key(a))
    });
    fn pick<T: Clone>(
        rules: &[&AlertRule],
        field: impl Fn(&AlertRule) -> Option<T>,
        default: T,
    ) -> Resolved<T> {
        rules
            .iter()
            .find_map(|r| {
                field(r).map(|value| Resolved {
                    value,
                    rule: Some(r.id.clone()),
                })
            })
            .unwrap_or(Resolved {
                value: default,
                rule: None,
            })
    }
    Effective {
        down_after_ms: pick(
            &matching,
            |r| r.down_after_ms,
            default_down_after_ms(&device.engine),
        ),
        severity: pick(&matching, |r| r.severity, default_severity(&device.engine)),
        notifiers: pick(&matching, |r| r.notifiers.clone(), all_notifiers.to_vec()),
        repeat_every_ms: pick(&matching, |r| r.repeat_every_ms, 0),
        escalation: pick(&matching, |r| r.escalation.clone(), Vec::new()),
        notify_recovery: pick(&matching, |r| r.notify_recovery, true),
    }
}

/// Two devices' policies in one incident: everyone either would tell, the more frequent
/// reminder, the first's escalation (or the second's, if the first has none), and a
/// recovery notice if either wants one.
pub fn merge(mut a: Policy, b: &Policy) -> Policy {
    for n in &b.notifiers {
        if !a.notifiers.contains(n) {
            a.notifiers.push(n.clone());
        }
    }
    a.repeat_every_ms = match (a.repeat_every_ms, b.repeat_every_ms) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    };
    if a.escalation.is_empty() {
        a.escalation = b.escalation.clone();
    }
    a.notify_recovery |= b.notify_recovery;
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(engine: &str) -> DeviceContext {
        crate::alert::test_device(engine)
    }

    fn rule(id: &str, m: Match) -> AlertRule {
        AlertRule {
            id: AlertRuleId::from(id),
            matches: m,
            down_after_ms: None,
            severity: None,
            notifiers: None,
            repeat_every_ms: None,
            escalation: None,
            notify_recovery: None,
            created_at: 0,
            updated_at: 0,
            revision: 0,
        }
    }

    #[test]
    fn without_rules_the_documents_defaults_apply() {
        let all = [NotifierId::from("n1")];
        let wa = effective(&[], &device("wa"), &all);
        assert_eq!(wa.down_after_ms.value, 0);
        assert_eq!(wa.severity.value, Severity::Critical);
        assert_eq!(wa.notifiers.value, all.to_vec());
        assert!(wa.notify_recovery.value);
        assert_eq!(wa.down_after_ms.rule, None);
        let tg = effective(&[], &device("telegram"), &all);
        assert_eq!(
            (tg.down_after_ms.value, tg.severity.value),
            (300_000, Severity::Critical)
        );
        let slack = effective(&[], &device("slack"), &all);
        assert_eq!(
            (slack.down_after_ms.value, slack.severity.value),
            (900_000, Severity::Warning)
        );
        assert_eq!(
            effective(&[], &device("sms"), &all).down_after_ms.value,
            300_000
        );
    }

    #[test]
    fn per_field_the_most_specific_rule_that_sets_it_wins() {
        let mut default = rule("r_default", Match::default());
        default.down_after_ms = Some(1_000);
        default.severity = Some(Severity::Warning);
        let mut by_engine = rule(
            "r_engine",
            Match {
                engine: Some("wa".into()),
                ..Match::default()
            },
        );
        by_engine.down_after_ms = Some(2_000);
        let mut by_channel = rule(
            "r_channel",
            Match {
                channel_id: Some("ch".into()),
                ..Match::default()
            },
        );
        by_channel.down_after_ms = Some(3_000);
        let mut by_device = rule(
            "r_device",
            Match {
                device_id: Some("dev".into()),
                ..Match::default()
            },
        );
        by_device.repeat_every_ms = Some(600_000);
        let other_channel = {
            let mut r = rule(
                "r_other",
                Match {
                    channel_id: Some("elsewhere".into()),
                    ..Match::default()
                },
            );
            r.down_after_ms = Some(9);
            r
        };
        let rules = [default, by_engine, by_channel, by_device, other_channel];
        let e = effective(&rules, &device("wa"), &[]);
        assert_eq!(e.down_after_ms.value, 3_000);
        assert_eq!(e.down_after_ms.rule, Some(AlertRuleId::from("r_channel")));
        assert_eq!(e.severity.rule, Some(AlertRuleId::from("r_default")));
        assert_eq!(e.repeat_every_ms.rule, Some(AlertRuleId::from("r_device")));
        assert_eq!(e.notifiers.rule, None);
    }

    #[test]
    fn merged_policies_tell_everyone_and_remind_most_often() {
        let a = Policy {
            notifiers: vec!["n1".into()],
            repeat_every_ms: 0,
            escalation: vec![],
            notify_recovery: false,
        };
        let b = Policy {
            notifiers: vec!["n1".into(), "n2".into()],
            repeat_every_ms: 600_000,
            escalation: vec![EscalationStep {
                after_ms: 1,
                notifiers: vec!["n3".into()],
            }],
            notify_recovery: true,
        };
        let m = merge(a, &b);
        assert_eq!(
            m.notifiers,
            vec![NotifierId::from("n1"), NotifierId::from("n2")]
        );
        assert_eq!(m.repeat_every_ms, 600_000);
        assert_eq!(m.escalation.len(), 1);
        assert!(m.notify_recovery);
    }
}
