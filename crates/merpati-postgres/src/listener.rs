//! The node's ear: one connection that LISTENs, on the channel of each slot the node holds,
//! for other nodes offering it the deliveries they stored (`merpati_domain::slots::Offer`),
//! on a thread of its own until the store closes. What it listens to follows the slots held
//! (`SlotStore::listen_to_slots`) within a turn of its loop. An offer lost while the
//! connection was down costs at most its lease (a second): after reconnecting, every slot
//! is taken as woken. The connection is named after the node (`application_name`), so that
//! once the node's lease runs out the others can end it (`ClusterStore::cut_off_dead_nodes`):
//! the server keeps every notification until each listening session has read it, and a
//! frozen node's would read none.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use merpati_domain::slots::{Offer, Slot, SLOTS};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use crate::cluster::listener_name;
use crate::notices::{due_channel, parse_offers};

/// How often the thread looks whether the store is closing or the slots held changed.
const POLL: Duration = Duration::from_millis(200);

pub(crate) type Wake = Box<dyn Fn(Vec<Offer>) + Send + Sync>;

/// What a node listens to, and as which node.
#[derive(Clone, Default, PartialEq)]
pub(crate) struct Listening {
    pub(crate) node: Option<String>,
    pub(crate) slots: BTreeSet<Slot>,
}

/// What the node should listen to.
pub(crate) type Listened = Arc<Mutex<Listening>>;

