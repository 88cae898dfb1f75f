//! Every engine's webhook: its body parser and its signature check. Never a panic; a
//! forged request is never taken for the engine's.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use merpati_engines::parse::{parse, Options};
use merpati_engines::verify::{sign, verify};
use merpati_engines::{Headers, ENGINES};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    engine: u8,
    notifications: bool,
    headers: Vec<(&'a str, &'a str)>,
    now: i64,
    body: &'a [u8],
}

const SECRET: &str = "a connector's secret";

fuzz_target!(|input: Input<'_>| {
    let engine = ENGINES[input.engine as usize % ENGINES.len()];
    let _ = parse(
        engine,
        input.body,
        Options {
            notifications: input.notifications,
        },
    );
    let headers = Headers::new(input.headers.iter().copied());
    if verify(engine, &headers, input.body, &[SECRET], input.now).is_ok() {
        // Only a header the secret made can pass.
        let made = sign(engine, SECRET, input.body, input.now);
        assert!(
            input.headers.iter().any(|(_, v)| v.contains(made.trim())
                || made.contains(v.trim()) && !v.trim().is_empty()),
            "{engine:?} took a request it did not sign: {input:?}"
        );
    }
});
