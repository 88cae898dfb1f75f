//! `bench delivery --url A,B,C --kill-after D`: one node killed (SIGKILL) mid-run. The
//! devices whose node is gone post the same items again through the next node, as devices
//! do; the receivers note every arrival, so that the run can say whether every accepted
//! event reached every endpoint, which arrived twice and whether those were under way at
//! the kill, and how long each endpoint waited after the kill for its next delivery (the
//! dead node's endpoints: until their slots were taken over).

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
        let status = std::process::Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status()
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
    /// Of those, how many had first arrived after the kill (none should have: a
    /// redelivery is of an attempt the dead node had not recorded).
    pub twice_first_after_kill: u64,
    /// For each endpoint, the time from the kill to its next delivery, in seconds.
    pub resumed_after_seconds: Vec<f64>,
}

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
        let resumed_after_seconds = (0..endpoints)
            .map(|endpoint| {
                arrivals
                    .iter()
                    .filter(|a| a.endpoint == endpoint && a.at >= killed_at)
                    .map(|a| a.at.duration_since(killed_at).as_secs_f64())
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        FailoverFigures {
            killed_pid: kill.pid,
            killed_after_seconds: killed_at.duration_since(started).as_secs_f64(),
            accepted_events: accepted_rids.len() as u64,
            missing,
            arrived_twice: twice.len() as u64,
            twice_first_after_kill: twice.iter().filter(|(_, t)| *t >= killed_at).count() as u64,
            resumed_after_seconds,
        }
    }

    pub(crate) fn print(&self) {
        println!(
            "  kill            pid {} killed {:.1} s into the run",
            self.killed_pid, self.killed_after_seconds
        );
        let endpoints = self.resumed_after_seconds.len();
        let verdict = if self.missing == 0 { "yes" } else { "NO" };
        println!(
            "  every accepted event at every endpoint  {verdict}: {} events × {endpoints} endpoints, {} missing",
            self.accepted_events, self.missing
        );
        println!(
            "  arrived twice   {} ({} of them first received after the kill)",
            self.arrived_twice, self.twice_first_after_kill
        );
        let resumed: Vec<String> = self
            .resumed_after_seconds
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect();
        let slowest = self
            .resumed_after_seconds
            .iter()
            .copied()
            .fold(0.0, f64::max);
        println!(
            "  next delivery after the kill, each endpoint (s)  {}   slowest {slowest:.2} s",
            resumed.join(" ")
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
                at: at(11),
            },
            Arrival {
                endpoint: 0,
                rid: 3,
                at: at(11),
            },
        ];
        let kill = Kill {
            after: Duration::from_secs(10),
            pid: 1,
        };
        let f = FailoverFigures::of(kill, kill_at, start, &[1, 2, 3], 2, &arrivals);
        assert_eq!(f.missing, 1, "rid 3 never reached endpoint 1");
        assert_eq!(f.arrived_twice, 2);
        assert_eq!(f.twice_first_after_kill, 1, "rid 3 was first sent after it");
        assert_eq!(f.resumed_after_seconds, vec![1.0, 2.0]);
    }
}
