//! What to paste into each engine so that it posts to its connector, signed its own way.

use merpati_engines::verify::EVOLUTION_SECRET_HEADER;
use merpati_engines::Engine;
use serde::Serialize;
use serde_json::{json, Value};

/// How to point the engine at merpati: the steps in words, and the exact bodies to send.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Setup {
    /// What to do, step by step.
    pub steps: Vec<String>,
    /// The request(s) to make to the engine, or its settings, as JSON.
    pub snippet: Value,
}

pub fn setup(engine: Engine, url: &str, secret: &str) -> Setup {
    match engine {
        Engine::Waha => Setup {
            steps: vec![
                "Add the webhook to the session: POST /api/sessions (a new session) or \
                 PUT /api/sessions/{session} with `config` below. WAHA signs every request \
                 with X-Webhook-Hmac (HMAC-SHA512) using this key."
                    .into(),
                "Or, for every session at once, set the environment variables in `env`.".into(),
                "Bind each session name to a device (`bindings`), or give one `device_id`.".into(),
            ],
            snippet: json!({
                "config": {"webhooks": [{
                    "url": url,
                    "events": ["message", "session.status"],
                    "hmac": {"key": secret},
                }]},
                "env": {
                    "WHATSAPP_HOOK_URL": url,
                    "WHATSAPP_HOOK_EVENTS": "message,session.status",
                    "WHATSAPP_HOOK_HMAC_KEY": secret,
                },
            }),
        },
        Engine::Evolution => Setup {
            steps: vec![
                "POST /webhook/set/{instance} to your Evolution API with the body below (and \
                 your `apikey` header)."
                    .into(),
                format!(
                    "Evolution API cannot sign its webhooks: the secret travels in the \
                     {EVOLUTION_SECRET_HEADER} header, so give it an HTTPS url. The global \
                     webhook (WEBHOOK_GLOBAL_URL) sends no headers and cannot be used."
                ),
                "Bind each instance name to a device (`bindings`), or give one `device_id`.".into(),
            ],
            snippet: json!({
                "webhook": {
                    "enabled": true,
                    "url": url,
                    "headers": {EVOLUTION_SECRET_HEADER: secret},
                    "byEvents": false,
                    "base64": false,
                    "events": ["MESSAGES_UPSERT", "CONNECTION_UPDATE", "LOGOUT_INSTANCE"],
                }
            }),
        },
        Engine::AndroidSmsGateway => Setup {
            steps: vec![
                "In the app, Settings → Webhooks → Signing Key: enter the secret (or create \
                 the connector with the app's own key as `secret`)."
                    .into(),
                "Register one webhook per event (POST /webhooks locally, or \
                 /3rdparty/v1/webhooks in cloud or private mode), with each body below."
                    .into(),
                "Turn on Settings → Ping so that a phone that stops is noticed.".into(),
            ],
            snippet: json!([
                {"url": url, "event": "sms:received"},
                {"url": url, "event": "system:ping"},
            ]),
        },
        Engine::Textbee => Setup {
            steps: vec![
                "Create a webhook subscription in textbee with the body below; textbee signs \
                 each request with X-Signature (HMAC-SHA256)."
                    .into(),
            ],
            snippet: json!({
                "deliveryUrl": url,
                "signingSecret": secret,
                "events": ["MESSAGE_RECEIVED"],
            }),
        },
        Engine::Telegram => Setup {
            steps: vec![
                "With `api` (the bot token as its key), merpati calls setWebhook itself, \
                 and again after each rotation of the secret."
                    .into(),
                "Without it, call setWebhook on the Bot API with the body below (Telegram \
                 sends the secret back in X-Telegram-Bot-Api-Secret-Token). Telegram posts \
                 only to public HTTPS on port 443, 80, 88 or 8443."
                    .into(),
            ],
            snippet: json!({
                "url": url,
                "secret_token": secret,
                "allowed_updates": ["message"],
            }),
        },
        Engine::Slack => Setup {
            steps: vec![
                "Create the connector with your Slack app's Signing Secret as `secret` \
                 (Basic Information → App Credentials)."
                    .into(),
                "Event Subscriptions → Request URL: the url below; Slack checks it with a \
                 challenge, which merpati answers. Subscribe to message.channels (and \
                 app_uninstalled)."
                    .into(),
            ],
            snippet: json!({"request_url": url}),
        },
    }
}
