//! `merpati bench delivery --url`: the benchmark against a merpati already running (here, the
//! test's own server, in this process).

use clap::Parser;
use merpati_bench::{measure_running, DeliveryArgs};
use serde_json::Value;

use crate::helpers::*;

#[derive(Parser)]
struct Command {
    #[command(flatten)]
    args: DeliveryArgs,
}

/// `bench delivery` arguments, as the command line takes them.
fn args(given: &[&str]) -> DeliveryArgs {
    let mut line = vec!["bench-delivery"];
    line.extend_from_slice(given);
    Command::try_parse_from(line).expect("valid arguments").args
}

/// A short run: the figures' shape matters here, not their size.
fn short_run(app: &TestApp, more: &[&str]) -> DeliveryArgs {
    let mut given = vec![
        "--url",
        &app.url,
        "--admin-token",
        ADMIN,
        "--duration",
        "1s",
        "--devices",
        "4",
        "--concurrency",
        "4",
        "--baseline-duration",
        "200ms",
    ];
    given.extend_from_slice(more);
    args(&given)
}

async fn accounts(app: &TestApp) -> Vec<Value> {
    let (status, page) = app.get("/v1/accounts", ADMIN).await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_merpati_is_measured_end_to_end_and_keeps_the_run_s_account() {
    let app = TestApp::spawn().await;
    // The server runs in this process: its CPU and memory are this process's.
    let pid = std::process::id().to_string();
    let run = measure_running(&short_run(
        &app,
        &["--endpoints", "2", "--server-pid", &pid],
    ))
    .await
    .unwrap();

    assert!(run.accepted > 0, "{run:?}");
    assert_eq!(run.expected, run.accepted * 2, "two endpoints");
    assert_eq!(run.delivered, run.expected, "{run:?}");
    assert!(run.all_delivered);
    assert_eq!(run.server, app.url);
    assert!(run.latency_ms.p99 > 0.0, "{run:?}");
    assert!(run.server_rss_mib.after.unwrap() > 0.0);
    assert!(run.cpu_us_per_delivery.unwrap().server_us > 0.0);
    assert!(run.relay_baseline.deliveries_per_second > 0.0);
    // `--json` prints the same figures under their documented names.
    let json = serde_json::to_value(&run).unwrap();
    assert_eq!(json["delivered"], run.delivered);
    assert_eq!(
        json["cpu_us_per_delivery"]["server"],
        run.cpu_us_per_delivery.unwrap().server_us
    );
    assert_eq!(
        json["relay_baseline"]["deliveries_per_second"],
        run.relay_baseline.deliveries_per_second
    );

    // The run's account stays, with the events it made: the run's plus its first one.
    let kept = accounts(&app).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["id"], run.account.as_str());

    // Without the server's process, its CPU and memory are not reported rather than made up.
    let run = measure_running(&short_run(&app, &[])).await.unwrap();
    assert!(run.all_delivered, "{run:?}");
    assert!(run.server_cpu_percent_of_one_core.is_none());
    assert!(run.cpu_us_per_delivery.is_none());
    assert!(run.server_rss_mib.after.is_none());
    let json = serde_json::to_value(&run).unwrap();
    assert!(json["cpu_us_per_delivery"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merpati_that_refuses_loopback_endpoints_stops_the_run_and_keeps_nothing_of_it() {
    // The private-address guard as shipped: loopback refused.
    let app = TestApp::spawn_with(&[("delivery.allowed_networks", "")]).await;
    let err = measure_running(&short_run(&app, &[])).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("delivery.allowed_networks"), "{message}");
    assert!(message.contains("forbidden_address"), "{message}");
    assert!(accounts(&app).await.is_empty(), "the run's account is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_before_anything_is_provisioned() {
    let app = TestApp::spawn().await;
    let cases: [(&[&str], &str); 5] = [
        (&["--url", &app.url, "--admin-token", ""], "admin token"),
        (
            &["--url", "ftp://example.com", "--admin-token", ADMIN],
            "http URL",
        ),
        (
            &["--url", "https://127.0.0.1:8080", "--admin-token", ADMIN],
            "http URL",
        ),
        (
            &["--url", &app.url, "--admin-token", ADMIN, "--idle", "1s"],
            "--server-pid",
        ),
        (
            &[
                "--url",
                &app.url,
                "--admin-token",
                ADMIN,
                "--server-pid",
                "4000000000",
            ],
            "no such process",
        ),
    ];
    for (given, says) in cases {
        let err = measure_running(&args(given)).await.unwrap_err();
        assert!(format!("{err:#}").contains(says), "{given:?}: {err:#}");
    }
    let mut wrong_token = short_run(&app, &[]);
    wrong_token.admin_token = Some("not-the-admin-token".into());
    let err = measure_running(&wrong_token).await.unwrap_err();
    assert!(format!("{err:#}").contains("401"), "{err:#}");
    assert!(accounts(&app).await.is_empty());
    // `--server-pid` reads a process of this machine, for a merpati given by `--url`.
    assert!(Command::try_parse_from(["bench-delivery", "--server-pid", "1"]).is_err());
}
