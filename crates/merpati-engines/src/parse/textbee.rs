//! textbee (vernu/textbee): `MESSAGE_RECEIVED`. Its `deviceId` is the key. textbee has no
//! state events; its devices are polled for their heartbeat.

use serde_json::{json, Value};

use super::{required, text, Inbound, Malformed, Skip};
use crate::time::iso8601_secs;

pub(super) fn parse(v: &Value) -> Result<Vec<Inbound>, Malformed> {
    let key = text(v, &["deviceId"]).map(str::to_owned);
    let one = match required(v, &["webhookEvent"])? {
        "MESSAGE_RECEIVED" => {
            let id = text(v, &["smsId"])
                .or_else(|| text(v, &["idempotencyKey"]))
                .ok_or_else(|| Malformed("smsId is missing".into()))?;
            let phone = required(v, &["sender"])?;
            let body = text(v, &["message"]).unwrap_or_default();
            if body.is_empty() {
                return Ok(vec![Inbound::Skipped {
                    key,
                    reason: Skip::NoText,
                }]);
            }
            let mut item = json!({"type": "sms", "rid": id, "phone": phone, "message": body});
            if let Some(ts) = text(v, &["receivedAt"]).and_then(iso8601_secs) {
                item["timestamp"] = json!(ts);
            }
            Inbound::Item { key, item }
        }
        _ => Inbound::Alive { key },
    };
    Ok(vec![one])
}

#[cfg(test)]
mod tests {
    use super::super::{parse, Options};
    use super::*;
    use crate::Engine;

    #[test]
    fn a_received_message_is_an_sms_item() {
        let body = include_str!("../../tests/fixtures/textbee-message-received.json");
        let got = parse(Engine::Textbee, body.as_bytes(), Options::default()).unwrap();
        assert_eq!(
            got,
            vec![Inbound::Item {
                key: Some("66a1f0c2e4b0a1b2c3d4e5f6".into()),
                item: json!({
                    "type": "sms",
                    "rid": "66a1f3d9e4b0a1b2c3d4e5f7",
                    "phone": "+628111222333",
                    "message": "Kode OTP Anda 123456",
                    "timestamp": 1721889753
                })
            }]
        );
    }
}
