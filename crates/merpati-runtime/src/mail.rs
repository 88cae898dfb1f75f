//! E-mail over SMTP (lettre, on rustls): plain for a local relay, STARTTLS, or implicit
//! TLS, as `alerts.smtp_url` says. Notifications: text and HTML in one multipart message,
//! every message of one incident in one thread (`Message-ID` of the first, `In-Reply-To`
//! and `References` on the rest). Events to e-mail endpoints: a summary to read, the exact
//! JSON payload attached.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use merpati_domain::alert::message::Kind;
use merpati_domain::alert::Notification;

/// How `alerts.smtp_url` reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtp://`: no TLS, for a relay on the same machine or network.
    Plain,
    /// `smtp+starttls://`: upgraded with STARTTLS, required.
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Tls,
}

/// Where `alerts.smtp_url` points.
#[derive(Clone)]
pub struct SmtpServer {
    pub security: SmtpSecurity,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("SmtpServer")
            .field("security", &self.security)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub server: SmtpServer,
    pub from: Mailbox,
    pub timeout: Duration,
    /// A CA (PEM) trusted besides the public roots, for a relay with a private one.
    pub ca_pem: Option<Vec<u8>>,
}

/// Parses `smtp://[user:pass@]host[:port]` (and `smtp+starttls://`, `smtps://`).
pub fn parse_smtp_url(raw: &str) -> Result<SmtpServer, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    let (security, default_port) = match url.scheme() {
        "smtp" => (SmtpSecurity::Plain, 25),
        "smtp+starttls" => (SmtpSecurity::StartTls, 587),
        "smtps" => (SmtpSecurity::Tls, 465),
        other => {
            return Err(format!(
                "scheme {other:?}: use smtp://, smtp+starttls:// or smtps://"
            ))
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("no host")?
        .trim_matches(|c| c == '[' || c == ']')
        .to_string();
    let username = (!url.username().is_empty()).then(|| percent_decode(url.username()));
    let password = url.password().map(percent_decode);
    Ok(SmtpServer {
        security,
        host,
        port: url.port().unwrap_or(default_port),
        username,
        password,
    })
}

/// `ops@example.com` or `merpati <ops@example.com>`.
pub fn parse_mailbox(raw: &str) -> Result<Mailbox, String> {
    raw.parse::<Mailbox>()
        .map_err(|e| format!("not an e-mail address: {e}"))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

pub struct MailError {
    /// The server's reply, or why there was none.
    pub message: String,
    /// A 5xx reply: sending again will not help.
    pub permanent: bool,
}

/// The SMTP transport, pooled.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The domain of the `Message-ID`s.
    domain: String,
}

impl Mailer {
    pub fn new(config: &SmtpConfig) -> Result<Mailer, String> {
        let server = &config.server;
        let tls = || -> Result<TlsParameters, String> {
            let mut params = TlsParameters::builder(server.host.clone());
            if let Some(pem) = &config.ca_pem {
                let ca =
                    Certificate::from_pem(pem).map_err(|e| format!("alerts.smtp_ca_file: {e}"))?;
                params = params.add_root_certificate(ca);
            }
            params.build().map_err(|e| e.to_string())
        };
        let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server.host);
        let builder = match server.security {
            SmtpSecurity::Plain => builder,
            SmtpSecurity::StartTls => builder.tls(Tls::Required(tls()?)),
            SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls()?)),
        };
        let mut builder = builder.port(server.port).timeout(Some(config.timeout));
        if let (Some(user), Some(pass)) = (&server.username, &server.password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        let domain = config.from.email.domain().to_string();
        Ok(Mailer {
            transport: builder.build(),
            from: config.from.clone(),
            domain,
        })
    }

    /// Sends `n` to `to`; answers with the server's reply.
    pub async fn send(&self, to: &[String], n: &Notification) -> Result<String, MailError> {
        let (subject, text, html) = n.message.email();
        let thread = n
            .incident_id
            .as_ref()
            .map(|i| format!("<{i}@{}>", self.domain));
        // The incident's first alert starts the thread; everything after replies to it.
        let starts_thread = matches!(n.message.kind, Kind::Alert) || thread.is_none();
        let own_id = match (&thread, starts_thread) {
            (Some(t), true) => t.clone(),
            _ => format!("<{}@{}>", n.id, self.domain),
        };
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(own_id));
        if let (Some(t), false) = (&thread, starts_thread) {
            builder = builder.in_reply_to(t.clone()).references(t.clone());
        }
        let builder = addressed(builder, to)?;
        self.deliver(builder.multipart(MultiPart::alternative_plain_html(text, html)))
            .await
    }

    /// Sends a built message; answers with the server's reply.
    async fn deliver(
        &self,
        message: Result<lettre::Message, lettre::error::Error>,
    ) -> Result<String, MailError> {
        let message = message.map_err(|e| MailError {
            message: format!("building the message: {e}"),
            permanent: true,
        })?;
        match self.transport.send(message).await {
            Ok(response) => Ok(format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) => Err(MailError {
                message: error_chain(&e),
                permanent: e.is_permanent(),
            }),
        }
    }
}

/// The message addressed to each of `to`; an address that is not one fails for good.
fn addressed(
    mut builder: lettre::message::MessageBuilder,
    to: &[String],
) -> Result<lettre::message::MessageBuilder, MailError> {
    for addr in to {
        match addr.parse::<Mailbox>() {
            Ok(mb) => builder = builder.to(mb),
            Err(e) => {
                return Err(MailError {
                    message: format!("address {addr:?}: {e}"),
                    permanent: true,
                })
            }
        }
    }
    Ok(builder)
}

impl Mailer {
    /// Sends an event to an e-mail endpoint: `text` to read, the exact JSON payload
    /// attached as `attachment_name`; answers with the server's reply.
    pub async fn send_event(
        &self,
        to: &[String],
        subject: &str,
        message_id: &str,
        text: String,
        attachment_name: &str,
        json: Vec<u8>,
    ) -> Result<String, MailError> {
        use lettre::message::header::ContentType;
        use lettre::message::{Attachment, SinglePart};
        let builder = lettre::Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(format!("<{message_id}@{}>", self.domain)));
        let builder = addressed(builder, to)?;
        let json_type = ContentType::parse("application/json").expect("a valid content type");
        self.deliver(
            builder.multipart(
                MultiPart::mixed()
                    .singlepart(SinglePart::plain(text))
                    .singlepart(Attachment::new(attachment_name.to_string()).body(json, json_type)),
            ),
        )
        .await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_name_their_security() {
        let plain = parse_smtp_url("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(plain.security, SmtpSecurity::Plain);
        assert_eq!((plain.host.as_str(), plain.port), ("127.0.0.1", 2525));
        assert_eq!((plain.username, plain.password), (None, None));
        let tls = parse_smtp_url("smtp+starttls://ops%40x.id:p%40ss@mail.example.com").unwrap();
        assert_eq!((tls.security, tls.port), (SmtpSecurity::StartTls, 587));
        assert_eq!(tls.username.as_deref(), Some("ops@x.id"));
        assert_eq!(tls.password.as_deref(), Some("p@ss"));
        assert_eq!(
            parse_smtp_url("smtps://mail.example.com").unwrap().port,
            465
        );
        assert!(parse_smtp_url("http://mail.example.com").is_err());
    }
}
