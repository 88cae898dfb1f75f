//! Retention: events older than `retention.max_age` are deleted in the background, a small
//! chunk per transaction so that ingest never waits long behind it. Their deliveries,
//! attempts and dedup records go with them. An event whose deliveries are not all final
//! (pending, or held for a disabled endpoint) is kept: at-least-once outranks retention.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::RetentionConfig;
use crate::store::SharedStore;

/// Events deleted per transaction.
const CHUNK: usize = 500;

pub struct Pruner {
    pub store: SharedStore,
    pub clock: SharedClock,
    pub config: RetentionConfig,
    pub shutdown: CancellationToken,
}

impl Pruner {
    pub async fn run(self) {
        loop {
            self.prune().await;
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    /// One pass: chunks until nothing old is left (or shutdown).
    pub async fn prune(&self) -> usize {
        let before = self.clock.now_ms() - self.config.max_age.as_millis() as i64;
        let mut total = 0;
        while !self.shutdown.is_cancelled() {
            match self.store.prune_events(before, CHUNK).await {
                Ok(n) => {
                    total += n;
                    if n < CHUNK {
                        break;
                    }
                    // Let other writes in between chunks.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "retention pass failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(events = total, "pruned old events");
        }
        total
    }
}
