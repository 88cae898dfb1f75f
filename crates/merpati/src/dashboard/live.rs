//! `GET /ui/stream?kinds=…`: the signed-in account's `/v1/stream`, for the page's script
//! (a browser's EventSource sends the session cookie, not a bearer token).

use axum::extract::RawQuery;
use axum::http::Method;
use axum::response::Response;
use axum::Extension;

use super::client::Api;
use super::session::Session;

pub async fn stream(
    Extension(api): Extension<Api>,
    session: Session,
    RawQuery(query): RawQuery,
) -> Response {
    let uri = match query {
        Some(q) => format!("/v1/stream?{q}"),
        None => "/v1/stream".to_string(),
    };
    api.respond(&session.account, Method::GET, &uri, None).await
}
