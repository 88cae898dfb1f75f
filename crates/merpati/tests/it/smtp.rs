//! A real SMTP server for the tests: it speaks enough of RFC 5321 for a real client
//! (EHLO, MAIL, RCPT, DATA with dot-stuffing, RSET, NOOP, QUIT, and STARTTLS or TLS from
//! the first byte, with a certificate of a CA made for the test), keeps every message it
//! accepts, and can be told to refuse recipients.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::helpers::PATIENCE;

#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl Mail {
    /// A header's value, unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut found: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(v) = found.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case(name) {
                    found = Some(v.trim().to_string());
                }
            }
        }
        found
    }
}

#[derive(Default)]
struct State {
    mails: Mutex<Vec<Mail>>,
    /// Mails that came over TLS.
    encrypted: Mutex<usize>,
    /// Answer to every RCPT, instead of 250.
    refuse_rcpt: Mutex<Option<String>>,
    arrived: Notify,
}

/// How the sink speaks TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Plain,
    StartTls,
    Tls,
}

pub struct SmtpSink {
    pub port: u16,
    /// With TLS: the PEM of the CA its certificate is signed by.
    pub ca_pem: Option<String>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        Self::start_with(Security::Plain).await
    }

    pub async fn start_with(security: Security) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let (acceptor, ca_pem) = match security {
            Security::Plain => (None, None),
            _ => {
                let (acceptor, ca) = tls_acceptor();
                (Some(acceptor), Some(ca))
            }
        };
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (state, acceptor) = (shared.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let _ = match (security, acceptor) {
                        (Security::Tls, Some(acceptor)) => match acceptor.accept(socket).await {
                            Ok(tls) => session(Box::new(tls), state, None, true, true).await,
                            Err(e) => Err(e),
                        },
                        (_, acceptor) => {
                            session(Box::new(socket), state, acceptor, false, true).await
                        }
                    };
                });
            }
        });
        SmtpSink {
            port,
            ca_pem,
            state,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// How many mails came over TLS.
    pub fn encrypted(&self) -> usize {
        *self.state.encrypted.lock().unwrap()
    }

    /// Every RCPT is answered with `reply` (e.g. `550 5.1.1 no such user`).
    pub fn refuse_recipients(&self, reply: &str) {
        *self.state.refuse_rcpt.lock().unwrap() = Some(reply.to_string());
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.state.mails.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Mail> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let arrived = self.state.arrived.notified();
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "only {} of {n} mails arrived", mails.len());
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), arrived).await;
        }
    }
}

/// A connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A CA made for the test, and an acceptor with a certificate for 127.0.0.1 it signed.
fn tls_acceptor() -> (TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (TlsAcceptor::from(Arc::new(config)), ca.pem())
}

/// One client's session: `starttls` offers the upgrade, `encrypted` says the stream is
/// TLS, `greet` opens with the greeting (not after STARTTLS, where the client speaks first).
fn session(
    stream: Box<dyn Io>,
    state: Arc<State>,
    starttls: Option<TlsAcceptor>,
    encrypted: bool,
    greet: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>> {
    Box::pin(async move {
        let mut reader = BufReader::new(stream);
        if greet {
            reader
                .get_mut()
                .write_all(b"220 sink.test ESMTP\r\n")
                .await?;
        }
        let (mut from, mut to) = (String::new(), Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let upper = line.to_ascii_uppercase();
            let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                if starttls.is_some() && !encrypted {
                    "250-sink.test\r\n250-STARTTLS\r\n250 8BITMIME".into()
                } else {
                    "250-sink.test\r\n250 8BITMIME".into()
                }
            } else if upper == "STARTTLS" && starttls.is_some() && !encrypted {
                reader.get_mut().write_all(b"220 2.0.0 ready\r\n").await?;
                let acceptor = starttls.clone().expect("offered");
                let tls = acceptor.accept(reader.into_inner()).await?;
                return session(Box::new(tls), state, None, true, false).await;
            } else if upper.starts_with("MAIL FROM:") {
                from = line[10..].trim().to_string();
                to.clear();
                "250 2.1.0 OK".into()
            } else if upper.starts_with("RCPT TO:") {
                match state.refuse_rcpt.lock().unwrap().clone() {
                    Some(refusal) => refusal,
                    None => {
                        to.push(line[8..].trim().to_string());
                        "250 2.1.5 OK".into()
                    }
                }
            } else if upper == "DATA" {
                reader.get_mut().write_all(b"354 end with .\r\n").await?;
                let mut data = String::new();
                let mut l = String::new();
                loop {
                    l.clear();
                    if reader.read_line(&mut l).await? == 0 {
                        return Ok(());
                    }
                    let l = l.trim_end_matches(['\r', '\n']);
                    if l == "." {
                        break;
                    }
                    data.push_str(
                        l.strip_prefix('.')
                            .filter(|_| l.starts_with(".."))
                            .unwrap_or(l),
                    );
                    data.push_str("\r\n");
                }
                let n = {
                    let mut mails = state.mails.lock().unwrap();
                    mails.push(Mail {
                        from: from.clone(),
                        to: std::mem::take(&mut to),
                        data,
                    });
                    mails.len()
                };
                if encrypted {
                    *state.encrypted.lock().unwrap() += 1;
                }
                state.arrived.notify_waiters();
                format!("250 2.0.0 queued as {n}")
            } else if upper == "RSET" || upper == "NOOP" {
                "250 2.0.0 OK".into()
            } else if upper == "QUIT" {
                reader.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            } else {
                "502 5.5.2 not implemented".into()
            };
            reader
                .get_mut()
                .write_all(format!("{reply}\r\n").as_bytes())
                .await?;
        }
    })
}
