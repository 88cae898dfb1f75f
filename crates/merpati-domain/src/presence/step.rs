//! One step of many devices' presence, as any node takes it: the machines as stored, what
//! was asked of them and the deadlines that passed in; what to record out. Pure: a backend
//! loads and locks the rows, calls [`plan`], and writes what it says in the same
//! transaction, so that two nodes never step one device at once and every node sees the
//! machine the last step left.
//!
//! Links belong to nodes. A link's id is its node's; only that node closes it, and a newer
//! link on any node replaces it (the old one is then closed by its node, which sees that
//! its link is no longer the device's). A link whose node is gone was lost when that node
//! last renewed its lease.

use std::collections::HashMap;

use crate::device::DeviceContext;
use crate::ids::{AccountId, DeviceId, EventId};

use super::machine::{Change, DeviceState, Input, LiveStatus, Reason, StoredMachine};
use super::{Applied, LeaseSettings, PresenceWrite, WriteKind};

pub type DeviceKey = (AccountId, DeviceId);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// An input to the machine; a link's input names one of the stepping node's links.
    Input(Input),
    /// The device's link, on whichever node, is to be closed (its token was rotated): the
    /// link is lost now.
    Revoke,
}

#[derive(Debug, Clone)]
pub struct DeviceRequest {
    pub account_id: AccountId,
    pub device_id: DeviceId,
    pub request: Request,
}

/// Why a device nobody asked about is in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swept {
    /// A deadline of its machine has come.
    Due,
    /// Its link's node is gone; the link was lost at `since`, that node's last renewal.
    Orphaned { since: i64 },
}

/// A device's row as loaded for a step.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub context: DeviceContext,
    pub machine: StoredMachine,
    /// The node that holds the machine's link.
    pub link_node: Option<String>,
    /// The deadline stored with it (settings may have moved the machine's since).
    pub deadline: Option<i64>,
}

/// The machine to store for one device, with the node of its link and its next deadline
/// (what every node's sweep looks for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineWrite {
    pub account_id: AccountId,
    pub device_id: DeviceId,
    pub machine: StoredMachine,
    pub link_node: Option<String>,
    pub deadline: Option<i64>,
}

/// Why a link is to be closed by its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseWhy {
    Replaced,
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkToClose {
    pub node: String,
    pub link: u64,
    pub why: CloseWhy,
}

/// A device whose status the step changed, and since when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMove {
    pub account_id: AccountId,
    pub device_id: DeviceId,
    pub status: LiveStatus,
    pub at: i64,
}

/// What a step is to record.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Changes and engine reports, as [`super::PresenceStore::apply_presence`] records them.
    pub writes: Vec<PresenceWrite>,
    pub machines: Vec<MachineWrite>,
    /// For each request in order: the device's status after the step, and the index in
    /// `writes` of the announcement it caused. None for a device that does not exist.
    pub answers: Vec<Option<(LiveStatus, Option<usize>)>>,
    pub closes: Vec<LinkToClose>,
    pub moves: Vec<StatusMove>,
}

/// An announcement a step stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncedEvent {
    pub account_id: AccountId,
    pub device_id: DeviceId,
    pub event_type: &'static str,
    pub event_id: EventId,
}

/// What a step did, as the hub needs it.
#[derive(Debug, Clone, Default)]
pub struct Stepped {
    /// For each request: the device's status after the step and the event it announced.
    /// None for a device that does not exist.
    pub answers: Vec<Option<(LiveStatus, Option<EventId>)>>,
    pub announced: Vec<AnnouncedEvent>,
    pub moves: Vec<StatusMove>,
    pub closes: Vec<LinkToClose>,
    pub new_deliveries: usize,
    /// The earliest deadline of any device now, on the stepping node's clock.
    pub next_deadline: Option<i64>,
    /// The sweep stopped at its limit: more is due.
    pub more: bool,
}

/// The event a write announces, if it announces one.
pub fn announcement_type(w: &PresenceWrite) -> Option<&'static str> {
    match w.what {
        WriteKind::Change(Change::Connected { .. }) => Some("device.connected"),
        WriteKind::Change(Change::Disconnected { .. }) => Some("device.disconnected"),
        _ => None,
    }
}

