//! Jobs that take a while, with progress: recovering an endpoint's failed deliveries since a
//! time. One runner task works through them in chunks (a transaction each), so a job of a
//! million deliveries never holds the database for long. A job runs on the node it was
//! started through; one whose node stopped or died goes on from where it was on the
//! leading node. Each chunk's progress goes on the bus.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use merpati_domain::clock::SharedClock;
use merpati_domain::ids::JobId;
use merpati_domain::SharedStore;
use tokio::sync::mpsc;
use tokio::time::Instant;
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
    /// The jobs of nodes that are gone are taken up by the leading node; every node runs
    /// the jobs started through it.
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

/// How often the leading node looks for jobs a gone node left while the database is shared.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// When the leading node looks for the jobs of nodes that are gone.
#[derive(Default)]
struct Looking {
    /// It looked since it last started leading.
    looked: bool,
    /// Other nodes shared the database when it last looked.
    was_shared: bool,
}

impl Looking {
    /// Whether to look now: when it starts leading, while others share the database, and
    /// once after the last of them is gone (a node's jobs are left once its lease has run
    /// out, which is when it leaves this node's view).
    fn wanted(&mut self, leads: bool, shared: bool) -> bool {
        if !leads {
            self.looked = false;
            return false;
        }
        !self.looked || shared || self.was_shared
    }

    /// It looked (or tried to: `ok` false when the store could not answer).
    fn looked(&mut self, shared: bool, ok: bool) {
        self.looked = ok;
        self.was_shared = shared && ok;
    }
}

/// What one chunk left to do.
enum Next {
    More,
    Finished,
    Failed,
}

impl Runner {
    /// Works through the jobs a chunk at a time, each in turn. The leading node takes up
    /// the jobs of nodes that are gone: at its start, each time it starts leading, and
    /// each second while other nodes share the database (one of them may die) and once
    /// after.
    pub async fn run(mut self) {
        let mut queue: VecDeque<JobId> = VecDeque::new();
        let mut looking = Looking::default();
        let mut next_look = Instant::now();
        loop {
            if Instant::now() >= next_look {
                next_look = Instant::now() + LOOK_EVERY;
                let (leads, shared) = (self.ownership.leads(), self.ownership.shared());
                if looking.wanted(leads, shared) {
                    let looked = self.take_up(&mut queue).await;
                    looking.looked(shared, looked);
                }
            }
            while let Ok(id) = self.rx.try_recv() {
                queue.push_back(id);
            }
            if let Some(id) = queue.pop_front() {
                let pause = match self.chunk(&id).await {
                    Next::More => {
                        queue.push_back(id);
                        // Let other writes in between chunks.
                        Duration::from_millis(10)
                    }
                    Next::Finished => Duration::ZERO,
                    Next::Failed => {
                        queue.push_back(id);
                        Duration::from_secs(5)
                    }
                };
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
            // Alone on a SQLite file, a node wakes to look only until it has once.
            let look = self.store.shares_work() || !looking.looked;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                next = self.rx.recv() => match next {
                    Some(id) => queue.push_back(id),
                    None => return,
                },
                _ = tokio::time::sleep_until(next_look), if look => {}
            }
        }
    }

    /// Queues the jobs of nodes that are gone; whether it could look.
    async fn take_up(&self, queue: &mut VecDeque<JobId>) -> bool {
        match self.store.take_up_jobs(self.ownership.node()).await {
            Ok(ids) => {
                if !ids.is_empty() {
                    tracing::info!(jobs = ids.len(), "took up the jobs of nodes that are gone");
                }
                for id in ids {
                    if !queue.contains(&id) {
                        queue.push_back(id);
                    }
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not take up the jobs of nodes that are gone");
                false
            }
        }
    }

    /// Runs the job's next chunk.
    async fn chunk(&self, id: &JobId) -> Next {
        let chunk = self
            .store
            .run_job_chunk(
                id.clone(),
                self.ownership.node(),
                CHUNK,
                self.clock.now_ms(),
            )
            .await;
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::error!(error = %e, job = %id, "job chunk failed; retrying later");
                return Next::Failed;
            }
        };
        if chunk.runs_elsewhere {
            tracing::info!(job = %id, "the job was taken up by another node");
            return Next::Finished;
        }
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
            Next::Finished
        } else {
            Next::More
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_looks_at_its_start_while_shared_and_once_after() {
        let mut l = Looking::default();
        assert!(!l.wanted(false, true), "only the leader looks");
        assert!(l.wanted(true, false), "at its start");
        l.looked(false, false);
        assert!(l.wanted(true, false), "again, the store could not answer");
        l.looked(false, true);
        assert!(!l.wanted(true, false), "alone, nothing is left by anyone");
        assert!(l.wanted(true, true), "another node joined");
        l.looked(true, true);
        assert!(l.wanted(true, false), "it is gone: once more");
        l.looked(false, true);
        assert!(!l.wanted(true, false));
        assert!(!l.wanted(false, false), "no longer leading");
        assert!(l.wanted(true, false), "leading again");
    }
}
