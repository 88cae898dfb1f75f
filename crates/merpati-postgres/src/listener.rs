//! The node's ear: one connection that LISTENs for other nodes telling the owners of slots
//! that deliveries are due, on a thread of its own until the store closes. A notification
//! lost while the connection was down costs at most the worker's fallback wake (a second):
//! after reconnecting, every slot is taken as woken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use merpati_domain::slots::{Slot, SLOTS};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use crate::slots::{parse_due, DUE_CHANNEL};

/// How often the thread looks whether the store is closing.
const POLL: Duration = Duration::from_millis(200);

pub(crate) type Wake = Box<dyn Fn(Vec<Slot>) + Send + Sync>;

pub(crate) fn listen_loop(url: &str, wake: &Wake, stop: &AtomicBool) {
    let mut first = true;
    while !stop.load(Ordering::Acquire) {
        let mut client = match Client::connect(url, NoTls).and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {DUE_CHANNEL}"))
                .map(|()| c)
        }) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for due deliveries; trying again");
                pause(stop, Duration::from_secs(1));
                continue;
            }
        };
        if !first {
            wake((0..SLOTS).collect());
        }
        first = false;
        while !stop.load(Ordering::Acquire) {
            let mut slots = Vec::new();
            let mut notes = client.notifications();
            let first = notes.timeout_iter(POLL).next();
            let lost = match first {
                Ok(Some(note)) => {
                    slots.extend(parse_due(note.payload()));
                    // What else has come already goes with it.
                    let mut pending = notes.iter();
                    loop {
                        match pending.next() {
                            Ok(Some(note)) => slots.extend(parse_due(note.payload())),
                            Ok(None) => break false,
                            Err(_) => break true,
                        }
                    }
                }
                Ok(None) => false,
                Err(_) => true,
            };
            drop(notes);
            if !slots.is_empty() {
                slots.sort_unstable();
                slots.dedup();
                wake(slots);
            }
            if lost || client.is_closed() {
                break;
            }
        }
    }
}

fn pause(stop: &AtomicBool, total: Duration) {
    let mut left = total;
    while !left.is_zero() && !stop.load(Ordering::Acquire) {
        let step = left.min(POLL);
        std::thread::sleep(step);
        left -= step;
    }
}

/// Starts the thread; it ends once `stop` is set.
pub(crate) fn start(
    url: String,
    wake: Wake,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("postgres-listen".into())
        .spawn(move || listen_loop(&url, &wake, &stop))
}
