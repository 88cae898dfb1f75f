use merpati_domain::retry::AttemptResult;

use super::*;

/// No other lane has answered: nothing is suspected of hanging.
const NO_NEWS: i64 = i64::MIN;

const POLICY: BreakerPolicy = BreakerPolicy {
    failures: 3,
    cooldown_ms: 1000,
    max_cooldown_ms: 4000,
};

fn lane(concurrency: usize, rate: Option<u32>) -> Lane {
    Lane::new(Limits { concurrency, rate }, 0)
}

#[test]
fn a_lane_starts_with_the_breaker_its_endpoints_last_owner_kept() {
    let mut l = lane(1, None);
    for at in 0..3 {
        l.start(at);
        l.finish(at, at + 1, 1, Health::Down, &POLICY);
    }
    assert_eq!(
        l.breaker(),
        Breaker::Open {
            until: 1_003,
            cooldown_ms: 1000
        }
    );
    let kept = Some(StoredBreaker {
        until: 1_003,
        cooldown_ms: 1000,
    });
    let mut taken_over = lane(1, None).with_breaker(kept, 500);
    assert_eq!(taken_over.gate(500), Gate::At(1_003), "still open");
    let mut later = lane(1, None).with_breaker(kept, 2_000);
    assert_eq!(later.gate(2_000), Gate::Go, "its probe");
    later.start(2_000);
    assert_eq!(later.gate(2_000), Gate::Busy, "one probe only");
    later.finish(2_000, 2_010, 10, Health::Down, &POLICY);
    assert_eq!(
        later.breaker(),
        Breaker::Open {
            until: 4_010,
            cooldown_ms: 2000
        },
        "a failed probe doubles the pause it took over"
    );
    let closed = lane(1, None).with_breaker(None, 0);
    assert_eq!(closed.breaker(), Breaker::Closed { failures: 0 });
}

#[test]
fn concurrency_limit_holds_the_next_start() {
    let mut l = lane(2, None);
    assert_eq!(l.gate(0), Gate::Go);
    l.start(0);
    l.start(0);
    assert_eq!(l.gate(0), Gate::Busy);
    l.finish(0, 5, 5, Health::Up, &POLICY);
    assert_eq!(l.gate(5), Gate::Go);
}

#[test]
fn rate_limit_spaces_requests() {
    let mut l = lane(100, Some(10));
    // A burst of one, then one every 100 ms.
    assert_eq!(l.gate(0), Gate::Go);
    l.start(0);
    assert_eq!(l.gate(0), Gate::At(100));
    assert_eq!(l.gate(50), Gate::At(100));
    assert_eq!(l.gate(100), Gate::Go);
    l.start(100);
    assert_eq!(l.gate(100), Gate::At(200));
    // Idle time earns no more than the burst.
    assert_eq!(l.gate(10_000), Gate::Go);
    l.start(10_000);
    assert_eq!(l.gate(10_000), Gate::At(10_100));
}

#[test]
fn started_requests_never_exceed_the_rate_over_a_window() {
    let mut l = lane(1000, Some(200));
    let mut started = Vec::new();
    let mut now = 0;
    while now < 5_000 {
        match l.gate(now) {
            Gate::Go => {
                l.start(now);
                l.finish(now, now, 0, Health::Up, &POLICY);
                started.push(now);
            }
            Gate::At(t) => now = t,
            Gate::Busy => unreachable!(),
        }
    }
    // 200/s with a burst of 10: any one second holds at most 210.
    for (i, t) in started.iter().enumerate() {
        let in_window = started[i..].iter().take_while(|u| **u < t + 1000).count();
        assert!(in_window <= 210, "{in_window} in the second after {t}");
    }
    assert!(started.len() >= 990, "{}", started.len());
}

#[test]
fn breaker_opens_after_failures_in_a_row_and_probes_with_one_request() {
    let mut l = lane(10, None);
    for t in 0..2 {
        l.start(t);
        l.finish(t, t, 0, Health::Down, &POLICY);
    }
    // A success in between resets the count.
    l.start(2);
    l.finish(2, 2, 0, Health::Up, &POLICY);
    for t in 3..6 {
        l.start(t);
        l.finish(t, t, 0, Health::Down, &POLICY);
    }
    assert_eq!(
        l.breaker(),
        Breaker::Open {
            until: 1005,
            cooldown_ms: 1000
        }
    );
    assert_eq!(l.gate(500), Gate::At(1005));
    assert_eq!(l.queue_cap(500, NO_NEWS), 0);
    assert_eq!(l.park_at(500), 1005);
    // One probe at a time.
    assert_eq!(l.gate(1005), Gate::Go);
    l.start(1005);
    assert_eq!(l.gate(1005), Gate::Busy);
    // It fails: twice the pause.
    l.finish(1005, 1010, 5, Health::Down, &POLICY);
    assert_eq!(
        l.breaker(),
        Breaker::Open {
            until: 3010,
            cooldown_ms: 2000
        }
    );
    assert_eq!(l.gate(3010), Gate::Go);
    l.start(3010);
    l.finish(3010, 3011, 1, Health::Down, &POLICY);
    l.gate(7011);
    l.start(7011);
    l.finish(7011, 7012, 1, Health::Down, &POLICY);
    // Never longer than the most.
    assert_eq!(
        l.breaker(),
        Breaker::Open {
            until: 11012,
            cooldown_ms: 4000
        }
    );
    // A probe that works closes it.
    l.gate(11012);
    l.start(11012);
    l.finish(11012, 11013, 1, Health::Up, &POLICY);
    assert_eq!(l.breaker(), Breaker::Closed { failures: 0 });
    assert!(l.is_idle(11013));
}

