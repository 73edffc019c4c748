//! Running reelay as a real process: locating the binary, creating a key, `reelay serve` with
//! a guard that kills it on drop, and reading its memory, CPU time and metrics from outside.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The admin token the bench's server is started with, to read its `/metrics`.
const BENCH_ADMIN_TOKEN: &str = "reelay-bench-admin-token";

/// Where the data lives: SQLite in the scenario's temporary directory, or `--database-url`.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A fresh SQLite file in each scenario's temporary data directory.
    TempSqlite,
    /// The URL given with `--database-url`.
    Url(String),
    /// A PostgreSQL server (`--database-url postgres://…`): a fresh database per setup, with
    /// `--pg-set` settings applied to it.
    Postgres {
        url: String,
        settings: Vec<(String, String)>,
    },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::TempSqlite => "sqlite",
            Backend::Postgres { .. } => "postgres",
            Backend::Url(_) => "sqlite",
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Backend::Postgres { .. })
    }

    /// `--database-url`: a postgres:// URL names a server, any other is used as is.
    pub fn from_url(url: &str, pg_settings: Vec<(String, String)>) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres {
                url: url.to_owned(),
                settings: pg_settings,
            }
        } else {
            Backend::Url(url.to_owned())
        }
    }
}

/// Finds `reelay` next to this executable (both are built into the same target directory),
/// first running `cargo build --release -p reelay` unless `no_build`.
pub fn locate(explicit: Option<PathBuf>, no_build: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--reelay {}: no such file", path.display());
        }
        // reelay runs in its data directory: a relative path would not resolve there.
        return Ok(std::fs::canonicalize(&path).unwrap_or(path));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("this executable has no directory")?;
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    if !no_build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "-p", "reelay", "--manifest-path"]);
        build.arg(&manifest);
        if profile == "release" {
            build.arg("--release");
        }
        eprintln!("building reelay (cargo build --release -p reelay) …");
        let status = build.status().context("running cargo build -p reelay")?;
        if !status.success() {
            bail!("cargo build -p reelay failed ({status})");
        }
    }
    let path = dir.join("reelay");
    if !path.is_file() {
        bail!(
            "{} not found: run `cargo build --release -p reelay` first (or drop --no-build)",
            path.display()
        );
    }
    if profile != "release" {
        eprintln!("warning: using a {profile} build of reelay; figures mean little");
    }
    Ok(path)
}

/// One reelay data directory (one more per extra node) and the settings every process started
/// on it gets; on PostgreSQL, a database of its own, dropped with the setup.
pub struct Setup {
    pub bin: PathBuf,
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub log_dir: PathBuf,
    pub env: Vec<(String, String)>,
    tmp: tempfile::TempDir,
    /// After `tmp`: dropped last.
    _database: Option<crate::pg::TempDatabase>,
}

impl Setup {
    /// A fresh temporary directory (and on PostgreSQL a fresh database, with one
    /// `REELAY_MASTER_KEY` for all its nodes), the common settings, the user's `settings`
    /// (`--set`) and `extra` (the scenario's own, which win).
    pub async fn new(
        bin: &Path,
        backend: &Backend,
        settings: &[(String, String)],
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("reelay-bench-").tempdir()?;
        let data_dir = tmp.path().join("data");
        let log_dir = tmp.path().join("logs");
        std::fs::create_dir_all(&data_dir)?;
        std::fs::create_dir_all(&log_dir)?;
        let mut env: Vec<(String, String)> = vec![
            ("REELAY_DATA_DIR".into(), data_dir.display().to_string()),
            ("REELAY_LISTEN".into(), "127.0.0.1:0".into()),
            ("REELAY_GENERATOR".into(), "instant".into()),
            ("REELAY_ALLOW_INSECURE_CALLBACKS".into(), "true".into()),
            ("REELAY_ADMIN_TOKEN".into(), BENCH_ADMIN_TOKEN.into()),
            ("RUST_LOG".into(), "warn".into()),
        ];
        let mut database = None;
        match backend {
            Backend::TempSqlite => {}
            Backend::Url(url) => env.push(("REELAY_DATABASE_URL".into(), url.to_owned())),
            Backend::Postgres { url, settings } => {
                let db = crate::pg::TempDatabase::create(url, settings).await?;
                env.push(("REELAY_DATABASE_URL".into(), db.url.clone()));
                env.push(("REELAY_MASTER_KEY".into(), crate::pg::master_key()));
                database = Some(db);
            }
        }
        let settings = settings.iter().map(|(k, v)| (k.as_str(), v.clone()));
        for (k, v) in settings.chain(extra.iter().cloned()) {
            env.retain(|(key, _)| key != k);
            env.push((k.to_owned(), v));
        }
        Ok(Self {
            bin: bin.to_owned(),
            backend: backend.clone(),
            data_dir,
            log_dir,
            env,
            tmp,
            _database: database,
        })
    }

