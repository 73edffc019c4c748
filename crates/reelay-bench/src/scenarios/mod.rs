//! The scenarios, one module each, and what they share.

pub mod backlog;
pub mod cpu;
pub mod dispatch;
pub mod isolation;
pub mod limit;
pub mod pipeline;
pub mod queue;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::load::{Created, Creator};
use crate::receiver::Recorder;
use crate::reelay::{Backend, Reelay, Setup};
use crate::report::Row;
use crate::stats::Latency;

/// What every scenario gets.
pub struct Ctx {
    pub bin: PathBuf,
    pub backend: Backend,
    pub quick: bool,
    /// Requests in flight for the saturation loops (`limit`, pipeline saturation, creates).
    pub concurrency: usize,
    pub client: reqwest::Client,
    /// `limit`'s raw requests/s, measured first in every run.
    pub raw_requests_per_s: Option<f64>,
    /// `--set KEY=VALUE` settings for every reelay.
    pub settings: Vec<(String, String)>,
}

impl Ctx {
    /// `quick` or `full`, whichever this run is.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }

    pub fn row(&self, scenario: &str, variant: &str) -> Row {
        Row::new(scenario, variant, self.backend.name())
    }

    /// A fresh data directory with `extra` settings, a key, and `reelay serve` on it.
    pub async fn start(&self, extra: &[(&str, String)]) -> anyhow::Result<Running> {
        let setup = Setup::new(&self.bin, &self.backend, &self.settings, extra)?;
        let key = setup.create_key().await?;
        let reelay = setup.serve(Duration::from_secs(30)).await?;
        let creator = Creator::new(self.client.clone(), &reelay.url, &key);
        Ok(Running {
            setup,
            reelay,
            key,
            creator,
        })
    }
}

pub struct Running {
    pub setup: Setup,
    pub reelay: Reelay,
    pub key: String,
    pub creator: Creator,
}

/// CPU time of reelay (and of a loopback PostgreSQL) from a starting point.
pub struct CpuMeter {
    pid: u32,
    reelay: Option<f64>,
    db: Option<f64>,
}

impl CpuMeter {
    pub fn start(reelay: &Reelay, backend: &Backend) -> Self {
        Self {
            pid: reelay.pid,
            reelay: reelay.cpu_seconds(),
            db: backend
                .is_postgres()
                .then(crate::reelay::postgres_cpu_seconds),
        }
    }

    /// (reelay, database) CPU seconds per 1,000 `delivered` since the start.
    pub fn per_1k(&self, delivered: u64) -> (Option<f64>, Option<f64>) {
        if delivered == 0 {
            return (None, None);
        }
        let k = delivered as f64 / 1000.0;
        let reelay = self
            .reelay
            .zip(crate::reelay::cpu_seconds(self.pid))
            .map(|(a, b)| (b - a) / k);
        let db = self
            .db
            .map(|a| (crate::reelay::postgres_cpu_seconds() - a) / k);
        (reelay, db)
    }
}

/// What arrived for a set of creates: latencies (create sent → first arrival), how many never
/// arrived, and the first send and last arrival.
pub struct Delivered {
    pub latencies: Vec<Duration>,
    pub lost: u64,
    pub first_sent: Option<Instant>,
    pub last_arrival: Option<Instant>,
}

impl Delivered {
    pub fn of(created: &[Created], rec: &Recorder) -> Self {
        let mut out = Delivered {
            latencies: Vec::with_capacity(created.len()),
            lost: 0,
            first_sent: created.iter().map(|c| c.sent).min(),
            last_arrival: None,
        };
        for c in created {
            match rec.first_arrival(&c.generation_id) {
                Some(at) => {
                    out.latencies.push(at.saturating_duration_since(c.sent));
                    out.last_arrival = out.last_arrival.max(Some(at));
                }
                None => out.lost += 1,
            }
        }
        out
    }

    pub fn count(&self) -> u64 {
        self.latencies.len() as u64
    }

    /// Delivered ÷ (last arrival − first create sent).
    pub fn rate(&self) -> Option<f64> {
        let span = self.last_arrival? - self.first_sent?;
        crate::stats::rate(self.count(), span)
    }

    pub fn latency(&self) -> Option<Latency> {
        Latency::of(self.latencies.clone())
    }
}

/// Waits until as many distinct generations arrived as were created (the receiver gets only
/// this phase's events), bounded by `deadline`.
pub async fn await_all(created: &[Created], rec: &Recorder, deadline: Instant) -> bool {
    rec.wait_distinct(created.len(), deadline).await >= created.len()
}

pub const DELIVERIES: &str = "reelay_webhook_deliveries";

/// Logs progress to stderr (stdout carries the results).
#[macro_export]
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("  · {}", format!($($arg)*)) };
}
