//! `application/x-www-form-urlencoded` bodies with PHP-style nested keys (`data[phone]=…`), so
//! that PHP's `$_POST` reads exactly like the JSON body.

use serde_json::{Map, Value};

/// Encodes a JSON object as a form body, in the object's key order. Nested objects become
/// `parent[child]`, arrays `parent[0]`; `null` is left out and booleans are `1`/`0`, as PHP's
/// `http_build_query` does.
pub fn encode(value: &Value) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    if let Value::Object(map) = value {
        for (key, v) in map {
            encode_into(&mut out, key.clone(), v);
        }
    }
    out.finish()
}

fn encode_into(out: &mut form_urlencoded::Serializer<'_, String>, key: String, value: &Value) {
    match value {
        Value::Null => {}
        Value::Bool(b) => {
            out.append_pair(&key, if *b { "1" } else { "0" });
        }
        Value::Number(n) => {
            out.append_pair(&key, &n.to_string());
        }
        Value::String(s) => {
            out.append_pair(&key, s);
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                encode_into(out, format!("{key}[{i}]"), v);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                encode_into(out, format!("{key}[{k}]"), v);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed key {0:?}")]
pub struct FormError(String);

/// Decodes a form body into nested JSON objects of strings (`a[b]=1` → `{"a":{"b":"1"}}`).
/// Numeric-looking keys stay object keys; values stay strings. Later duplicates win, as in PHP.
pub fn decode(body: &[u8]) -> Result<Value, FormError> {
    let mut root = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        let path = split_key(&key).ok_or_else(|| FormError(key.to_string()))?;
        insert(&mut root, &path, value.into_owned()).ok_or_else(|| FormError(key.to_string()))?;
    }
    Ok(Value::Object(root))
}

/// `data[phone]` → `["data", "phone"]`. `None` for an unbalanced or empty key.
fn split_key(key: &str) -> Option<Vec<String>> {
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if head.is_empty() {
        return None;
    }
    let mut path = vec![head.to_string()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let close = inner.find(']')?;
        let segment = &inner[..close];
        if segment.is_empty() {
            return None;
        }
        path.push(segment.to_string());
        rest = &inner[close + 1..];
    }
    Some(path)
}

fn insert(map: &mut Map<String, Value>, path: &[String], value: String) -> Option<()> {
    let (first, rest) = path.split_first()?;
    if rest.is_empty() {
        map.insert(first.clone(), Value::String(value));
        return Some(());
    }
    let child = map
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    match child {
        Value::Object(inner) => insert(inner, rest, value),
        // `a=1&a[b]=2`: a scalar and a nested key under one name.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_are_php_style_and_ordered() {
        let v = json!({"type":"sms","data":{"id":2,"phone":"+63 97","ok":true,"none":null}});
        assert_eq!(
            encode(&v),
            "type=sms&data%5Bid%5D=2&data%5Bphone%5D=%2B63+97&data%5Bok%5D=1"
        );
    }

    #[test]
    fn decode_inverts_encode_for_strings() {
        let v = json!({"type":"sms","data":{"phone":"+63 97","message":"a=b&c"}, "secret":"s"});
        assert_eq!(decode(encode(&v).as_bytes()).unwrap(), v);
    }

    #[test]
    fn decode_accepts_unencoded_brackets() {
        let v = decode(b"data[phone]=%2B1&type=sms").unwrap();
        assert_eq!(v, json!({"data":{"phone":"+1"},"type":"sms"}));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(decode(b"data[phone=1").is_err());
        assert!(decode(b"[x]=1").is_err());
        assert!(decode(b"a=1&a[b]=2").is_err());
        assert!(decode(b"a[]=1").is_err());
    }
}