impl Plan {
    /// The step's outcome once its writes are recorded.
    pub fn finish(self, applied: &Applied, next_deadline: Option<i64>, more: bool) -> Stepped {
        let event_of = |i: Option<usize>| i.and_then(|i| applied.event_ids.get(&i).cloned());
        let answers = self
            .answers
            .iter()
            .map(|a| a.map(|(status, i)| (status, event_of(i))))
            .collect();
        let announced = self
            .writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                Some(AnnouncedEvent {
                    account_id: w.account_id.clone(),
                    device_id: w.device_id.clone(),
                    event_type: announcement_type(w)?,
                    event_id: applied.event_ids.get(&i)?.clone(),
                })
            })
            .collect();
        Stepped {
            answers,
            announced,
            moves: self.moves,
            closes: self.closes,
            new_deliveries: applied.new_deliveries,
            next_deadline,
            more,
        }
    }
}

struct Stepping {
    machine: DeviceState,
    link_node: Option<String>,
    before: (StoredMachine, Option<String>, LiveStatus, Option<i64>),
}

/// Steps the loaded machines: first what was swept (it happened before), then the
/// requests in order, at `now`, as `node`. Requests for devices not loaded (deleted) are
/// answered None.
pub fn plan(
    node: &str,
    now: i64,
    lease: &LeaseSettings,
    loaded: &HashMap<DeviceKey, Loaded>,
    swept: &[(DeviceKey, Swept)],
    requests: &[DeviceRequest],
) -> Plan {
    let mut plan = Plan::default();
    let mut stepping: HashMap<DeviceKey, Stepping> = HashMap::new();
    let mut order: Vec<DeviceKey> = Vec::new();
    let mut take = |key: &DeviceKey, order: &mut Vec<DeviceKey>| -> bool {
        if stepping.contains_key(key) {
            return true;
        }
        let Some(row) = loaded.get(key) else {
            return false;
        };
        let machine = DeviceState::from_stored(row.machine, lease.for_device(&row.context));
        let status = machine.status();
        stepping.insert(
            key.clone(),
            Stepping {
                machine,
                link_node: row.link_node.clone(),
                before: (row.machine, row.link_node.clone(), status, row.deadline),
            },
        );
        order.push(key.clone());
        true
    };
    let mut swept_apply = Vec::new();
    for (key, why) in swept {
        if take(key, &mut order) {
            swept_apply.push((key.clone(), *why));
        }
    }
    let mut request_keys = Vec::new();
    for r in requests {
        let key = (r.account_id.clone(), r.device_id.clone());
        let known = take(&key, &mut order);
        request_keys.push(known.then_some(key));
    }

    let mut announcement_of = Vec::with_capacity(requests.len());
    for (key, why) in swept_apply {
        let s = stepping.get_mut(&key).expect("taken");
        match why {
            Swept::Due => {
                record(&key, s.machine.apply(Input::Tick, now), &mut plan.writes);
            }
            Swept::Orphaned { since } => {
                if let Some(link) = s.machine.current_link() {
                    let closed = Input::LinkClosed {
                        link,
                        reason: Reason::LinkClosed,
                    };
                    record(
                        &key,
                        s.machine.apply(closed, since.min(now)),
                        &mut plan.writes,
                    );
                }
                s.link_node = None;
                record(&key, s.machine.apply(Input::Tick, now), &mut plan.writes);
            }
        }
    }
    for (r, key) in requests.iter().zip(&request_keys) {
        let Some(key) = key else {
            announcement_of.push(None);
            continue;
        };
        let s = stepping.get_mut(key).expect("taken");
        let input = match r.request {
            Request::Revoke => match s.machine.current_link() {
                Some(link) => {
                    plan.closes.push(LinkToClose {
                        node: s.link_node.take().unwrap_or_default(),
                        link,
                        why: CloseWhy::Revoked,
                    });
                    Input::LinkClosed {
                        link,
                        reason: Reason::LinkClosed,
                    }
                }
                None => {
                    announcement_of.push(None);
                    continue;
                }
            },
            Request::Input(Input::LinkOpened { link }) => {
                let mine = s.link_node.as_deref() == Some(node);
                match s.machine.current_link() {
                    Some(old) if !(mine && old == link) => plan.closes.push(LinkToClose {
                        node: s.link_node.clone().unwrap_or_default(),
                        link: old,
                        why: CloseWhy::Replaced,
                    }),
                    _ => {}
                }
                s.link_node = Some(node.to_string());
                Input::LinkOpened { link }
            }
            // Only the node that holds a link closes it.
            Request::Input(Input::LinkClosed { .. }) if s.link_node.as_deref() != Some(node) => {
                announcement_of.push(None);
                continue;
            }
            Request::Input(Input::LinkClosed { link, reason }) => {
                if s.machine.current_link() == Some(link) {
                    s.link_node = None;
                }
                Input::LinkClosed { link, reason }
            }
            Request::Input(input) => input,
        };
        let engine = match input {
            Input::Report(report) => Some(Some(report)),
            Input::EngineWorking => Some(None),
            _ => None,
        };
        if let Some(report) = engine {
            plan.writes.push(PresenceWrite {
                account_id: key.0.clone(),
                device_id: key.1.clone(),
                what: WriteKind::Engine(report),
            });
        }
        let changes = s.machine.apply(input, now);
        announcement_of.push(record(key, changes, &mut plan.writes));
    }

    for key in &order {
        let s = &stepping[key];
        let stored = s.machine.stored();
        let status = s.machine.status();
        let (was, was_node, was_status, was_deadline) = &s.before;
        let deadline = s.machine.deadline();
        // A deadline that is not the machine's would be swept again and again.
        if stored != *was || s.link_node != *was_node || deadline != *was_deadline {
            plan.machines.push(MachineWrite {
                account_id: key.0.clone(),
                device_id: key.1.clone(),
                machine: stored,
                link_node: s.link_node.clone(),
                deadline,
            });
        }
        if status != *was_status {
            plan.moves.push(StatusMove {
                account_id: key.0.clone(),
                device_id: key.1.clone(),
                status,
                at: match status {
                    LiveStatus::Pending => now,
                    _ => s.machine.announced_since.unwrap_or(now),
                },
            });
        }
    }
    plan.answers = request_keys
        .iter()
        .zip(announcement_of)
        .map(|(key, announcement)| {
            let key = key.as_ref()?;
            Some((stepping[key].machine.status(), announcement))
        })
        .collect();
    plan
}

