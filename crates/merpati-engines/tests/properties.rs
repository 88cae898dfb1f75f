//! Every engine's parser and signature check over generated inputs (the fuzz target
//! `engine_bodies` searches the same ones, longer, on nightly): never a panic, and a
//! request is never taken for the engine's unless it carries the engine's signature.

use merpati_engines::parse::{parse, Options};
use merpati_engines::verify::{sign, verify};
use merpati_engines::{Headers, ENGINES};
use proptest::prelude::*;
use serde_json::Value;

/// JSON shaped like the engines' bodies: their field names, nested, with any values.
fn body() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    let key = prop::sample::select(vec![
        "event",
        "payload",
        "data",
        "message",
        "from",
        "to",
        "body",
        "id",
        "fromMe",
        "session",
        "status",
        "key",
        "remoteJid",
        "instance",
        "text",
        "chat",
        "update_id",
        "type",
        "user",
        "team_id",
        "challenge",
        "messageId",
        "phoneNumber",
        "receivedAt",
        "sender",
        "smsId",
        "deviceId",
        "webhookEvent",
        "conversation",
        "timestamp",
        "me",
        "participant",
    ]);
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|pairs| {
                Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

proptest! {
    #[test]
    fn any_body_parses_or_is_refused(
        engine in 0..ENGINES.len(),
        raw in prop::collection::vec(any::<u8>(), 0..256),
        shaped in body(),
        notifications in any::<bool>(),
    ) {
        let options = Options { notifications };
        let _ = parse(ENGINES[engine], &raw, options);
        let _ = parse(ENGINES[engine], shaped.to_string().as_bytes(), options);
    }

    #[test]
    fn only_the_engine_s_signature_is_taken(
        engine in 0..ENGINES.len(),
        names in prop::collection::vec(prop::sample::select(vec![
            "X-Webhook-Hmac", "X-Signature", "X-Timestamp", "X-Slack-Signature",
            "X-Slack-Request-Timestamp", "X-Telegram-Bot-Api-Secret-Token", "X-Merpati-Secret",
            "Authorization",
        ]), 0..4),
        values in prop::collection::vec("[ -~]{0,70}", 0..4),
        body in prop::collection::vec(any::<u8>(), 0..128),
        now in any::<i64>(),
    ) {
        let engine = ENGINES[engine];
        let pairs: Vec<(&str, &str)> = names.iter().copied().zip(values.iter().map(String::as_str)).collect();
        let forged = verify(engine, &Headers::new(pairs), &body, &["the connector's secret"], now);
        prop_assert!(forged.is_err(), "{engine:?} took a forged request");
        // What the engine signs is taken, at the time it signed.
        let at = now.clamp(0, 4_000_000_000);
        let signature = sign(engine, "the connector's secret", &body, at);
        let ts = at.to_string();
        let signed = Headers::new(match engine {
            merpati_engines::Engine::Waha => vec![("X-Webhook-Hmac", signature.as_str())],
            merpati_engines::Engine::AndroidSmsGateway => {
                vec![("X-Signature", signature.as_str()), ("X-Timestamp", ts.as_str())]
            }
            merpati_engines::Engine::Textbee => vec![("X-Signature", signature.as_str())],
            merpati_engines::Engine::Slack => vec![
                ("X-Slack-Signature", signature.as_str()),
                ("X-Slack-Request-Timestamp", ts.as_str()),
            ],
            merpati_engines::Engine::Telegram => {
                vec![("X-Telegram-Bot-Api-Secret-Token", signature.as_str())]
            }
            merpati_engines::Engine::Evolution => vec![("X-Merpati-Secret", signature.as_str())],
        });
        prop_assert_eq!(verify(engine, &signed, &body, &["the connector's secret"], at), Ok(()));
    }
}
