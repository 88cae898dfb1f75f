//! Asking an engine's own API how its sessions are, since no engine reports its own death:
//! the request to make ([`request`]) and the answer read as states ([`read`]). An engine
//! that stops answering says nothing, and its devices' leases run out.

use serde_json::Value;

use crate::parse::State;
use crate::time::iso8601_secs;
use crate::Engine;

/// A GET to make, with its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    /// The engine key the answer is about, when the request names one.
    pub key: Option<String>,
}

/// textbee phones report to textbee every 30 minutes by default: older than this, a phone
/// is taken as gone.
pub const TEXTBEE_HEARTBEAT_SECS: i64 = 35 * 60;

/// Whether the engine has a status API merpati can poll.
pub fn pollable(engine: Engine) -> bool {
    !matches!(engine, Engine::AndroidSmsGateway)
}

/// The requests that tell how the sessions named by `keys` are (every session when the
/// engine can list them).
pub fn requests(
    engine: Engine,
    base_url: &str,
    api_key: &str,
    keys: &[&str],
) -> Vec<StatusRequest> {
    let base = base_url.trim_end_matches('/');
    let one =
        |url: String, headers: Vec<(&'static str, String)>, key: Option<&str>| StatusRequest {
            url,
            headers,
            key: key.map(str::to_owned),
        };
    match engine {
        Engine::Waha => vec![one(
            format!("{base}/api/sessions?all=true"),
            vec![("X-Api-Key", api_key.to_string())],
            None,
        )],
        Engine::Evolution => keys
            .iter()
            .map(|k| {
                one(
                    format!("{base}/instance/connectionState/{}", path_segment(k)),
                    vec![("apikey", api_key.to_string())],
                    Some(k),
                )
            })
            .collect(),
        Engine::Textbee => vec![one(
            format!("{base}/api/v1/gateway/devices"),
            vec![("x-api-key", api_key.to_string())],
            None,
        )],
        Engine::Telegram => vec![one(
            format!("{base}/bot{api_key}/getWebhookInfo"),
            Vec::new(),
            None,
        )],
        Engine::Slack => vec![one(
            format!("{base}/api/auth.test"),
            vec![("Authorization", format!("Bearer {api_key}"))],
            None,
        )],
        Engine::AndroidSmsGateway => Vec::new(),
    }
}

fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The address Telegram posts the bot's updates to now, from `getWebhookInfo`.
pub fn telegram_webhook(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["result"]["url"].as_str().map(str::to_owned)
}

/// The `setWebhook` call that has Telegram post to `url` with `secret` as its
/// `X-Telegram-Bot-Api-Secret-Token`: its address and JSON body.
pub fn telegram_set_webhook(
    base_url: &str,
    token: &str,
    url: &str,
    secret: &str,
) -> (String, Vec<u8>) {
    let body = serde_json::json!({
        "url": url,
        "secret_token": secret,
        "allowed_updates": ["message"],
    });
    (
        format!("{}/bot{token}/setWebhook", base_url.trim_end_matches('/')),
        body.to_string().into_bytes(),
    )
}

