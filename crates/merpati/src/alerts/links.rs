//! The signed acknowledgement link in every notification: `GET` only shows a page with a
//! button (a mail client's link scanner follows links, and must not acknowledge), `POST`
//! acknowledges. A link is valid 7 days; past that it answers 410.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use merpati_domain::alert::link::{self, LinkError};
use merpati_domain::alert::message::{html_escape, human_duration};
use merpati_domain::alert::{Incident, IncidentState, Language};

use super::incidents::acknowledge_by_link;
use crate::api::AppState;

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{t} · merpati</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;\
         padding:0 1rem;line-height:1.5}}button{{font-size:1.1rem;padding:.6rem 1.2rem}}\
         @media (prefers-color-scheme: dark){{body{{background:#111;color:#eee}}}}</style>\
         </head><body><h1>{t}</h1>{body}</body></html>",
        t = html_escape(title)
    );
    (
        status,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Html(html),
    )
        .into_response()
}

struct Words {
    acknowledge: &'static str,
    acknowledged: &'static str,
    resolved: &'static str,
    already: &'static str,
    expired: &'static str,
    invalid: &'static str,
    down_for: &'static str,
}

fn words(l: Language) -> Words {
    match l {
        Language::En => Words {
            acknowledge: "Acknowledge this incident",
            acknowledged: "Acknowledged",
            resolved: "This incident is already resolved.",
            already: "Already acknowledged by",
            expired: "This link has expired. Open the incident in merpati instead.",
            invalid: "This link is not valid.",
            down_for: "down for",
        },
        Language::Id => Words {
            acknowledge: "Akui insiden ini",
            acknowledged: "Diakui",
            resolved: "Insiden ini sudah selesai.",
            already: "Sudah diakui oleh",
            expired: "Tautan ini sudah kedaluwarsa. Buka insiden di merpati.",
            invalid: "Tautan ini tidak valid.",
            down_for: "terputus selama",
        },
    }
}

fn describe(inc: &Incident, now: i64, language: Language) -> String {
    let w = words(language);
    let mut out = format!(
        "<p><b>{}</b> · {} · {}</p><ul>",
        html_escape(&inc.business_name),
        inc.severity.as_str(),
        inc.state.as_str()
    );
    for d in inc.devices.iter().take(20) {
        out.push_str(&format!(
            "<li>{} ({}, {}): {} {}</li>",
            html_escape(&d.name),
            html_escape(&d.channel_name),
            html_escape(&d.engine),
            w.down_for,
            human_duration(d.up_at.unwrap_or(now) - d.down_at, language)
        ));
    }
    if inc.devices.len() > 20 {
        out.push_str(&format!("<li>+{}</li>", inc.devices.len() - 20));
    }
    out.push_str("</ul>");
    out
}

/// The incident a token names, or the page that says why not.
async fn resolve_token(state: &AppState, token: &str) -> Result<(Incident, Language), Response> {
    let key = &state.alerts.settings().link_key;
    let now = state.clock.now_ms();
    let id = match link::verify(key, token, now) {
        Ok(id) => id,
        Err(LinkError::Expired(_)) => {
            return Err(page(StatusCode::GONE, "410", words(Language::En).expired))
        }
        Err(LinkError::Invalid) => {
            return Err(page(
                StatusCode::NOT_FOUND,
                "404",
                words(Language::En).invalid,
            ))
        }
    };
    let inc = match state.store.find_incident(id).await {
        Ok(inc) => inc,
        Err(_) => {
            return Err(page(
                StatusCode::NOT_FOUND,
                "404",
                words(Language::En).invalid,
            ))
        }
    };
    let language = state
        .store
        .get_account(inc.account_id.clone())
        .await
        .map(|a| a.language)
        .unwrap_or_default();
    Ok((inc, language))
}

/// Shows the incident and a button; changes nothing.
#[utoipa::path(get, path = "/ack/{token}", tag = "acknowledgement links",
    params(("token" = String, Path, description = "The signed token from a notification's link.")),
    responses(
        (status = 200, description = "A page showing the incident and a button; nothing changes.", content_type = "text/html", body = String),
        (status = 404, description = "Not a valid link.", content_type = "text/html", body = String),
        (status = 410, description = "Older than 7 days.", content_type = "text/html", body = String),
    ))]
pub(super) async fn confirm(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    let (inc, language) = match resolve_token(&state, &token).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let w = words(language);
    let now = state.clock.now_ms();
    let mut body = describe(&inc, now, language);
    match inc.state {
        IncidentState::Resolved => body.push_str(&format!("<p>{}</p>", w.resolved)),
        IncidentState::Acknowledged => body.push_str(&format!(
            "<p>{} {}.</p>",
            w.already,
            html_escape(inc.acknowledged_by.as_deref().unwrap_or("?"))
        )),
        IncidentState::Open => body.push_str(&format!(
            "<form method=\"post\"><button type=\"submit\">{}</button></form>",
            w.acknowledge
        )),
    }
    page(StatusCode::OK, w.acknowledge, &body)
}

/// Acknowledges the incident the link names.
#[utoipa::path(post, path = "/ack/{token}", tag = "acknowledgement links",
    params(("token" = String, Path, description = "The signed token from a notification's link.")),
    responses(
        (status = 200, description = "Acknowledged; a page says so.", content_type = "text/html", body = String),
        (status = 404, description = "Not a valid link.", content_type = "text/html", body = String),
        (status = 409, description = "The incident is resolved.", content_type = "text/html", body = String),
        (status = 410, description = "Older than 7 days.", content_type = "text/html", body = String),
    ))]
pub(super) async fn acknowledge(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    let (inc, language) = match resolve_token(&state, &token).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let w = words(language);
    let now = state.clock.now_ms();
    if inc.state == IncidentState::Resolved {
        return page(
            StatusCode::CONFLICT,
            w.acknowledge,
            &format!("<p>{}</p>", w.resolved),
        );
    }
    match acknowledge_by_link(&state, &inc).await {
        Ok(inc) => page(
            StatusCode::OK,
            w.acknowledged,
            &describe(&inc, now, language),
        ),
        Err(e) => page(e.status, w.acknowledge, &html_escape(&e.message)),
    }
}
