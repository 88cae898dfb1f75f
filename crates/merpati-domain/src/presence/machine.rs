//! Presence of one device as a lease, as a pure state machine: inputs and a time in,
//! changes to record and the next deadline out. No I/O, no clock of its own.
//!
//! A device is *alive* while its link is open, or its last heartbeat is younger than its
//! heartbeat timeout, or its engine last reported it connected; an engine that reported it
//! disconnected vetoes the rest until it reports connected again. Losing life makes an
//! announced-up device *pending*; only when the grace period passes without return is it
//! announced down, and the outage is dated from the moment life was lost. A return inside
//! the grace announces nothing and is recorded as a blip. `connected` and `disconnected`
//! therefore always alternate.

pub use crate::device::EngineReport;

/// Why a device went down, as it appears in `device.disconnected`'s `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    LinkClosed,
    HeartbeatTimeout,
    LoggedOut,
    Reported,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LinkClosed => "link_closed",
            Reason::HeartbeatTimeout => "heartbeat_timeout",
            Reason::LoggedOut => "logged_out",
            Reason::Reported => "reported",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Some(match s {
            "link_closed" => Reason::LinkClosed,
            "heartbeat_timeout" => Reason::HeartbeatTimeout,
            "logged_out" => Reason::LoggedOut,
            "reported" => Reason::Reported,
            _ => return None,
        })
    }
}

/// What was last announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    Unknown,
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub heartbeat_ms: i64,
    pub grace_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    LinkOpened {
        link: u64,
    },
    /// Only the link that is current counts; an older, replaced link closing is ignored.
    LinkClosed {
        link: u64,
        reason: Reason,
    },
    Heartbeat,
    Report(EngineReport),
    /// An engine behind a connector says its session works. Unlike a device's own
    /// `connected` report, which holds until the next report, this lifts a veto and renews
    /// the lease only: the engine must keep proving it is alive, since none reports its own
    /// death.
    EngineWorking,
    /// A deadline came; nothing else happened.
    Tick,
}

/// What to record; the two announcements are the only ones that reach receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Connected {
        at: i64,
        /// Seconds since the outage began, when the device had been announced down.
        offline_seconds: Option<i64>,
    },
    Disconnected {
        /// When the announcement is made (grace ended, or at once for logged_out).
        at: i64,
        /// When life was lost: the start of the outage.
        since: i64,
        reason: Reason,
    },
    /// Lost and back inside the grace: recorded, never announced.
    Blip {
        started_at: i64,
        ended_at: i64,
        reason: Reason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// When life was lost.
    pub since: i64,
    pub reason: Reason,
}

/// What a device shows now: its announced state, or pending while lost inside the grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveStatus {
    Unknown,
    Connected,
    /// Lost, inside the grace: not announced (yet).
    Pending,
    Disconnected,
}

impl LiveStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveStatus::Unknown => "unknown",
            LiveStatus::Connected => "connected",
            LiveStatus::Pending => "pending",
            LiveStatus::Disconnected => "disconnected",
        }
    }
}

impl From<crate::device::Presence> for LiveStatus {
    fn from(p: crate::device::Presence) -> LiveStatus {
        match p {
            crate::device::Presence::Unknown => LiveStatus::Unknown,
            crate::device::Presence::Connected => LiveStatus::Connected,
            crate::device::Presence::Disconnected => LiveStatus::Disconnected,
        }
    }
}

/// A machine as kept between steps (in the database, so that any node can take the next
/// step): everything but its timeouts, which follow the settings of the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredMachine {
    pub announced: Announced,
    pub announced_since: Option<i64>,
    pub link: Option<u64>,
    pub last_heartbeat: Option<i64>,
    pub engine: Option<EngineReport>,
    pub pending: Option<Pending>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    pub announced: Announced,
    /// When the announced state began (for `down`: when the outage began).
    pub announced_since: Option<i64>,
    link: Option<u64>,
    last_heartbeat: Option<i64>,
    engine: Option<EngineReport>,
    pending: Option<Pending>,
    pub timeouts: Timeouts,
}

