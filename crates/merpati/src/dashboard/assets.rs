//! The dashboard's stylesheet and script, compiled into the binary. Pages name them with a
//! digest of their content, so a browser may keep them for a year and still never runs an
//! old script against a new page.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const CSS: &str = include_str!("../../assets/app.css");
const JS: &str = include_str!("../../assets/app.js");

static DIGEST: LazyLock<String> = LazyLock::new(|| {
    let d = Sha256::new().chain_update(CSS).chain_update(JS).finalize();
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
});

/// What pages put after `?v=`.
pub fn version() -> &'static str {
    &DIGEST
}

pub async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "app.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (CONTENT_TYPE, kind),
            (CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}