    /// Replaces one setting for processes started from now on.
    pub fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Node 0's data directory is `data_dir`; node N > 0 gets `data-N` beside it.
    fn node_dir(&self, node: usize) -> anyhow::Result<PathBuf> {
        if node == 0 {
            return Ok(self.data_dir.clone());
        }
        let dir = self.tmp.path().join(format!("data-{node}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn command(&self) -> tokio::process::Command {
        self.command_in(&self.data_dir)
    }

    fn command_in(&self, data_dir: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        // The user's own REELAY_* settings and ./reelay.toml must not leak into a measurement.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REELAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("REELAY_DATA_DIR", data_dir);
        cmd.current_dir(data_dir);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `reelay keys create --name bench --credits 100000000 --json`: a key for a new account.
    pub async fn create_key(&self) -> anyhow::Result<String> {
        let args = [
            "keys",
            "create",
            "--name",
            "bench",
            "--credits",
            "100000000",
        ];
        self.cli_json(&args, "api_key").await
    }

    /// `reelay workers create --name bench --json`: a worker token for every model.
    pub async fn create_worker_token(&self) -> anyhow::Result<String> {
        let args = ["workers", "create", "--name", "bench"];
        self.cli_json(&args, "token").await
    }

    /// Runs `reelay ARGS --json` on this data directory and returns the string at `field`.
    async fn cli_json(&self, args: &[&str], field: &str) -> anyhow::Result<String> {
        let what = format!("reelay {}", args[..2].join(" "));
        let out = self
            .command()
            .args(args)
            .arg("--json")
            .output()
            .await
            .with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "reelay refused to start on the {} backend: `{what}` exited with {}: {}",
                self.backend.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing {}", String::from_utf8_lossy(&out.stdout)))?;
        json[field]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{what} --json printed no {field}"))
    }

    /// `reelay serve`, waiting (up to `within`) for its listening line and `/healthz`.
    pub async fn serve(&self, within: Duration) -> anyhow::Result<Reelay> {
        self.serve_node(0, within).await
    }

    /// `reelay serve` as node `node`: its own data directory and port, the same database.
    pub async fn serve_node(&self, node: usize, within: Duration) -> anyhow::Result<Reelay> {
        let deadline = Instant::now() + within;
        let n = std::fs::read_dir(&self.log_dir)?.count();
        let stderr_path = self.log_dir.join(format!("reelay-{n}-node{node}.stderr"));
        let stderr = std::fs::File::create(&stderr_path)?;
        let spawned = Instant::now();
        let mut child = self
            .command_in(&self.node_dir(node)?)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id().context("reelay exited at once")?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let tail = || {
            let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        };
        let url = loop {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line()).await;
            match line {
                Ok(Ok(Some(line))) => {
                    if let Some(rest) = line.trim().strip_prefix("listening on ") {
                        break rest.trim().to_owned();
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    let status = child.wait().await?;
                    bail!(
                        "reelay refused to start on the {} backend ({status}):\n{}",
                        self.backend.name(),
                        tail()
                    );
                }
                Err(_) => bail!("reelay printed no `listening on` line within {within:?}"),
            }
        };
        // Keep reading stdout so reelay never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let client = crate::load::client()?;
        loop {
            let ok = client
                .get(format!("{url}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{url}/healthz did not answer 200 within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Reelay {
            child: Some(child),
            pid,
            url,
            client,
            started_in: spawned.elapsed(),
        })
    }

    /// Bytes in the data directory (database, its WAL, the shared video, the master key).
    pub fn storage_mb(&self) -> f64 {
        dir_size(&self.data_dir) as f64 / 1_048_576.0
    }
}

/// A running `reelay serve`; dropping it kills the process.
pub struct Reelay {
    child: Option<tokio::process::Child>,
    pub pid: u32,
    pub url: String,
    client: reqwest::Client,
    /// From spawn to `/healthz` answering.
    pub started_in: Duration,
}

impl Reelay {
    pub fn rss_mb(&self) -> Option<f64> {
        rss_kb(self.pid).map(|kb| kb as f64 / 1024.0)
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid)
    }

    /// One sample of `GET /metrics`, the value of `name{labels}` (labels as written, e.g.
    /// `state="scheduled"`).
    pub async fn metric(&self, name: &str, labels: &str) -> anyhow::Result<f64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .bearer_auth(BENCH_ADMIN_TOKEN)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let wanted = if labels.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{labels}}}")
        };
        Ok(text
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(key, _)| *key == wanted)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0))
    }

    /// Polls a metric until `done(value)` or the deadline; returns the last value read.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &str,
        every: Duration,
        deadline: Instant,
        done: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        loop {
            let v = self.metric(name, labels).await?;
            if done(v) || Instant::now() >= deadline {
                return Ok(v);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

impl Drop for Reelay {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// VmRSS of a process in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// CPU seconds of every process named `postgres` on this machine (the database server and
/// its backends), for a loopback PostgreSQL. Backends that exit between samples are missed.
pub fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(cpu_seconds)
        .sum()
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Raises this process's open-file limit to its hard limit (children inherit it): the
/// isolation scenario holds thousands of connections open on both sides.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit write only into the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
