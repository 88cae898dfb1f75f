//! `merpati devices|endpoints|events|incidents …`: each subcommand one or two API calls,
//! shown as a table (or a record) for people, or as the API's JSON with `--json`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::table::{cell, render};
use super::Remote;

/// Where the API is, and whose key: shared by every resource command.
#[derive(Args)]
pub struct Target {
    /// The merpati to talk to.
    #[arg(
        long,
        env = "MERPATI_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An account API key.
    #[arg(
        long,
        env = "MERPATI_API_KEY",
        default_value = "",
        hide_env_values = true,
        global = true
    )]
    api_key: String,
    /// The API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum Resource {
    /// Devices: `list` (with filters), `get ID`.
    Devices {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// Endpoints: `list`, `get ID`, `recover ID --since 2h` (with progress).
    Endpoints {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: EndpointAction,
    },
    /// Events: `list`, `get ID` (deliveries and attempts), `replay ID`, `tail` (live).
    Events {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: EventAction,
    },
    /// Incidents: `list`, `get ID`, `ack ID`.
    Incidents {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: IncidentAction,
    },
}

#[derive(Subcommand)]
pub enum DeviceAction {
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        engine: Option<String>,
        #[arg(long)]
        business: Option<String>,
        #[arg(long)]
        channel: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    Get {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum EndpointAction {
    List,
    Get {
        id: String,
    },
    /// Sends every failed delivery since then again, as a job, and follows its progress.
    Recover {
        id: String,
        /// How far back, e.g. `2h`, `1d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Duration,
    },
}

#[derive(Subcommand)]
pub enum EventAction {
    List {
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long)]
        device: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    Get {
        id: String,
    },
    Replay {
        id: String,
        /// Only to this endpoint.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Follows events as they are stored.
    Tail {
        #[arg(long = "type")]
        event_type: Option<String>,
        #[arg(long)]
        device: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum IncidentAction {
    List {
        #[arg(long)]
        state: Option<String>,
    },
    Get {
        id: String,
    },
    Ack {
        id: String,
        /// Who acknowledges, for the timeline.
        #[arg(long)]
        by: Option<String>,
        #[arg(long)]
        note: Option<String>,
    },
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

fn show(json: bool, v: &Value, text: impl FnOnce(&Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).expect("JSON"));
    } else {
        println!("{}", text(v));
    }
}

fn list(v: &Value, columns: &[(&str, &str)]) -> String {
    render(v["data"].as_array().map_or(&[][..], Vec::as_slice), columns)
}

/// One resource as `field: value` lines.
fn record(v: &Value, fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| format!("{f}: {}", cell(v, f)))
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn run(resource: Resource) -> anyhow::Result<()> {
    match resource {
        Resource::Devices { target, action } => devices(target, action).await,
        Resource::Endpoints { target, action } => endpoints(target, action).await,
        Resource::Events { target, action } => events(target, action).await,
        Resource::Incidents { target, action } => incidents(target, action).await,
    }
}

async fn devices(t: Target, action: DeviceAction) -> anyhow::Result<()> {
    let api = Remote::new(&t.url, &t.api_key)?;
    match action {
        DeviceAction::List {
            status,
            engine,
            business,
            channel,
            limit,
        } => {
            let q = query(&[
                ("status", status),
                ("engine", engine),
                ("business_id", business),
                ("channel_id", channel),
                ("limit", Some(limit.to_string())),
            ]);
            let v = api.get(&format!("/v1/devices?{q}")).await?;
            show(t.json, &v, |v| {
                list(
                    v,
                    &[
                        ("id", "id"),
                        ("name", "name"),
                        ("channel", "channel_id"),
                        ("status", "status"),
                        ("since", "status_since"),
                    ],
                )
            });
        }
        DeviceAction::Get { id } => {
            let v = api.get(&format!("/v1/devices/{id}/presence")).await?;
            show(t.json, &v, |v| {
                record(
                    v,
                    &["device_id", "status", "since", "reason", "last_seen_at"],
                )
            });
        }
    }
    Ok(())
}

async fn endpoints(t: Target, action: EndpointAction) -> anyhow::Result<()> {
    let api = Remote::new(&t.url, &t.api_key)?;
    match action {
        EndpointAction::List => {
            let v = api.get("/v1/endpoints?limit=500").await?;
            show(t.json, &v, |v| {
                list(
                    v,
                    &[
                        ("id", "id"),
                        ("url", "url"),
                        ("events", "events"),
                        ("disabled", "disabled"),
                        ("paused_until", "paused_until"),
                    ],
                )
            });
        }
        EndpointAction::Get { id } => {
            let v = api.get(&format!("/v1/endpoints/{id}")).await?;
            show(t.json, &v, |v| {
                record(
                    v,
                    &[
                        "id",
                        "url",
                        "events",
                        "format",
                        "disabled",
                        "disabled_reason",
                        "paused_until",
                    ],
                )
            });
        }
        EndpointAction::Recover { id, since } => {
            let from = std::time::SystemTime::now()
                .checked_sub(since)
                .context("--since reaches before 1970")?
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let job = api
                .post(
                    &format!("/v1/endpoints/{id}/recover"),
                    json!({"since": from}),
                )
                .await?;
            let job_id = cell(&job, "id");
            let finished = follow_job(&api, &job_id, t.json).await?;
            show(t.json, &finished, |v| {
                format!(
                    "recovered {} of {} deliveries (job {})",
                    cell(v, "done"),
                    cell(v, "total"),
                    cell(v, "id")
                )
            });
        }
    }
    Ok(())
}

/// Draws the job's progress until it is done; returns it as it ended.
async fn follow_job(api: &Remote, id: &str, quiet: bool) -> anyhow::Result<Value> {
    loop {
        let job = api.get(&format!("/v1/jobs/{id}")).await?;
        let (done, total) = (
            job["done"].as_i64().unwrap_or(0),
            job["total"].as_i64().unwrap_or(0),
        );
        if !quiet {
            let width = 30;
            let filled = if total > 0 {
                (done * width / total) as usize
            } else {
                width as usize
            };
            eprint!(
                "\r[{}{}] {done}/{total}",
                "#".repeat(filled),
                ".".repeat(width as usize - filled)
            );
            let _ = std::io::stderr().flush();
        }
        if job["status"] == "done" {
            if !quiet {
                eprintln!();
            }
            return Ok(job);
        }
        // The job tells its progress on the stream; between its chunks, a look a second.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn events(t: Target, action: EventAction) -> anyhow::Result<()> {
    let api = Remote::new(&t.url, &t.api_key)?;
    match action {
        EventAction::List {
            event_type,
            device,
            limit,
        } => {
            let q = query(&[
                ("type", event_type),
                ("device_id", device),
                ("limit", Some(limit.to_string())),
            ]);
            let v = api.get(&format!("/v1/events?{q}")).await?;
            show(t.json, &v, |v| {
                list(
                    v,
                    &[
                        ("id", "id"),
                        ("type", "type"),
                        ("device", "device_id"),
                        ("created_at", "created_at"),
                    ],
                )
            });
        }
        EventAction::Get { id } => {
            let v = api.get(&format!("/v1/events/{id}")).await?;
            show(t.json, &v, |v| {
                let mut out = record(v, &["id", "type", "device_id", "created_at"]);
                out.push_str(&format!(
                    "\npayload: {}\n\n",
                    serde_json::to_string(&v["payload"]).expect("JSON")
                ));
                let mut attempts = Vec::new();
                for d in v["deliveries"].as_array().into_iter().flatten() {
                    for a in d["attempts"].as_array().into_iter().flatten() {
                        let mut row = a.clone();
                        row["endpoint_id"] = d["endpoint_id"].clone();
                        row["delivery_status"] = d["status"].clone();
                        attempts.push(row);
                    }
                }
                out.push_str(&render(
                    &attempts,
                    &[
                        ("endpoint", "endpoint_id"),
                        ("attempt", "attempt"),
                        ("status", "status_code"),
                        ("ms", "duration_ms"),
                        ("error", "error_kind"),
                        ("delivery", "delivery_status"),
                    ],
                ));
                out
            });
        }
        EventAction::Replay { id, endpoint } => {
            let body = match endpoint {
                Some(e) => json!({"endpoint_id": e}),
                None => json!({}),
            };
            let v = api.post(&format!("/v1/events/{id}/replay"), body).await?;
            show(t.json, &v, |v| format!("replayed: {v}"));
        }
        EventAction::Tail { event_type, device } => {
            let json_out = t.json;
            api.follow("events", async |name, data| {
                if name != "events" {
                    if name == "missed" {
                        eprintln!("(fell behind: {} changes missed)", data["count"]);
                    }
                    return Ok(true);
                }
                for e in data["events"].as_array().into_iter().flatten() {
                    let matches = event_type.as_deref().is_none_or(|t| {
                        e["type"] == t
                            || (t.ends_with(".*") && cell(e, "type").starts_with(&t[..t.len() - 1]))
                    }) && device.as_deref().is_none_or(|d| e["device_id"] == d);
                    if !matches {
                        continue;
                    }
                    if json_out {
                        let full = api.get(&format!("/v1/events/{}", cell(e, "id"))).await?;
                        println!("{}", serde_json::to_string(&full["payload"]).expect("JSON"));
                    } else {
                        println!(
                            "{}  {}  {}",
                            cell(e, "id"),
                            cell(e, "type"),
                            cell(e, "device_id")
                        );
                    }
                    let _ = std::io::stdout().flush();
                }
                Ok(true)
            })
            .await?;
        }
    }
    Ok(())
}

async fn incidents(t: Target, action: IncidentAction) -> anyhow::Result<()> {
    let api = Remote::new(&t.url, &t.api_key)?;
    let fields = [
        "id",
        "state",
        "severity",
        "business.name",
        "opened_at",
        "acknowledged_by",
        "resolved_at",
    ];
    match action {
        IncidentAction::List { state } => {
            let q = query(&[("state", state), ("limit", Some("100".into()))]);
            let v = api.get(&format!("/v1/incidents?{q}")).await?;
            show(t.json, &v, |v| {
                list(
                    v,
                    &[
                        ("id", "id"),
                        ("state", "state"),
                        ("severity", "severity"),
                        ("business", "business.name"),
                        ("opened_at", "opened_at"),
                    ],
                )
            });
        }
        IncidentAction::Get { id } => {
            let v = api.get(&format!("/v1/incidents/{id}")).await?;
            show(t.json, &v, |v| {
                let mut out = record(v, &fields);
                out.push_str("\n\n");
                out.push_str(&render(
                    v["timeline"].as_array().map_or(&[][..], Vec::as_slice),
                    &[
                        ("at", "at"),
                        ("type", "type"),
                        ("by", "by"),
                        ("device", "device_id"),
                    ],
                ));
                out
            });
        }
        IncidentAction::Ack { id, by, note } => {
            let mut body = json!({});
            if let Some(by) = by {
                body["by"] = json!(by);
            }
            if let Some(note) = note {
                body["note"] = json!(note);
            }
            let v = api
                .post(&format!("/v1/incidents/{id}/acknowledge"), body)
                .await?;
            show(t.json, &v, |v| record(v, &fields));
        }
    }
    Ok(())
}
