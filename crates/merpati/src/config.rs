//! Settings: defaults, then a TOML file, then `MERPATI_<SECTION>_<KEY>` environment variables.
//!
//! Every source is flattened to dotted keys (`delivery.timeout`) and each known key is parsed
//! once, so a file and the environment are validated by the same code and an unknown key in
//! the file is an error rather than a silently ignored typo.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use merpati_domain::limits::Limits;
use merpati_domain::presence::{EngineLease, LeaseSettings};
use merpati_runtime::delivery::DeliveryConfig;
use merpati_runtime::retention::RetentionConfig;
use merpati_sqlite::Options as DatabaseConfig;

mod sources;
#[cfg(test)]
use sources::flatten_toml;
use sources::{engine_key, env_settings, toml_settings};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("unknown setting {0:?}")]
    UnknownKey(String),
    #[error("setting {key}: {message}")]
    Invalid { key: String, message: String },
}

/// A secret that never shows up in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: Option<Secret>,
    /// Keys sealing secrets at rest (base64, comma-separated, the first sealing); without
    /// it, the key file in the data directory.
    pub secret_key: Option<Secret>,
    pub database_url: Option<Secret>,
    pub log_format: LogFormat,
    pub server: ConnectionLimits,
    /// HTTPS: the certificate chain and the private key (PEM files), read again on SIGHUP.
    pub tls: Option<TlsFiles>,
    /// What an account may take, unless the admin set its own (`limits.*`).
    pub limits: Limits,
    pub database: DatabaseConfig,
    /// PostgreSQL: connections committing groups side by side (`database.writers`).
    pub database_writers: usize,
    pub delivery: DeliveryConfig,
    pub presence: PresenceConfig,
    pub retention: RetentionConfig,
    pub alerts: AlertsConfig,
    pub cluster: ClusterConfig,
}

/// This node among the nodes of its database (`cluster.*`).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How long the node's lease lasts unless renewed (it is renewed five times within).
    pub lease: Duration,
    /// What the node is called in `GET /v1/cluster`; the host's name when absent.
    pub node_name: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            lease: Duration::from_secs(5),
            node_name: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a connection may take of the server (`server.*`).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// How long a client has to send a request's headers (and an idle kept-alive
    /// connection to start its next request).
    pub header_timeout: Duration,
    /// How long a client has to send a request's body, once its headers are in.
    pub body_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed: a request from one of them is from the
    /// address it names (the last one that is not itself a trusted proxy).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 16_384,
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Devices of one business dropping within this make one incident and one message.
    pub group_wait: Duration,
    /// A drop this soon after an incident resolved reopens it.
    pub reopen_within: Duration,
    /// Drops within `flap_within` that make a device flapping.
    pub flap_drops: usize,
    pub flap_within: Duration,
    /// How long a flapping device stays up (or down) to be stable again.
    pub flap_quiet: Duration,
    /// How far before a drop its affected conversations are counted.
    pub conversations_window: Duration,
    /// The address people's browsers reach, for links in notifications; `http://listen`
    /// when absent.
    pub public_url: Option<String>,
    /// `smtp://`, `smtp+starttls://` or `smtps://`, with credentials if the server wants
    /// them.
    pub smtp_url: Option<Secret>,
    pub smtp_from: Option<String>,
    /// A CA certificate (PEM file) the SMTP server's is signed by, besides the public ones.
    pub smtp_ca_file: Option<PathBuf>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            group_wait: Duration::from_secs(10),
            reopen_within: Duration::from_secs(300),
            flap_drops: 4,
            flap_within: Duration::from_secs(1800),
            flap_quiet: Duration::from_secs(1800),
            conversations_window: Duration::from_secs(24 * 3600),
            public_url: None,
            smtp_url: None,
            smtp_from: None,
            smtp_ca_file: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Heartbeat timeout and grace: the defaults, and per engine.
    pub lease: LeaseSettings,
    /// Heartbeats faster than one per this (after a burst of ten) are refused.
    pub min_heartbeat_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            data_dir: PathBuf::from("data"),
            admin_token: None,
            secret_key: None,
            database_url: None,
            log_format: LogFormat::Text,
            server: ConnectionLimits::default(),
            tls: None,
            limits: Limits {
                events_per_second: 10_000,
                // A whole batch (1,000 items) at once.
                device_events_per_second: 1_000,
                max_devices: 10_000,
                max_endpoints: 100,
                max_alert_rules: 200,
            },
            database: DatabaseConfig::default(),
            database_writers: merpati_postgres::Options::default().writers,
            delivery: DeliveryConfig::default(),
            retention: RetentionConfig::default(),
            alerts: AlertsConfig::default(),
            cluster: ClusterConfig::default(),
            presence: PresenceConfig {
                lease: LeaseSettings::default(),
                min_heartbeat_interval: Duration::from_secs(1),
            },
        }
    }
}

