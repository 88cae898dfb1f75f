//! Properties of the wire formats over generated inputs (the fuzz targets `form_bodies` and
//! `signatures` search the same ones, longer, on nightly).

use merpati_webhooks::form::{decode, encode};
use merpati_webhooks::signing::encode_secret;
use merpati_webhooks::Webhook;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// JSON objects whose keys PHP can read back: not empty, no brackets.
fn object() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", serde_json::Number::from_f64)
            .prop_map(Value::Number),
        ".*".prop_map(Value::String),
    ];
    let key = "[^\\[\\]]{1,8}";
    let tree = leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..5)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    });
    prop::collection::vec((key, tree), 0..6)
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect()))
}

/// What PHP's `$_POST` shows of a value: strings, `1`/`0`, lists keyed by index, no nulls
/// and no empty containers.
fn as_php_reads(v: &Value) -> Option<Value> {
    let gather = |pairs: Vec<(String, &Value)>| {
        let map: Map<String, Value> = pairs
            .into_iter()
            .filter_map(|(k, v)| as_php_reads(v).map(|v| (k, v)))
            .collect();
        (!map.is_empty()).then_some(Value::Object(map))
    };
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(Value::String(if *b { "1" } else { "0" }.into())),
        Value::Number(n) => Some(Value::String(n.to_string())),
        Value::String(s) => Some(Value::String(s.clone())),
        Value::Array(items) => gather(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
        ),
        Value::Object(map) => gather(map.iter().map(|(k, v)| (k.clone(), v)).collect()),
    }
}

fn headers(id: &str, ts: &str, sig: &str) -> Option<http::HeaderMap> {
    let mut h = http::HeaderMap::new();
    h.insert("webhook-id", id.parse().ok()?);
    h.insert("webhook-timestamp", ts.parse().ok()?);
    h.insert("webhook-signature", sig.parse().ok()?);
    Some(h)
}

proptest! {
    #[test]
    fn a_form_body_reads_back_as_php_reads_it(object in object()) {
        let decoded = decode(encode(&object).as_bytes()).unwrap();
        let expected = as_php_reads(&object).unwrap_or_else(|| Value::Object(Map::new()));
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn any_form_body_decodes_or_is_refused(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&body);
    }

    #[test]
    fn what_is_signed_verifies_and_nothing_else(
        key in any::<[u8; 24]>(),
        msg_id in "[ -~]{0,40}",
        timestamp in any::<i64>(),
        now in any::<i64>(),
        signature in "[ -~]{0,120}",
        body in prop::collection::vec(any::<u8>(), 0..512),
        flip in any::<usize>(),
    ) {
        let hook = Webhook::new(&encode_secret(&key)).unwrap();
        let ts = timestamp.to_string();
        if let Some(h) = headers(&msg_id, &ts, &signature) {
            prop_assert!(hook.verify_at(&h, &body, now).is_err());
        }
        let sig = hook.sign(&msg_id, timestamp, &body);
        let h = headers(&msg_id, &ts, &sig).unwrap();
        prop_assert!(hook.verify_at(&h, &body, timestamp).is_ok());
        if !body.is_empty() {
            let mut changed = body.clone();
            changed[flip % body.len()] ^= 1;
            prop_assert!(hook.verify_at(&h, &changed, timestamp).is_err());
        }
    }
}
