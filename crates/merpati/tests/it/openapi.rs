//! The OpenAPI document: served at `/openapi.json`, printed by `merpati openapi`, equal to
//! the committed `docs/openapi.json`, valid for an OpenAPI 3.1 validator, and true about
//! the tokens each route takes. (That every answer matches it is `contract`'s work, on
//! every request of the suite.)

use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

fn committed_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[tokio::test]
async fn the_document_is_served_printed_and_committed_alike() {
    let app = TestApp::spawn().await;
    let served = reqwest::get(format!("{}/openapi.json", app.url))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/json");
    let served = served.text().await.unwrap();

    let printed = Command::new(env!("CARGO_BIN_EXE_merpati"))
        .arg("openapi")
        .output()
        .expect("the binary runs");
    assert!(printed.status.success());
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), served);

    let committed = std::fs::read_to_string(committed_path()).unwrap_or_default();
    assert!(
        committed == served,
        "docs/openapi.json differs from what the code declares; \
         write it again with `cargo run -- openapi > docs/openapi.json`"
    );

    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for scheme in ["admin_token", "api_key", "device_token"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme]["scheme"],
            "bearer"
        );
    }
}

#[test]
fn an_openapi_validator_finds_the_document_valid() {
    let script = "import json, sys\n\
                  from openapi_spec_validator import validate\n\
                  validate(json.load(sys.stdin))\n\
                  print('valid')\n";
    let out = compat_python(
        &["-c".as_ref(), script.as_ref()],
        merpati::app::openapi_json().as_bytes(),
    );
    assert!(
        out.status.success() && out.stdout == b"valid\n",
        "openapi-spec-validator refused the document (is scripts/compat-setup.sh run?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every operation, as the document lists it, with its path's parameters filled in.
pub(crate) fn operations(doc: &Value) -> Vec<(Method, String, Option<String>)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().unwrap() {
            let scheme = op["security"][0]
                .as_object()
                .and_then(|o| o.keys().next().cloned());
            out.push((
                method.to_uppercase().parse().unwrap(),
                concrete.clone(),
                scheme,
            ));
        }
    }
    out
}

#[test]
#[should_panic(expected = "does not match the document")]
fn the_contract_refuses_a_field_the_document_does_not_name() {
    crate::contract::check(
        "GET",
        "/healthz",
        200,
        &json!({"status": "ok", "uptime": 1}),
    );
}

#[test]
#[should_panic(expected = "does not list for it")]
fn the_contract_refuses_a_status_the_document_does_not_list() {
    crate::contract::check(
        "GET",
        "/healthz",
        418,
        &json!({"error": {"code": "teapot", "message": "no"}}),
    );
}
