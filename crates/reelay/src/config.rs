//! Configuration: defaults, then `reelay.toml`, then `REELAY_*` variables, then flags.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use reelay_core::pricing::Prices;
use reelay_core::retry::{Backoff, RetryPolicy};
use reelay_core::{Credits, Model};
use serde::{Deserialize, Serialize};

use crate::front_door;

/// Which generator produces the videos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorKind {
    /// Renders a real MP4 per generation.
    Builtin,
    /// Completes at once with one shared video: for load tests only.
    Instant,
    /// Runs nothing here: external workers claim generations over HTTP (`docs/workers.md`).
    External,
}

/// Reads addresses from a list or from one comma-separated string (as the environment has it).
fn ip_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(d)? {
        Raw::One(text) => text.split(',').map(str::to_owned).collect(),
        Raw::Many(list) => list,
    };
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an IP address")))
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A SQLite file path (or `sqlite://path`), or `postgres://…` for several nodes on one
    /// PostgreSQL database; the data directory's SQLite file when unset.
    pub database_url: Option<String>,
    /// Base of `video_url`; the listen address when unset.
    pub public_url: Option<String>,
    #[serde(with = "humantime_serde")]
    pub generation_timeout: Duration,
    /// How long a finished generation's video and input images are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How long a finished generation's row, event and attempt log are kept (≥ `retention`).
    #[serde(with = "humantime_serde")]
    pub records_retention: Duration,
    pub allow_insecure_callbacks: bool,
    #[serde(with = "humantime_serde")]
    pub render_delay: Duration,
    /// Built-in renders at once in this process (each encode takes a core).
    pub render_concurrency: usize,
    pub generator: GeneratorKind,
    pub moderation_terms_file: Option<PathBuf>,
    pub webhook_max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub webhook_retry_interval: Duration,
    pub webhook_backoff: Backoff,
    #[serde(with = "humantime_serde")]
    pub webhook_connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub webhook_request_timeout: Duration,
    /// Egress addresses webhooks are sent from (a list, or comma-separated in the environment).
    #[serde(deserialize_with = "ip_list")]
    pub webhook_source_ips: Vec<IpAddr>,
    /// Most webhook attempts in flight in this process.
    pub webhook_max_in_flight: usize,
    /// Most webhook attempts in flight to one destination (scheme, host, port).
    pub webhook_per_destination: usize,
    /// Base64 of 32 bytes sealing signing secrets at rest; `<data dir>/master.key` when unset.
    pub master_key: Option<String>,
    /// Price per model, like `{"veo-3-fast" = "0.25"}`; unlisted models keep the default.
    pub prices: BTreeMap<String, String>,
    /// Guards `/metrics`: `Authorization: Bearer <token>`. Unset, `/metrics` is refused
    /// (in `dev` it is open on loopback).
    pub admin_token: Option<String>,
    /// Creates per second allowed to one API key; 0 turns the limit off.
    pub create_rate_limit: u32,
    /// Creates one API key may make in a burst above the rate; 0 means twice the rate.
    pub create_rate_burst: u32,
    #[serde(with = "humantime_serde")]
    pub http_header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub http_idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub http_body_read_timeout: Duration,
    pub http_max_connections: usize,
    pub http_max_requests_in_flight: usize,
    /// Create requests with images (bodies over 64 KiB) handled at once; the rest wait.
    pub http_max_large_bodies: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long an external worker's lease holds without a heartbeat.
    #[serde(with = "humantime_serde")]
    pub worker_lease: Duration,
    /// The largest MP4 a worker may upload, in bytes.
    pub worker_max_video_bytes: u64,
    /// The most worker long-polls waiting at once; past it a claim answers 503.
    pub worker_max_polls: usize,
    /// After this many lost leases (its worker died or stalled, or the server restarted) a
    /// generation fails with TASK_FAILED (refunded) instead of being handed out again.
    pub max_lost_leases: u32,
}

impl Default for Config {
    fn default() -> Self {
        let door = front_door::Limits::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./reelay-data"),
            database_url: None,
            public_url: None,
            generation_timeout: Duration::from_secs(600),
            retention: Duration::from_secs(7 * 24 * 60 * 60),
            records_retention: Duration::from_secs(30 * 24 * 60 * 60),
            allow_insecure_callbacks: false,
            render_delay: Duration::ZERO,
            render_concurrency: 2,
            generator: GeneratorKind::Builtin,
            moderation_terms_file: None,
            webhook_max_attempts: 5,
            webhook_retry_interval: Duration::from_secs(30),
            webhook_backoff: Backoff::Linear,
            webhook_connect_timeout: Duration::from_secs(10),
            webhook_request_timeout: Duration::from_secs(30),
            webhook_source_ips: Vec::new(),
            webhook_max_in_flight: 4096,
            webhook_per_destination: 64,
            master_key: None,
            prices: BTreeMap::new(),
            admin_token: None,
            create_rate_limit: 0,
            create_rate_burst: 0,
            http_header_read_timeout: door.header_read_timeout,
            http_idle_timeout: door.idle_timeout,
            http_body_read_timeout: Duration::from_secs(30),
            http_max_connections: door.max_connections,
            http_max_requests_in_flight: door.max_requests_in_flight,
            http_max_large_bodies: 2,
            shutdown_timeout: door.shutdown_timeout,
            worker_lease: Duration::from_secs(30),
            worker_max_video_bytes: 512 * 1024 * 1024,
            worker_max_polls: 256,
            max_lost_leases: 3,
        }
    }
}

