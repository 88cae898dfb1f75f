//! The HTTP kit every feature's routes use, naming no feature: the shared state, the one
//! error type, extractors for bodies and the three bearer tokens, pagination, validation,
//! times as the API shows them, and versions of what people edit (`ETag`, `If-Match`).
//! The router that merges the features' routes is the app's (`crate::app`).

mod error;
pub mod extract;
pub mod openapi;
pub mod paging;
pub mod revision;
mod state;
pub mod time;
pub mod token_cache;
pub mod validate;

pub use error::{ApiError, ApiResult};
pub use state::AppState;

/// Every request body is refused past this size (413).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
