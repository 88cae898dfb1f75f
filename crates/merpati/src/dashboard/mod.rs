//! The dashboard: server-rendered pages at `/` for an account's devices, endpoints, events,
//! incidents and alerting, live through server-sent events, in English and Indonesian, dark
//! and light. It signs in with an API key into a session (`session`) and reads and acts only
//! through the API, in process (`client`): it adds no rule of its own.

use axum::http::header::{REFERER, SET_COOKIE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::api::AppState;

mod alerting;
mod assets;
mod client;
mod devices;
mod endpoints;
mod events;
mod incidents;
mod live;
mod page;
mod session;
mod words;

use client::{Api, Refused};
use page::{Prefs, LANG_COOKIE, THEME_COOKIE};
use session::Fields;

pub fn routes(api: Router) -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/devices") }))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/prefs", get(prefs))
        .route("/assets/{name}", get(assets::asset))
        .route("/devices", get(devices::list))
        .route("/devices/{id}", get(devices::one))
        .route("/endpoints", get(endpoints::list))
        .route("/endpoints/{id}", get(endpoints::one))
        .route("/endpoints/{id}/{verb}", post(endpoints::act))
        .route("/jobs/{id}", get(endpoints::job))
        .route("/events", get(events::list))
        .route("/events/{id}", get(events::one))
        .route("/events/{id}/replay", post(events::replay))
        .route("/deliveries/{id}/resend", post(events::resend))
        .route("/incidents", get(incidents::list))
        .route("/incidents/{id}", get(incidents::one))
        .route("/incidents/{id}/{verb}", post(incidents::act))
        .route("/alerting", get(alerting::page))
        .route("/alerting/{kind}", post(alerting::create))
        .route("/alerting/{kind}/{id}/{verb}", post(alerting::act))
        .route("/ui/stream", get(live::stream))
        .layer(Extension(Api::new(api)))
}

/// A page that could not be shown: what the API refused, in the browser's language.
pub struct Shown(Response);

impl Shown {
    fn refused(prefs: &Prefs, r: Refused) -> Shown {
        Shown(page::failure_page(prefs, r.status, &r.message))
    }
}

impl IntoResponse for Shown {
    fn into_response(self) -> Response {
        self.0
    }
}

/// `GET /prefs?lang=id|en&theme=dark|light|auto`: remembers the choice, back to the page.
async fn prefs(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let fields = Fields::parse(query.as_deref().unwrap_or("").as_bytes());
    // Back where the choice was made, on this site only.
    let back = headers
        .get(REFERER)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| url::Url::parse(r).ok())
        .map(|u| match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        })
        .filter(|p| p.starts_with('/') && !p.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    let mut response = Redirect::to(&back).into_response();
    let year = Some(365 * 86_400);
    if let Some(lang @ ("id" | "en")) = fields.get("lang") {
        response.headers_mut().append(
            SET_COOKIE,
            session::set_cookie(&state, LANG_COOKIE, lang, year),
        );
    }
    match fields.get("theme") {
        Some(theme @ ("dark" | "light")) => {
            response.headers_mut().append(
                SET_COOKIE,
                session::set_cookie(&state, THEME_COOKIE, theme, year),
            );
        }
        Some("auto") => {
            response.headers_mut().append(
                SET_COOKIE,
                session::set_cookie(&state, THEME_COOKIE, "", None),
            );
        }
        _ => {}
    }
    response
}
