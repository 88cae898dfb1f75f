//! Telegram Bot API updates. A bot has one session: no key. Messages carry no phone
//! number, so by default an update is only a sign of life; on request a text message is a
//! `notification` item.

use serde_json::{json, Value};

use super::{text, Inbound, Malformed, Options, Skip};

pub(super) fn parse(v: &Value, options: Options) -> Result<Vec<Inbound>, Malformed> {
    let update_id = v["update_id"]
        .as_i64()
        .ok_or_else(|| Malformed("update_id is missing".into()))?;
    let message = &v["message"];
    let Some(body) = text(message, &["text"]).filter(|t| !t.is_empty()) else {
        return Ok(vec![Inbound::Alive { key: None }]);
    };
    if !options.notifications {
        return Ok(vec![Inbound::Skipped {
            key: None,
            reason: Skip::NotRequested,
        }]);
    }
    let from = &message["from"];
    let title = text(from, &["username"])
        .map(|u| format!("@{u}"))
        .or_else(|| text(from, &["first_name"]).map(str::to_owned))
        .unwrap_or_else(|| "Telegram".into());
    let mut item = json!({
        "type": "notification",
        "rid": update_id,
        "package": "org.telegram.messenger",
        "title": title,
        "content": body,
    });
    if let Some(date) = message["date"].as_i64() {
        item["timestamp"] = json!(date);
    }
    Ok(vec![Inbound::Item { key: None, item }])
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;
    use crate::Engine;

    const UPDATE: &str = include_str!("../../tests/fixtures/telegram-update.json");

    #[test]
    fn an_update_is_life_unless_notifications_are_asked_for() {
        let plain = parse(Engine::Telegram, UPDATE.as_bytes(), Options::default()).unwrap();
        assert_eq!(
            plain,
            vec![Inbound::Skipped {
                key: None,
                reason: Skip::NotRequested
            }]
        );
        let asked = Options {
            notifications: true,
        };
        let got = parse(Engine::Telegram, UPDATE.as_bytes(), asked).unwrap();
        assert_eq!(
            got,
            vec![Inbound::Item {
                key: None,
                item: json!({
                    "type": "notification",
                    "rid": 646911460,
                    "package": "org.telegram.messenger",
                    "title": "@ani_w",
                    "content": "Halo bot",
                    "timestamp": 1717000000
                })
            }]
        );
    }
}
