//! Checks of what requests give: ids, names, times, phone numbers; and the PATCH bodies'
//! tell of an absent field from an explicit `null`.

use merpati_domain::ids;
use serde::Deserialize;

use super::{time, ApiError, ApiResult};

/// A given id, validated, or a new one of its kind.
pub fn id_or_new<T>(
    field: &str,
    id: Option<String>,
    generate: fn() -> T,
    parse: fn(String) -> Result<T, String>,
) -> ApiResult<T> {
    match id {
        Some(id) => parse(id).map_err(|why| ApiError::invalid(format!("{field} {why}"))),
        None => Ok(generate()),
    }
}

/// A user-supplied id of a kind, validated.
pub fn parse_id<T>(
    field: &str,
    raw: String,
    parse: fn(String) -> Result<T, String>,
) -> ApiResult<T> {
    parse(raw).map_err(|why| ApiError::invalid(format!("{field} {why}")))
}

pub fn check_id(field: &str, id: &str) -> ApiResult<()> {
    ids::validate_id(id).map_err(|why| ApiError::invalid(format!("{field} {why}")))
}

/// A time given as RFC 3339 or as Unix seconds, in ms.
pub fn parse_time(field: &str, raw: &str) -> ApiResult<i64> {
    time::parse_time(raw).ok_or_else(|| {
        ApiError::invalid(format!("{field} must be an RFC 3339 time or Unix seconds"))
    })
}

/// Until when the secrets a rotation replaces still work: `now` plus the rotation's
/// `grace` (`"1h"`, `"0s"`), or plus the configured one when it gives none.
pub fn rotation_expiry(
    grace: Option<&str>,
    configured: std::time::Duration,
    now: i64,
) -> ApiResult<i64> {
    let grace = match grace {
        Some(g) => humantime::parse_duration(g)
            .map_err(|_| ApiError::invalid(format!("grace {g:?} is not a duration like \"1h\"")))?,
        None => configured,
    };
    Ok(now + grace.as_millis() as i64)
}

pub const MAX_NAME_CHARS: usize = 256;

pub fn check_name(field: &str, value: &str) -> ApiResult<()> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(format!("{field} must not be empty")));
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(())
}

/// Phone numbers are kept as given; only their size and characters are checked.
pub fn check_phone(field: &str, phone: &str) -> ApiResult<()> {
    let ok = !phone.is_empty()
        && phone.len() <= 64
        && phone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.() @_:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field} must be 1 to 64 characters of digits, letters and + - . ( ) @ _ : or space"
        )))
    }
}

/// For PATCH bodies: tells an absent field (`None`) from an explicit `null` (`Some(None)`).
pub fn double_option<'de, T, D>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}