/// A lane whose breaker three failures opened at 2, until 1002.
fn opened_at_2(concurrency: usize) -> Lane {
    let mut l = lane(concurrency, None);
    for t in 0..3 {
        l.start(t);
        l.finish(t, t, 0, Health::Down, &POLICY);
    }
    l
}

#[test]
fn behind_an_open_breaker_one_delivery_comes_back_as_the_probe_and_the_rest_wait() {
    let mut l = opened_at_2(10);
    let until = 1002;
    assert!(matches!(l.breaker(), Breaker::Open { until: u, .. } if u == until));
    assert_eq!(l.park_at(500), until, "the probe");
    let rest: Vec<i64> = (0..3).map(|i| l.park_at(600 + i)).collect();
    assert_eq!(
        rest,
        [600 + MAX_PARK_MS, 601 + MAX_PARK_MS, 602 + MAX_PARK_MS]
    );
    // Caught up meanwhile? Not with the breaker open.
    assert_eq!(l.take_back(700, NO_NEWS), None);
    // The probe fails: the next pause gets a probe of its own.
    assert_eq!(l.gate(until), Gate::Go);
    l.start(until);
    l.finish(until, until + 5, 5, Health::Down, &POLICY);
    let Breaker::Open { until: next, .. } = l.breaker() else {
        panic!("open again");
    };
    assert_eq!(l.park_at(until + 10), next);
    assert_eq!(l.park_at(until + 11), until + 11 + MAX_PARK_MS);
    assert_eq!(l.probe_wanted_at(), None, "one is parked to be the probe");
    // A probe that works closes it, and the lane takes the rest back.
    assert_eq!(l.gate(next), Gate::Go);
    l.start(next);
    l.finish(next, next + 1, 1, Health::Up, &POLICY);
    assert!(l.take_back(next + 1, NO_NEWS).is_some_and(|n| n > 0));
    assert!(!l.is_idle(next + 1), "it still has deliveries parked");
}

#[test]
fn a_pause_with_no_probe_parked_asks_for_one_back_when_it_ends() {
    let mut l = opened_at_2(10);
    let until = 1002;
    l.park_at(500);
    l.park_at(501);
    // The probe fails, and its delivery has no attempt left: the next pause has no
    // probe parked for it, only the one parked until the breaker closes.
    l.gate(until);
    l.start(until);
    l.finish(until, until + 5, 5, Health::Down, &POLICY);
    let Breaker::Open { until: next, .. } = l.breaker() else {
        panic!("open again");
    };
    assert_eq!(l.probe_wanted_at(), Some(next));
    assert_eq!(
        l.take_back(next - 1, NO_NEWS),
        None,
        "not before the pause ends"
    );
    assert_eq!(l.take_back(next, NO_NEWS), Some(1));
    assert_eq!(l.take_back(next, NO_NEWS), None, "asked once a pause");
    assert_eq!(l.probe_wanted_at(), None);
}

#[test]
fn only_the_probe_closes_or_reopens_the_breaker() {
    let mut l = lane(10, None);
    // Five attempts under way; then three fail fast and open the breaker.
    for t in 0..5 {
        l.start(t);
    }
    for t in 5..8 {
        l.start(t);
        l.finish(t, t + 1, 1, Health::Down, &POLICY);
    }
    let open = Breaker::Open {
        until: 1008,
        cooldown_ms: 1000,
    };
    assert_eq!(l.breaker(), open);
    // The receiver, going down, still answers what it had: that changes nothing.
    l.finish(0, 100, 100, Health::Up, &POLICY);
    l.finish(1, 100, 99, Health::Down, &POLICY);
    assert_eq!(l.breaker(), open);
    assert_eq!(l.gate(500), Gate::At(1008));
    // The probe goes; answers to older attempts, good or bad, still do not count.
    assert_eq!(l.gate(1008), Gate::Go);
    l.start(1008);
    l.finish(2, 1010, 1008, Health::Up, &POLICY);
    l.finish(3, 1011, 1008, Health::Down, &POLICY);
    assert_eq!(
        l.breaker(),
        Breaker::HalfOpen {
            probe: Some(1008),
            cooldown_ms: 1000
        }
    );
    assert_eq!(l.gate(1011), Gate::Busy);
    // The probe's own answer does.
    l.finish(1008, 1012, 4, Health::Up, &POLICY);
    assert_eq!(l.breaker(), Breaker::Closed { failures: 0 });
    // The last old attempt ends after: closed, a failure counts as one.
    l.finish(4, 1013, 1009, Health::Down, &POLICY);
    assert_eq!(l.breaker(), Breaker::Closed { failures: 1 });
    assert_eq!(l.in_flight, 0);
}

