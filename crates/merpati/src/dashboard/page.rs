//! What every page shares: the browser's preferences (language, theme), the frame around a
//! page (navigation, account, CSRF token, a message from the last action), rendering, and the
//! pages that only say something.

use askama::Template;
use axum::http::header::{ACCEPT_LANGUAGE, CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use merpati_domain::StoreError;

use super::session::{cookie, set_cookie, Session};
use super::words::{Words, EN, ID};
use crate::api::AppState;

pub const LANG_COOKIE: &str = "merpati_lang";
pub const THEME_COOKIE: &str = "merpati_theme";
const FLASH_COOKIE: &str = "merpati_flash";

/// The browser's choices: its language (the cookie it picked, else its Accept-Language),
/// and its theme (`auto` follows the system).
#[derive(Clone, Copy)]
pub struct Prefs {
    pub lang: &'static Words,
    pub theme: &'static str,
}

impl Prefs {
    pub fn of(headers: &HeaderMap) -> Prefs {
        let lang = match cookie(headers, LANG_COOKIE).as_deref() {
            Some("id") => &ID,
            Some("en") => &EN,
            _ => from_accept_language(
                headers
                    .get(ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            ),
        };
        let theme = match cookie(headers, THEME_COOKIE).as_deref() {
            Some("dark") => "dark",
            Some("light") => "light",
            _ => "auto",
        };
        Prefs { lang, theme }
    }

    pub fn words(&self) -> &'static Words {
        self.lang
    }
}

/// The first language of the header's that the dashboard speaks, by weight; English else.
fn from_accept_language(header: &str) -> &'static Words {
    let mut best: Option<(f32, &'static Words)> = None;
    for part in header.split(',') {
        let mut pieces = part.trim().split(';');
        let tag = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = pieces
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let primary = tag.split('-').next().unwrap_or("");
        let words = match primary {
            // `in` is the old code for Indonesian, still sent by some phones.
            "id" | "in" => &ID,
            "en" => &EN,
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, words));
        }
    }
    best.map_or(&EN, |(_, w)| w)
}

/// A message left by an action for the page it leads to.
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// Around every signed-in page.
pub struct Frame {
    pub t: &'static Words,
    pub theme: &'static str,
    pub csrf: String,
    pub account_name: String,
    /// Which part of the navigation is this page's.
    pub nav: &'static str,
    pub flash: Option<Flash>,
    pub status_words: String,
    pub assets: &'static str,
}

impl Frame {
    pub async fn new(
        state: &AppState,
        session: &Session,
        headers: &HeaderMap,
        nav: &'static str,
    ) -> Frame {
        let prefs = Prefs::of(headers);
        let account_name = state
            .store
            .get_account(session.account.account.clone())
            .await
            .map(|a| a.name)
            .unwrap_or_else(|_| session.account.account.to_string());
        let flash = cookie(headers, FLASH_COOKIE).and_then(|raw| {
            let (kind, text) = raw.split_once(':')?;
            Some(Flash {
                ok: kind == "ok",
                text: text.chars().take(500).collect(),
            })
        });
        Frame {
            t: prefs.lang,
            theme: prefs.theme,
            csrf: session.csrf(),
            account_name,
            nav,
            flash,
            status_words: prefs.lang.status_json(),
            assets: super::assets::version(),
        }
    }
}

/// A page as HTML, never cached (it shows live state and carries a CSRF token). A page
/// that showed a flash message clears it.
pub fn render<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a dashboard page did not render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page did not render").into_response()
        }
    }
}

/// A signed-in page: rendered, and its flash message (if any) cleared.
pub fn show<T: Template>(state: &AppState, frame: &Frame, page: &T) -> Response {
    let mut response = render(StatusCode::OK, page);
    if frame.flash.is_some() {
        response
            .headers_mut()
            .append(SET_COOKIE, set_cookie(state, FLASH_COOKIE, "", None));
    }
    response
}

/// Back to `to` after an action, with what came of it for the next page to show.
pub fn after_action(state: &AppState, to: &str, ok: bool, text: &str) -> Response {
    let mut response = Redirect::to(to).into_response();
    let value = format!("{}:{}", if ok { "ok" } else { "error" }, text);
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(state, FLASH_COOKIE, &value, Some(60)),
    );
    response
}

#[derive(Template)]
#[template(path = "dashboard/login.html")]
pub struct LoginPage {
    pub t: &'static Words,
    pub theme: &'static str,
    pub csrf: String,
    pub next: String,
    pub error: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "dashboard/message.html")]
pub struct MessagePage<'a> {
    pub t: &'static Words,
    pub theme: &'static str,
    pub text: &'a str,
    pub detail: &'a str,
}

/// A page that says one thing, in the browser's language.
pub fn message_page(
    prefs: &Prefs,
    status: StatusCode,
    text: impl Fn(&'static Words) -> &'static str,
) -> Response {
    let t = prefs.words();
    render(
        status,
        &MessagePage {
            t,
            theme: prefs.theme,
            text: text(t),
            detail: "",
        },
    )
}

/// A page telling what the API refused or failed with.
pub fn failure_page(prefs: &Prefs, status: StatusCode, detail: &str) -> Response {
    let t = prefs.words();
    let text = if status == StatusCode::NOT_FOUND {
        t.not_found
    } else {
        t.failed
    };
    render(
        status,
        &MessagePage {
            t,
            theme: prefs.theme,
            text,
            detail,
        },
    )
}

pub fn store_failure(prefs: &Prefs, e: StoreError) -> Response {
    let error = crate::api::ApiError::from(e);
    failure_page(prefs, error.status, &error.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_s_language_is_picked_by_weight() {
        assert_eq!(from_accept_language("id-ID,id;q=0.9,en;q=0.8").code, "id");
        assert_eq!(from_accept_language("en-US,en;q=0.9,id;q=0.8").code, "en");
        assert_eq!(from_accept_language("fr-FR, id;q=0.5").code, "id");
        assert_eq!(from_accept_language("in").code, "id");
        assert_eq!(from_accept_language("de, fr").code, "en");
        assert_eq!(from_accept_language("id;q=0, en;q=0.1").code, "en");
        assert_eq!(from_accept_language("").code, "en");
    }
}
