//! Every answer the tests get from the API is held to the OpenAPI document: its status must
//! be one the operation documents, and its JSON body must match the documented schema,
//! with no field the schema does not name. The helpers call [`check`] on each answer, so
//! the whole suite exercises the document, and a view changed without its schema (or the
//! other way round) fails wherever it is used.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{json, Value};

struct Contract {
    doc: Value,
    /// Path templates split into segments, most literal segments first.
    templates: Vec<(String, Vec<String>)>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

static CONTRACT: LazyLock<Contract> = LazyLock::new(|| {
    let doc = serde_json::to_value(merpati::app::openapi()).expect("the document serializes");
    let mut templates: Vec<(String, Vec<String>)> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(|p| (p.clone(), p.split('/').map(str::to_string).collect()))
        .collect();
    templates.sort_by_key(|(_, segs)| std::cmp::Reverse(literal_segments(segs)));
    Contract {
        doc: strict(doc),
        templates,
        validators: Mutex::new(HashMap::new()),
    }
});

fn literal_segments(segs: &[String]) -> usize {
    segs.iter().filter(|s| !s.starts_with('{')).count()
}

/// The path template a request path falls under, if the API has it.
fn template_of(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.split('/').collect();
    CONTRACT
        .templates
        .iter()
        .find(|(_, t)| {
            t.len() == segs.len()
                && t.iter()
                    .zip(&segs)
                    .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
        })
        .map(|(p, _)| p.as_str())
}

/// The document with every object schema closed (`additionalProperties: false`), so that an
/// answer with a field the document does not name fails. Schemas combined with `allOf` are
/// merged into one object first (a closed part would refuse the other parts' fields); one
/// with a free-form part stays open.
fn strict(mut doc: Value) -> Value {
    let originals = doc["components"]["schemas"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        for schema in schemas.values_mut() {
            close(&originals, schema);
        }
    }
    doc
}

fn merged(schemas: &serde_json::Map<String, Value>, schema: &Value) -> Value {
    let Some(Value::Array(parts)) = schema.get("allOf") else {
        return schema.clone();
    };
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    let mut open = false;
    for part in parts {
        let part = match part["$ref"].as_str() {
            Some(r) => merged(schemas, &schemas[r.rsplit('/').next().unwrap()]),
            None => merged(schemas, part),
        };
        match part.get("properties") {
            Some(Value::Object(p)) => properties.extend(p.clone()),
            _ => open = true,
        }
        if let Some(Value::Array(r)) = part.get("required") {
            required.extend(r.iter().cloned());
        }
    }
    let mut out = schema.as_object().cloned().unwrap_or_default();
    out.remove("allOf");
    out.insert("type".into(), json!("object"));
    out.insert("properties".into(), Value::Object(properties));
    out.insert("required".into(), Value::Array(required));
    if open {
        out.insert("additionalProperties".into(), Value::Bool(true));
    }
    Value::Object(out)
}

fn close(schemas: &serde_json::Map<String, Value>, schema: &mut Value) {
    if schema.get("allOf").is_some() {
        *schema = merged(schemas, schema);
    }
    let Value::Object(o) = schema else { return };
    if o.contains_key("properties") && !o.contains_key("additionalProperties") {
        o.insert("additionalProperties".into(), Value::Bool(false));
    }
    for key in ["properties", "items", "oneOf", "anyOf"] {
        match o.get_mut(key) {
            Some(Value::Object(props)) if key == "properties" => {
                props.values_mut().for_each(|p| close(schemas, p))
            }
            Some(Value::Array(parts)) => parts.iter_mut().for_each(|p| close(schemas, p)),
            Some(item @ Value::Object(_)) => close(schemas, item),
            _ => {}
        }
    }
}

fn validator(key: &str, schema: &Value) -> Arc<jsonschema::Validator> {
    let mut cache = CONTRACT.validators.lock().unwrap();
    cache
        .entry(key.to_string())
        .or_insert_with(|| {
            let root = json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": CONTRACT.doc["components"].clone(),
                "allOf": [schema],
            });
            Arc::new(
                jsonschema::options()
                    .should_validate_formats(true)
                    .build(&root)
                    .unwrap_or_else(|e| panic!("{key}: the schema does not compile: {e}")),
            )
        })
        .clone()
}

/// Holds one answer to the document. Paths outside the API (the dashboard, unknown routes)
/// and methods it does not have (405) are not its business.
pub fn check(method: &str, path: &str, status: u16, body: &Value) {
    let Some(template) = template_of(path) else {
        return;
    };
    let method = method.to_ascii_lowercase();
    let Some(op) = CONTRACT.doc["paths"][template].get(&method) else {
        assert_eq!(status, 405, "{method} {path}: not in the document");
        return;
    };
    let mut response = &op["responses"][status.to_string()];
    if let Some(r) = response["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        response = &CONTRACT.doc["components"]["responses"][name];
    }
    assert!(
        response.is_object(),
        "{} {path} answered {status}, which the document does not list for it: {body}",
        method.to_uppercase()
    );
    let Some(schema) = response["content"]["application/json"].get("schema") else {
        return;
    };
    let key = format!("{method} {template} {status}");
    let v = validator(&key, schema);
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{key}: the answer does not match the document:\n{}\n{}",
        errors.join("\n"),
        serde_json::to_string_pretty(body).unwrap()
    );
}