#[test]
fn client_errors_keep_the_breaker_closed_and_unsent_probes_free_the_slot() {
    assert_eq!(Health::of(&AttemptResult::Status(404)), Health::Up);
    assert_eq!(Health::of(&AttemptResult::Status(503)), Health::Down);
    assert_eq!(Health::of(&AttemptResult::Status(429)), Health::Down);
    assert_eq!(Health::of(&AttemptResult::NoAnswer), Health::Down);
    assert_eq!(Health::of(&AttemptResult::Unsendable), Health::Unknown);
    let mut l = opened_at_2(1);
    l.gate(2000);
    l.start(2000);
    l.finish(2000, 2000, 0, Health::Unknown, &POLICY);
    assert_eq!(l.gate(2000), Gate::Go);
}

#[test]
fn a_slow_lane_queues_little_and_parks_the_rest_at_its_pace() {
    let mut l = lane(4, None);
    // Fast answers: a deep queue is fine.
    for t in 0..20 {
        l.start(t);
        l.finish(t, t + 2, 2, Health::Up, &POLICY);
    }
    assert!(
        l.queue_cap(20, NO_NEWS) > 1000,
        "{}",
        l.queue_cap(20, NO_NEWS)
    );
    // Attempts hanging for 10 s: the oldest one tells before any ends.
    for _ in 0..4 {
        l.start(100);
    }
    assert_eq!(l.queue_cap(10_100, NO_NEWS), 1);
    let first = l.park_at(10_100);
    let second = l.park_at(10_100);
    assert_eq!(second - first, 2500, "4 at a time, 10 s each");
    assert!(first > 10_100);
    // Parking never reaches further than the most.
    for _ in 0..1000 {
        assert!(l.park_at(10_100) <= 10_100 + MAX_PARK_MS);
    }
}

#[test]
fn a_lane_not_heard_from_yet_queues_a_quarter_of_its_concurrency() {
    let mut l = lane(8, None);
    // What it can start, and a quarter of that: its pace is not known yet.
    assert_eq!(l.queue_cap(0, NO_NEWS), 10);
    for _ in 0..8 {
        l.start(0);
    }
    assert_eq!(
        l.queue_cap(0, NO_NEWS),
        2,
        "a hanging endpoint holds no more room than this"
    );
    assert!(!l.is_slow(UNKNOWN_SLOW_MS - 1));
    assert!(l.is_slow(UNKNOWN_SLOW_MS));
    assert_eq!(l.queue_cap(1000, NO_NEWS), 2);
    assert!(
        l.park_at(1000) >= 1000 + UNKNOWN_PACE_PARK_MS,
        "hanging: parked far"
    );
    // Answers, fast: no longer slow.
    for _ in 0..20 {
        l.start(1000);
        l.finish(1000, 1001, 2, Health::Up, &POLICY);
    }
    assert_eq!(l.queue_cap(1001, NO_NEWS), usize::MAX);
}

#[test]
fn a_burst_before_the_first_answer_is_parked_briefly_and_taken_back_on_an_answer() {
    let mut l = lane(256, None);
    for _ in 0..256 {
        l.start(0);
    }
    assert_eq!(l.queue_cap(10, NO_NEWS), 64);
    // Not hanging yet: what it cannot queue comes back soon.
    let at = l.park_at(10);
    assert_eq!(at, 10 + MIN_PARK_MS);
    for t in 0..256 {
        l.finish(0, 20 + t / 64, 5, Health::Up, &POLICY);
    }
    assert_eq!(l.queue_cap(30, NO_NEWS), usize::MAX, "heard from, fast");
    assert!(
        l.take_back(30, NO_NEWS).is_some(),
        "caught up: it asks for them at once"
    );
}

