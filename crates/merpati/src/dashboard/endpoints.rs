//! The endpoints pages: each endpoint's health over the last hour and day, its breaker and
//! what waits on it; enable, disable, recover since a time (and the job's progress), rotate
//! the secret.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::json;

use super::client::{ago_or_time, enc, Api, List, Refused};
use super::page::{after_action, show, Frame, Prefs};
use super::session::{Action, Session};
use super::Shown;
use crate::api::AppState;

#[derive(Deserialize)]
pub struct EndpointJson {
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<String>,
    pub paused_until: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct WindowJson {
    pub attempts: i64,
    pub success_percent: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

#[derive(Deserialize)]
struct StatsJson {
    last_hour: WindowJson,
    last_day: WindowJson,
    held: i64,
    failed: i64,
    breaker: String,
}

pub struct Health {
    pub attempts: i64,
    pub success: String,
    pub latency: String,
}

fn health(w: &WindowJson) -> Health {
    let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0} ms"));
    Health {
        attempts: w.attempts,
        success: w
            .success_percent
            .map_or("–".to_string(), |p| format!("{p:.1}%")),
        latency: format!("{} / {}", ms(w.latency_p50_ms), ms(w.latency_p99_ms)),
    }
}

pub struct Row {
    pub e: EndpointJson,
    pub hour: Health,
    pub day: Health,
    pub held: i64,
    pub failed: i64,
    pub breaker: String,
}

#[derive(Template)]
#[template(path = "dashboard/endpoints.html")]
pub struct EndpointsPage {
    pub f: Frame,
    pub rows: Vec<Row>,
}

async fn row(api: &Api, session: &Session, e: EndpointJson) -> Result<Row, Refused> {
    let stats: StatsJson = api
        .get(
            &session.account,
            &format!("/v1/endpoints/{}/stats", enc(&e.id)),
        )
        .await?;
    Ok(Row {
        hour: health(&stats.last_hour),
        day: health(&stats.last_day),
        held: stats.held,
        failed: stats.failed,
        breaker: stats.breaker,
        e,
    })
}

pub async fn list(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    session: Session,
    headers: HeaderMap,
) -> Result<Response, Shown> {
    let prefs = Prefs::of(&headers);
    let endpoints: List<EndpointJson> = api
        .get(&session.account, "/v1/endpoints?limit=500")
        .await
        .map_err(|r| Shown::refused(&prefs, r))?;
    let mut rows = Vec::with_capacity(endpoints.data.len());
    for e in endpoints.data {
        rows.push(
            row(&api, &session, e)
                .await
                .map_err(|r| Shown::refused(&prefs, r))?,
        );
    }
    let f = Frame::new(&state, &session, &headers, "endpoints").await;
    let page = EndpointsPage { f, rows };
    Ok(show(&state, &page.f, &page))
}

#[derive(Template)]
#[template(path = "dashboard/endpoint.html")]
pub struct EndpointPage {
    pub f: Frame,
    pub r: Row,
    /// Right after a rotation: the new secret, this once.
    pub new_secret: Option<String>,
}

async fn endpoint_page(
    state: &AppState,
    api: &Api,
    session: &Session,
    headers: &HeaderMap,
    id: &str,
    new_secret: Option<String>,
) -> Result<Response, Shown> {
    let prefs = Prefs::of(headers);
    let e: EndpointJson = api
        .get(&session.account, &format!("/v1/endpoints/{}", enc(id)))
        .await
        .map_err(|r| Shown::refused(&prefs, r))?;
    let r = row(api, session, e)
        .await
        .map_err(|r| Shown::refused(&prefs, r))?;
    let f = Frame::new(state, session, headers, "endpoints").await;
    let page = EndpointPage { f, r, new_secret };
    Ok(show(state, &page.f, &page))
}

pub async fn one(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Shown> {
    endpoint_page(&state, &api, &session, &headers, &id, None).await
}

/// `POST /endpoints/{id}/{enable|disable|recover|rotate}`.
pub async fn act(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    Path((id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    action: Action,
) -> Result<Response, Shown> {
    let t = action.prefs.words();
    let account = &action.session.account;
    let back = format!("/endpoints/{}", enc(&id));
    let path = format!("/v1/endpoints/{}", enc(&id));
    let done = match verb.as_str() {
        "enable" | "disable" => api
            .call(
                account,
                Method::PATCH,
                &path,
                Some(&json!({"disabled": verb == "disable"})),
            )
            .await
            .map(|_| back.clone()),
        "recover" => {
            let since = ago_or_time(
                action.fields.get("since").unwrap_or(""),
                state.clock.now_ms(),
            );
            api.post(
                account,
                &format!("{path}/recover"),
                &json!({"since": since}),
            )
            .await
            .map(|job| {
                let job = job.get("id").and_then(|v| v.as_str()).unwrap_or("");
                format!("/jobs/{}", enc(job))
            })
        }
        "rotate" => {
            let rotated = api
                .post(account, &format!("{path}/secret/rotate"), &json!({}))
                .await;
            return match rotated {
                Ok(v) => {
                    let secret = v.get("secret").and_then(|s| s.as_str()).map(String::from);
                    endpoint_page(&state, &api, &action.session, &headers, &id, secret).await
                }
                Err(r) => Ok(after_action(&state, &back, false, &r.message)),
            };
        }
        _ => {
            return Err(Shown::refused(
                &action.prefs,
                Refused {
                    status: axum::http::StatusCode::NOT_FOUND,
                    message: String::new(),
                },
            ))
        }
    };
    Ok(match done {
        Ok(to) => after_action(&state, &to, true, t.done),
        Err(r) => after_action(&state, &back, false, &r.message),
    })
}

#[derive(Deserialize)]
pub struct JobJson {
    pub id: String,
    pub endpoint_id: String,
    pub since: String,
    pub status: String,
    pub total: i64,
    pub done: i64,
}

#[derive(Template)]
#[template(path = "dashboard/job.html")]
pub struct JobPage {
    pub f: Frame,
    pub job: JobJson,
    pub finished: bool,
}

pub async fn job(
    State(state): State<AppState>,
    Extension(api): Extension<Api>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Shown> {
    let prefs = Prefs::of(&headers);
    let job: JobJson = api
        .get(&session.account, &format!("/v1/jobs/{}", enc(&id)))
        .await
        .map_err(|r| Shown::refused(&prefs, r))?;
    let f = Frame::new(&state, &session, &headers, "endpoints").await;
    let finished = job.status != "running";
    let page = JobPage { f, job, finished };
    Ok(show(&state, &page.f, &page))
}
