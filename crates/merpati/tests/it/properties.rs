//! The server's parsers over generated inputs (the fuzz targets `device_items`,
//! `link_frames` and `config` search the same ones, longer, on nightly): the device API's
//! bodies, the link's frames and the settings file never panic, and what they accept is
//! within their limits.

use merpati_domain::device::{DeviceContext, Presence};
use merpati_domain::ingest::MAX_RID_BYTES;
use proptest::prelude::*;
use serde_json::{json, Value};

fn device() -> DeviceContext {
    DeviceContext {
        account_id: "acct".into(),
        account_name: "Account".into(),
        business_id: "biz".into(),
        business_name: "Business".into(),
        channel_id: "ch".into(),
        channel_name: "Channel".into(),
        engine: "sms".into(),
        device_id: "dev".into(),
        device_name: "Device".into(),
        phone: Some("+6281100".into()),
        presence: Presence::Unknown,
        presence_since: None,
        engine_state: None,
        channel_heartbeat_ms: None,
        channel_grace_ms: None,
        account_limits: Default::default(),
    }
}

/// Items as devices send them, and near misses: the protocol's fields with any values.
fn item() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        Just(json!("+6281100")),
        Just(json!("dev")),
    ];
    let field = prop::sample::select(vec![
        "type",
        "rid",
        "sim",
        "device",
        "phone",
        "message",
        "timestamp",
        "wid",
        "code",
        "response",
        "package",
        "title",
        "content",
        "ref",
        "battery",
        "items",
    ]);
    let kind = prop::sample::select(vec![
        "sms",
        "whatsapp",
        "ussd",
        "notification",
        "heartbeat",
        "messages",
        "other",
    ]);
    (kind, prop::collection::vec((field, value), 0..8)).prop_map(|(kind, fields)| {
        let mut map: serde_json::Map<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        map.insert("type".into(), json!(kind));
        Value::Object(map)
    })
}

proptest! {
    #[test]
    fn a_device_body_is_taken_within_its_limits_or_refused(
        items in prop::collection::vec(item(), 0..4),
        batch in any::<bool>(),
    ) {
        let body = if batch { json!({"items": items}) } else { items.first().cloned().unwrap_or(json!({})) };
        if let Ok(prepared) = merpati::ingest::prepare_body(body, &device(), 1_700_000_000) {
            prop_assert!(!prepared.is_empty());
            for p in prepared {
                prop_assert!(p.rid_key.len() <= MAX_RID_BYTES + 2);
            }
        }
    }

    #[test]
    fn a_link_frame_is_read_or_answered_with_an_error_frame(
        frame in item(),
        raw in ".{0,64}",
        reference in prop_oneof![Just(Value::Null), ".{0,140}".prop_map(Value::String), any::<i64>().prop_map(Value::from)],
    ) {
        let mut frame = frame;
        frame["ref"] = reference;
        for text in [frame.to_string(), raw] {
            if let Err(error) = merpati::presence::link::read_frame(&text, &device(), 1_700_000_000) {
                prop_assert_eq!(&error["type"], "error");
                let status = error["status"].as_u64().unwrap();
                prop_assert!((400..500).contains(&status), "{}", error);
            }
        }
    }

    #[test]
    fn a_settings_file_gives_a_configuration_or_names_what_is_wrong(
        pairs in prop::collection::vec((
            prop::sample::select(vec![
                "listen", "data_dir", "admin_token", "secret_key", "database_url", "log_format",
                "delivery.timeout", "delivery.retry_schedule", "delivery.allowed_networks",
                "presence.heartbeat_timeout", "retention.events", "alerts.group_wait", "nope",
            ]),
            prop_oneof![".{0,24}", Just("30s".to_string()), Just("127.0.0.1:0".to_string())],
        ), 0..5),
        raw in ".{0,64}",
    ) {
        let mut text = String::new();
        for (key, value) in &pairs {
            let (section, name) = key.split_once('.').unwrap_or(("", key));
            if !section.is_empty() {
                text.push_str(&format!("[{section}]\n"));
            }
            text.push_str(&format!("{name} = {}\n", toml_string(value)));
        }
        for input in [text, raw] {
            if let Err(e) = merpati::config::Config::from_toml(&input) {
                let said = e.to_string();
                prop_assert!(!said.is_empty());
                // A secret's value is never repeated in the error.
                for (key, value) in &pairs {
                    let secret = *key == "admin_token" || *key == "secret_key";
                    // Another setting given the same text may well quote its own value.
                    let also_elsewhere = pairs.iter().any(|(k, v)| k != key && v == value);
                    if secret && !also_elsewhere && value.len() >= 8 {
                        prop_assert!(!said.contains(value.as_str()), "{}", said);
                    }
                }
            }
        }
    }
}

fn toml_string(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if c.is_control() => format!("\\u{:04X}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}