/// Queues a machine's changes; returns the index of the announcement among them.
fn record(key: &DeviceKey, changes: Vec<Change>, writes: &mut Vec<PresenceWrite>) -> Option<usize> {
    let mut announcement = None;
    for change in changes {
        if matches!(
            change,
            Change::Connected { .. } | Change::Disconnected { .. }
        ) {
            announcement = Some(writes.len());
        }
        writes.push(PresenceWrite {
            account_id: key.0.clone(),
            device_id: key.1.clone(),
            what: WriteKind::Change(change),
        });
    }
    announcement
}

/// The machine to store for a device after every node was down
/// ([`DeviceState::after_restart`]); None when it is unchanged.
pub fn after_restart(
    key: &DeviceKey,
    row: &Loaded,
    lease: &LeaseSettings,
    now: i64,
) -> Option<MachineWrite> {
    let machine = DeviceState::from_stored(row.machine, lease.for_device(&row.context));
    let restarted = machine.after_restart(now);
    let stored = restarted.stored();
    let deadline = restarted.deadline();
    (stored != row.machine || row.link_node.is_some() || deadline != row.deadline).then(|| {
        MachineWrite {
            account_id: key.0.clone(),
            device_id: key.1.clone(),
            machine: stored,
            link_node: None,
            deadline,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Presence;
    use crate::limits::AccountLimits;
    use crate::presence::machine::{Announced, EngineReport};
    use std::time::Duration;

    fn lease() -> LeaseSettings {
        LeaseSettings {
            heartbeat_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(30),
            engines: Default::default(),
        }
    }

    fn context(device: &str) -> DeviceContext {
        DeviceContext {
            account_id: "acct".into(),
            account_name: "a".into(),
            business_id: "biz".into(),
            business_name: "b".into(),
            channel_id: "ch".into(),
            channel_name: "c".into(),
            engine: "sms".into(),
            device_id: device.into(),
            device_name: device.into(),
            phone: None,
            presence: Presence::Unknown,
            presence_since: None,
            engine_state: None,
            channel_heartbeat_ms: None,
            channel_grace_ms: None,
            account_limits: AccountLimits::default(),
        }
    }

    fn key(device: &str) -> DeviceKey {
        ("acct".into(), device.into())
    }

    fn loaded(device: &str, machine: StoredMachine, link_node: Option<&str>) -> Loaded {
        let deadline =
            DeviceState::from_stored(machine, lease().for_device(&context(device))).deadline();
        Loaded {
            context: context(device),
            machine,
            link_node: link_node.map(String::from),
            deadline,
        }
    }

    fn up_on(node: &str, link: u64) -> (StoredMachine, Option<&str>) {
        let machine = StoredMachine {
            announced: Announced::Up,
            announced_since: Some(0),
            link: Some(link),
            last_heartbeat: None,
            engine: None,
            pending: None,
        };
        (machine, Some(node))
    }

    fn request(device: &str, request: Request) -> DeviceRequest {
        DeviceRequest {
            account_id: "acct".into(),
            device_id: device.into(),
            request,
        }
    }

    fn rows(list: &[(&str, StoredMachine, Option<&str>)]) -> HashMap<DeviceKey, Loaded> {
        list.iter()
            .map(|(d, m, n)| (key(d), loaded(d, *m, *n)))
            .collect()
    }

    #[test]
    fn a_first_link_announces_and_stores_the_link_as_the_nodes() {
        let fresh = StoredMachine {
            announced: Announced::Unknown,
            announced_since: None,
            link: None,
            last_heartbeat: None,
            engine: None,
            pending: None,
        };
        let loaded = rows(&[("d1", fresh, None)]);
        let requests = [
            request("d1", Request::Input(Input::LinkOpened { link: 7 })),
            request("gone", Request::Input(Input::Heartbeat)),
        ];
        let plan = plan("node_a", 1_000, &lease(), &loaded, &[], &requests);
        assert_eq!(
            plan.answers,
            vec![Some((LiveStatus::Connected, Some(0))), None]
        );
        assert_eq!(plan.machines.len(), 1);
        let m = &plan.machines[0];
        assert_eq!(
            (m.machine.link, m.link_node.as_deref(), m.deadline),
            (Some(7), Some("node_a"), None)
        );
        assert!(plan.closes.is_empty());
        assert_eq!(plan.moves[0].status, LiveStatus::Connected);
    }

    #[test]
    fn a_link_on_another_node_is_replaced_and_closed_there_and_its_close_is_ignored_here() {
        let (m, n) = up_on("node_b", 3);
        let loaded = rows(&[("d1", m, n)]);
        let requests = [request("d1", Request::Input(Input::LinkOpened { link: 3 }))];
        let p = plan("node_a", 5_000, &lease(), &loaded, &[], &requests);
        assert_eq!(
            p.closes,
            vec![LinkToClose {
                node: "node_b".into(),
                link: 3,
                why: CloseWhy::Replaced
            }],
            "the same number on another node is another link"
        );
        assert!(p.writes.is_empty(), "still up: nothing announced");
        assert_eq!(p.machines[0].link_node.as_deref(), Some("node_a"));

        // node_b's link closing afterwards changes nothing.
        let closed = Input::LinkClosed {
            link: 3,
            reason: Reason::LinkClosed,
        };
        let now_a = rows(&[("d1", p.machines[0].machine, Some("node_a"))]);
        let p = plan(
            "node_b",
            6_000,
            &lease(),
            &now_a,
            &[],
            &[request("d1", Request::Input(closed))],
        );
        assert!(p.machines.is_empty() && p.writes.is_empty());
        assert_eq!(p.answers, vec![Some((LiveStatus::Connected, None))]);
    }

    #[test]
    fn an_orphaned_link_is_lost_at_its_nodes_last_renewal_and_announced_after_the_grace() {
        let (m, n) = up_on("node_dead", 3);
        let loaded = rows(&[("d1", m, n)]);
        let swept = [(key("d1"), Swept::Orphaned { since: 10_000 })];
        // Found 5 s after the node's last renewal: pending, due at the end of the grace.
        let p = plan("node_a", 15_000, &lease(), &loaded, &swept, &[]);
        assert!(p.writes.is_empty());
        let m = &p.machines[0];
        assert_eq!((m.machine.link, m.link_node.as_deref()), (None, None));
        assert_eq!(m.deadline, Some(40_000));
        assert_eq!(p.moves[0].status, LiveStatus::Pending);

        // The device comes back on another node inside the grace: a blip, nothing announced.
        let pending = rows(&[("d1", m.machine, None)]);
        let back = [request("d1", Request::Input(Input::LinkOpened { link: 9 }))];
        let p = plan("node_c", 20_000, &lease(), &pending, &[], &back);
        assert!(matches!(
            p.writes[..],
            [PresenceWrite {
                what: WriteKind::Change(Change::Blip {
                    started_at: 10_000,
                    ended_at: 20_000,
                    ..
                }),
                ..
            }]
        ));
        assert!(p.closes.is_empty());

        // Found after the grace: announced at once, the outage dated from the renewal.
        let p = plan("node_a", 45_000, &lease(), &loaded, &swept, &[]);
        assert!(matches!(
            p.writes[..],
            [PresenceWrite {
                what: WriteKind::Change(Change::Disconnected {
                    at: 45_000,
                    since: 10_000,
                    reason: Reason::LinkClosed
                }),
                ..
            }]
        ));
        assert_eq!(p.moves[0].status, LiveStatus::Disconnected);
    }

    #[test]
    fn a_revoke_closes_the_link_wherever_it_is_and_the_device_is_pending() {
        let (m, n) = up_on("node_b", 3);
        let loaded = rows(&[("d1", m, n)]);
        let p = plan(
            "node_a",
            5_000,
            &lease(),
            &loaded,
            &[],
            &[request("d1", Request::Revoke)],
        );
        assert_eq!(
            p.closes,
            vec![LinkToClose {
                node: "node_b".into(),
                link: 3,
                why: CloseWhy::Revoked
            }]
        );
        assert_eq!(p.answers, vec![Some((LiveStatus::Pending, None))]);
        assert_eq!(p.machines[0].link_node, None);
    }

    #[test]
    fn engine_reports_are_recorded_and_a_restart_forgets_links_but_not_the_engines_word() {
        let (m, n) = up_on("node_b", 3);
        let loaded = rows(&[("d1", m, n)]);
        let report = Request::Input(Input::Report(EngineReport::Connected));
        let p = plan(
            "node_a",
            5_000,
            &lease(),
            &loaded,
            &[],
            &[request("d1", report)],
        );
        assert!(matches!(
            p.writes[..],
            [PresenceWrite {
                what: WriteKind::Engine(Some(EngineReport::Connected)),
                ..
            }]
        ));
        let restarted = after_restart(&key("d1"), &loaded[&key("d1")], &lease(), 50_000).unwrap();
        assert_eq!(restarted.machine.link, None);
        assert_eq!(restarted.machine.last_heartbeat, Some(50_000));
        assert_eq!(
            restarted.deadline,
            Some(110_000),
            "a full lease from the restart"
        );
        let p = plan(
            "node_a",
            50_000,
            &lease(),
            &rows(&[("d1", restarted.machine, None)]),
            &[(key("d1"), Swept::Due)],
            &[],
        );
        assert!(p.writes.is_empty(), "not due yet");
    }

    #[test]
    fn a_deadline_the_settings_moved_is_written_again_when_swept() {
        let heard = StoredMachine {
            announced: Announced::Up,
            announced_since: Some(0),
            link: None,
            last_heartbeat: Some(0),
            engine: None,
            pending: None,
        };
        let mut rows = rows(&[("d1", heard, None)]);
        // Stored under a shorter heartbeat timeout than the one that applies now.
        rows.get_mut(&key("d1")).unwrap().deadline = Some(10_000);
        let p = plan(
            "node_a",
            10_000,
            &lease(),
            &rows,
            &[(key("d1"), Swept::Due)],
            &[],
        );
        assert!(p.writes.is_empty());
        assert_eq!(p.machines.len(), 1, "else it would be swept again at once");
        assert_eq!(p.machines[0].deadline, Some(60_000));
    }
}
