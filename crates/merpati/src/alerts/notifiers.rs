//! `/v1/notifiers`: where an account's alerts go, each with its health, and `…/test`, which
//! sends a message now and answers with what happened.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use merpati_domain::alert::engine::SendResult;
use merpati_domain::alert::notifier::{
    is_email_address, is_telegram_chat, is_telegram_token, TELEGRAM_API,
};
use merpati_domain::alert::{Language, Notifier, NotifierKind};
use merpati_domain::ids::NotifierId;
use merpati_runtime::delivery::guard::Guard;
use merpati_webhooks::signing::{encode_secret, is_valid_secret};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{all, merged, patch_object};
use crate::api::extract::{parse_json, Account};
use crate::api::revision::{self, IfMatch};
use crate::api::time::rfc3339;
use crate::api::validate::{check_name, id_or_new};
use crate::api::{ApiError, ApiResult, AppState};
use crate::endpoints::check_url_allowed;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifierBody {
    id: Option<String>,
    name: String,
    kind: String,
    url: Option<String>,
    bot_token: Option<String>,
    chat_id: Option<String>,
    api_url: Option<String>,
    to: Option<Vec<String>>,
    secret: Option<String>,
    language: Option<String>,
}

fn required<T>(value: Option<T>, kind: &str, field: &str) -> ApiResult<T> {
    value.ok_or_else(|| ApiError::invalid(format!("a {kind} notifier needs {field}")))
}

fn refuse_extra(kind: &str, fields: &[(&str, bool)]) -> ApiResult<()> {
    match fields.iter().find(|(_, given)| *given) {
        Some((field, _)) => Err(ApiError::invalid(format!(
            "{field} is not a setting of a {kind} notifier"
        ))),
        None => Ok(()),
    }
}

