//! Signing in to the dashboard: an account API key, given once in a form, opens a session
//! stored by the hash of a random token; the browser holds the token in an HttpOnly,
//! SameSite=Strict cookie, never the key. Every form carries a CSRF token derived from the
//! session's (the sign-in form a double-submitted one of its own), checked in constant time.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use merpati_domain::ids::{new_token, token_hash};

use crate::api::extract::SignedIn;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::page::{message_page, Prefs};
use crate::api::extract::read_body;
use crate::api::AppState;

pub const SESSION_COOKIE: &str = "merpati_session";
/// The sign-in form's own CSRF token, double-submitted: in this cookie and in the form.
pub const LOGIN_COOKIE: &str = "merpati_login";
/// A session ends this long after sign-in, whatever happens meanwhile.
pub const SESSION_LIFETIME_MS: i64 = 7 * 86_400_000;

/// A value of the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse_encoded)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for the whole site; `max_age` None
/// deletes it.
pub fn set_cookie(
    state: &AppState,
    name: &str,
    value: &str,
    max_age_secs: Option<i64>,
) -> HeaderValue {
    let mut c = Cookie::build((name.to_string(), value.to_string()))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(served_over_https(state))
        .build();
    match max_age_secs {
        Some(secs) => c.set_max_age(cookie::time::Duration::seconds(secs)),
        None => c.make_removal(),
    }
    HeaderValue::from_str(&c.encoded().to_string()).expect("a cookie is a header value")
}

/// Behind a proxy that ends TLS, the configured public address says so.
fn served_over_https(state: &AppState) -> bool {
    state
        .config
        .alerts
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
}

