//! `?limit=&cursor=` of every list route, and the page it answers.

use axum::Json;
use merpati_domain::ids;
use merpati_domain::Page;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 500;

impl PageQuery {
    /// The page to ask the store for: one more than shown, to know whether more follow.
    pub fn page(&self) -> ApiResult<Page> {
        Ok(Page {
            after: self.cursor.as_deref().map(parse_cursor).transpose()?,
            limit: page_limit(self.limit)? + 1,
        })
    }
}

pub fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiError::invalid(format!("limit must be 1 to {MAX_PAGE}"))),
    }
}

pub fn parse_cursor(cursor: &str) -> ApiResult<String> {
    ids::decode_cursor(cursor).ok_or_else(|| ApiError::invalid("cursor is not valid"))
}

/// A page of a list: `{"data": [...], "next_cursor": …}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listed<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

impl<T> Listed<T> {
    /// The whole list in one page.
    pub fn all(data: Vec<T>) -> Json<Listed<T>> {
        Json(Listed {
            data,
            next_cursor: None,
        })
    }
}

/// The page to answer from items fetched with one too many.
pub fn list_response<T: Serialize>(
    mut items: Vec<T>,
    page: &Page,
    position: impl Fn(&T) -> String,
) -> Json<Listed<T>> {
    let shown = page.limit - 1;
    let next_cursor = if items.len() > shown {
        items.truncate(shown);
        items.last().map(|last| ids::encode_cursor(&position(last)))
    } else {
        None
    };
    Json(Listed {
        data: items,
        next_cursor,
    })
}
