//! `bench delivery --url A,B,C --kill-after D`: one node killed (SIGKILL) mid-run. The
//! devices whose node is gone post the same items again through the next node, as devices
//! do; the receivers note every arrival, so that the run can say whether every accepted
//! event reached every endpoint, which arrived twice and whether those were under way at
//! the kill, and how long each endpoint went without a delivery after the kill (the dead
//! node's endpoints: until their slots were taken over).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

/// One delivery's arrival at a receiver.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub(crate) endpoint: u32,
    pub(crate) rid: u64,
    pub(crate) at: Instant,
}

/// Every arrival of a run with a kill (kept only then: a plain run counts).
#[derive(Default)]
pub(crate) struct Arrivals(pub(crate) Mutex<Vec<Arrival>>);

/// The endpoint's number from its receiver path (`/hook/<n>`), and the item's rid.
pub(crate) fn arrival_of(path: &str, body: &[u8]) -> Option<(u32, u64)> {
    #[derive(serde::Deserialize)]
    struct Payload {
        data: Data,
    }
    #[derive(serde::Deserialize)]
    struct Data {
        rid: serde_json::Value,
    }
    let endpoint = path.strip_prefix("/hook/")?.parse().ok()?;
    let payload: Payload = serde_json::from_slice(body).ok()?;
    let rid = match payload.data.rid {
        serde_json::Value::String(s) => s.parse().ok()?,
        serde_json::Value::Number(n) => n.as_u64()?,
        _ => return None,
    };
    Some((endpoint, rid))
}

/// The longest time from `kill` on without an arrival, or `None` if nothing arrived after
/// it. The longest gap, not the first arrival: requests a dead node sent just before it
/// died may be read after the kill, and must not hide the wait that follows them.
pub fn longest_silence_after(
    kill: Instant,
    arrivals: impl Iterator<Item = Instant>,
) -> Option<Duration> {
    let mut after: Vec<Instant> = arrivals.filter(|at| *at >= kill).collect();
    after.sort_unstable();
    std::iter::once(kill)
        .chain(after.iter().copied())
        .zip(after.iter().copied())
        .map(|(before, at)| at.duration_since(before))
        .max()
}

/// The node to kill, and when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kill {
    pub(crate) after: Duration,
    pub(crate) pid: u32,
}

impl Kill {
    /// The last node of the run, `after` into it; refused without several nodes' pids.
    pub(crate) fn plan(after: Duration, urls: usize, pids: &[u32]) -> anyhow::Result<Kill> {
        if urls < 2 || pids.len() != urls {
            bail!(
                "--kill-after kills the last node: give several nodes' --url and each one's \
                 --server-pid, in the same order"
            );
        }
        Ok(Kill {
            after,
            pid: *pids.last().context("no pid")?,
        })
    }

    /// Kills the node at its time; answers the moment it did.
    pub(crate) async fn run(self, started: Instant) -> anyhow::Result<Instant> {
        tokio::time::sleep_until((started + self.after).into()).await;
        let status = tokio::process::Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status()
            .await
            .context("running kill")?;
        if !status.success() {
            bail!("kill -KILL {} failed", self.pid);
        }
        Ok(Instant::now())
    }
}

/// What a run with a kill shows.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverFigures {
    pub killed_pid: u32,
    pub killed_after_seconds: f64,
    /// Accepted (answered 202) events.
    pub accepted_events: u64,
    /// (event, endpoint) pairs that never arrived.
    pub missing: u64,
    /// (event, endpoint) pairs that arrived more than once.
    pub arrived_twice: u64,
    /// Of those, how many first arrived later than [`UNDER_WAY_LAG`] after the kill: not
    /// attempts the dead node had under way (none should be: a redelivery is of an attempt
    /// the dead node had not recorded).
    pub twice_not_under_way_at_kill: u64,
    /// For each endpoint, the longest time from the kill on without a delivery, in seconds:
    /// for the dead node's endpoints, until their slots were taken over.
    pub longest_silence_after_kill_seconds: Vec<f64>,
}

/// How long after the kill a request the dead node sent before it may still be read: the
/// receiver, on the same busy cores, reads what was sent to it some milliseconds later.
pub const UNDER_WAY_LAG: Duration = Duration::from_secs(1);

