//! E-mail endpoints (`mailto:`): each event as a readable e-mail with its exact JSON
//! payload attached, through a real SMTP server, with the same attempts, retries and log
//! as an HTTP endpoint.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::smtp::{Mail, SmtpSink};

/// The attachment of a mail, decoded.
fn attachment(mail: &Mail) -> Vec<u8> {
    let at = mail
        .data
        .find("Content-Disposition: attachment")
        .expect("an attachment");
    let part = &mail.data[at..];
    let head_end = part.find("\r\n\r\n").expect("its headers end") + 4;
    let (head, rest) = part.split_at(head_end);
    let body = &rest[..rest.find("\r\n--").expect("its part ends")];
    let head_before = &mail.data[..at];
    let part_head = &head_before[head_before.rfind("\r\n--").unwrap_or(0)..];
    let encoding = format!("{part_head}{head}").to_ascii_lowercase();
    if encoding.contains("content-transfer-encoding: base64") {
        base64::engine::general_purpose::STANDARD
            .decode(body.replace("\r\n", ""))
            .unwrap()
    } else if encoding.contains("content-transfer-encoding: quoted-printable") {
        quoted_printable(body)
    } else {
        body.as_bytes().to_vec()
    }
}

/// RFC 2045 quoted-printable: `=` and a line break joins lines, `=XX` is a byte.
fn quoted_printable(text: &str) -> Vec<u8> {
    let joined = text.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_an_email_endpoint_with_their_exact_payload_attached() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = TestApp::spawn_with(&[
        ("alerts.smtp_url", &url),
        ("alerts.smtp_from", "merpati <events@merpati.test>"),
    ])
    .await;
    let m = app.merchant("m1").await;
    let receiver = Receiver::start().await;
    app.endpoint(&m.key, &receiver, json!({"events": ["sms"]}))
        .await;
    let mailed = app
        .ok_post(
            "/v1/endpoints",
            &m.key,
            json!({"url": "mailto:ops@toko.example,owner@toko.example", "events": ["sms"]}),
            201,
        )
        .await;
    let sent = app.sms(&m.device_token, 1).await;
    let event_id = sent["items"][0]["event_id"].as_str().unwrap().to_string();

    let mail = sink.wait_for(1).await.remove(0);
    let http = receiver.wait_for(1).await.remove(0);
    assert_eq!(mail.to, ["<ops@toko.example>", "<owner@toko.example>"]);
    assert!(
        mail.header("Subject")
            .unwrap()
            .starts_with("merpati: sms from"),
        "{:?}",
        mail.header("Subject")
    );
    assert!(mail.data.contains(&format!("webhook-id: {event_id}")));
    // What is attached is what an HTTP receiver gets, byte for byte.
    assert_eq!(attachment(&mail), http.body);

    // The attempt is logged as any other: the SMTP server's reply, a success.
    let event = app.settled_event(&m.key, &event_id).await;
    let delivery = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["endpoint_id"] == mailed["id"])
        .unwrap()
        .clone();
    assert_eq!(delivery["status"], "succeeded");
    assert_eq!(delivery["attempts"][0]["status_code"], 250);

    // A recipient the server refuses for good: failed at once, the reply in the log.
    sink.refuse_recipients("550 5.1.1 no such user");
    let sent = app.sms(&m.device_token, 2).await;
    let event_id = sent["items"][0]["event_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + PATIENCE;
    let failed: Value = loop {
        let (_, event) = app.get(&format!("/v1/events/{event_id}"), &m.key).await;
        let d = event["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["endpoint_id"] == mailed["id"])
            .cloned();
        if let Some(d) = d.filter(|d| d["status"] == "failed") {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never failed: {event}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(failed["attempt_count"], 1);
    assert_eq!(failed["attempts"][0]["error_kind"], "smtp");
    assert!(failed["attempts"][0]["error"]
        .as_str()
        .unwrap()
        .contains("no such user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_email_endpoints_are_refused() {
    let without_smtp = TestApp::spawn().await;
    let m = without_smtp.merchant("m1").await;
    let (status, body) = without_smtp
        .post(
            "/v1/endpoints",
            &m.key,
            json!({"url": "mailto:ops@toko.example"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("SMTP"));

    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = TestApp::spawn_with(&[
        ("alerts.smtp_url", &url),
        ("alerts.smtp_from", "merpati <events@merpati.test>"),
    ])
    .await;
    let m = app.merchant("m1").await;
    for bad in [
        json!({"url": "mailto:"}),
        json!({"url": "mailto:nobody"}),
        json!({"url": "mailto:ops@toko.example?subject=hi"}),
        json!({"url": "mailto:ops@toko.example", "format": "form"}),
    ] {
        let (status, body) = app.post("/v1/endpoints", &m.key, bad.clone()).await;
        assert_eq!(status, 422, "{bad}: {body}");
    }
    let (_, list) = app.get("/v1/endpoints", &m.key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
}
