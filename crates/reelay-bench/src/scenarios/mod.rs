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
use crate::receiver::{Receiver, Recorder};
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
    /// `--nodes`: `reelay serve` processes per setup, on one database (PostgreSQL only).
    pub nodes: usize,
    /// `--partitioned`: each node's creates under an account of their own, calling back to a
    /// receiver port of their own.
    pub partitioned: bool,
}

impl Ctx {
    /// `quick` or `full`, whichever this run is.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }

    pub fn row(&self, scenario: &str, variant: &str) -> Row {
        Row::new(scenario, variant, &self.backend_label())
    }

    /// `sqlite`, `postgres`, `postgres x2` with two nodes, `postgres x2 apart` partitioned.
    pub fn backend_label(&self) -> String {
        match (self.nodes, self.partitioned) {
            (1, _) => self.backend.name().to_owned(),
            (n, false) => format!("{} x{n}", self.backend.name()),
            (n, true) => format!("{} x{n} apart", self.backend.name()),
        }
    }

    /// A receiver with a port for each node when partitioned, else one port.
    pub fn receiver(&self) -> anyhow::Result<Receiver> {
        Receiver::start_ports(if self.partitioned { self.nodes } else { 1 })
    }

    /// A fresh data directory (a fresh database on PostgreSQL) with `extra` settings, a key
    /// (a key per node when partitioned, each of its own account), and `ctx.nodes` ×
    /// `reelay serve` on it; creates go round-robin to the nodes.
    pub async fn start(&self, extra: &[(&str, String)]) -> anyhow::Result<Running> {
        let setup = Setup::new(&self.bin, &self.backend, &self.settings, extra).await?;
        let key = setup.create_key().await?;
        let reelay = setup.serve(Duration::from_secs(30)).await?;
        let mut others = Vec::new();
        for node in 1..self.nodes {
            others.push(setup.serve_node(node, Duration::from_secs(30)).await?);
        }
        let urls: Vec<&str> = std::iter::once(&reelay)
            .chain(&others)
            .map(|r| r.url.as_str())
            .collect();
        let mut keys = vec![key.clone()];
        if self.partitioned {
            for _ in 1..self.nodes {
                keys.push(setup.create_key().await?);
            }
        }
        let creator = Creator::round_robin(self.client.clone(), &urls, &keys);
        Ok(Running {
            reelay,
            others,
            setup,
            key,
            creator,
        })
    }
}

/// Fields drop in order: the processes before the setup (and its database).
pub struct Running {
    /// Node 0 (the only one unless `--nodes`).
    pub reelay: Reelay,
    /// Nodes 1.. with `--nodes`.
    pub others: Vec<Reelay>,
    pub setup: Setup,
    pub key: String,
    pub creator: Creator,
}

impl Running {
    pub fn nodes(&self) -> impl Iterator<Item = &Reelay> {
        std::iter::once(&self.reelay).chain(&self.others)
    }

    /// RSS of all nodes together.
    pub fn rss_mb(&self) -> Option<f64> {
        self.nodes().map(Reelay::rss_mb).sum()
    }
}

/// CPU time of reelay (all its nodes, added up) and of a loopback PostgreSQL from a starting
/// point.
pub struct CpuMeter {
    pids: Vec<u32>,
    reelay: Option<f64>,
    db: Option<f64>,
}

impl CpuMeter {
    pub fn start(reelay: &Reelay, backend: &Backend) -> Self {
        Self::of([reelay], backend)
    }

    /// Every node of a run.
    pub fn all(run: &Running, backend: &Backend) -> Self {
        Self::of(run.nodes(), backend)
    }

    fn of<'a>(nodes: impl IntoIterator<Item = &'a Reelay>, backend: &Backend) -> Self {
        let pids: Vec<u32> = nodes.into_iter().map(|r| r.pid).collect();
        Self {
            reelay: Self::reelay_seconds(&pids),
            pids,
            db: backend
                .is_postgres()
                .then(crate::reelay::postgres_cpu_seconds),
        }
    }

    fn reelay_seconds(pids: &[u32]) -> Option<f64> {
        pids.iter().map(|&p| crate::reelay::cpu_seconds(p)).sum()
    }

    /// (reelay, database) CPU seconds per 1,000 `delivered` since the start.
    pub fn per_1k(&self, delivered: u64) -> (Option<f64>, Option<f64>) {
        if delivered == 0 {
            return (None, None);
        }
        let k = delivered as f64 / 1000.0;
        let reelay = self
            .reelay
            .zip(Self::reelay_seconds(&self.pids))
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