pub(crate) fn listen_loop(url: &str, wake: &Wake, listened: &Listened, stop: &AtomicBool) {
    let mut first = true;
    while !stop.load(Ordering::Acquire) {
        let mut client = match Client::connect(url, NoTls) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for offers; trying again");
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
        let mut listening = Listening::default();
        while !stop.load(Ordering::Acquire) {
            let wanted = listened.lock().expect("listened lock").clone();
            if let Err(e) = follow(&mut client, &mut listening, &wanted) {
                tracing::debug!(error = %e, "cannot listen for offers; connecting again");
                break;
            }
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

/// Listens to the channels of the slots wanted and of no others, as the node wanted, in
/// one round trip when anything changed.
fn follow(
    client: &mut Client,
    listening: &mut Listening,
    wanted: &Listening,
) -> Result<(), postgres::Error> {
    if listening == wanted {
        return Ok(());
    }
    let named = match &wanted.node {
        Some(node) if wanted.node != listening.node => format!(
            "SET application_name = '{}';",
            listener_name(node).replace('\'', "''")
        ),
        _ => String::new(),
    };
    let statements: String = std::iter::once(named)
        .chain(
            wanted
                .slots
                .difference(&listening.slots)
                .map(|&slot| format!("LISTEN {};", due_channel(slot))),
        )
        .chain(
            listening
                .slots
                .difference(&wanted.slots)
                .map(|&slot| format!("UNLISTEN {};", due_channel(slot))),
        )
        .collect();
    if !statements.is_empty() {
        client.batch_execute(&statements)?;
    }
    listening.clone_from(wanted);
    Ok(())
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
    listened: Listened,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("postgres-listen".into())
        .spawn(move || listen_loop(&url, &wake, &listened, &stop))
}

#[cfg(test)]
mod tests {
    use merpati_domain::cluster::ClusterStore;
    use merpati_domain::ids::DeliveryId;
    use merpati_domain::slots::{Offered, SlotStore};
    use merpati_domain::Store;
    use merpati_keyring::Sealer;

    use super::*;
    use crate::{Options, PostgresStore};

    type Heard = Arc<Mutex<Vec<Offer>>>;

    async fn node(url: &str) -> (PostgresStore, Heard) {
        let options = Options {
            read_connections: 1,
            writers: 1,
            ..Options::default()
        };
        let store = PostgresStore::open(url, &options, Arc::new(Sealer::ephemeral()))
            .await
            .unwrap();
        let heard = Heard::default();
        let into = heard.clone();
        store
            .listen_for_offers(Box::new(move |offers| {
                into.lock().unwrap().extend(offers);
            }))
            .unwrap();
        (store, heard)
    }

    fn offer(slot: Slot, id: i64) -> Offer {
        Offer {
            slot,
            deliveries: vec![Offered::named(DeliveryId(id))],
        }
    }

    /// The offers heard, as `(slot, id)`.
    fn heard(heard: &Heard) -> Vec<(Slot, i64)> {
        heard
            .lock()
            .unwrap()
            .iter()
            .flat_map(|o| o.deliveries.iter().map(move |d| (o.slot, d.id.0)))
            .collect()
    }

    /// Sends offers of `slots` in rounds, each round's with ids `round`, until `done` says
    /// what was heard is enough; returns the last round.
    async fn offer_until(
        sender: &PostgresStore,
        slots: &[Slot],
        first_round: i64,
        done: impl Fn() -> bool,
    ) -> i64 {
        let patience = std::time::Instant::now() + Duration::from_secs(20);
        let mut round = first_round;
        loop {
            let offers = slots.iter().map(|&slot| offer(slot, round)).collect();
            sender.offer_to_owners(offers).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if done() {
                return round;
            }
            assert!(std::time::Instant::now() < patience, "never heard");
            round += 1;
        }
    }

    /// Two nodes of a new database: `node_a` listening to slot 3, `node_b` to slot 5.
    async fn two_nodes() -> (String, (PostgresStore, Heard), (PostgresStore, Heard)) {
        let url = tokio::task::spawn_blocking(|| crate::scratch::shared().empty_database())
            .await
            .unwrap()
            .unwrap();
        let (a, heard_a) = node(&url).await;
        let (b, heard_b) = node(&url).await;
        a.listen_to_slots("node_a", vec![3]);
        b.listen_to_slots("node_b", vec![5]);
        (url, (a, heard_a), (b, heard_b))
    }

    /// Each node hears of the offers of the slots it holds and of no others; when what it
    /// holds changes, what it hears follows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_owner_of_a_slot_hears_of_its_offers() {
        let (_, (a, heard_a), (b, heard_b)) = two_nodes().await;
        let both = || {
            heard(&heard_a).iter().any(|(s, _)| *s == 3)
                && heard(&heard_b).iter().any(|(s, _)| *s == 5)
        };
        let last = offer_until(&b, &[3, 5, 7], 1, both).await;
        assert!(heard(&heard_a).iter().all(|(s, _)| *s == 3));
        assert!(heard(&heard_b).iter().all(|(s, _)| *s == 5));

        a.listen_to_slots("node_a", vec![7]);
        let switched = offer_until(&b, &[3, 7], last + 1, || {
            heard(&heard_a).iter().any(|(s, _)| *s == 7)
        })
        .await;
        // One round more, once the switch is seen: its offer of slot 3 goes unheard.
        offer_until(&b, &[3, 7], switched + 1, || {
            heard(&heard_a).contains(&(7, switched + 1))
        })
        .await;
        assert!(
            !heard(&heard_a).contains(&(3, switched + 1)),
            "{:?}",
            heard(&heard_a)
        );
        assert!(heard(&heard_b).iter().all(|(s, _)| *s == 5));
        a.close().await;
        b.close().await;
    }

    /// How many sessions of the database listen as `node` (tests beside use the same names
    /// on databases of their own).
    async fn listening_as(url: &str, node: &str) -> i64 {
        let (url, name) = (url.to_owned(), listener_name(node));
        tokio::task::spawn_blocking(move || {
            let mut c = Client::connect(&url, NoTls).unwrap();
            c.query_one(
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = $1",
                &[&name],
            )
            .unwrap()
            .get(0)
        })
        .await
        .unwrap()
    }

    /// A node whose lease ran out while its listening session stays open (a frozen
    /// process) is cut off by the others; the sessions of live nodes are left alone, and
    /// the node's listener, should it wake, connects again and looks for what is due.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_nodes_listener_is_cut_off_and_a_live_ones_is_not() {
        let (url, (a, heard_a), (b, heard_b)) = two_nodes().await;
        a.join_cluster("node_a", "a", 60_000)
            .await
            .unwrap()
            .unwrap();
        b.join_cluster("node_b", "b", 60_000)
            .await
            .unwrap()
            .unwrap();
        let patience = std::time::Instant::now() + Duration::from_secs(20);
        while listening_as(&url, "node_a").await + listening_as(&url, "node_b").await < 2 {
            assert!(std::time::Instant::now() < patience, "never named");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(b.cut_off_dead_nodes().await.unwrap(), 0, "both live");

        a.leave_cluster("node_a").await.unwrap();
        heard_a.lock().unwrap().clear();
        assert_eq!(b.cut_off_dead_nodes().await.unwrap(), 1);
        // It connects again, and takes every slot as woken.
        while heard_a.lock().unwrap().len() < SLOTS as usize {
            assert!(std::time::Instant::now() < patience, "never listened again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            heard(&heard_a).is_empty(),
            "offers naming nothing: {:?}",
            heard(&heard_a)
        );
        assert_eq!(listening_as(&url, "node_b").await, 1);
        offer_until(&a, &[5], 1, || heard(&heard_b).iter().any(|(s, _)| *s == 5)).await;
        a.close().await;
        b.close().await;
    }
}
