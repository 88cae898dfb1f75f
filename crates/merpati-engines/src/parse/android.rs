//! SMS Gateway for Android (capcom6/android-sms-gateway): `sms:received`, and `system:ping`
//! as a sign of life. The app's `deviceId` is the key.

use serde_json::{json, Value};

use super::{required, text, Inbound, Malformed, Skip};
use crate::time::iso8601_secs;

pub(super) fn parse(v: &Value) -> Result<Vec<Inbound>, Malformed> {
    let key = text(v, &["deviceId"]).map(str::to_owned);
    let one = match required(v, &["event"])? {
        "sms:received" => {
            let p = &v["payload"];
            let message_id = required(p, &["messageId"])?;
            let received_at = required(p, &["receivedAt"])?;
            let timestamp = iso8601_secs(received_at).ok_or_else(|| {
                Malformed(format!("payload.receivedAt {received_at:?} is not a time"))
            })?;
            // Older app versions name the sender `sender`.
            let phone = text(p, &["phoneNumber"])
                .or_else(|| text(p, &["sender"]))
                .ok_or_else(|| Malformed("payload.phoneNumber is missing".into()))?;
            let body = text(p, &["message"]).unwrap_or_default();
            if body.is_empty() {
                return Ok(vec![Inbound::Skipped {
                    key,
                    reason: Skip::NoText,
                }]);
            }
            // The app's id is a hash of the content: with the time it is one message.
            let mut item = json!({
                "type": "sms",
                "rid": format!("{message_id}@{timestamp}"),
                "phone": phone,
                "message": body,
                "timestamp": timestamp,
            });
            if let Some(sim) = p["simNumber"].as_i64() {
                item["sim"] = json!(sim);
            }
            Inbound::Item { key, item }
        }
        "system:ping" | "app:started" | "sms:sent" | "sms:delivered" | "sms:failed" => {
            Inbound::Alive { key }
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
    use super::super::{parse, Options};
    use super::*;
    use crate::Engine;

    fn read(body: &str) -> Vec<Inbound> {
        parse(
            Engine::AndroidSmsGateway,
            body.as_bytes(),
            Options::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_received_sms_is_an_sms_item_dated_in_utc() {
        let got = read(include_str!(
            "../../tests/fixtures/android-sms-received.json"
        ));
        assert_eq!(
            got,
            vec![Inbound::Item {
                key: Some("ffffffffceb0b1db0000018e937c815b".into()),
                item: json!({
                    "type": "sms",
                    "rid": "abc123@1719045971",
                    "phone": "6505551212",
                    "message": "Android is always a sweet treat!",
                    "timestamp": 1719045971,
                    "sim": 1
                })
            }]
        );
    }

    #[test]
    fn pings_are_life_and_bad_times_are_malformed() {
        assert_eq!(
            read(r#"{"deviceId":"d","event":"system:ping","payload":{"health":{}}}"#),
            vec![Inbound::Alive {
                key: Some("d".into())
            }]
        );
        let bad = br#"{"deviceId":"d","event":"sms:received","payload":{"messageId":"1","phoneNumber":"+1","message":"m","receivedAt":"soon"}}"#;
        assert!(parse(Engine::AndroidSmsGateway, bad, Options::default()).is_err());
    }
}