fn csrf_of(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"merpati dashboard csrf\0")
        .chain_update(secret.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A signed-in browser. Pages without one are sent to the sign-in page.
#[derive(Clone)]
pub struct Session {
    pub account: SignedIn,
    token: String,
}

impl Session {
    /// What every form of this session carries.
    pub fn csrf(&self) -> String {
        csrf_of(&self.token)
    }
}

/// A page's path and query, to come back to after signing in: only a path of this site.
fn local_target(raw: Option<&str>) -> String {
    match raw {
        Some(t) if t.starts_with('/') && !t.starts_with("//") && !t.contains('\\') => t.to_string(),
        _ => "/".to_string(),
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let signed_out = || {
            let here = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            Redirect::to(&format!("/login?next={}", super::client::enc(here))).into_response()
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(signed_out());
        };
        let found = state
            .store
            .session_grant(token_hash(&token), state.clock.now_ms())
            .await;
        match found {
            Ok(Some(grant)) => Ok(Session {
                account: SignedIn {
                    account: grant.account_id,
                    key_id: grant.key_id,
                    read_only: grant.read_only,
                    address: parts
                        .extensions
                        .get::<crate::api::extract::ClientAddress>()
                        .map(|c| c.0),
                },
                token,
            }),
            Ok(None) => Err(signed_out()),
            Err(e) => Err(super::page::store_failure(&Prefs::of(&parts.headers), e)),
        }
    }
}

/// A form's fields, in order.
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn parse(body: &[u8]) -> Fields {
        Fields(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The field's value, trimmed; None when absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }
}

fn csrf_refused(headers: &HeaderMap) -> Response {
    message_page(&Prefs::of(headers), StatusCode::FORBIDDEN, |t| {
        t.csrf_refused
    })
}

/// A form posted by a signed-in browser, its CSRF token checked.
pub struct Action {
    pub session: Session,
    pub fields: Fields,
    pub prefs: Prefs,
}

impl FromRequest<AppState> for Action {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let prefs = Prefs::of(&parts.headers);
        let headers = parts.headers.clone();
        let bytes: Bytes = read_body(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let fields = Fields::parse(&bytes);
        match fields.get("_csrf") {
            Some(given) if same(given, &session.csrf()) => Ok(Action {
                session,
                fields,
                prefs,
            }),
            _ => Err(csrf_refused(&headers)),
        }
    }
}

/// `GET /login`: the form, with a fresh double-submit token.
pub async fn login_form(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let next = query
        .as_deref()
        .map(|q| Fields::parse(q.as_bytes()))
        .and_then(|f| f.get("next").map(str::to_string));
    login_page(&state, &headers, next.as_deref(), None, StatusCode::OK)
}

fn login_page(
    state: &AppState,
    headers: &HeaderMap,
    next: Option<&str>,
    error: Option<&'static str>,
    status: StatusCode,
) -> Response {
    let secret = new_token("login");
    let prefs = Prefs::of(headers);
    let page = super::page::LoginPage {
        t: prefs.words(),
        theme: prefs.theme,
        csrf: csrf_of(&secret),
        next: local_target(next),
        error,
    };
    let mut response = super::page::render(status, &page);
    response.headers_mut().append(
        SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, &secret, Some(3600)),
    );
    response
}

/// `POST /login`: `api_key`, `_csrf`, `next`. A wrong key is told as such, and nothing is
/// stored.
pub async fn login(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = Fields::parse(&body);
    let next = fields.get("next").map(str::to_string);
    let expected = cookie(&headers, LOGIN_COOKIE).map(|s| csrf_of(&s));
    let csrf_ok = match (fields.get("_csrf"), expected) {
        (Some(given), Some(expected)) => same(given, &expected),
        _ => false,
    };
    if !csrf_ok {
        return csrf_refused(&headers);
    }
    let Some(key) = fields.get("api_key") else {
        return login_page(
            &state,
            &headers,
            next.as_deref(),
            Some(Prefs::of(&headers).words().key_required),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    };
    let token = new_token("mps");
    let now = state.clock.now_ms();
    let opened = state
        .store
        .create_session(
            token_hash(&token),
            token_hash(key),
            now,
            now + SESSION_LIFETIME_MS,
        )
        .await;
    match opened {
        Ok(Some(_)) => {
            let mut response = Redirect::to(&local_target(next.as_deref())).into_response();
            let headers = response.headers_mut();
            headers.append(
                SET_COOKIE,
                set_cookie(
                    &state,
                    SESSION_COOKIE,
                    &token,
                    Some(SESSION_LIFETIME_MS / 1000),
                ),
            );
            headers.append(SET_COOKIE, set_cookie(&state, LOGIN_COOKIE, "", None));
            response
        }
        Ok(None) => login_page(
            &state,
            &headers,
            next.as_deref(),
            Some(Prefs::of(&headers).words().key_refused),
            StatusCode::UNAUTHORIZED,
        ),
        Err(e) => super::page::store_failure(&Prefs::of(&headers), e),
    }
}

/// `POST /logout`: ends the session in the store, and the cookie.
pub async fn logout(
    axum::extract::State(state): axum::extract::State<AppState>,
    action: Action,
) -> Response {
    if let Err(e) = state
        .store
        .end_session(token_hash(&action.session.token))
        .await
    {
        return super::page::store_failure(&action.prefs, e);
    }
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .append(SET_COOKIE, set_cookie(&state, SESSION_COOKIE, "", None));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(
            local_target(Some("/devices?status=down")),
            "/devices?status=down"
        );
        assert_eq!(local_target(Some("//evil.example/x")), "/");
        assert_eq!(local_target(Some("https://evil.example")), "/");
        assert_eq!(local_target(Some("/\\evil.example")), "/");
        assert_eq!(local_target(None), "/");
    }

    #[test]
    fn csrf_tokens_differ_per_secret_and_compare_whole() {
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert_eq!(csrf_of("a").len(), 64);
        assert!(same(&csrf_of("a"), &csrf_of("a")));
        assert!(!same(&csrf_of("a"), &csrf_of("a")[..63]));
    }

    #[test]
    fn form_fields_are_decoded_and_blank_is_absent() {
        let f = Fields::parse(b"a=1+2&b=%2Fx&c=+");
        assert_eq!(f.get("a"), Some("1 2"));
        assert_eq!(f.get("b"), Some("/x"));
        assert_eq!(f.get("c"), None);
    }
}
