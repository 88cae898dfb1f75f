//! The lanes' writes, made while the worker goes on: parked deliveries taken back for the
//! lanes that caught up, deliveries parked for later, and breakers kept for the endpoints'
//! next owners.

use std::sync::Arc;

use merpati_domain::endpoint::StoredBreaker;
use merpati_domain::ids::{DeliveryId, EndpointId};
use merpati_domain::slots::Fence;
use merpati_domain::SharedStore;

use super::lanes::{TakeBack, TakenBack};

/// One set of the lanes' writes: their parked deliveries taken back, then what they park.
pub(super) async fn write(
    store: SharedStore,
    fence: Arc<Fence>,
    now: i64,
    take_back: Vec<TakeBack>,
    parked: Vec<(DeliveryId, i64)>,
    marks: Vec<(EndpointId, Option<StoredBreaker>)>,
) -> TakenBack {
    let mut lanes = Vec::with_capacity(take_back.len());
    for asked in take_back {
        let taken = match store
            .unpark(fence.clone(), asked.endpoint_id.clone(), now, asked.limit)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "could not take parked deliveries back");
                0
            }
        };
        lanes.push((asked, taken));
    }
    if !parked.is_empty() {
        let n = parked.len();
        match store.park(fence.clone(), parked).await {
            Ok(()) => tracing::debug!(deliveries = n, "parked for their lanes"),
            // Their leases run out and they are claimed again: delayed, not lost.
            Err(e) => tracing::error!(error = %e, "could not park deliveries"),
        }
    }
    if !marks.is_empty() {
        if let Err(e) = store.mark_breakers(fence, marks).await {
            // The next owner then starts with the breaker as it was last kept.
            tracing::warn!(error = %e, "could not keep the endpoints' breakers");
        }
    }
    TakenBack { now, lanes }
}
