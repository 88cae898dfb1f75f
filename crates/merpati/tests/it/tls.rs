//! HTTPS built in: a certificate the test makes (its own CA), served by merpati with HSTS;
//! a new certificate read on reload (in process) and on SIGHUP (the real binary) without
//! dropping a connection; bad TLS settings stop the start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::helpers::*;
use crate::restart::{spawn_binary_logged, stop_gracefully};

/// A CA of the test's own.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for 127.0.0.1 and its key, written to `dir` as `cert.pem` and
    /// `key.pem`; returns the certificate's DER.
    fn issue(&self, dir: &Path) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // Written whole and moved over the old one, as a certificate manager does.
        for (name, text) in [("cert.pem", cert.pem()), ("key.pem", key.serialize_pem())] {
            let next = dir.join(format!("{name}.next"));
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, dir.join(name)).unwrap();
        }
        cert.der().to_vec()
    }
}

fn files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// A TLS connection to `addr` trusting only `ca`; the certificate the server showed.
async fn connect(
    addr: &str,
    ca: &Ca,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
) {
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(ca.pem.as_bytes()).unwrap();
    roots.add(ca_der).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = connector
        .connect(name, tcp)
        .await
        .expect("the TLS handshake");
    let shown = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (stream, shown)
}

/// One request on an open connection; the answer's head and body.
async fn get(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n{") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_hsts_and_a_new_certificate_without_dropping_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let first = ca.issue(dir.path());
    let (cert, key) = files(dir.path());
    let app = TestApp::spawn_with(&[
        ("tls.cert", cert.to_str().unwrap()),
        ("tls.key", key.to_str().unwrap()),
    ])
    .await;
    let addr = app.url.trim_start_matches("http://").to_string();

    // Through a real HTTPS client, trusting only the test's CA.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let answer = client
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    // Plain HTTP on the HTTPS port is not served.
    assert!(reqwest::get(format!("http://{addr}/healthz"))
        .await
        .is_err());

    let (mut held, shown) = connect(&addr, &ca).await;
    assert_eq!(shown, first);
    assert!(get(&mut held, "/healthz").await.starts_with("HTTP/1.1 200"));

    let second = ca.issue(dir.path());
    app.server.as_ref().unwrap().reload_tls().unwrap();
    // The open connection goes on; a new one is shown the new certificate.
    assert!(get(&mut held, "/healthz").await.starts_with("HTTP/1.1 200"));
    let (mut fresh, shown) = connect(&addr, &ca).await;
    assert_eq!(shown, second);
    assert!(get(&mut fresh, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));

    // A broken file on reload leaves the certificate in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(app.server.as_ref().unwrap().reload_tls().is_err());
    let (_, shown) = connect(&addr, &ca).await;
    assert_eq!(shown, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_the_binary_read_its_certificate_again() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let first = ca.issue(dir.path());
    let (cert, key) = files(dir.path());
    let data = dir.path().join("data");
    let (mut child, url, logs) = spawn_binary_logged(
        &data,
        &[
            ("MERPATI_TLS_CERT", cert.to_str().unwrap()),
            ("MERPATI_TLS_KEY", key.to_str().unwrap()),
        ],
    )
    .await;
    let addr = url.trim_start_matches("http://").to_string();
    let (mut held, shown) = connect(&addr, &ca).await;
    assert_eq!(shown, first);

    let second = ca.issue(dir.path());
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = std::time::Instant::now() + PATIENCE;
    while !logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("read again"))
    {
        assert!(std::time::Instant::now() < deadline, "no reload logged");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, shown) = connect(&addr, &ca).await;
    assert_eq!(shown, second);
    assert!(get(&mut held, "/healthz").await.starts_with("HTTP/1.1 200"));
    stop_gracefully(&mut child).await;
}

#[test]
fn bad_tls_settings_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |settings: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_merpati"));
        command
            .arg("serve")
            .env("MERPATI_LISTEN", "127.0.0.1:0")
            .env("MERPATI_DATA_DIR", dir.path().join("data"))
            .env("MERPATI_ADMIN_TOKEN", ADMIN);
        for (k, v) in settings {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = run(&[("MERPATI_TLS_CERT", "/nowhere/cert.pem")]);
    assert!(said.contains("tls.key"), "{said}");
    std::fs::write(dir.path().join("cert.pem"), "garbage").unwrap();
    std::fs::write(dir.path().join("key.pem"), "garbage").unwrap();
    let said = run(&[
        (
            "MERPATI_TLS_CERT",
            dir.path().join("cert.pem").to_str().unwrap(),
        ),
        (
            "MERPATI_TLS_KEY",
            dir.path().join("key.pem").to_str().unwrap(),
        ),
    ]);
    assert!(said.contains("cert.pem"), "{said}");
}
