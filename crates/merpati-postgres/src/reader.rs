//! The read pool: a few threads beside the writer, each owning one connection, made when
//! first needed and made again when the server dropped it. A connection lives and dies on
//! its thread: the driver's blocking client must never be dropped on an async thread.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use merpati_domain::{StoreError, StoreResult};
use tokio::sync::oneshot;

use crate::conn::{Conn, KeptConn, Outages, Server};
use crate::error::{closed, postgres_error, DbResult};

type ReadJob = Box<dyn FnOnce(Option<&mut Conn>) + Send>;

pub(crate) struct ReadPool {
    jobs: Mutex<Option<mpsc::Sender<ReadJob>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl ReadPool {
    pub(crate) fn start(
        server: Server,
        connections: usize,
        outages: Outages,
    ) -> std::io::Result<ReadPool> {
        let (jobs, queue) = mpsc::channel::<ReadJob>();
        let queue = Arc::new(Mutex::new(queue));
        let mut threads = Vec::new();
        for i in 0..connections.max(1) {
            let (queue, server) = (queue.clone(), server.clone());
            let outages = outages.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("postgres-read-{i}"))
                    .spawn(move || reader_loop(&server, &queue, outages))?,
            );
        }
        Ok(ReadPool {
            jobs: Mutex::new(Some(jobs)),
            threads: Mutex::new(threads),
        })
    }

    /// Runs `f` on a read connection.
    pub(crate) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> DbResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn: Option<&mut Conn>| {
            let result = match conn {
                Some(c) => f(c).map_err(StoreError::from),
                None => Err(StoreError::Unavailable(
                    "the database is unreachable: no read connection".into(),
                )),
            };
            let _ = reply.send(result);
        });
        self.jobs
            .lock()
            .expect("reader lock")
            .as_ref()
            .ok_or_else(closed)?
            .send(job)
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Lets the threads finish what is queued and end, closing their connections.
    pub(crate) fn close(&self) -> Vec<std::thread::JoinHandle<()>> {
        self.jobs.lock().expect("reader lock").take();
        std::mem::take(&mut *self.threads.lock().expect("reader lock"))
    }
}

/// Runs reads on one connection. A connection made before the last time any connection of
/// the store found the server gone is made again before it is used: a server that went
/// away and came back has closed it, and a read should not be the one to find out.
fn reader_loop(server: &Server, queue: &Mutex<mpsc::Receiver<ReadJob>>, outages: Outages) {
    let mut conn = KeptConn::new(None, outages);
    loop {
        let job = match queue.lock().expect("reader queue lock").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        match conn.get(server) {
            Ok(c) => job(Some(c)),
            Err(e) => {
                tracing::warn!(error = %postgres_error(&e), "a read connection failed");
                job(None);
            }
        }
        conn.used();
    }
}