/// What an answer says of each session: `(engine key, state)`; the key is `None` when the
/// engine has one session (a bot). An answer that is not a success says nothing.
pub fn read(
    engine: Engine,
    request: &StatusRequest,
    status: u16,
    body: &[u8],
    now_secs: i64,
) -> Vec<(Option<String>, State)> {
    if !(200..300).contains(&status) {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    match engine {
        Engine::Waha => v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let state = match s["status"].as_str()? {
                    "WORKING" => State::Connected,
                    "STARTING" => State::Pending,
                    "STOPPED" => State::Disconnected,
                    "FAILED" | "SCAN_QR_CODE" => State::LoggedOut,
                    _ => return None,
                };
                Some((Some(s["name"].as_str()?.to_string()), state))
            })
            .collect(),
        Engine::Evolution => {
            let state = match v["instance"]["state"].as_str().or(v["state"].as_str()) {
                Some("open") => State::Connected,
                Some("connecting") => State::Pending,
                Some("close") => State::Disconnected,
                _ => return Vec::new(),
            };
            vec![(request.key.clone(), state)]
        }
        Engine::Textbee => v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                let id = d["_id"].as_str()?.to_string();
                let fresh = d["lastHeartbeat"]
                    .as_str()
                    .and_then(iso8601_secs)
                    .is_some_and(|t| now_secs - t <= TEXTBEE_HEARTBEAT_SECS);
                let enabled = d["enabled"].as_bool().unwrap_or(true);
                let state = if enabled && fresh {
                    State::Connected
                } else {
                    State::Disconnected
                };
                Some((Some(id), state))
            })
            .collect(),
        Engine::Telegram | Engine::Slack => {
            if v["ok"].as_bool() == Some(true) {
                vec![(None, State::Connected)]
            } else {
                vec![(None, State::LoggedOut)]
            }
        }
        Engine::AndroidSmsGateway => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waha_lists_its_sessions() {
        let r = &requests(Engine::Waha, "http://waha:3000/", "k", &[])[0];
        assert_eq!(r.url, "http://waha:3000/api/sessions?all=true");
        let body = br#"[{"name":"default","status":"WORKING"},{"name":"b","status":"SCAN_QR_CODE"},{"name":"c","status":"NEW"}]"#;
        assert_eq!(
            read(Engine::Waha, r, 200, body, 0),
            vec![
                (Some("default".into()), State::Connected),
                (Some("b".into()), State::LoggedOut)
            ]
        );
        assert!(read(Engine::Waha, r, 500, body, 0).is_empty());
        assert!(read(Engine::Waha, r, 200, b"<html>", 0).is_empty());
    }

    #[test]
    fn evolution_is_asked_per_instance() {
        let all = requests(Engine::Evolution, "http://evo", "k", &["toko 1"]);
        assert_eq!(all[0].url, "http://evo/instance/connectionState/toko%201");
        assert_eq!(all[0].headers, vec![("apikey", "k".to_string())]);
        let body = br#"{"instance":{"instanceName":"toko 1","state":"open"}}"#;
        assert_eq!(
            read(Engine::Evolution, &all[0], 200, body, 0),
            vec![(Some("toko 1".into()), State::Connected)]
        );
    }

    #[test]
    fn textbee_phones_are_up_while_their_heartbeat_is_fresh() {
        let r = &requests(Engine::Textbee, "https://api.textbee.dev", "k", &[])[0];
        let body = br#"{"data":[{"_id":"p1","enabled":true,"lastHeartbeat":"2024-07-25T06:00:00.000Z"},
                              {"_id":"p2","enabled":true,"lastHeartbeat":"2024-07-25T04:00:00.000Z"}]}"#;
        let now = iso8601_secs("2024-07-25T06:10:00Z").unwrap();
        assert_eq!(
            read(Engine::Textbee, r, 200, body, now),
            vec![
                (Some("p1".into()), State::Connected),
                (Some("p2".into()), State::Disconnected)
            ]
        );
    }

    #[test]
    fn bots_are_up_while_their_token_works() {
        let r = &requests(Engine::Telegram, "https://api.telegram.org", "123:abc", &[])[0];
        assert_eq!(r.url, "https://api.telegram.org/bot123:abc/getWebhookInfo");
        let info = br#"{"ok":true,"result":{"url":"https://m.example/v1/connectors/c/inbound","pending_update_count":0}}"#;
        assert_eq!(
            telegram_webhook(info).as_deref(),
            Some("https://m.example/v1/connectors/c/inbound")
        );
        let (url, body) =
            telegram_set_webhook("https://api.telegram.org/", "123:abc", "https://u", "s");
        assert_eq!(url, "https://api.telegram.org/bot123:abc/setWebhook");
        assert_eq!(
            serde_json::from_slice::<Value>(&body).unwrap(),
            serde_json::json!({"url": "https://u", "secret_token": "s", "allowed_updates": ["message"]})
        );
        assert_eq!(
            read(Engine::Telegram, r, 200, br#"{"ok":true,"result":{}}"#, 0),
            vec![(None, State::Connected)]
        );
        assert_eq!(
            read(
                Engine::Slack,
                r,
                200,
                br#"{"ok":false,"error":"invalid_auth"}"#,
                0
            ),
            vec![(None, State::LoggedOut)]
        );
        assert!(!pollable(Engine::AndroidSmsGateway));
    }
}
