//! The CLI's resource commands, over the REST API of a running merpati (`MERPATI_URL`,
//! `MERPATI_API_KEY`): devices, endpoints, events and incidents, as tables for people or
//! `--json` for scripts; `events tail` follows `/v1/stream`.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::Value;

mod commands;
mod table;

pub use commands::{run, Resource};

/// A merpati's API, as one account's key sees it.
pub struct Remote {
    client: reqwest::Client,
    url: String,
    key: String,
}

impl Remote {
    pub fn new(url: &str, key: &str) -> anyhow::Result<Remote> {
        let url = url.trim_end_matches('/').to_string();
        url::Url::parse(&url).with_context(|| format!("MERPATI_URL {url:?} is not a URL"))?;
        if key.is_empty() {
            bail!("set MERPATI_API_KEY (an account API key) or pass --api-key");
        }
        Ok(Remote {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()?,
            url,
            key: key.to_string(),
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let request = self.client.get(format!("{}{path}", self.url));
        self.send(request, "GET", path).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let request = self.client.post(format!("{}{path}", self.url)).json(&body);
        self.send(request, "POST", path).await
    }

    /// The answer's JSON, or the API's error message.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        method: &str,
        path: &str,
    ) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("{method} {}{path}", self.url))?;
        let status = response.status();
        let text = response.text().await?;
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let message = body["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body.to_string());
            bail!("{method} {path}: {status}: {message}");
        }
        Ok(body)
    }

    /// Follows `/v1/stream`: calls `each` with every event's name and data until it answers
    /// false or the stream ends.
    pub async fn follow(
        &self,
        kinds: &str,
        mut each: impl AsyncFnMut(&str, Value) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let path = format!("/v1/stream?kinds={kinds}");
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("GET {}{path}", self.url))?;
        if !response.status().is_success() {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            bail!("GET {path}: {status}: {}", body["error"]["message"]);
        }
        let mut bytes = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(chunk) = bytes.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk?));
            // Server-sent events end with a blank line.
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut name, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if !each(&name, value).await? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
