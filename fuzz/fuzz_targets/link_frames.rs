//! The device link's text frames. Never a panic; an error is always an error frame that
//! says its status.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let device = common::device();
    match merpati::presence::link::read_frame(text, &device, 1_700_000_000) {
        Ok(_) => {}
        Err(frame) => {
            assert_eq!(frame["type"], "error");
            assert!(frame["status"].as_u64().is_some_and(|s| (400..500).contains(&s)));
        }
    }
});