impl Config {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut settings = BTreeMap::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            settings = toml_settings(&text, path)?;
        }
        settings.extend(env_settings(std::env::vars()));
        Config::from_settings(&settings)
    }

    /// A settings file's text over the defaults, without the environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_settings(&toml_settings(text, Path::new("<text>"))?)
    }

    /// Builds a config from dotted keys over the defaults. Unknown keys are errors.
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let (mut tls_cert, mut tls_key) = (None, None);
        for (key, raw) in settings {
            let invalid = |message: String| ConfigError::Invalid {
                key: key.clone(),
                message,
            };
            let raw = raw.trim();
            match key.as_str() {
                "listen" => c.listen = raw.parse().map_err(|e| invalid(format!("{e}")))?,
                "data_dir" => c.data_dir = PathBuf::from(raw),
                "admin_token" => {
                    if raw.len() < 16 {
                        return Err(invalid("must be at least 16 characters".into()));
                    }
                    c.admin_token = Some(Secret::new(raw))
                }
                "secret_key" => {
                    // The error never repeats the value.
                    merpati_keyring::KeyRing::parse(raw).map_err(|e| {
                        invalid(format!(
                            "{e}: expected one or more keys of 32 random bytes in base64 \
                             (`openssl rand -base64 32`), separated by commas"
                        ))
                    })?;
                    c.secret_key = Some(Secret::new(raw))
                }
                "database_url" => c.database_url = Some(Secret::new(raw)),
                "log_format" => {
                    c.log_format = match raw {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        _ => return Err(invalid("expected \"text\" or \"json\"".into())),
                    }
                }
                "database.synchronous" => {
                    c.database.synchronous_full = match raw {
                        "full" => true,
                        "normal" => false,
                        _ => return Err(invalid("expected \"full\" or \"normal\"".into())),
                    }
                }
                "tls.cert" => tls_cert = Some(PathBuf::from(raw)),
                "tls.key" => tls_key = Some(PathBuf::from(raw)),
                "server.trusted_proxies" => {
                    c.server.trusted_proxies = split_list(raw)
                        .map(|s| parse_network(s).map_err(&invalid))
                        .collect::<Result<_, _>>()?
                }
                "cluster.lease" => {
                    c.cluster.lease = parse_positive_duration(raw).map_err(invalid)?
                }
                "cluster.node_name" => {
                    if raw.trim().is_empty() {
                        return Err(invalid("expected a name".into()));
                    }
                    c.cluster.node_name = Some(raw.trim().to_owned())
                }
                "server.max_connections" => {
                    c.server.max_connections = parse_count(raw).map_err(invalid)?
                }
                "server.header_timeout" => {
                    c.server.header_timeout = parse_positive_duration(raw).map_err(invalid)?
                }
                "server.body_timeout" => {
                    c.server.body_timeout = parse_positive_duration(raw).map_err(invalid)?
                }
                "limits.events_per_second" => {
                    c.limits.events_per_second = parse_limit(raw).map_err(invalid)?
                }
                "limits.device_events_per_second" => {
                    c.limits.device_events_per_second = parse_limit(raw).map_err(invalid)?
                }
                "limits.max_devices" => c.limits.max_devices = parse_limit(raw).map_err(invalid)?,
                "limits.max_endpoints" => {
                    c.limits.max_endpoints = parse_limit(raw).map_err(invalid)?
                }
                "limits.max_alert_rules" => {
                    c.limits.max_alert_rules = parse_limit(raw).map_err(invalid)?
                }
                "database.writers" => c.database_writers = parse_count(raw).map_err(invalid)?,
                "database.read_connections" => {
                    c.database.read_connections = parse_count(raw).map_err(invalid)?
                }
                "delivery.allowed_networks" => {
                    c.delivery.allowed_networks = split_list(raw)
                        .map(|s| parse_network(s).map_err(&invalid))
                        .collect::<Result<_, _>>()?
                }
                "delivery.resolve" => {
                    c.delivery.resolve.clear();
                    for pair in split_list(raw) {
                        let (name, addr) = pair
                            .split_once('=')
                            .ok_or_else(|| invalid(format!("{pair:?} is not name=address")))?;
                        let addr = addr
                            .trim()
                            .parse()
                            .map_err(|_| invalid(format!("{addr:?} is not an IP address")))?;
                        c.delivery
                            .resolve
                            .entry(name.trim().to_ascii_lowercase())
                            .or_default()
                            .push(addr);
                    }
                }
                "delivery.retry_schedule" => {
                    c.delivery.retry_schedule = split_list(raw)
                        .map(|s| parse_duration(s).map_err(&invalid))
                        .collect::<Result<_, _>>()?
                }
                "delivery.timeout" => {
                    c.delivery.timeout = parse_positive_duration(raw).map_err(invalid)?
                }
                "delivery.max_in_flight" => {
                    c.delivery.max_in_flight = parse_count(raw).map_err(invalid)?
                }
                "delivery.disable_after" => {
                    c.delivery.disable_after = parse_positive_duration(raw).map_err(invalid)?
                }
                "delivery.endpoint_concurrency" => {
                    c.delivery.endpoint_concurrency = parse_count(raw).map_err(invalid)?
                }
                "delivery.breaker_failures" => {
                    let n = parse_count(raw).map_err(invalid)?;
                    c.delivery.breaker_failures = u32::try_from(n).unwrap_or(u32::MAX)
                }
                "delivery.breaker_cooldown" => {
                    c.delivery.breaker_cooldown = parse_positive_duration(raw).map_err(invalid)?
                }
                "delivery.breaker_max_cooldown" => {
                    c.delivery.breaker_max_cooldown =
                        parse_positive_duration(raw).map_err(invalid)?
                }
                "delivery.idle_release_after" => {
                    c.delivery.idle_release_after = parse_duration(raw).map_err(invalid)?
                }
                "delivery.secret_rotation_grace" => {
                    c.delivery.secret_rotation_grace = parse_duration(raw).map_err(invalid)?
                }
                "presence.heartbeat_timeout" => {
                    c.presence.lease.heartbeat_timeout =
                        parse_positive_duration(raw).map_err(invalid)?
                }
                "presence.grace" => {
                    c.presence.lease.grace = parse_duration(raw).map_err(invalid)?
                }
                "retention.audit_log" => {
                    c.retention.audit_max_age = parse_positive_duration(raw).map_err(invalid)?
                }
                "retention.max_age" => {
                    c.retention.max_age = parse_positive_duration(raw).map_err(invalid)?
                }
                "retention.interval" => {
                    c.retention.interval = parse_positive_duration(raw).map_err(invalid)?
                }
                "retention.part_span" => {
                    c.retention.part_span = parse_positive_duration(raw).map_err(invalid)?
                }
                "alerts.group_wait" => {
                    c.alerts.group_wait = parse_duration(raw).map_err(invalid)?
                }
                "alerts.reopen_within" => {
                    c.alerts.reopen_within = parse_duration(raw).map_err(invalid)?
                }
                "alerts.flap_drops" => {
                    let n = parse_count(raw).map_err(invalid)?;
                    if n < 2 {
                        return Err(invalid("must be at least 2".into()));
                    }
                    c.alerts.flap_drops = n
                }
                "alerts.flap_within" => {
                    c.alerts.flap_within = parse_positive_duration(raw).map_err(invalid)?
                }
                "alerts.flap_quiet" => {
                    c.alerts.flap_quiet = parse_positive_duration(raw).map_err(invalid)?
                }
                "alerts.conversations_window" => {
                    c.alerts.conversations_window = parse_positive_duration(raw).map_err(invalid)?
                }
                "alerts.public_url" => {
                    let url = url::Url::parse(raw).map_err(|e| invalid(format!("{e}")))?;
                    if !matches!(url.scheme(), "http" | "https") {
                        return Err(invalid("expected an http:// or https:// URL".into()));
                    }
                    c.alerts.public_url = Some(raw.trim_end_matches('/').to_string())
                }
                "alerts.smtp_url" => {
                    merpati_runtime::mail::parse_smtp_url(raw).map_err(invalid)?;
                    c.alerts.smtp_url = Some(Secret::new(raw))
                }
                "alerts.smtp_ca_file" => {
                    let path = PathBuf::from(raw);
                    if !path.is_file() {
                        return Err(invalid(format!("{raw:?} is not a file")));
                    }
                    c.alerts.smtp_ca_file = Some(path)
                }
                "alerts.smtp_from" => {
                    merpati_runtime::mail::parse_mailbox(raw).map_err(invalid)?;
                    c.alerts.smtp_from = Some(raw.to_string())
                }
                "presence.min_heartbeat_interval" => {
                    c.presence.min_heartbeat_interval =
                        parse_positive_duration(raw).map_err(invalid)?
                }
                other => {
                    let Some((engine, setting)) = engine_key(other) else {
                        return Err(ConfigError::UnknownKey(key.clone()));
                    };
                    let value = parse_positive_duration(raw).map_err(invalid)?;
                    let e: &mut EngineLease = c
                        .presence
                        .lease
                        .engines
                        .entry(engine.to_owned())
                        .or_default();
                    match setting {
                        "heartbeat_timeout" => e.heartbeat_timeout = Some(value),
                        _ => e.grace = Some(value),
                    }
                }
            }
        }
        c.tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "tls.key".into(),
                    message: "tls.cert is set: set the private key's file too".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "tls.cert".into(),
                    message: "tls.key is set: set the certificate chain's file too".into(),
                })
            }
        };
        c.database()?;
        Ok(c)
    }

    /// The database `database_url` names: a SQLite file (`sqlite://PATH`, or
    /// `merpati.db` in the data directory when unset) or a PostgreSQL server
    /// (`postgres://…` or `postgresql://…`).
    pub fn database(&self) -> Result<Database, ConfigError> {
        let Some(url) = &self.database_url else {
            return Ok(Database::Sqlite(self.data_dir.join("merpati.db")));
        };
        let url = url.expose();
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return match merpati_postgres::check_url(url) {
                Ok(()) => Ok(Database::Postgres(url.to_owned())),
                // The driver's message never repeats the URL, which may hold a password.
                Err(message) => Err(ConfigError::Invalid {
                    key: "database_url".into(),
                    message,
                }),
            };
        }
        Err(ConfigError::Invalid {
            key: "database_url".into(),
            message: "expected sqlite://PATH, postgres://… or postgresql://…".into(),
        })
    }
}

