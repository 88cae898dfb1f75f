//! Slack Events API: `url_verification` (answered with its challenge), `event_callback`
//! (a message, `app_uninstalled`, `tokens_revoked`). The workspace (`team_id`) is the key.

use serde_json::{json, Value};

use super::{required, text, Inbound, Malformed, Options, Skip, State};

pub(super) fn parse(v: &Value, options: Options) -> Result<Vec<Inbound>, Malformed> {
    let key = text(v, &["team_id"]).map(str::to_owned);
    let one = match required(v, &["type"])? {
        "url_verification" => Inbound::Challenge(required(v, &["challenge"])?.to_owned()),
        "event_callback" => {
            let event = &v["event"];
            match text(event, &["type"]) {
                Some("app_uninstalled" | "tokens_revoked") => Inbound::State {
                    key,
                    state: State::LoggedOut,
                    at_ms: v["event_time"].as_i64().map(|s| s * 1000),
                },
                // A person's message; edits, joins and bots' own posts have a subtype.
                Some("message")
                    if event.get("subtype").is_none() && event.get("bot_id").is_none() =>
                {
                    if !options.notifications {
                        Inbound::Skipped {
                            key,
                            reason: Skip::NotRequested,
                        }
                    } else {
                        let body = text(event, &["text"]).unwrap_or_default();
                        if body.is_empty() {
                            Inbound::Skipped {
                                key,
                                reason: Skip::NoText,
                            }
                        } else {
                            let mut item = json!({
                                "type": "notification",
                                "rid": required(v, &["event_id"])?,
                                "package": "com.Slack",
                                "title": text(event, &["channel"]).unwrap_or("Slack"),
                                "content": body,
                            });
                            if let Some(t) = v["event_time"].as_i64() {
                                item["timestamp"] = json!(t);
                            }
                            Inbound::Item { key, item }
                        }
                    }
                }
                _ => Inbound::Alive { key },
            }
        }
        _ => Inbound::Skipped {
            key,
            reason: Skip::UnknownEvent,
        },
    };
    Ok(vec![one])
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use crate::Engine;

    #[test]
    fn url_verification_is_answered_with_its_challenge() {
        let body = include_str!("../../tests/fixtures/slack-url-verification.json");
        let got = parse(Engine::Slack, body.as_bytes(), Options::default()).unwrap();
        assert_eq!(
            got,
            vec![Inbound::Challenge(
                "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P".into()
            )]
        );
    }

    #[test]
    fn messages_are_notifications_on_request_and_uninstalls_log_out() {
        let body = include_str!("../../tests/fixtures/slack-message.json");
        let asked = Options {
            notifications: true,
        };
        let got = parse(Engine::Slack, body.as_bytes(), asked).unwrap();
        assert_eq!(
            got,
            vec![Inbound::Item {
                key: Some("T061EG9R6".into()),
                item: json!({
                    "type": "notification",
                    "rid": "Ev0PV52K21",
                    "package": "com.Slack",
                    "title": "C2147483705",
                    "content": "Hello world",
                    "timestamp": 1355517523
                })
            }]
        );
        let gone = br#"{"type":"event_callback","team_id":"T1","event":{"type":"app_uninstalled"},"event_time":10}"#;
        assert_eq!(
            parse(Engine::Slack, gone, asked).unwrap(),
            vec![Inbound::State {
                key: Some("T1".into()),
                state: State::LoggedOut,
                at_ms: Some(10_000)
            }]
        );
    }
}
