//! The device API's body: one item or a batch. Never a panic; what it accepts is within
//! the limits it states.
#![no_main]

use libfuzzer_sys::fuzz_target;
use merpati_domain::ingest::MAX_RID_BYTES;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let device = common::device();
    if let Ok(items) = merpati::ingest::prepare_body(body, &device, 1_700_000_000) {
        assert!(!items.is_empty() && items.len() <= merpati::ingest::MAX_BATCH);
        for item in &items {
            assert!(item.rid_key.len() <= MAX_RID_BYTES + 2, "{:?}", item.rid_key);
        }
    }
});