impl DeviceState {
    pub fn new(timeouts: Timeouts) -> Self {
        DeviceState {
            announced: Announced::Unknown,
            announced_since: None,
            link: None,
            last_heartbeat: None,
            engine: None,
            pending: None,
            timeouts,
        }
    }

    /// A device as stored before a restart. One announced up is treated as heard from at
    /// `now` (its links were cut by the restart), so it has a full heartbeat timeout and
    /// then the grace to come back before anything is announced; one whose engine said
    /// connected stays up on the engine's word.
    pub fn restored(
        announced: Announced,
        since: Option<i64>,
        engine: Option<EngineReport>,
        timeouts: Timeouts,
        now: i64,
    ) -> Self {
        let mut s = DeviceState::new(timeouts);
        s.announced = announced;
        s.announced_since = since;
        s.engine = engine;
        if announced == Announced::Up {
            s.last_heartbeat = Some(now);
        }
        s
    }

    pub fn from_stored(stored: StoredMachine, timeouts: Timeouts) -> Self {
        DeviceState {
            announced: stored.announced,
            announced_since: stored.announced_since,
            link: stored.link,
            last_heartbeat: stored.last_heartbeat,
            engine: stored.engine,
            pending: stored.pending,
            timeouts,
        }
    }

    pub fn stored(&self) -> StoredMachine {
        StoredMachine {
            announced: self.announced,
            announced_since: self.announced_since,
            link: self.link,
            last_heartbeat: self.last_heartbeat,
            engine: self.engine,
            pending: self.pending,
        }
    }

    /// The machine after every node was down (a restart): no link survived, and nobody
    /// could hear the device meanwhile, so one announced up, or lost inside its grace, is
    /// treated as heard from at `now`; one whose engine said connected stays up on the
    /// engine's word. A restart is not an outage.
    pub fn after_restart(&self, now: i64) -> Self {
        let mut s = DeviceState::restored(
            self.announced,
            self.announced_since,
            self.engine,
            self.timeouts,
            now,
        );
        if self.announced != Announced::Up {
            s.last_heartbeat = self.last_heartbeat;
        }
        s
    }

    pub fn status(&self) -> LiveStatus {
        if self.pending.is_some() {
            return LiveStatus::Pending;
        }
        match self.announced {
            Announced::Unknown => LiveStatus::Unknown,
            Announced::Up => LiveStatus::Connected,
            Announced::Down => LiveStatus::Disconnected,
        }
    }

    pub fn current_link(&self) -> Option<u64> {
        self.link
    }

    /// When the lease of the last heartbeat runs out.
    fn heartbeat_expiry(&self) -> Option<i64> {
        self.last_heartbeat.map(|t| t + self.timeouts.heartbeat_ms)
    }

    fn alive(&self, now: i64) -> bool {
        match self.engine {
            Some(EngineReport::Disconnected | EngineReport::LoggedOut) => false,
            Some(EngineReport::Connected) => true,
            None => self.link.is_some() || self.heartbeat_expiry().is_some_and(|t| t > now),
        }
    }

    /// Why life is lost, and since when, given what was alive before.
    fn loss(&self, now: i64, closed: Option<Reason>) -> (i64, Reason) {
        match (self.engine, closed) {
            (Some(EngineReport::Disconnected), _) => (now, Reason::Reported),
            (Some(EngineReport::LoggedOut), _) => (now, Reason::LoggedOut),
            (_, Some(reason)) => (now, reason),
            // The heartbeat lease ran out: the outage began when it did, not when noticed.
            _ => (
                self.heartbeat_expiry().unwrap_or(now).min(now),
                Reason::HeartbeatTimeout,
            ),
        }
    }

    /// Applies one input at `now`; returns what to record, in order.
    pub fn apply(&mut self, input: Input, now: i64) -> Vec<Change> {
        let mut closed = None;
        match input {
            Input::LinkOpened { link } => self.link = Some(link),
            Input::LinkClosed { link, reason } => {
                if self.link != Some(link) {
                    return Vec::new();
                }
                self.link = None;
                closed = Some(reason);
            }
            Input::Heartbeat => self.last_heartbeat = Some(now),
            Input::EngineWorking => {
                self.engine = None;
                self.last_heartbeat = Some(now);
            }
            Input::Report(report) => {
                self.engine = Some(report);
                if report == EngineReport::LoggedOut {
                    return self.logged_out(now);
                }
            }
            Input::Tick => {}
        }
        self.evaluate(now, closed)
    }

