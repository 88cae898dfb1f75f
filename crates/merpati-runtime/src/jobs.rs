//! Jobs that take a while, with progress: recovering an endpoint's failed deliveries since a
//! time. One runner task works through them in chunks (a transaction each), so a job of a
//! million deliveries never holds the database for long; a job interrupted by a stop goes on
//! after the next start from where it was. Each chunk's progress goes on the bus.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use merpati_domain::clock::SharedClock;
use merpati_domain::ids::JobId;
use merpati_domain::SharedStore;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Change};
use crate::cluster::Ownership;
use crate::delivery::DeliveryWaker;

/// How the API hands a new job to the runner.
#[derive(Clone)]
pub struct JobQueue(mpsc::UnboundedSender<JobId>);

impl JobQueue {
    pub fn start(&self, id: JobId) {
        // The job is stored: if the runner is gone, the next start picks it up.
        let _ = self.0.send(id);
    }
}

/// Deliveries a chunk makes due at most.
const CHUNK: usize = 500;

pub struct Runner {
    store: SharedStore,
    clock: SharedClock,
    waker: DeliveryWaker,
    bus: Bus,
    shutdown: CancellationToken,
    rx: mpsc::UnboundedReceiver<JobId>,
    /// The jobs a stop interrupted are taken up by the leading node; the others run the
    /// jobs started through them.
    ownership: Arc<Ownership>,
}

pub fn runner(
    store: SharedStore,
    clock: SharedClock,
    waker: DeliveryWaker,
    bus: Bus,
    ownership: Arc<Ownership>,
    shutdown: CancellationToken,
) -> (JobQueue, Runner) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        JobQueue(tx),
        Runner {
            store,
            clock,
            waker,
            bus,
            shutdown,
            rx,
            ownership,
        },
    )
}

impl Runner {
    pub async fn run(mut self) {
        let interrupted = if self.ownership.leads() {
            self.store.running_jobs().await
        } else {
            Ok(Vec::new())
        };
        let mut queue: VecDeque<JobId> = match interrupted {
            Ok(ids) => ids.into(),
            Err(e) => {
                tracing::error!(error = %e, "could not read running jobs");
                Default::default()
            }
        };
        loop {
            while let Some(id) = queue.pop_front() {
                if !self.work(&id).await {
                    return;
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                next = self.rx.recv() => match next {
                    Some(id) => queue.push_back(id),
                    None => return,
                },
            }
        }
    }

    /// Runs a job to its end; false when the server is stopping.
    async fn work(&self, id: &JobId) -> bool {
        loop {
            if self.shutdown.is_cancelled() {
                return false;
            }
            match self
                .store
                .run_job_chunk(id.clone(), CHUNK, self.clock.now_ms())
                .await
            {
                Ok(chunk) => {
                    if chunk.made_due > 0 {
                        self.waker.wake();
                    }
                    let finished = chunk.finished();
                    if let Some(job) = chunk.job {
                        self.bus.publish_with(|| Change::Job {
                            account: job.account_id,
                            job: job.id,
                            done: job.done,
                            total: job.total,
                            finished,
                        });
                    }
                    if finished {
                        return true;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, job = %id, "job chunk failed; retrying later");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
            // Let other writes in between chunks.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