/// Settings given on the command line; each one set overrides the file and the environment.
#[derive(Debug, Default, Clone, Serialize, clap::Args)]
pub struct ConfigFlags {
    /// Configuration file [default: ./reelay.toml when it exists]
    #[arg(long, global = true, env = "REELAY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite file and videos)
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Database: a SQLite file path, or postgres://user@host/db for several nodes
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

impl Config {
    /// Loads the layers; `overrides` (a JSON object of settings) comes last, for a command's
    /// own flags and the settings a mode implies.
    pub fn load(flags: &ConfigFlags, overrides: serde_json::Value) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match &flags.config {
            Some(path) if !path.exists() => {
                bail!("configuration file {} does not exist", path.display())
            }
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file("reelay.toml")),
        }
        let config: Config = figment
            .merge(Env::prefixed("REELAY_").ignore(&["config", "server", "api_key"]))
            .merge(Serialized::defaults(flags))
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("reading the configuration (reelay.toml, REELAY_* variables, flags)")?;
        config.prices()?;
        config.retry_policy()?;
        if config.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            bail!("admin_token must be at least 16 characters long (try `openssl rand -hex 32`)");
        }
        if config.http_max_connections == 0 || config.http_max_requests_in_flight == 0 {
            bail!("http_max_connections and http_max_requests_in_flight must be at least 1");
        }
        if config.records_retention < config.retention {
            bail!(
                "records_retention ({}) must be at least retention ({}): a generation's row \
                 outlives its video",
                humantime::format_duration(config.records_retention),
                humantime::format_duration(config.retention)
            );
        }
        Ok(config)
    }

    /// Which database to use.
    pub fn database(&self) -> Database {
        match self.database_url.as_deref() {
            None | Some("") => Database::Sqlite(self.data_dir.join("reelay.sqlite3")),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Database::Postgres(url.to_owned())
            }
            Some(url) => Database::Sqlite(url.strip_prefix("sqlite://").unwrap_or(url).into()),
        }
    }

    pub fn retry_policy(&self) -> anyhow::Result<RetryPolicy> {
        if self.webhook_max_attempts == 0 {
            bail!("webhook_max_attempts must be at least 1");
        }
        Ok(RetryPolicy {
            max_attempts: self.webhook_max_attempts,
            interval: self.webhook_retry_interval,
            backoff: self.webhook_backoff,
            ..RetryPolicy::default()
        })
    }

    pub fn videos_dir(&self) -> PathBuf {
        self.data_dir.join("videos")
    }

    /// What retention keeps, and where the files are.
    pub fn retention(&self) -> reelay_engine::retention::Retention {
        reelay_engine::retention::Retention {
            media: self.retention,
            records: self.records_retention,
            videos_dir: self.videos_dir(),
            inputs_dir: self.inputs_dir(),
        }
    }

    /// Where input images are kept, a folder per generation.
    pub fn inputs_dir(&self) -> PathBuf {
        self.data_dir.join("inputs")
    }

    pub fn prices(&self) -> anyhow::Result<Prices> {
        let overrides = self
            .prices
            .iter()
            .map(|(model, price)| {
                let model: Model = model.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "prices: unknown model {model:?}; use veo-3-fast or veo-3-quality"
                    )
                })?;
                let price: Credits = price.parse().map_err(|e| anyhow::anyhow!("prices: {e}"))?;
                Ok((model, price))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Prices::with_overrides(overrides).map_err(|e| anyhow::anyhow!("prices: {e}"))
    }

    /// The effective configuration as TOML, prices included, secrets masked.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let mut out = String::new();
        let mut effective = self.clone();
        effective.prices = self
            .prices()?
            .iter()
            .map(|(model, price)| (model.to_string(), price.to_string()))
            .collect();
        for secret in [&mut effective.master_key, &mut effective.admin_token] {
            if secret.is_some() {
                *secret = Some("(set, masked)".into());
            }
        }
        let value = serde_json::to_value(effective)?;
        if let serde_json::Value::Object(fields) = value {
            for (key, value) in fields {
                match value {
                    serde_json::Value::Null => out.push_str(&format!("# {key} = (unset)\n")),
                    serde_json::Value::Object(map) => {
                        let entries: Vec<String> =
                            map.iter().map(|(k, v)| format!("\"{k}\" = {v}")).collect();
                        out.push_str(&format!("{key} = {{ {} }}\n", entries.join(", ")));
                    }
                    other => out.push_str(&format!("{key} = {other}\n")),
                }
            }
        }
        Ok(out)
    }
}

/// Where reelay keeps its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// One file, one node: the embedded default.
    Sqlite(PathBuf),
    /// A PostgreSQL URL: any number of nodes share it.
    Postgres(String),
}
