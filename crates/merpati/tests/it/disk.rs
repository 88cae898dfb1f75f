//! A disk that fills: the real binary with its data on a small tmpfs. While there is no
//! room, ingest answers 503 with `Retry-After` (never a 202 for what was not stored); once
//! there is room again, devices are taken in and every accepted event is delivered.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;
use crate::restart::{spawn_binary_logged, stop_gracefully};

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "this test mounts a tmpfs and needs root (as CI has): mount said {status}"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the disk with one file, then gives back `leave` bytes of it.
fn fill(path: &Path, leave: u64) -> PathBuf {
    let filler = path.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.flush();
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(leave)).unwrap();
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_what_it_cannot_store_and_delivery_resumes_with_room() {
    let disk = SmallDisk::mount("48m");
    let data = disk.path().join("data");
    let receiver = Receiver::start().await;
    let (mut child, url, logs) = spawn_binary_logged(&data, &[]).await;
    let app = TestApp::at(url);
    let m = app.merchant("m1").await;
    app.endpoint(&m.key, &receiver, json!({})).await;
    let filler = fill(disk.path(), 512 * 1024);

    // Items of 16 KiB until the disk refuses them, and a while after.
    let text = "x".repeat(16 * 1024);
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    let started = Instant::now();
    let mut rid = 0;
    while refused < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the disk never filled"
        );
        rid += 1;
        let answer = app
            .client
            .post(format!("{}/v1/device/messages", app.url))
            .bearer_auth(&m.device_token)
            .json(&json!({"type": "sms", "rid": rid, "phone": "+62811", "message": text}))
            .send()
            .await
            .unwrap();
        match answer.status().as_u16() {
            202 => {
                accepted.insert(rid);
            }
            503 => {
                refused += 1;
                assert_eq!(answer.headers()["retry-after"], "5");
                let body: serde_json::Value = answer.json().await.unwrap();
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
            }
            other => panic!(
                "item {rid}: {other} {}\n{}",
                answer.text().await.unwrap(),
                logs.lock().unwrap().join("\n")
            ),
        }
    }
    assert!(
        !accepted.is_empty(),
        "nothing was taken before the disk filled"
    );
    let logged = logs.lock().unwrap().join("\n");
    assert!(
        logged.contains("disk is full") || logged.contains("full"),
        "{logged}"
    );

    // Room again: the next items are taken, and everything accepted arrives.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        rid += 1;
        let (status, _) = app
            .post(
                "/v1/device/messages",
                &m.device_token,
                json!({"type": "sms", "rid": rid, "phone": "+62811", "message": "room again"}),
            )
            .await;
        if status == 202 {
            accepted.insert(rid);
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "still refused with room again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered: BTreeSet<i64> = receiver
            .received()
            .iter()
            .map(|r| {
                r.event();
                r.json()["data"]["rid"].as_i64().unwrap()
            })
            .collect();
        // Nothing refused is ever delivered; everything accepted is, in time.
        assert!(delivered.is_subset(&accepted), "delivered what was refused");
        if delivered == accepted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted events delivered",
            delivered.len(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.count_of(&m.key, "sms").await, accepted.len());
    stop_gracefully(&mut child).await;
}