    fn logged_out(&mut self, now: i64) -> Vec<Change> {
        let since = self.pending.take().map(|p| p.since).unwrap_or(now);
        if self.announced == Announced::Down {
            return Vec::new();
        }
        self.announce_down(now, since, Reason::LoggedOut)
    }

    fn announce_down(&mut self, now: i64, since: i64, reason: Reason) -> Vec<Change> {
        self.announced = Announced::Down;
        self.announced_since = Some(since);
        vec![Change::Disconnected {
            at: now,
            since,
            reason,
        }]
    }

    fn evaluate(&mut self, now: i64, closed: Option<Reason>) -> Vec<Change> {
        let alive = self.alive(now);
        match (alive, self.announced, self.pending) {
            (true, _, Some(p)) => {
                self.pending = None;
                vec![Change::Blip {
                    started_at: p.since,
                    ended_at: now,
                    reason: p.reason,
                }]
            }
            (true, Announced::Up, None) => Vec::new(),
            (true, previous, None) => {
                let offline_seconds = match previous {
                    Announced::Down => self.announced_since.map(|s| (now - s).max(0) / 1000),
                    _ => None,
                };
                self.announced = Announced::Up;
                self.announced_since = Some(now);
                vec![Change::Connected {
                    at: now,
                    offline_seconds,
                }]
            }
            (false, Announced::Up, None) => {
                let (since, reason) = self.loss(now, closed);
                self.pending = Some(Pending { since, reason });
                // The grace may already be over (a heartbeat lease noticed late).
                self.expire_grace(now)
            }
            (false, Announced::Up, Some(_)) => self.expire_grace(now),
            // Never seen up: an engine saying it is down is announced; silence is not.
            (false, Announced::Unknown, _) if self.engine.is_some() => {
                let (since, reason) = self.loss(now, closed);
                self.announce_down(now, since, reason)
            }
            (false, _, _) => Vec::new(),
        }
    }

    fn expire_grace(&mut self, now: i64) -> Vec<Change> {
        match self.pending {
            Some(p) if now >= p.since + self.timeouts.grace_ms => {
                self.pending = None;
                self.announce_down(now, p.since, p.reason)
            }
            _ => Vec::new(),
        }
    }