impl FailoverFigures {
    pub(crate) fn of(
        kill: Kill,
        killed_at: Instant,
        started: Instant,
        accepted_rids: &[u64],
        endpoints: u32,
        arrivals: &[Arrival],
    ) -> FailoverFigures {
        let mut seen: HashMap<(u32, u64), (u32, Instant)> = HashMap::new();
        for a in arrivals {
            let entry = seen.entry((a.endpoint, a.rid)).or_insert((0, a.at));
            entry.0 += 1;
            entry.1 = entry.1.min(a.at);
        }
        let mut missing = 0;
        for rid in accepted_rids {
            for endpoint in 0..endpoints {
                if !seen.contains_key(&(endpoint, *rid)) {
                    missing += 1;
                }
            }
        }
        let twice: Vec<&(u32, Instant)> = seen.values().filter(|(n, _)| *n > 1).collect();
        let longest_silence_after_kill_seconds = (0..endpoints)
            .map(|endpoint| {
                longest_silence_after(
                    killed_at,
                    arrivals
                        .iter()
                        .filter(|a| a.endpoint == endpoint)
                        .map(|a| a.at),
                )
                .map_or(f64::INFINITY, |d| d.as_secs_f64())
            })
            .collect();
        FailoverFigures {
            killed_pid: kill.pid,
            killed_after_seconds: killed_at.duration_since(started).as_secs_f64(),
            accepted_events: accepted_rids.len() as u64,
            missing,
            arrived_twice: twice.len() as u64,
            twice_not_under_way_at_kill: twice
                .iter()
                .filter(|(_, t)| *t > killed_at + UNDER_WAY_LAG)
                .count() as u64,
            longest_silence_after_kill_seconds,
        }
    }

    pub(crate) fn print(&self) {
        println!(
            "  kill            pid {} killed {:.1} s into the run",
            self.killed_pid, self.killed_after_seconds
        );
        let endpoints = self.longest_silence_after_kill_seconds.len();
        let verdict = if self.missing == 0 { "yes" } else { "NO" };
        println!(
            "  every accepted event at every endpoint  {verdict}: {} events × {endpoints} endpoints, {} missing",
            self.accepted_events, self.missing
        );
        println!(
            "  arrived twice   {} ({} of them first received more than {} s after the kill)",
            self.arrived_twice,
            self.twice_not_under_way_at_kill,
            UNDER_WAY_LAG.as_secs()
        );
        let silences: Vec<String> = self
            .longest_silence_after_kill_seconds
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect();
        let slowest = self
            .longest_silence_after_kill_seconds
            .iter()
            .copied()
            .fold(0.0, f64::max);
        println!(
            "  longest wait for a delivery after the kill, each endpoint (s)  {}   slowest {slowest:.2} s",
            silences.join(" ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arrival_names_its_endpoint_and_rid() {
        let body = br#"{"type":"sms","data":{"id":1,"rid":"7","message":"bench 1"}}"#;
        assert_eq!(arrival_of("/hook/3", body), Some((3, 7)));
        let number = br#"{"type":"sms","data":{"rid":8}}"#;
        assert_eq!(arrival_of("/hook/0", number), Some((0, 8)));
        assert_eq!(arrival_of("/slow", body), None);
    }

    #[test]
    fn missing_and_twice_arrived_events_are_counted_against_the_kill() {
        let start = Instant::now();
        let kill_at = start + Duration::from_secs(10);
        let at = |s: u64| start + Duration::from_secs(s);
        let arrivals = [
            Arrival {
                endpoint: 0,
                rid: 1,
                at: at(1),
            },
            Arrival {
                endpoint: 1,
                rid: 1,
                at: at(1),
            },
            Arrival {
                endpoint: 0,
                rid: 2,
                at: at(9),
            },
            Arrival {
                endpoint: 0,
                rid: 2,
                at: at(13),
            },
            Arrival {
                endpoint: 1,
                rid: 2,
                at: at(12),
            },
            Arrival {
                endpoint: 0,
                rid: 3,
                at: at(12),
            },
            Arrival {
                endpoint: 0,
                rid: 3,
                at: at(12),
            },
        ];
        let kill = Kill {
            after: Duration::from_secs(10),
            pid: 1,
        };
        let f = FailoverFigures::of(kill, kill_at, start, &[1, 2, 3], 2, &arrivals);
        assert_eq!(f.missing, 1, "rid 3 never reached endpoint 1");
        assert_eq!(f.arrived_twice, 2);
        assert_eq!(
            f.twice_not_under_way_at_kill, 1,
            "rid 3 was first sent after it"
        );
        // Each endpoint's first delivery after the kill at 10 s came at 12 s.
        assert_eq!(f.longest_silence_after_kill_seconds, vec![2.0, 2.0]);
    }

    #[test]
    fn the_dead_node_s_last_requests_read_after_the_kill_hide_neither_wait_nor_redelivery() {
        let start = Instant::now();
        let kill_at = start + Duration::from_secs(10);
        let ms = |ms: u64| kill_at + Duration::from_millis(ms);
        // Sent by the dead node before it died, read 20 and 30 ms after the kill; sent
        // again by the slot's new owner 5 s later.
        let arrivals =
            [(1, ms(20)), (2, ms(30)), (1, ms(5_030)), (2, ms(5_040))].map(|(rid, at)| Arrival {
                endpoint: 0,
                rid,
                at,
            });
        let kill = Kill {
            after: Duration::from_secs(10),
            pid: 1,
        };
        let f = FailoverFigures::of(kill, kill_at, start, &[1, 2], 1, &arrivals);
        assert_eq!(f.arrived_twice, 2);
        assert_eq!(f.twice_not_under_way_at_kill, 0, "under way at the kill");
        assert_eq!(f.longest_silence_after_kill_seconds, vec![5.0]);
    }
}