impl NotifierBody {
    fn into_notifier(self, id: NotifierId, state: &AppState, now: i64) -> ApiResult<Notifier> {
        check_name("name", &self.name)?;
        let guard = Guard::new(state.config.delivery.allowed_networks.clone());
        let language = match self.language.as_deref() {
            None => None,
            Some(l) => Some(
                Language::parse(l)
                    .ok_or_else(|| ApiError::invalid("language must be \"en\" or \"id\""))?,
            ),
        };
        let kind = match self.kind.as_str() {
            "slack" => {
                refuse_extra(
                    "slack",
                    &[
                        ("bot_token", self.bot_token.is_some()),
                        ("chat_id", self.chat_id.is_some()),
                        ("api_url", self.api_url.is_some()),
                        ("to", self.to.is_some()),
                        ("secret", self.secret.is_some()),
                    ],
                )?;
                let url = required(self.url, "slack", "url")?;
                check_url_allowed(&url, &guard)?;
                NotifierKind::Slack { url }
            }
            "telegram" => {
                refuse_extra(
                    "telegram",
                    &[
                        ("url", self.url.is_some()),
                        ("to", self.to.is_some()),
                        ("secret", self.secret.is_some()),
                    ],
                )?;
                let bot_token = required(self.bot_token, "telegram", "bot_token")?;
                if !is_telegram_token(&bot_token) {
                    return Err(ApiError::invalid(
                        "bot_token is not a Telegram bot token (digits, a colon, then 35 or so \
                         letters, digits, - or _, as @BotFather gives it)",
                    ));
                }
                let chat_id = required(self.chat_id, "telegram", "chat_id")?;
                if !is_telegram_chat(&chat_id) {
                    return Err(ApiError::invalid(
                        "chat_id must be a chat's number (negative for groups) or @channelname",
                    ));
                }
                let api_url = self
                    .api_url
                    .map(|u| u.trim_end_matches('/').to_string())
                    .unwrap_or_else(|| TELEGRAM_API.to_string());
                check_url_allowed(&api_url, &guard).map_err(|mut e| {
                    e.message = e.message.replacen("url", "api_url", 1);
                    e
                })?;
                NotifierKind::Telegram {
                    bot_token,
                    chat_id,
                    api_url,
                }
            }
            "email" => {
                refuse_extra(
                    "email",
                    &[
                        ("url", self.url.is_some()),
                        ("bot_token", self.bot_token.is_some()),
                        ("chat_id", self.chat_id.is_some()),
                        ("api_url", self.api_url.is_some()),
                        ("secret", self.secret.is_some()),
                    ],
                )?;
                if state.config.alerts.smtp_url.is_none() {
                    return Err(ApiError::invalid(
                        "e-mail is not set up on this hub: set alerts.smtp_url and \
                         alerts.smtp_from",
                    ));
                }
                let to = required(self.to, "email", "to")?;
                if to.is_empty() || to.len() > 20 {
                    return Err(ApiError::invalid("to must list 1 to 20 addresses"));
                }
                if let Some(bad) = to.iter().find(|a| !is_email_address(a)) {
                    return Err(ApiError::invalid(format!(
                        "to: {bad:?} is not an e-mail address"
                    )));
                }
                NotifierKind::Email { to }
            }
            "webhook" => {
                refuse_extra(
                    "webhook",
                    &[
                        ("bot_token", self.bot_token.is_some()),
                        ("chat_id", self.chat_id.is_some()),
                        ("api_url", self.api_url.is_some()),
                        ("to", self.to.is_some()),
                    ],
                )?;
                let url = required(self.url, "webhook", "url")?;
                check_url_allowed(&url, &guard)?;
                let secret = match self.secret {
                    Some(s) if is_valid_secret(&s) && s.len() <= 128 => s,
                    Some(_) => {
                        return Err(ApiError::invalid(
                            "secret must be \"whsec_\" followed by base64 of 24 to 64 bytes",
                        ))
                    }
                    None => encode_secret(&rand::random::<[u8; 24]>()),
                };
                NotifierKind::Webhook { url, secret }
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "kind {other:?} is not a notifier kind: slack, telegram, email or webhook"
                )))
            }
        };
        Ok(Notifier {
            id,
            name: self.name,
            kind,
            language,
            health: Default::default(),
            created_at: now,
            updated_at: now,
            revision: 0,
        })
    }
}

/// Shows enough of a secret to tell two apart, never enough to use it.
fn masked(secret: &str) -> String {
    let tail: String = secret
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// A chat webhook's URL is its secret: the host, and the end of the path.
fn masked_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}/{}", &u[..url::Position::BeforePath], masked(u.path())),
        Err(_) => masked(url),
    }
}

/// The notifier as a create takes it, secrets included (what a merge patch applies to).
fn input(n: &Notifier) -> Value {
    let mut v = json!({"name": n.name, "kind": n.kind.name()});
    let o = v.as_object_mut().expect("an object");
    match &n.kind {
        NotifierKind::Slack { url } => {
            o.insert("url".into(), json!(url));
        }
        NotifierKind::Telegram {
            bot_token,
            chat_id,
            api_url,
        } => {
            o.insert("bot_token".into(), json!(bot_token));
            o.insert("chat_id".into(), json!(chat_id));
            o.insert("api_url".into(), json!(api_url));
        }
        NotifierKind::Email { to } => {
            o.insert("to".into(), json!(to));
        }
        NotifierKind::Webhook { url, secret } => {
            o.insert("url".into(), json!(url));
            o.insert("secret".into(), json!(secret));
        }
    }
    if let Some(l) = n.language {
        o.insert("language".into(), json!(l.as_str()));
    }
    v
}

