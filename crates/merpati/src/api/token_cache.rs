//! Device tokens resolved recently, so that a device posting many items does not cost a
//! database read (and a thread hop) per request. Entries live briefly; rotating a token,
//! deleting a device or deleting an account removes them at once, so a revoked token never
//! outlives the request that revoked it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use merpati_domain::device::DeviceContext;
use merpati_domain::ids::{AccountId, DeviceId};

/// Past this, an entry is read again (renames reach new requests within this).
const TTL: Duration = Duration::from_secs(2);
/// Beyond this many entries, expired ones are swept before inserting.
const SWEEP_AT: usize = 50_000;

/// Token digest → the device and when it was read.
type Entries = HashMap<Vec<u8>, (Arc<DeviceContext>, Instant)>;

#[derive(Clone, Default)]
pub struct TokenCache(Arc<Mutex<Entries>>);

impl TokenCache {
    pub fn get(&self, hash: &[u8]) -> Option<Arc<DeviceContext>> {
        let map = self.0.lock().expect("token cache lock");
        map.get(hash)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(ctx, _)| ctx.clone())
    }

    pub fn put(&self, hash: Vec<u8>, ctx: Arc<DeviceContext>) {
        let mut map = self.0.lock().expect("token cache lock");
        if map.len() >= SWEEP_AT {
            map.retain(|_, (_, at)| at.elapsed() < TTL);
        }
        map.insert(hash, (ctx, Instant::now()));
    }

    /// Forgets a device's token (rotated, or the device deleted).
    pub fn forget_device(&self, account: &AccountId, device: &DeviceId) {
        self.0
            .lock()
            .expect("token cache lock")
            .retain(|_, (ctx, _)| !(ctx.account_id == *account && ctx.device_id == *device));
    }

    /// Forgets every device of an account (deleted).
    pub fn forget_account(&self, account: &AccountId) {
        self.0
            .lock()
            .expect("token cache lock")
            .retain(|_, (ctx, _)| ctx.account_id != *account);
    }
}
