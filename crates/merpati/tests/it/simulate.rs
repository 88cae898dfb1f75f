//! `merpati simulate`'s fleet against a real server: provisioning through the API, links and
//! HTTP heartbeats, items at a rate, drops that come back inside the grace (nothing
//! announced) and one that does not (announced).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use merpati_bench::simulate::{provision, Api, Behaviour, Mode, Running};
use serde_json::json;

use crate::helpers::*;

/// (event, account/device) → how many arrived.
fn device_events(r: &Receiver) -> BTreeMap<(String, String), usize> {
    let mut seen = BTreeMap::new();
    for v in r.received().iter().map(|x| x.json()) {
        if let (Some(e), Some(a), Some(d)) = (
            v["event"].as_str(),
            v["device"]["user"]["id"].as_str(),
            v["device"]["id"].as_str(),
        ) {
            *seen.entry((e.to_string(), format!("{a}/{d}"))).or_default() += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_speaks_the_real_protocol() {
    let app = TestApp::spawn_with(&[
        ("presence.grace", "2s"),
        ("presence.heartbeat_timeout", "2s"),
    ])
    .await;
    let receiver = Receiver::start().await;
    let api = Api::new(&app.url);
    for mode in [Mode::Link, Mode::Http] {
        let fleet = provision(&api, ADMIN, 4, "wa", Some((&receiver.url, json!(["*"]))))
            .await
            .unwrap();
        let behaviour = Behaviour {
            mode,
            heartbeat: Duration::from_millis(500),
            rate: 5.0,
        };
        let before = receiver.received().len();
        let running = Running::start(&api, &fleet, behaviour, 2).await;
        let stats = running.stats.clone();
        // Every device announced up, and items flowing.
        receiver.wait_for(before + 4 + 8).await;
        let deadline = std::time::Instant::now() + PATIENCE;
        while stats.items_acked.load(Relaxed) < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "items not acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Two vanish for a moment (a blip), one for good.
        running.drop_devices(&[0, 1], Duration::from_millis(100));
        running.drop_devices(&[2], Duration::from_secs(3600));
        let key = |id: &str| format!("{}/{id}", fleet.account);
        let gone = key(&fleet.devices[2].id);
        let deadline = std::time::Instant::now() + PATIENCE;
        while !device_events(&receiver).contains_key(&("device.disconnected".into(), gone.clone()))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{mode:?}: {gone} was never announced"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.stop().await;
        let events = device_events(&receiver);
        for d in &fleet.devices {
            let k = key(&d.id);
            let up = events.get(&("device.connected".into(), k.clone()));
            assert_eq!(up, Some(&1), "{mode:?} {k}");
            let down = events.get(&("device.disconnected".into(), k.clone()));
            if k == gone {
                assert_eq!(down, Some(&1));
            } else if mode == Mode::Link {
                // Stopping the fleet closed the links a moment ago: inside the grace.
                assert_eq!(down, None, "{mode:?} {k}: a blip was announced");
            }
        }
        assert_eq!(stats.errors.load(Relaxed), 0, "{mode:?}");
        let sms = receiver
            .received()
            .iter()
            .filter(|r| r.json()["type"] == "sms" && r.json()["data"]["device"].is_string())
            .count();
        assert!(sms >= 8, "{mode:?}: {sms} sms delivered");
    }
}
