//! A proxy in front of a PostgreSQL server's socket that, once armed, lets the server make
//! one commit and cuts the connection before its answer reaches the client: a commit that
//! went unanswered, as a network drop or a failover leaves one. Only the commit of a
//! transaction that ran a statement containing a given text and got rows back is cut.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinSet;

pub struct CommitCutter {
    port: u16,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    _accepting: JoinSet<()>,
}

/// What one connection's client has started, as the proxy follows it.
#[derive(Default)]
struct Following {
    /// Whether each named statement contains the text to watch.
    watched_statements: HashMap<String, bool>,
    /// The open transaction ran a watched statement, and this many rows came back.
    watched_in_transaction: bool,
    rows: usize,
    /// The client asked to commit such a transaction while armed: its answer is cut.
    cut_the_answer: bool,
}

impl CommitCutter {
    /// Listens on a loopback port for clients of the server whose socket is in
    /// `socket_dir`; commits are cut after a statement containing `watched`.
    pub async fn start(socket_dir: &Path, watched: &'static str) -> CommitCutter {
        let socket = std::fs::read_dir(socket_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with(".s.PGSQL.") && !name.ends_with(".lock")
            })
            .expect("the server's socket");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let mut accepting = JoinSet::new();
        let (a, c) = (armed.clone(), cuts.clone());
        accepting.spawn(async move {
            // Each connection's tasks end with the proxy.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(relay(client, socket.clone(), watched, a.clone(), c.clone()));
            }
        });
        CommitCutter {
            port,
            armed,
            cuts,
            _accepting: accepting,
        }
    }

    /// A `database_url` for `database` through the proxy.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// The next watched commit is made and its answer cut.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many answers were cut.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

/// Whole protocol messages (a type byte, then a length that counts itself) read from one
/// side of a connection.
struct Messages<R> {
    from: R,
    buffer: Vec<u8>,
    chunk: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Messages<R> {
    fn new(from: R) -> Messages<R> {
        Messages {
            from,
            buffer: Vec::new(),
            chunk: vec![0u8; 64 * 1024],
        }
    }

    /// The whole messages read so far, at least one; `None` once the side closed.
    async fn next(&mut self) -> Option<Vec<(u8, Vec<u8>)>> {
        loop {
            let mut messages = Vec::new();
            while self.buffer.len() >= 5 {
                let length = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
                if self.buffer.len() < 1 + length {
                    break;
                }
                let message: Vec<u8> = self.buffer.drain(..1 + length).collect();
                messages.push((message[0], message[5..].to_vec()));
            }
            if !messages.is_empty() {
                return Some(messages);
            }
            match self.from.read(&mut self.chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&self.chunk[..n]),
            }
        }
    }
}

/// A message as sent.
fn encode(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

/// The zero-terminated texts at the start of a message's body.
fn texts(body: &[u8], count: usize) -> Vec<String> {
    body.split(|&b| b == 0)
        .take(count)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect()
}

async fn relay(
    client: TcpStream,
    socket: PathBuf,
    watched: &'static str,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    let Ok(server) = UnixStream::connect(&socket).await else {
        return;
    };
    let (mut client_in, mut client_out) = client.into_split();
    let (server_in, mut server_out) = server.into_split();
    let following = Arc::new(Mutex::new(Following::default()));
    let from_client = {
        let following = following.clone();
        let armed = armed.clone();
        async move {
            // The startup message has no type byte: its length comes first.
            let mut length = [0u8; 4];
            if client_in.read_exact(&mut length).await.is_err() {
                return;
            }
            let mut startup = vec![0u8; u32::from_be_bytes(length) as usize - 4];
            if client_in.read_exact(&mut startup).await.is_err() {
                return;
            }
            if server_out.write_all(&length).await.is_err()
                || server_out.write_all(&startup).await.is_err()
            {
                return;
            }
            let mut messages = Messages::new(client_in);
            while let Some(batch) = messages.next().await {
                let mut out = Vec::new();
                for (kind, body) in batch {
                    {
                        let mut f = following.lock().unwrap();
                        match kind {
                            b'P' => {
                                let t = texts(&body, 2);
                                f.watched_statements
                                    .insert(t[0].clone(), t[1].contains(watched));
                            }
                            b'B' => {
                                let t = texts(&body, 2);
                                if f.watched_statements.get(&t[1]).copied() == Some(true) {
                                    f.watched_in_transaction = true;
                                }
                            }
                            b'Q' => {
                                let query = texts(&body, 1).remove(0);
                                let query = query.trim().to_ascii_uppercase();
                                if query == "COMMIT" || query == "ROLLBACK" {
                                    f.cut_the_answer = query == "COMMIT"
                                        && f.watched_in_transaction
                                        && f.rows > 0
                                        && armed.swap(false, Ordering::SeqCst);
                                    f.watched_in_transaction = false;
                                    f.rows = 0;
                                }
                            }
                            _ => {}
                        }
                    }
                    encode(&mut out, kind, &body);
                }
                if server_out.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    };
    let to_client = async move {
        let mut messages = Messages::new(server_in);
        while let Some(batch) = messages.next().await {
            let mut out = Vec::new();
            for (kind, body) in batch {
                {
                    let mut f = following.lock().unwrap();
                    if kind == b'D' && f.watched_in_transaction {
                        f.rows += 1;
                    }
                    if kind == b'C' && f.cut_the_answer && body.starts_with(b"COMMIT") {
                        // Made on the server; the client never hears of it.
                        cuts.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
                encode(&mut out, kind, &body);
            }
            if client_out.write_all(&out).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends the connection, and both its halves close.
    tokio::select! {
        () = from_client => {}
        () = to_client => {}
    }
}
