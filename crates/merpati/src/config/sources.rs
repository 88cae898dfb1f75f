//! Where settings come from: a TOML file and `MERPATI_*` environment variables, each
//! flattened to the dotted keys (`delivery.timeout`) that [`super::Config`] parses, with
//! every key checked against those that exist.

use std::collections::BTreeMap;
use std::path::Path;

use super::ConfigError;

/// A settings file's text as dotted keys.
pub(super) fn toml_settings(
    text: &str,
    path: &Path,
) -> Result<BTreeMap<String, String>, ConfigError> {
    // The message and where, never the line itself: it may hold a secret.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map_or(String::new(), |span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
            format!(" at line {line}, column {column}")
        });
        ConfigError::Toml {
            path: path.to_owned(),
            message: format!("{}{at}", e.message()),
        }
    })?;
    let mut settings = BTreeMap::new();
    flatten_toml("", &toml::Value::Table(table), &mut settings)?;
    Ok(settings)
}

/// Every key a file or the environment may set.
const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "admin_token",
    "secret_key",
    "database_url",
    "log_format",
    "server.max_connections",
    "server.header_timeout",
    "server.body_timeout",
    "server.trusted_proxies",
    "tls.cert",
    "tls.key",
    "limits.events_per_second",
    "limits.device_events_per_second",
    "limits.max_devices",
    "limits.max_endpoints",
    "limits.max_alert_rules",
    "database.synchronous",
    "database.read_connections",
    "database.writers",
    "delivery.allowed_networks",
    "delivery.resolve",
    "delivery.retry_schedule",
    "delivery.timeout",
    "delivery.max_in_flight",
    "delivery.secret_rotation_grace",
    "delivery.disable_after",
    "delivery.endpoint_concurrency",
    "delivery.breaker_failures",
    "delivery.breaker_cooldown",
    "delivery.breaker_max_cooldown",
    "delivery.idle_release_after",
    "presence.heartbeat_timeout",
    "presence.grace",
    "presence.min_heartbeat_interval",
    "retention.max_age",
    "retention.interval",
    "retention.audit_log",
    "retention.part_span",
    "alerts.group_wait",
    "alerts.reopen_within",
    "alerts.flap_drops",
    "alerts.flap_within",
    "alerts.flap_quiet",
    "alerts.conversations_window",
    "alerts.public_url",
    "alerts.smtp_url",
    "alerts.smtp_from",
    "alerts.smtp_ca_file",
    "cluster.lease",
    "cluster.node_name",
];

/// `presence.engines.<engine>.<setting>`: per-engine lease settings.
const ENGINE_SETTINGS: &[&str] = &["heartbeat_timeout", "grace"];

/// The engine and setting of a per-engine key, if it is one.
pub(super) fn engine_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("presence.engines.")?;
    let (engine, setting) = rest.rsplit_once('.')?;
    (!engine.is_empty() && ENGINE_SETTINGS.contains(&setting)).then_some((engine, setting))
}

/// `MERPATI_DELIVERY_RETRY_SCHEDULE` → `delivery.retry_schedule`, for the known keys only.
pub(super) fn env_settings(
    vars: impl Iterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    let by_env_name: BTreeMap<String, &str> = KEYS
        .iter()
        .map(|k| {
            (
                format!("MERPATI_{}", k.replace('.', "_").to_uppercase()),
                *k,
            )
        })
        .collect();
    vars.filter_map(|(name, value)| {
        if let Some(k) = by_env_name.get(&name) {
            return Some((k.to_string(), value));
        }
        // MERPATI_PRESENCE_ENGINES_WA_GRACE → presence.engines.wa.grace
        let rest = name.strip_prefix("MERPATI_PRESENCE_ENGINES_")?;
        ENGINE_SETTINGS.iter().find_map(|setting| {
            let engine = rest.strip_suffix(&format!("_{}", setting.to_uppercase()))?;
            (!engine.is_empty()).then(|| {
                (
                    format!("presence.engines.{}.{setting}", engine.to_lowercase()),
                    value.clone(),
                )
            })
        })
    })
    .collect()
}

pub(super) fn flatten_toml(
    prefix: &str,
    value: &toml::Value,
    out: &mut BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_toml(&key, v, out)?;
            }
        }
        toml::Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(scalar_text).collect();
            out.insert(prefix.to_owned(), parts.join(","));
        }
        other => {
            out.insert(prefix.to_owned(), scalar_text(other));
        }
    }
    if !prefix.is_empty()
        && !value.is_table()
        && !KEYS.contains(&prefix)
        && engine_key(prefix).is_none()
    {
        return Err(ConfigError::UnknownKey(prefix.to_owned()));
    }
    Ok(())
}

fn scalar_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) | toml::Value::Table(_) => String::new(),
    }
}
