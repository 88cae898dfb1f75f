//! Evolution API (EvolutionAPI/evolution-api): `messages.upsert`, `connection.update`,
//! `logout.instance`. The instance is the key. Event names come as `messages.upsert` or,
//! from older setups, `MESSAGES_UPSERT`; both are read.

use serde_json::{json, Value};

use super::{required, text, unix_secs, whatsapp_number, whatsapp_skip, Inbound, Malformed};
use super::{Skip, State};

pub(super) fn parse(v: &Value) -> Result<Vec<Inbound>, Malformed> {
    let key = text(v, &["instance"]).map(str::to_owned);
    let event = required(v, &["event"])?
        .to_ascii_lowercase()
        .replace('_', ".");
    let data = &v["data"];
    let one = match event.as_str() {
        "messages.upsert" => message(key, v, data)?,
        "connection.update" => {
            let state = match text(data, &["state"]).or_else(|| text(v, &["state"])) {
                Some("open") => State::Connected,
                Some("connecting") => State::Pending,
                Some("close") if data["statusReason"].as_i64() == Some(401) => State::LoggedOut,
                Some("close") => State::Disconnected,
                Some("refused") => State::LoggedOut,
                _ => {
                    return Ok(vec![Inbound::Skipped {
                        key,
                        reason: Skip::UnknownEvent,
                    }])
                }
            };
            Inbound::State {
                key,
                state,
                at_ms: None,
            }
        }
        "logout.instance" => Inbound::State {
            key,
            state: State::LoggedOut,
            at_ms: None,
        },
        _ => Inbound::Skipped {
            key,
            reason: Skip::UnknownEvent,
        },
    };
    Ok(vec![one])
}

fn message(key: Option<String>, v: &Value, data: &Value) -> Result<Inbound, Malformed> {
    let id = required(data, &["key", "id"])?;
    let jid = required(data, &["key", "remoteJid"])?;
    let skipped = |reason| Inbound::Skipped {
        key: key.clone(),
        reason,
    };
    if data["key"]["fromMe"].as_bool() == Some(true) {
        return Ok(skipped(Skip::FromMe));
    }
    if let Some(reason) = whatsapp_skip(jid) {
        return Ok(skipped(reason));
    }
    let message = &data["message"];
    let body = text(message, &["conversation"])
        .or_else(|| text(message, &["extendedTextMessage", "text"]))
        .unwrap_or_default();
    if body.is_empty() {
        return Ok(skipped(Skip::NoText));
    }
    // With `addressingMode: "lid"` the chat id hides the number; it is beside it.
    let phone = whatsapp_number(jid)
        .or_else(|| text(data, &["key", "remoteJidAlt"]).and_then(whatsapp_number));
    let Some(phone) = phone else {
        return Ok(skipped(Skip::NoPhone));
    };
    let mut item = json!({"type": "whatsapp", "rid": id, "phone": phone, "message": body});
    if let Some(wid) = text(v, &["sender"]).and_then(whatsapp_number) {
        item["wid"] = json!(wid);
    }
    // `date_time` is local time labelled UTC; the message's own time is right.
    if let Some(ts) = unix_secs(data.get("messageTimestamp")) {
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
        parse(Engine::Evolution, body.as_bytes(), Options::default()).unwrap()
    }

    #[test]
    fn an_upserted_message_is_a_whatsapp_item() {
        let got = read(include_str!(
            "../../tests/fixtures/evolution-messages-upsert.json"
        ));
        assert_eq!(
            got,
            vec![Inbound::Item {
                key: Some("toko-1".into()),
                item: json!({
                    "type": "whatsapp",
                    "rid": "3EB0C431C2F7E3F5B3A1",
                    "phone": "+6281234567890",
                    "message": "Halo, apakah pesanan saya sudah dikirim?",
                    "wid": "+6289876543210",
                    "timestamp": 1717171717
                })
            }]
        );
    }

    #[test]
    fn a_lid_chat_takes_the_number_beside_it() {
        let body = r#"{"event":"MESSAGES_UPSERT","instance":"i","data":{"key":{"id":"A1",
            "remoteJid":"123456789012345@lid","remoteJidAlt":"6281234567890@s.whatsapp.net",
            "fromMe":false,"addressingMode":"lid"},"message":{"extendedTextMessage":{"text":"hi"}},
            "messageTimestamp":"1717171717"}}"#;
        match &read(body)[0] {
            Inbound::Item { item, .. } => {
                assert_eq!(item["phone"], "+6281234567890");
                assert_eq!(item["timestamp"], 1717171717);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connection_states_map_to_presence() {
        let got = read(include_str!(
            "../../tests/fixtures/evolution-connection-update.json"
        ));
        assert_eq!(
            got,
            vec![Inbound::State {
                key: Some("toko-1".into()),
                state: State::Disconnected,
                at_ms: None
            }]
        );
        for (state, want) in [
            ("open", State::Connected),
            ("connecting", State::Pending),
            ("refused", State::LoggedOut),
        ] {
            let body = format!(
                r#"{{"event":"connection.update","instance":"i","data":{{"instance":"i","state":"{state}"}}}}"#
            );
            assert!(matches!(read(&body)[0], Inbound::State { state, .. } if state == want));
        }
        let logged_out = r#"{"event":"connection.update","instance":"i","data":{"state":"close","statusReason":401}}"#;
        assert!(matches!(
            read(logged_out)[0],
            Inbound::State {
                state: State::LoggedOut,
                ..
            }
        ));
    }

    #[test]
    fn own_group_and_media_messages_are_skipped() {
        let msg = |jid: &str, from_me: bool, message: &str| {
            format!(
                r#"{{"event":"messages.upsert","instance":"i","data":{{"key":{{"id":"x","remoteJid":"{jid}","fromMe":{from_me}}},"message":{message}}}}}"#
            )
        };
        let reason = |body: String| match &read(&body)[0] {
            Inbound::Skipped { reason, .. } => *reason,
            other => panic!("{other:?}"),
        };
        let text = r#"{"conversation":"hi"}"#;
        assert_eq!(
            reason(msg("62812345678@s.whatsapp.net", true, text)),
            Skip::FromMe
        );
        assert_eq!(reason(msg("1203630@g.us", false, text)), Skip::Group);
        assert_eq!(
            reason(msg(
                "62812345678@s.whatsapp.net",
                false,
                r#"{"imageMessage":{}}"#
            )),
            Skip::NoText
        );
    }
}
