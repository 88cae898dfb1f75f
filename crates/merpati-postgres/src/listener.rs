//! The node's ear: one connection that LISTENs for other nodes offering the owners of slots
//! the deliveries they stored (`merpati_domain::slots::Offer`), on a thread of its own
//! until the store closes. An offer lost while the connection was down costs at most its
//! lease (a second): after reconnecting, every slot is taken as woken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use merpati_domain::slots::{Offer, SLOTS};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use crate::notices::parse_offers;
use crate::slots::DUE_CHANNEL;

/// How often the thread looks whether the store is closing.
const POLL: Duration = Duration::from_millis(200);

pub(crate) type Wake = Box<dyn Fn(Vec<Offer>) + Send + Sync>;

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
            wake(
                (0..SLOTS)
                    .map(|slot| Offer {
                        slot,
                        deliveries: Vec::new(),
                    })
                    .collect(),
            );
        }
        first = false;
        while !stop.load(Ordering::Acquire) {
            let mut offers = Vec::new();
            let mut notes = client.notifications();
            let first = notes.timeout_iter(POLL).next();
            let lost = match first {
                Ok(Some(note)) => {
                    offers.extend(parse_offers(note.payload()));
                    // What else has come already goes with it.
                    let mut pending = notes.iter();
                    loop {
                        match pending.next() {
                            Ok(Some(note)) => offers.extend(parse_offers(note.payload())),
                            Ok(None) => break false,
                            Err(_) => break true,
                        }
                    }
                }
                Ok(None) => false,
                Err(_) => true,
            };
            drop(notes);
            if !offers.is_empty() {
                wake(offers);
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
