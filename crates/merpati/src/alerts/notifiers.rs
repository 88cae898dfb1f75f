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
use serde::{Deserialize, Serialize};

use super::{merged, patch_object};
use crate::api::extract::{parse_json, Account};
use crate::api::openapi::{ErrorBody, IfMatchHeader, IfNoneMatchHeader};
use crate::api::paging::Listed;
use crate::api::revision::{self, IfMatch};
use crate::api::time::as_rfc3339;
use crate::api::validate::{check_name, id_or_new};
use crate::api::{ApiError, ApiResult, AppState};
use crate::endpoints::check_url_allowed;

/// A notifier: where alerts go. The fields a `kind` takes: `slack`: `url` (an incoming
/// webhook); `telegram`: `bot_token`, `chat_id`, `api_url`?; `email`: `to`; `webhook`:
/// `url`, `secret`? (`whsec_…`, made when absent).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NotifierBody {
    /// Made when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    name: String,
    /// `slack`, `telegram`, `email` or `webhook`.
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bot_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// `en` or `id`; the account's language when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<String>,
}

/// A notifier as the API shows it: its secrets masked (a webhook's `secret` only once, at
/// creation), and its health.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct NotifierView {
    #[schema(value_type = String)]
    id: NotifierId,
    name: String,
    kind: &'static str,
    /// Slack's is masked (the URL is its secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// Masked: the bot's id and the token's last characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    bot_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<Vec<String>>,
    /// Only in the answer to a create of a `webhook` notifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// `null`: the account's.
    language: Option<&'static str>,
    health: HealthView,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct HealthView {
    /// `ok`, `failing` (its last notification gave up) or `unknown` (nothing sent yet).
    status: &'static str,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    last_success_at: Option<i64>,
    #[serde(with = "as_rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    last_failure_at: Option<i64>,
    failures_in_row: i64,
    last_error: Option<String>,
}

/// What a test message did.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct TestOutcome {
    /// `sent` or `failed`.
    outcome: &'static str,
    /// The notifier server's HTTP status, when it answered.
    status_code: Option<u16>,
    /// The start of its answer.
    answer: Option<String>,
    error: Option<String>,
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
fn input(n: &Notifier) -> NotifierBody {
    let mut body = NotifierBody {
        id: None,
        name: n.name.clone(),
        kind: n.kind.name().to_string(),
        url: None,
        bot_token: None,
        chat_id: None,
        api_url: None,
        to: None,
        secret: None,
        language: n.language.map(|l| l.as_str().to_string()),
    };
    match &n.kind {
        NotifierKind::Slack { url } => body.url = Some(url.clone()),
        NotifierKind::Telegram {
            bot_token,
            chat_id,
            api_url,
        } => {
            body.bot_token = Some(bot_token.clone());
            body.chat_id = Some(chat_id.clone());
            body.api_url = Some(api_url.clone());
        }
        NotifierKind::Email { to } => body.to = Some(to.clone()),
        NotifierKind::Webhook { url, secret } => {
            body.url = Some(url.clone());
            body.secret = Some(secret.clone());
        }
    }
    body
}

fn view(n: &Notifier) -> NotifierView {
    let h = &n.health;
    let status = if h.failing() {
        "failing"
    } else if h.last_success_at.is_some() {
        "ok"
    } else {
        "unknown"
    };
    let mut v = NotifierView {
        id: n.id.clone(),
        name: n.name.clone(),
        kind: n.kind.name(),
        url: None,
        bot_token: None,
        chat_id: None,
        api_url: None,
        to: None,
        secret: None,
        language: n.language.map(|l| l.as_str()),
        health: HealthView {
            status,
            last_success_at: h.last_success_at,
            last_failure_at: h.last_failure_at,
            failures_in_row: h.failures_in_row,
            last_error: h.last_error.clone(),
        },
        created_at: n.created_at,
        updated_at: n.updated_at,
    };
    match &n.kind {
        NotifierKind::Slack { url } => v.url = Some(masked_url(url)),
        NotifierKind::Telegram {
            bot_token,
            chat_id,
            api_url,
        } => {
            let bot = bot_token.split(':').next().unwrap_or_default();
            v.bot_token = Some(format!("{bot}:{}", masked(bot_token)));
            v.chat_id = Some(chat_id.clone());
            v.api_url = Some(api_url.clone());
        }
        NotifierKind::Email { to } => v.to = Some(to.clone()),
        NotifierKind::Webhook { url, .. } => v.url = Some(url.clone()),
    }
    v
}

#[utoipa::path(post, path = "/v1/notifiers", tag = "alerts", security(("api_key" = [])),
    request_body = NotifierBody,
    responses(
        (status = 201, description = "Created.", body = NotifierView),
        (status = 409, description = "A notifier with this id exists.", body = ErrorBody),
    ))]
pub(super) async fn create(
    Account(account): Account,
    State(state): State<AppState>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<NotifierView>)> {
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
        out.secret = Some(secret.clone());
    }
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(get, path = "/v1/notifiers", tag = "alerts", security(("api_key" = [])),
    responses((status = 200, description = "Every notifier of the account, with its health.", body = Listed<NotifierView>)))]
pub(super) async fn list(
    Account(account): Account,
    State(state): State<AppState>,
) -> ApiResult<Json<Listed<NotifierView>>> {
    let notifiers = state.store.list_notifiers(account).await?;
    Ok(Listed::all(notifiers.iter().map(view).collect()))
}

#[utoipa::path(get, path = "/v1/notifiers/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The notifier's id."), IfNoneMatchHeader),
    responses((status = 200, description = "The notifier, with its `ETag`.", body = NotifierView)))]
pub(super) async fn read(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let n = state.store.get_notifier(account, id.into()).await?;
    Ok(revision::read(&headers, view(&n)))
}

#[utoipa::path(patch, path = "/v1/notifiers/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The notifier's id."), IfMatchHeader),
    request_body(content = Object, description = "A JSON merge patch (RFC 7396) over what a create takes; `null` removes a field. The result is checked as a create would be."),
    responses((status = 200, description = "Changed.", body = NotifierView)))]
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
            let body: NotifierBody = merged(&input(n), &patch, "notifier")?;
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

#[utoipa::path(delete, path = "/v1/notifiers/{id}", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The notifier's id.")),
    responses((status = 204, description = "Deleted."),
        (status = 409, description = "Alert rules still name it.", body = ErrorBody),
    ))]
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
#[utoipa::path(post, path = "/v1/notifiers/{id}/test", tag = "alerts", security(("api_key" = [])),
    params(("id" = String, Path, description = "The notifier's id.")),
    responses((status = 200, description = "What happened: sent, or failed and why.", body = TestOutcome)))]
pub(super) async fn test(
    Account(account): Account,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TestOutcome>> {
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
    Ok(Json(TestOutcome {
        outcome,
        status_code: attempted.status_code,
        answer: attempted
            .answer
            .map(|a| a.chars().take(1000).collect::<String>()),
        error,
    }))
}
