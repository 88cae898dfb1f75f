//! The merpati a run measures: a `merpati serve` child this process starts, or one already
//! running; and what /proc says of a process's (or a thread's) CPU and memory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `merpati serve` child on a free loopback port with a fresh data dir.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub admin: String,
    dir: PathBuf,
    log_drain: tokio::task::JoinHandle<()>,
}

impl ServerProcess {
    pub async fn start(settings: &[(&str, String)]) -> anyhow::Result<ServerProcess> {
        let dir = std::env::temp_dir().join(format!("merpati-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let admin = format!(
            "mat_{}",
            rand::distr::SampleString::sample_string(
                &rand::distr::Alphanumeric,
                &mut rand::rng(),
                40
            )
        );
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("serve")
            .env("MERPATI_LISTEN", "127.0.0.1:0")
            .env("MERPATI_DATA_DIR", &dir)
            .env("MERPATI_ADMIN_TOKEN", &admin)
            .env("MERPATI_LOG_FORMAT", "json")
            .env("MERPATI_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in settings {
            command.env(k, v);
        }
        let mut child = command.spawn().context("starting merpati serve")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == "merpati is listening" {
                    return Ok(entry["fields"]["addr"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string());
                }
            }
            bail!("merpati serve exited before listening")
        })
        .await
        .context("merpati serve did not start in 30 s")??;
        // Keep its log flowing so it never blocks on a full pipe; warnings and errors are
        // kept in the data dir, to look at after a run that went wrong.
        let log_path = dir.join("server-warnings.log");
        let log_drain = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.starts_with('{')
                    || line.contains("\"level\":\"WARN\"")
                    || line.contains("\"level\":\"ERROR\"")
                {
                    kept.extend_from_slice(line.as_bytes());
                    kept.push(b'\n');
                    let _ = std::fs::write(&log_path, &kept);
                }
            }
        });
        Ok(ServerProcess {
            child,
            url: format!("http://{addr}"),
            admin,
            dir,
            log_drain,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Resident memory, in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib_of(self.pid()).unwrap_or(0.0)
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.pid()).unwrap_or(0.0)
    }

    /// This server, as the target of a run.
    pub(crate) fn target(&self) -> Target {
        Target {
            url: self.url.clone(),
            ingest_urls: vec![self.url.clone()],
            admin: self.admin.clone(),
            pids: vec![self.pid()],
            shared: false,
        }
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let _ = self.child.kill().await;
        let _ = self.log_drain.await;
        // The data dir goes; what went wrong in the run is shown first.
        if let Ok(log) = std::fs::read_to_string(self.dir.join("server-warnings.log")) {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "the server logged {} warning or error line(s):",
                lines.len()
            );
            for line in lines.iter().take(40) {
                eprintln!("  {line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process's resident memory, in MiB.
pub(crate) fn rss_mib_of(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<f64>()
        .ok()?;
    Some(kb / 1024.0)
}

/// A process's CPU time used so far (user + system), in seconds.
pub(crate) fn cpu_seconds_of(pid: u32) -> Option<f64> {
    cpu_seconds_in(&format!("/proc/{pid}/stat")).map(|(_, seconds)| seconds)
}

/// The merpati a delivery run measures: its API, and its process when the run can read it.
pub(crate) struct Target {
    /// Where the run provisions its account (the first node).
    pub(crate) url: String,
    /// Where the devices post, in turn (every node).
    pub(crate) ingest_urls: Vec<String>,
    pub(crate) admin: String,
    /// The processes whose CPU and memory are the server's (every node), if known.
    pub(crate) pids: Vec<u32>,
    /// A merpati the run did not start: what the run provisions there stays after it.
    pub(crate) shared: bool,
}

impl Target {
    pub(crate) fn rss_mib(&self) -> Option<f64> {
        self.sum(rss_mib_of)
    }

    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        self.sum(cpu_seconds_of)
    }

    fn sum(&self, of: fn(u32) -> Option<f64>) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|pid| of(*pid)).sum()
    }
}

/// The command name and CPU time used (user + system, in seconds) that a /proc `stat` file
/// shows, for a process or one of its threads.
pub(crate) fn cpu_seconds_in(stat_path: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let (name, ticks) = name_and_cpu_ticks(&stat)?;
    Some((name.to_string(), ticks / clock_ticks_per_second()))
}

/// The command name and the clock ticks of CPU (user + system) of a /proc `stat` line.
fn name_and_cpu_ticks(stat: &str) -> Option<(&str, f64)> {
    // The command name is in parentheses and may hold spaces and parentheses itself;
    // utime and stime are the 14th and 15th fields of the whole line.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks))
}

/// CPU time used so far by this process, in seconds.
pub(crate) fn own_cpu_seconds() -> f64 {
    cpu_seconds_in("/proc/self/stat").map_or(0.0, |(_, seconds)| seconds)
}

/// CPU time used so far by this process's live threads named `name`, in seconds.
pub(crate) fn own_threads_cpu_seconds(name: &str) -> f64 {
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    threads
        .flatten()
        .filter_map(|thread| cpu_seconds_in(&thread.path().join("stat").to_string_lossy()))
        .filter(|(comm, _)| comm == name)
        .map(|(_, seconds)| seconds)
        .sum()
}

/// The relay baseline's threads, told apart from the client's and the receivers'.
pub(crate) const RELAY_THREADS: &str = "bench-relay";

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_the_thread_name_and_its_cpu() {
        let line =
            "4242 (bench relay) S 1 4242 4242 0 -1 4194368 597 0 0 0 150 25 0 0 20 0 3 0 99 0 0";
        assert_eq!(name_and_cpu_ticks(line), Some(("bench relay", 175.0)));
        let odd = "7 (a) b)) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 5 0 0";
        assert_eq!(name_and_cpu_ticks(odd), Some(("a) b)", 7.0)));
        assert_eq!(name_and_cpu_ticks("7 (short) R 1"), None);
    }

    #[test]
    fn a_named_thread_s_cpu_is_told_apart() {
        let (busy_tx, busy_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let probe = std::thread::Builder::new()
            .name("cpu-probe".into())
            .spawn(move || {
                // Spins until the kernel has counted 30 ms of its CPU.
                while cpu_seconds_in("/proc/thread-self/stat").map_or(0.0, |(_, s)| s) < 0.03 {
                    std::hint::black_box(0u64.wrapping_add(1));
                }
                busy_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            })
            .unwrap();
        busy_rx.recv().unwrap();
        let probe_cpu = own_threads_cpu_seconds("cpu-probe");
        assert!(probe_cpu >= 0.03, "{probe_cpu}");
        // The kernel scales and rounds the process's figure and the thread's apart: they may
        // differ by a tick.
        let tick = 1.0 / clock_ticks_per_second();
        assert!(own_cpu_seconds() + tick >= probe_cpu);
        assert_eq!(own_threads_cpu_seconds("no-such-thread"), 0.0);
        release_tx.send(()).unwrap();
        probe.join().unwrap();
    }
}
