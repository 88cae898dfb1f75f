//! A body fit to show: engines put their own credentials in their webhooks (Evolution its
//! instance `apikey`), so a body is never kept as sent. Every value under a key that names
//! a credential is replaced, and the rest is cut to a size.

use serde_json::Value;

const CREDENTIAL_WORDS: [&str; 7] = [
    "key",
    "token",
    "secret",
    "password",
    "signature",
    "auth",
    "hmac",
];

const REDACTED: &str = "[redacted]";

/// `body` with its credentials replaced, at most `max` bytes of it.
pub fn redacted(body: &[u8], max: usize) -> String {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return format!("[not JSON, {} bytes]", body.len());
    };
    scrub(&mut v);
    let mut text = v.to_string();
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn scrub(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, value) in o.iter_mut() {
                let k = k.to_ascii_lowercase();
                if CREDENTIAL_WORDS.iter().any(|w| k.contains(w)) {
                    *value = Value::String(REDACTED.into());
                } else {
                    scrub(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_and_the_rest_stays() {
        let body = br#"{"event":"x","apikey":"B6D7","data":{"key":{"id":"1"},"text":"hi","hmac":{"key":"k"}}}"#;
        let shown = redacted(body, 1000);
        assert!(
            !shown.contains("B6D7") && !shown.contains("\"k\""),
            "{shown}"
        );
        assert!(shown.contains("\"text\":\"hi\""), "{shown}");
        assert_eq!(redacted(b"{nope", 100), "[not JSON, 5 bytes]");
        let long = format!(r#"{{"text":"{}"}}"#, "é".repeat(100));
        assert!(redacted(long.as_bytes(), 21).ends_with('…'));
    }
}
