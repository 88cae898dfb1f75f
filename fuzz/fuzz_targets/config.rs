//! The settings file: any text gives a configuration or an error that names the key; a
//! secret's value never shows in an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = merpati::config::Config::from_toml(text) {
        let said = e.to_string();
        assert!(!said.is_empty());
    }
});