    /// The next time this device must be looked at, if any.
    pub fn deadline(&self) -> Option<i64> {
        if let Some(p) = self.pending {
            return Some(p.since + self.timeouts.grace_ms);
        }
        if self.announced == Announced::Up && self.engine.is_none() && self.link.is_none() {
            return self.heartbeat_expiry();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        heartbeat_ms: 90_000,
        grace_ms: 30_000,
    };

    fn up_by_link(now: i64) -> DeviceState {
        let mut s = DeviceState::new(T);
        assert_eq!(
            s.apply(Input::LinkOpened { link: 1 }, now),
            vec![Change::Connected {
                at: now,
                offline_seconds: None
            }]
        );
        s
    }

    #[test]
    fn a_first_link_announces_connected() {
        let s = up_by_link(1000);
        assert_eq!(s.announced, Announced::Up);
        assert_eq!(s.deadline(), None, "an open link needs no timer");
    }

    #[test]
    fn a_closed_link_is_pending_then_down_after_the_grace() {
        let mut s = up_by_link(0);
        assert!(s
            .apply(
                Input::LinkClosed {
                    link: 1,
                    reason: Reason::LinkClosed
                },
                10_000
            )
            .is_empty());
        assert_eq!(s.status(), LiveStatus::Pending);
        assert_eq!(s.deadline(), Some(40_000));
        assert!(s.apply(Input::Tick, 39_999).is_empty());
        assert_eq!(
            s.apply(Input::Tick, 40_000),
            vec![Change::Disconnected {
                at: 40_000,
                since: 10_000,
                reason: Reason::LinkClosed
            }]
        );
        assert_eq!(s.announced, Announced::Down);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn a_return_inside_the_grace_is_a_blip_and_announces_nothing() {
        let mut s = up_by_link(0);
        s.apply(
            Input::LinkClosed {
                link: 1,
                reason: Reason::LinkClosed,
            },
            10_000,
        );
        assert_eq!(
            s.apply(Input::LinkOpened { link: 2 }, 25_000),
            vec![Change::Blip {
                started_at: 10_000,
                ended_at: 25_000,
                reason: Reason::LinkClosed
            }]
        );
        assert_eq!(s.announced, Announced::Up);
        assert!(s.apply(Input::Tick, 100_000).is_empty());
    }

    #[test]
    fn heartbeats_hold_a_lease_and_its_loss_is_dated_from_the_expiry() {
        let mut s = DeviceState::new(T);
        assert_eq!(s.apply(Input::Heartbeat, 0).len(), 1);
        assert_eq!(s.deadline(), Some(90_000));
        assert!(s.apply(Input::Heartbeat, 60_000).is_empty());
        assert_eq!(s.deadline(), Some(150_000));
        assert!(s.apply(Input::Tick, 150_000).is_empty());
        assert_eq!(s.status(), LiveStatus::Pending);
        assert_eq!(s.deadline(), Some(180_000));
        // Noticed late: the outage still began when the lease ran out.
        assert_eq!(
            s.apply(Input::Tick, 185_000),
            vec![Change::Disconnected {
                at: 185_000,
                since: 150_000,
                reason: Reason::HeartbeatTimeout
            }]
        );
    }

    #[test]
    fn coming_back_after_an_outage_carries_offline_seconds() {
        let mut s = up_by_link(0);
        s.apply(
            Input::LinkClosed {
                link: 1,
                reason: Reason::LinkClosed,
            },
            60_000,
        );
        s.apply(Input::Tick, 90_000);
        assert_eq!(
            s.apply(Input::Heartbeat, 480_000),
            vec![Change::Connected {
                at: 480_000,
                offline_seconds: Some(420)
            }]
        );
    }

    #[test]
    fn a_replaced_links_close_is_ignored() {
        let mut s = up_by_link(0);
        assert!(s.apply(Input::LinkOpened { link: 2 }, 5).is_empty());
        assert!(s
            .apply(
                Input::LinkClosed {
                    link: 1,
                    reason: Reason::LinkClosed
                },
                6
            )
            .is_empty());
        assert_ne!(s.status(), LiveStatus::Pending);
        assert!(s.current_link().is_some());
    }

    #[test]
    fn logged_out_is_down_at_once_and_vetoes_until_connected_is_reported() {
        let mut s = up_by_link(0);
        assert_eq!(
            s.apply(Input::Report(EngineReport::LoggedOut), 1000),
            vec![Change::Disconnected {
                at: 1000,
                since: 1000,
                reason: Reason::LoggedOut
            }]
        );
        assert!(s.apply(Input::Heartbeat, 2000).is_empty(), "still vetoed");
        assert_eq!(
            s.apply(Input::Report(EngineReport::Connected), 61_000),
            vec![Change::Connected {
                at: 61_000,
                offline_seconds: Some(60)
            }]
        );
    }

    #[test]
    fn a_working_engine_is_up_only_while_its_lease_holds() {
        let mut s = DeviceState::new(T);
        assert!(matches!(
            s.apply(Input::EngineWorking, 0)[..],
            [Change::Connected { at: 0, .. }]
        ));
        // Silence: the lease runs out, and the grace after it.
        assert!(s.apply(Input::Tick, T.heartbeat_ms).is_empty());
        assert_eq!(s.status(), LiveStatus::Pending);
        assert!(matches!(
            s.apply(Input::Tick, T.heartbeat_ms + T.grace_ms)[..],
            [Change::Disconnected {
                reason: Reason::HeartbeatTimeout,
                ..
            }]
        ));
        // A reported disconnect vetoes the lease; working again lifts the veto.
        let later = T.heartbeat_ms * 10;
        assert!(!s.apply(Input::EngineWorking, later).is_empty());
        s.apply(Input::Report(EngineReport::Disconnected), later + 1);
        assert!(s.apply(Input::Heartbeat, later + 2).is_empty(), "vetoed");
        assert_eq!(s.status(), LiveStatus::Pending);
        assert!(matches!(
            s.apply(Input::EngineWorking, later + 3)[..],
            [Change::Blip { .. }]
        ));
        assert_ne!(s.status(), LiveStatus::Pending);
    }

    #[test]
    fn a_reported_disconnect_gets_the_grace() {
        let mut s = DeviceState::new(T);
        s.apply(Input::Report(EngineReport::Connected), 0);
        assert!(s
            .apply(Input::Report(EngineReport::Disconnected), 1000)
            .is_empty());
        assert_eq!(s.deadline(), Some(31_000));
        assert_eq!(
            s.apply(Input::Report(EngineReport::Connected), 5000),
            vec![Change::Blip {
                started_at: 1000,
                ended_at: 5000,
                reason: Reason::Reported
            }]
        );
        s.apply(Input::Report(EngineReport::Disconnected), 6000);
        assert_eq!(
            s.apply(Input::Tick, 36_000),
            vec![Change::Disconnected {
                at: 36_000,
                since: 6000,
                reason: Reason::Reported
            }]
        );
    }

    #[test]
    fn an_unseen_device_is_announced_down_only_on_its_engines_word() {
        let mut s = DeviceState::new(T);
        assert!(s.apply(Input::Tick, 1_000_000).is_empty());
        assert_eq!(s.deadline(), None);
        assert_eq!(
            s.apply(Input::Report(EngineReport::Disconnected), 5),
            vec![Change::Disconnected {
                at: 5,
                since: 5,
                reason: Reason::Reported
            }]
        );
    }

    #[test]
    fn a_restored_device_gets_a_lease_and_the_grace() {
        let mut s = DeviceState::restored(Announced::Up, Some(0), None, T, 1_000_000);
        assert_eq!(s.deadline(), Some(1_090_000));
        assert!(s.apply(Input::LinkOpened { link: 7 }, 1_005_000).is_empty());
        let mut gone = DeviceState::restored(Announced::Up, Some(0), None, T, 1_000_000);
        assert!(gone.apply(Input::Tick, 1_090_000).is_empty());
        assert_eq!(gone.apply(Input::Tick, 1_120_000).len(), 1);
        let engine = DeviceState::restored(
            Announced::Up,
            Some(0),
            Some(EngineReport::Connected),
            T,
            1_000_000,
        );
        assert_eq!(engine.deadline(), None);
    }

    /// Whatever happens, announcements alternate.
    #[test]
    fn announcements_always_alternate() {
        let inputs = [
            Input::LinkOpened { link: 1 },
            Input::LinkClosed {
                link: 1,
                reason: Reason::LinkClosed,
            },
            Input::Heartbeat,
            Input::Tick,
            Input::Report(EngineReport::Connected),
            Input::Report(EngineReport::Disconnected),
            Input::Report(EngineReport::LoggedOut),
            Input::LinkOpened { link: 2 },
            Input::LinkClosed {
                link: 2,
                reason: Reason::HeartbeatTimeout,
            },
        ];
        // A deterministic walk over many sequences and time gaps.
        let mut seed: u64 = 42;
        for _ in 0..2000 {
            let mut s = DeviceState::new(T);
            let mut now = 0;
            let mut last: Option<bool> = None;
            for _ in 0..40 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let input = inputs[(seed >> 33) as usize % inputs.len()];
                now += ((seed >> 13) % 60_000) as i64;
                for change in s.apply(input, now) {
                    let up = match change {
                        Change::Connected { .. } => true,
                        Change::Disconnected { .. } => false,
                        Change::Blip { .. } => continue,
                    };
                    assert_ne!(last, Some(up), "two announcements in a row");
                    last = Some(up);
                }
            }
        }
    }
}
