//! WAHA (devlikeapro/waha): `message` and `session.status`. The session is the key.

use serde_json::{json, Value};

use super::{required, text, unix_secs, whatsapp_number, whatsapp_skip, Inbound, Malformed};
use super::{Skip, State};

pub(super) fn parse(v: &Value) -> Result<Vec<Inbound>, Malformed> {
    let key = text(v, &["session"]).map(str::to_owned);
    let event = required(v, &["event"])?;
    let p = &v["payload"];
    let one = match event {
        "message" => message(key, v, p)?,
        "session.status" => {
            let state = match required(p, &["status"])? {
                "WORKING" => State::Connected,
                "STARTING" => State::Pending,
                "STOPPED" => State::Disconnected,
                "FAILED"
                | "SCAN_QR_CODE"
                | "PASSKEY_REQUIRED"
                | "PASSKEY_CONFIRMATION_REQUIRED" => State::LoggedOut,
                _ => {
                    return Ok(vec![Inbound::Skipped {
                        key,
                        reason: Skip::UnknownEvent,
                    }])
                }
            };
            // The event's own time (ms), else the newest of the recent statuses.
            let at_ms = v["timestamp"].as_i64().or_else(|| {
                p["statuses"]
                    .as_array()
                    .and_then(|all| all.last())
                    .and_then(|s| s["timestamp"].as_i64())
            });
            Inbound::State { key, state, at_ms }
        }
        _ => Inbound::Skipped {
            key,
            reason: Skip::UnknownEvent,
        },
    };
    Ok(vec![one])
}

fn message(key: Option<String>, v: &Value, p: &Value) -> Result<Inbound, Malformed> {
    let id = required(p, &["id"])?;
    let from = required(p, &["from"])?;
    let skipped = |reason| Inbound::Skipped {
        key: key.clone(),
        reason,
    };
    if p["fromMe"].as_bool() == Some(true) {
        return Ok(skipped(Skip::FromMe));
    }
    if let Some(reason) = whatsapp_skip(from) {
        return Ok(skipped(reason));
    }
    let body = text(p, &["body"]).unwrap_or_default();
    if body.is_empty() {
        return Ok(skipped(Skip::NoText));
    }
    let Some(phone) = whatsapp_number(from) else {
        return Ok(skipped(Skip::NoPhone));
    };
    let mut item = json!({"type": "whatsapp", "rid": id, "phone": phone, "message": body});
    if let Some(wid) = text(v, &["me", "id"]).and_then(whatsapp_number) {
        item["wid"] = json!(wid);
    }
    if let Some(ts) = unix_secs(p.get("timestamp")) {
        item["timestamp"] = json!(ts);
    }
    Ok(Inbound::Item { key, item })
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Options};
    use super::*;
    use crate::Engine;

    fn read(body: &str) -> Vec<Inbound> {
        parse(Engine::Waha, body.as_bytes(), Options::default()).unwrap()
    }

    #[test]
    fn a_message_from_a_contact_is_a_whatsapp_item() {
        let got = read(include_str!(
            "../../tests/fixtures/waha-message-received.json"
        ));
        assert_eq!(
            got,
            vec![Inbound::Item {
                key: Some("default".into()),
                item: json!({
                    "type": "whatsapp",
                    "rid": "false_11111111111@c.us_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                    "phone": "+11111111111",
                    "message": "Hi there!",
                    "wid": "+71111111111",
                    "timestamp": 1667561485
                })
            }]
        );
    }

    #[test]
    fn the_documented_message_is_the_account_s_own_and_skipped() {
        let got = read(include_str!("../../tests/fixtures/waha-message.json"));
        assert_eq!(
            got,
            vec![Inbound::Skipped {
                key: Some("default".into()),
                reason: Skip::FromMe
            }]
        );
    }

    #[test]
    fn session_statuses_map_to_presence() {
        let got = read(include_str!(
            "../../tests/fixtures/waha-session-status.json"
        ));
        assert_eq!(
            got,
            vec![Inbound::State {
                key: Some("default".into()),
                state: State::Connected,
                at_ms: Some(1700000003000)
            }]
        );
        for (status, state) in [
            ("STARTING", State::Pending),
            ("STOPPED", State::Disconnected),
            ("FAILED", State::LoggedOut),
            ("SCAN_QR_CODE", State::LoggedOut),
        ] {
            let body = format!(
                r#"{{"event":"session.status","session":"s1","timestamp":5,"payload":{{"status":"{status}"}}}}"#
            );
            assert_eq!(
                read(&body),
                vec![Inbound::State {
                    key: Some("s1".into()),
                    state,
                    at_ms: Some(5)
                }]
            );
        }
    }

    #[test]
    fn groups_broadcasts_media_and_unknown_events_are_skipped() {
        let msg = |from: &str, body: &str| {
            format!(
                r#"{{"event":"message","session":"s","payload":{{"id":"x","from":"{from}","fromMe":false,"body":"{body}"}}}}"#
            )
        };
        let reason = |body: String| match &read(&body)[0] {
            Inbound::Skipped { reason, .. } => *reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(msg("1203630@g.us", "hi")), Skip::Group);
        assert_eq!(reason(msg("status@broadcast", "hi")), Skip::StatusBroadcast);
        assert_eq!(reason(msg("6281234567@c.us", "")), Skip::NoText);
        assert_eq!(reason(msg("123456789012345@lid", "hi")), Skip::NoPhone);
        assert_eq!(
            reason(r#"{"event":"message.ack","session":"s","payload":{}}"#.into()),
            Skip::UnknownEvent
        );
        assert!(parse(Engine::Waha, br#"{"session":"s"}"#, Options::default()).is_err());
    }
}
