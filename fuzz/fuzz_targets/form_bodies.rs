//! PHP-style form bodies: the decoder never panics on any body, and reads back what the
//! encoder wrote as PHP's `$_POST` would show it.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use merpati_webhooks::form::{decode, encode};
use serde_json::{Map, Value};

/// A JSON value whose object keys PHP can read back (no brackets, not empty).
#[derive(Arbitrary, Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    List(Vec<Node>),
    Object(Vec<(String, Node)>),
}

fn key_ok(k: &str) -> bool {
    !k.is_empty() && !k.contains(['[', ']'])
}

fn json(n: &Node) -> Value {
    match n {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(*b),
        Node::Int(i) => Value::from(*i),
        Node::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Node::Text(s) => Value::String(s.clone()),
        Node::List(items) => Value::Array(items.iter().map(json).collect()),
        Node::Object(pairs) => Value::Object(
            pairs
                .iter()
                .filter(|(k, _)| key_ok(k))
                .map(|(k, v)| (k.clone(), json(v)))
                .collect(),
        ),
    }
}

/// What PHP reads back: strings, `1`/`0` for booleans, arrays as objects keyed by index,
/// no nulls and no empty containers.
fn as_php_reads(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(Value::String(if *b { "1" } else { "0" }.into())),
        Value::Number(n) => Some(Value::String(n.to_string())),
        Value::String(s) => Some(Value::String(s.clone())),
        Value::Array(items) => {
            let map: Map<String, Value> = items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| as_php_reads(v).map(|v| (i.to_string(), v)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        Value::Object(pairs) => {
            let map: Map<String, Value> = pairs
                .iter()
                .filter_map(|(k, v)| as_php_reads(v).map(|v| (k.clone(), v)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    raw: &'a [u8],
    fields: Vec<(String, Node)>,
}

fuzz_target!(|input: Input<'_>| {
    let _ = decode(input.raw);
    let object = json(&Node::Object(input.fields));
    let decoded = decode(encode(&object).as_bytes()).expect("its own encoding decodes");
    let expected = as_php_reads(&object).unwrap_or_else(|| Value::Object(Map::new()));
    assert_eq!(decoded, expected, "{object}");
});
