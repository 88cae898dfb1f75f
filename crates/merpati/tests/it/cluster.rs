//! The nodes of one database: each holds a lease and slots, and `GET /v1/cluster` shows
//! them. On PostgreSQL nodes share the slots; a SQLite file has one node at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use merpati::config::Config;
use merpati_domain::clock::SystemClock;
use serde_json::Value;

use crate::helpers::*;
use crate::restart::{spawn_binary_with, stop_gracefully};

/// A second server started on a database a live node holds: on PostgreSQL it joins, the
/// slots are shared out between the two (the first gives back what the second should own),
/// and when the second stops the first takes them all again. On SQLite it waits for the
/// first's lease, sees it renewed, and refuses to start, naming the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_shares_the_slots_on_postgres_and_is_refused_on_sqlite() {
    let app = TestApp::spawn_with(&[("cluster.lease", "1s")]).await;
    let (status, cluster) = app.get("/v1/cluster", ADMIN).await;
    assert_eq!(status, 200, "{cluster}");
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{cluster}");
    let first = nodes[0]["id"].as_str().unwrap().to_string();
    assert_eq!(cluster["this_node"], first.as_str());
    assert!(first.starts_with("node_"));
    assert!(nodes[0]["lease_until"].as_str().unwrap() > cluster["now"].as_str().unwrap());
    assert_eq!(nodes[0]["slots"].as_array().unwrap().len(), 64, "{cluster}");

    let mut settings = test_settings();
    settings.insert("cluster.lease".into(), "1s".into());
    if let Some(url) = app.database_url() {
        settings.insert("database_url".into(), url);
    }
    let mut config = Config::from_settings(&settings).unwrap();
    config.data_dir = app.data_dir.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    let second = merpati::start(config, listener, Arc::new(SystemClock)).await;
    if on_postgres() {
        let second = second.expect("a second node joins on PostgreSQL");
        let shares = |cluster: &Value| -> Option<Vec<usize>> {
            let nodes = cluster["nodes"].as_array()?;
            let counts: Vec<usize> = nodes
                .iter()
                .map(|n| n["slots"].as_array().map_or(0, Vec::len))
                .collect();
            (nodes.len() == 2 && counts.iter().sum::<usize>() == 64 && !counts.contains(&0))
                .then_some(counts)
        };
        let cluster = eventually(|| async {
            let (_, cluster) = app.get("/v1/cluster", ADMIN).await;
            shares(&cluster).map(|_| cluster)
        })
        .await;
        let epochs_raised = cluster["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["id"] != first.as_str())
            .flat_map(|n| n["slots"].as_array().unwrap())
            .all(|s| s["epoch"].as_i64().unwrap() >= 2);
        assert!(
            epochs_raised,
            "a slot that changed hands has a new epoch: {cluster}"
        );
        second.stop().await.unwrap();
        eventually(|| async {
            let (_, cluster) = app.get("/v1/cluster", ADMIN).await;
            let nodes = cluster["nodes"].as_array()?;
            (nodes.len() == 1 && nodes[0]["slots"].as_array()?.len() == 64).then_some(())
        })
        .await;
    } else {
        let message = second
            .err()
            .expect("the second node is refused")
            .to_string();
        assert!(
            message.contains("another merpati node serves this database"),
            "{message}"
        );
        assert!(message.contains(&first), "{message}");
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "it waited for the lease"
        );
        let (_, again) = app.get("/v1/cluster", ADMIN).await;
        assert_eq!(again["nodes"].as_array().unwrap().len(), 1);
        assert_eq!(again["nodes"][0]["id"], first.as_str());
    }
    let (status, _) = app.get("/v1/cluster", "not-the-admin").await;
    assert_eq!(status, 401);
}

/// A node killed without leaving holds the database until its lease runs out: the next
/// one waits for it and takes over; one that stopped gracefully left at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_replaced_once_its_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = spawn_binary_with(dir.path(), &[]).await;
    let first = TestApp::at(url).get("/v1/cluster", ADMIN).await.1["this_node"].clone();
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let started = Instant::now();
    let (mut next, url) = spawn_binary_with(dir.path(), &[]).await;
    let waited = started.elapsed();
    let (_, cluster) = TestApp::at(url.clone()).get("/v1/cluster", ADMIN).await;
    let nodes: Vec<&Value> = cluster["nodes"].as_array().unwrap().iter().collect();
    assert_eq!(nodes.len(), 1, "{cluster}");
    assert_ne!(nodes[0]["id"], first, "a new node");
    assert!(
        waited >= Duration::from_millis(300),
        "it waited for the lease: {waited:?}"
    );

    stop_gracefully(&mut next).await;
    let started = Instant::now();
    let (mut last, _) = spawn_binary_with(dir.path(), &[]).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "a node that left is not waited for"
    );
    stop_gracefully(&mut last).await;
}