#[test]
fn a_lane_remembering_its_endpoint_s_pace_is_known_from_the_start() {
    let mut first = lane(256, None);
    assert_eq!(first.pace(), None);
    first.start(0);
    first.finish(0, 5, 5, Health::Up, &POLICY);
    let pace = first.pace().expect("heard back");
    let again = Lane::new(first.limits, 10_000).remembering(Some(pace));
    assert_eq!(again.queue_cap(10_000, NO_NEWS), usize::MAX);
    assert_eq!(again.pace(), Some(pace));
    let fresh = Lane::new(first.limits, 10_000).remembering(None);
    assert_eq!(fresh.queue_cap(10_000, NO_NEWS), 256 + 64);
}

#[test]
fn a_fast_lane_gone_silent_while_others_answer_queues_little_until_it_answers() {
    let mut l = lane(256, None);
    for t in 0..50 {
        l.start(t);
        l.finish(t, t + 2, 2, Health::Up, &POLICY);
    }
    for _ in 0..200 {
        l.start(100);
    }
    // Others answer all along.
    assert_eq!(l.queue_cap(250, 250), usize::MAX, "150 ms: not yet");
    assert_eq!(
        l.queue_cap(300, 290),
        56 + 64,
        "200 ms silent, a hundred times its usual: what it can start and a quarter"
    );
    assert!(!l.is_slow(300), "suspected, not found out");
    assert!(l.park_at(300) <= 300 + MIN_PARK_MS + 1, "parked briefly");
    // Nobody answered for as long either: a pause of the worker's own, not the receiver.
    assert_eq!(l.queue_cap(300, 150), usize::MAX);
    assert_eq!(
        l.queue_cap(300, 49),
        usize::MAX,
        "its own answers don't count"
    );
    // It answers: nothing to suspect any more.
    for _ in 0..200 {
        l.finish(100, 310, 210, Health::Up, &POLICY);
    }
    assert_eq!(l.queue_cap(310, 310), usize::MAX);
}

#[test]
fn a_busy_lane_that_keeps_answering_is_never_suspected() {
    let mut l = lane(256, None);
    // One attempt hangs while the rest keep answering.
    l.start(0);
    for t in 1..1000 {
        l.start(t);
        l.finish(t, t + 2, 2, Health::Up, &POLICY);
        assert_eq!(l.queue_cap(t + 2, t + 2), usize::MAX, "at {t}");
    }
    // Before it ever answered, a lane is capped as one of unknown pace, suspect or not.
    let mut fresh = lane(256, None);
    fresh.start(0);
    assert_eq!(fresh.queue_cap(250, 250), fresh.queue_cap(250, NO_NEWS));
}

#[test]
fn a_busy_healthy_lane_is_never_slow() {
    let mut l = lane(256, None);
    for t in 0..256 {
        l.start(t);
    }
    for t in 0..100 {
        l.finish(t, 300 + t, 40, Health::Up, &POLICY);
    }
    // 256 at a time at 40 ms is 6,400 a second.
    assert!(!l.is_slow(1000));
    assert_eq!(l.queue_cap(1000, NO_NEWS), usize::MAX);
}

#[test]
fn a_lane_that_catches_up_takes_back_what_it_parked() {
    let mut l = lane(2, None);
    for _ in 0..2 {
        l.start(0);
    }
    assert_eq!(l.take_back(10, NO_NEWS), None, "nothing parked");
    let at = l.park_at(5_000);
    assert!(at > 5_000);
    assert_eq!(l.take_back(5_000, NO_NEWS), None, "still busy");
    l.finish(0, 5_010, 5_010, Health::Up, &POLICY);
    let n = l.take_back(5_010, NO_NEWS).expect("room and parked work");
    assert!((1..=MAX_TAKE_BACK).contains(&n));
    // It asks again, until the store has no more.
    assert!(l.take_back(5_010, NO_NEWS).is_some());
    l.nothing_parked(l.parked_until(), 5_010);
    assert_eq!(l.take_back(5_010, NO_NEWS), None);
}

#[test]
fn what_a_lane_parks_while_it_asks_is_not_forgotten() {
    let mut l = lane(2, None);
    l.start(0);
    l.finish(0, 10, 10, Health::Up, &POLICY);
    l.park_at(100);
    let asked_with = l.parked_until();
    assert!(l.take_back(100, NO_NEWS).is_some());
    // While the store answers, the lane parks one more; the answer "nothing left"
    // was about what it had parked before.
    l.park_at(120);
    assert!(l.parked_until() > asked_with);
    l.nothing_parked(asked_with, 100);
    assert!(
        l.take_back(130, NO_NEWS).is_some(),
        "the later one is still parked"
    );
}

#[test]
fn the_rate_limit_caps_the_pace() {
    let mut l = lane(64, Some(5));
    for t in 0..20 {
        l.start(t);
        l.finish(t, t + 1, 1, Health::Up, &POLICY);
    }
    assert_eq!(l.drain_rate(30), 5.0);
    assert_eq!(l.queue_cap(30, NO_NEWS), 10);
}