fn view(n: &Notifier) -> Value {
    let mut v = json!({"id": n.id, "name": n.name, "kind": n.kind.name()});
    let o = v.as_object_mut().expect("an object");
    match &n.kind {
        NotifierKind::Slack { url } => {
            o.insert("url".into(), json!(masked_url(url)));
        }
        NotifierKind::Telegram {
            bot_token,
            chat_id,
            api_url,
        } => {
            let bot = bot_token.split(':').next().unwrap_or_default();
            o.insert(
                "bot_token".into(),
                json!(format!("{bot}:{}", masked(bot_token))),
            );
            o.insert("chat_id".into(), json!(chat_id));
            o.insert("api_url".into(), json!(api_url));
        }
        NotifierKind::Email { to } => {
            o.insert("to".into(), json!(to));
        }
        NotifierKind::Webhook { url, .. } => {
            o.insert("url".into(), json!(url));
        }
    }
    let h = &n.health;
    let status = if h.failing() {
        "failing"
    } else if h.last_success_at.is_some() {
        "ok"
    } else {
        "unknown"
    };
    o.insert("language".into(), json!(n.language.map(|l| l.as_str())));
    o.insert(
        "health".into(),
        json!({
            "status": status,
            "last_success_at": h.last_success_at.map(rfc3339),
            "last_failure_at": h.last_failure_at.map(rfc3339),
            "failures_in_row": h.failures_in_row,
            "last_error": h.last_error,
        }),
    );
    o.insert("created_at".into(), json!(rfc3339(n.created_at)));
    o.insert("updated_at".into(), json!(rfc3339(n.updated_at)));
    v
}

pub(super) async fn create(
    Account(account): Account,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: NotifierBody = parse_json(&body)?;
    let id = id_or_new(
        "id",
        body.id.clone(),
        NotifierId::generate,
        NotifierId::parse,
    )?;
    let n = body.into_notifier(id, &state, state.clock.now_ms())?;
    let n = state.store.create_notifier(account, n).await?;
    let mut out = view(&n);
    if let NotifierKind::Webhook { secret, .. } = &n.kind {
        out["secret"] = json!(secret);
    }
    Ok((StatusCode::CREATED, Json(out)))
}

pub(super) async fn list(
    Account(account): Account,
    State(state): State<AppState>,
) -> ApiResult<Json<Value>> {
    let notifiers = state.store.list_notifiers(account).await?;
    Ok(all(notifiers.iter().map(view).collect()))
}

pub(super) async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let n = state.store.get_notifier(account, id.into()).await?;
    Ok(revision::read(&headers, view(&n)))
}

pub(super) async fn update(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    if_match: IfMatch,
    body: Bytes,
) -> ApiResult<Response> {
    let patch = patch_object(&body)?;
    let id = NotifierId::from(id);
    let store = state.store.clone();
    let now = state.clock.now_ms();
    revision::patch(
        &if_match,
        "notifier",
        || store.get_notifier(account.clone(), id.clone()),
        view,
        |n: &mut Notifier| {
            let body: NotifierBody = merged(input(n), &patch, "notifier")?;
            let mut changed = body.into_notifier(n.id.clone(), &state, now)?;
            changed.created_at = n.created_at;
            changed.revision = n.revision;
            changed.health = n.health.clone();
            *n = changed;
            Ok(())
        },
        |changed: Notifier, _: Notifier| {
            let store = store.clone();
            let account = account.clone();
            async move { revision::saved(store.update_notifier(account, changed).await) }
        },
    )
    .await
}

pub(super) async fn remove(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.store.delete_notifier(account, id.into()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a test message now; 200 with the outcome either way, since a refusal by the
/// notifier's server is what the caller asked to find out.
pub(super) async fn test(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let n = state.store.get_notifier(account.clone(), id.into()).await?;
    let language = state.store.get_account(account.clone()).await?.language;
    let attempted = state
        .alerts
        .test(&account, &n, language, state.clock.now_ms())
        .await;
    let (outcome, error) = match &attempted.result {
        SendResult::Sent => ("sent", None),
        SendResult::Failed { error, .. } => ("failed", Some(error.clone())),
    };
    Ok(Json(json!({
        "outcome": outcome,
        "status_code": attempted.status_code,
        "answer": attempted.answer.map(|a| a.chars().take(1000).collect::<String>()),
        "error": error,
    })))
}
