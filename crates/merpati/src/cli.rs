//! The command line: `serve`, `migrate`, `listen`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "merpati",
    version,
    about = "Self-hosted event hub for messaging-device gateways"
)]
struct Cli {
    /// A TOML settings file; `MERPATI_*` environment variables override it.
    #[arg(long, global = true, env = "MERPATI_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: API, device endpoints and delivery.
    Serve {
        /// Listen address (overrides `listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Create or upgrade the database, then exit.
    Migrate {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Devices speaking the real device protocol against a running merpati.
    Simulate(SimulateArgs),
    /// Measurements against a merpati started for the purpose.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A local webhook receiver that verifies signatures and prints each event, for
    /// developing a receiver.
    Listen {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// The endpoint's secret (`whsec_…`); without it signatures are not checked.
        #[arg(long, env = "MERPATI_LISTEN_SECRET")]
        secret: Option<String>,
    },
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// The merpati to talk to.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// To create the simulated account, its devices and an endpoint.
    #[arg(long, env = "MERPATI_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    #[arg(long, default_value_t = 10)]
    devices: usize,
    /// `link` (a WebSocket each) or `http` (heartbeats by POST).
    #[arg(long, default_value = "link")]
    mode: String,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat: std::time::Duration,
    /// Inbound SMS per second, per device.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Every this long, `--drop-fraction` of the devices drop...
    #[arg(long, value_parser = humantime::parse_duration)]
    drop_every: Option<std::time::Duration>,
    #[arg(long, default_value_t = 0.1)]
    drop_fraction: f64,
    /// ...and come back after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    down_for: std::time::Duration,
    /// Stop after this long (default: at Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<std::time::Duration>,
    #[arg(long, default_value = "sms")]
    engine: String,
    /// Also register an endpoint with this URL for everything the fleet causes.
    #[arg(long)]
    endpoint: Option<String>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Ingest to receipt: events accepted and delivered per second, latency, CPU, memory,
    /// and plain loopback HTTP for comparison.
    Delivery(crate::bench::DeliveryArgs),
    /// Device links: memory and idle CPU with N links, and a mass drop timed to the
    /// receiver.
    Presence(crate::bench::PresenceArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match crate::block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("merpati: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli_config: Option<PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<Config> {
    let mut config = Config::load(cli_config.as_deref())?;
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    init_logging(config.log_format);
    Ok(config)
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { listen, data_dir } => {
            let mut config = load(cli.config, data_dir)?;
            if let Some(addr) = listen {
                config.listen = addr;
            }
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            crate::run(config, listener).await
        }
        Command::Migrate { data_dir } => {
            let config = load(cli.config, data_dir)?;
            let path = config.sqlite_path()?;
            let store = crate::store::sqlite::SqliteStore::open(&path, &config.database).await?;
            let version = crate::store::sqlite::schema_version(&store).await?;
            crate::store::Store::close(&store).await;
            println!("database {} is at schema version {version}", path.display());
            Ok(())
        }
        Command::Simulate(args) => {
            init_logging(LogFormat::Text);
            simulate(args).await
        }
        Command::Bench(BenchCommand::Delivery(args)) => crate::bench::delivery(args).await,
        Command::Bench(BenchCommand::Presence(args)) => crate::bench::presence(args).await,
        Command::Listen { listen, secret } => {
            init_logging(LogFormat::Text);
            listen_and_print(listen, secret).await
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERPATI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use crate::simulate::{Api, Behaviour, Mode, Running};
    use std::sync::atomic::Ordering::Relaxed;
    let mode = match args.mode.as_str() {
        "link" => Mode::Link,
        "http" => Mode::Http,
        other => anyhow::bail!("--mode must be link or http, not {other:?}"),
    };
    let api = Api::new(&args.url);
    let endpoint = args
        .endpoint
        .as_deref()
        .map(|url| (url, serde_json::json!(["*"])));
    let fleet = crate::simulate::provision(
        &api,
        &args.admin_token,
        args.devices,
        &args.engine,
        endpoint,
    )
    .await?;
    eprintln!(
        "merpati simulate: account {} with {} devices ({:?}); API key {}",
        fleet.account,
        fleet.devices.len(),
        mode,
        fleet.key
    );
    let behaviour = Behaviour {
        mode,
        heartbeat: args.heartbeat,
        rate: args.rate,
    };
    let running = Running::start(&api, &fleet, behaviour, 256).await;
    let stats = running.stats.clone();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut report = tokio::time::interval(std::time::Duration::from_secs(5));
    let mut drops = args
        .drop_every
        .map(|every| tokio::time::interval_at(tokio::time::Instant::now() + every, every));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => break,
            _ = async { drops.as_mut().expect("guarded").tick().await }, if drops.is_some() => {
                let n = running.drop_random(args.drop_fraction, args.down_for);
                eprintln!("dropped {n} devices for {:?}", args.down_for);
            }
            _ = report.tick() => eprintln!(
                "up {}  connects {}  items sent {}  acked {}  errors {}",
                stats.up.load(Relaxed),
                stats.connects.load(Relaxed),
                stats.items_sent.load(Relaxed),
                stats.items_acked.load(Relaxed),
                stats.errors.load(Relaxed),
            ),
        }
    }
    running.stop().await;
    println!(
        "connects {}  items sent {}  acked {}  errors {}",
        stats.connects.load(Relaxed),
        stats.items_sent.load(Relaxed),
        stats.items_acked.load(Relaxed),
        stats.errors.load(Relaxed),
    );
    Ok(())
}

async fn listen_and_print(addr: SocketAddr, secret: Option<String>) -> anyhow::Result<()> {
    let webhook = secret
        .map(|s| merpati_webhooks::Webhook::new(&s))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let webhook = webhook.clone();
        async move {
            let verified = match &webhook {
                Some(w) => match w.verify(&headers, &body) {
                    Ok(()) => "verified".to_string(),
                    Err(e) => format!("REJECTED ({e})"),
                },
                None => "signature not checked (no --secret)".to_string(),
            };
            let content_type = headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let parsed = merpati_webhooks::Event::from_body(content_type, &body);
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            match parsed {
                Ok(event) => println!(
                    "{id} {} [{verified}]\n{}",
                    event.event_type(),
                    serde_json::to_string_pretty(&event).unwrap_or_default()
                ),
                Err(e) => println!("{id} unreadable body ({e}) [{verified}]"),
            }
            if verified.starts_with("REJECTED") {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::NO_CONTENT
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("merpati listen: receiving webhooks on http://{addr}/");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