/// Where the data is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// The connection URL (it may hold a password: never logged).
    Postgres(String),
}

fn split_list(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("{raw:?} is not a duration ({e})"))
}

fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    let d = parse_duration(raw)?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn parse_limit(raw: &str) -> Result<u32, String> {
    match raw.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{raw:?} is not a whole number from 1 to {}",
            u32::MAX
        )),
    }
}

fn parse_count(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{raw:?} is not a positive whole number")),
    }
}

fn parse_network(raw: &str) -> Result<IpNet, String> {
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{raw:?} is not a CIDR range"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_broken_file_s_error_never_repeats_its_lines() {
        // Found by the property test: toml's message quotes the line, here a token.
        let text =
            "admin_token = \"first-0123456789abcdef\"\nadmin_token = \"second-0123456789abcdef\"\n";
        let said = Config::from_toml(text).unwrap_err().to_string();
        assert!(!said.contains("0123456789abcdef"), "{said}");
        assert!(said.contains("line 2, column 1"), "{said}");
    }

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_brief() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.delivery.timeout, Duration::from_secs(15));
        assert_eq!(c.delivery.retry_schedule.len(), 7);
        assert_eq!(c.presence.lease.grace, Duration::from_secs(30));
    }

    #[test]
    fn environment_names_map_to_keys() {
        let env = env_settings(
            [
                ("MERPATI_DELIVERY_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128"),
                ("MERPATI_LISTEN", "0.0.0.0:9"),
                ("MERPATI_NOT_A_KEY", "x"),
                ("PATH", "/bin"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string())),
        );
        assert_eq!(env.len(), 2);
        let c = Config::from_settings(&env).unwrap();
        assert_eq!(c.delivery.allowed_networks.len(), 2);
        assert_eq!(c.listen.port(), 9);
    }

    #[test]
    fn toml_file_is_flattened_and_checked() {
        let table: toml::Table = r#"
            listen = "127.0.0.1:1"
            [delivery]
            retry_schedule = ["1s", "2m"]
            timeout = "3s"
        "#
        .parse()
        .unwrap();
        let mut out = BTreeMap::new();
        flatten_toml("", &toml::Value::Table(table), &mut out).unwrap();
        let c = Config::from_settings(&out).unwrap();
        assert_eq!(
            c.delivery.retry_schedule,
            vec![Duration::from_secs(1), Duration::from_secs(120)]
        );
        assert_eq!(c.delivery.timeout, Duration::from_secs(3));

        let bad: toml::Table = "[delivery]\ntimout = \"3s\"".parse().unwrap();
        assert!(matches!(
            flatten_toml("", &toml::Value::Table(bad), &mut BTreeMap::new()),
            Err(ConfigError::UnknownKey(k)) if k == "delivery.timout"
        ));
    }

    #[test]
    fn per_engine_lease_settings() {
        let env = env_settings(
            [
                ("MERPATI_PRESENCE_ENGINES_WA_GRACE", "5s"),
                ("MERPATI_PRESENCE_ENGINES_TELEGRAM_HEARTBEAT_TIMEOUT", "2m"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string())),
        );
        let c = Config::from_settings(&env).unwrap();
        assert_eq!(
            c.presence.lease.engines["wa"].grace,
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            c.presence.lease.engines["telegram"].heartbeat_timeout,
            Some(Duration::from_secs(120))
        );
        let table: toml::Table = "[presence.engines.slack]\ngrace = \"1m\"".parse().unwrap();
        let mut out = BTreeMap::new();
        flatten_toml("", &toml::Value::Table(table), &mut out).unwrap();
        let c = Config::from_settings(&out).unwrap();
        assert_eq!(
            c.presence.lease.engines["slack"].grace,
            Some(Duration::from_secs(60))
        );
        assert!(
            Config::from_settings(&settings(&[("presence.engines.wa.colour", "red")])).is_err()
        );
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (k, v) in [
            ("delivery.timeout", "0s"),
            ("delivery.timeout", "soon"),
            ("delivery.idle_release_after", "when quiet"),
            ("delivery.allowed_networks", "10.0.0.0/99"),
            ("delivery.resolve", "example.com"),
            ("delivery.resolve", "example.com=nowhere"),
            ("admin_token", "short"),
            ("listen", "nowhere"),
            ("log_format", "xml"),
        ] {
            let err = Config::from_settings(&settings(&[(k, v)])).unwrap_err();
            assert!(err.to_string().contains(k), "{err}");
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let c =
            Config::from_settings(&settings(&[("admin_token", "0123456789abcdefXYZ")])).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }
}
