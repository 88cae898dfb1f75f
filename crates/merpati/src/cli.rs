//! The command line: `serve`, `migrate`, `rotate-key`, `listen`; `simulate` and `bench` drive a merpati
//! from outside, with the benchmark crate.

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
    /// Seal every stored secret with a new key (the key file's), while merpati runs or not,
    /// then drop the old key.
    RotateKey {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Devices speaking the real device protocol against a running merpati.
    Simulate(merpati_bench::simulate::SimulateArgs),
    /// Measurements against a merpati started for the purpose.
    #[command(subcommand)]
    Bench(BenchCommand),
    #[command(flatten)]
    Resource(crate::remote::Resource),
    /// Print the OpenAPI 3.1 document of the HTTP API (what `/openapi.json` serves).
    Openapi,
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

#[derive(Subcommand)]
enum BenchCommand {
    /// Ingest to receipt: events accepted and delivered per second, latency, CPU, memory,
    /// and plain loopback HTTP for comparison.
    Delivery(merpati_bench::DeliveryArgs),
    /// Device links: memory and idle CPU with N links, and a mass drop timed to the
    /// receiver.
    Presence(merpati_bench::PresenceArgs),
    /// An alert storm: N devices in B businesses down at once and back, the messages a
    /// notifier gets (one per business each way), how soon, and the server's CPU.
    Alerts(merpati_bench::AlertArgs),
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
            let (what, version) = crate::store::migrate(&config).await?;
            println!("database {what} is at schema version {version}");
            Ok(())
        }
        Command::RotateKey { data_dir } => {
            let config = load(cli.config, data_dir)?;
            println!("{}", crate::store::rotate_key(&config).await?);
            Ok(())
        }
        Command::Simulate(args) => {
            init_logging(LogFormat::Text);
            merpati_bench::simulate::run(args).await
        }
        Command::Resource(resource) => crate::remote::run(resource).await,
        Command::Openapi => {
            print!("{}", crate::app::openapi_json());
            Ok(())
        }
        Command::Bench(BenchCommand::Delivery(args)) => merpati_bench::delivery(args).await,
        Command::Bench(BenchCommand::Presence(args)) => merpati_bench::presence(args).await,
        Command::Bench(BenchCommand::Alerts(args)) => merpati_bench::alerts(args).await,
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
