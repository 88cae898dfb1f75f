//! A real SMTP server for the tests: it speaks enough of RFC 5321 for a real client
//! (EHLO, MAIL, RCPT, DATA with dot-stuffing, RSET, NOOP, QUIT), keeps every message it
//! accepts, and can be told to refuse recipients.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

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
    /// Answer to every RCPT, instead of 250.
    refuse_rcpt: Mutex<Option<String>>,
    arrived: Notify,
}

pub struct SmtpSink {
    pub port: u16,
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = session(socket, state).await;
                });
            }
        });
        SmtpSink { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
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

async fn session(socket: tokio::net::TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            "250-sink.test\r\n250 8BITMIME".into()
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
            write.write_all(b"354 end with .\r\n").await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push_str(
                    l.strip_prefix('.')
                        .filter(|_| l.starts_with(".."))
                        .unwrap_or(&l),
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
            state.arrived.notify_waiters();
            format!("250 2.0.0 queued as {n}")
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 OK".into()
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.2 not implemented".into()
        };
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
    Ok(())
}
