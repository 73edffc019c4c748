//! `reelay serve` and `reelay dev`: open the store, start the engine, serve the API.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use reelay_api::{AdminAccess, AppState, CreateLimiter};
use reelay_core::capability::VideoKey;
use reelay_core::destination::DestinationPolicy;
use reelay_core::moderation::Moderator;
use reelay_delivery::{Dispatcher, DispatcherConfig, Keyring, MasterKey, Sender, SenderConfig};
use reelay_engine::{
    BuiltinRenderer, Engine, EngineConfig, ExternalWorkers, Generator, InstantGenerator,
};
use reelay_store::{PgStore, SqliteStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Database, GeneratorKind};
use crate::front_door;

/// How long a claim on a generation holds without a heartbeat.
const LEASE: Duration = Duration::from_secs(30);
/// How often the engine and the dispatcher look for work nobody announced.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How much longer a delivery lease lasts than the slowest possible attempt.
const DELIVERY_LEASE_MARGIN: Duration = Duration::from_secs(30);

fn destinations(config: &Config) -> DestinationPolicy {
    DestinationPolicy {
        allow_insecure: config.allow_insecure_callbacks,
    }
}

/// Holds the data directory for this process: a SQLite file has one server. (Nodes on one
/// PostgreSQL database need no lock: each releases only its own leases.)
fn lock_data_dir(config: &Config) -> anyhow::Result<Option<File>> {
    if !matches!(config.database(), Database::Sqlite(_)) {
        return Ok(None);
    }
    lock_dir(
        &config.data_dir,
        "another reelay server is using it; stop it or choose another --data-dir",
    )
    .map(Some)
}

/// Takes `<dir>/reelay.lock`, or fails saying `busy` when another process holds it.
pub fn lock_dir(dir: &Path, busy: &str) -> anyhow::Result<File> {
    let path = dir.join("reelay.lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!("{}: {busy}", dir.display());
    }
    Ok(file)
}

/// This node's name on the leases it takes. On SQLite it is kept in `<data dir>/node-id`, so
/// that a restarting server releases exactly the work it held and nobody else's (an external
/// worker's lease goes on). On PostgreSQL it is new at every start: nodes may share one data
/// directory (a network volume), where one kept name would make them one node; a dead node's
/// work comes back when its leases lapse.
fn node_id(config: &Config) -> anyhow::Result<(String, Restart)> {
    let fresh = || format!("node-{}", uuid::Uuid::new_v4().simple());
    if let Database::Postgres(_) = config.database() {
        return Ok((fresh(), Restart::Fresh));
    }
    let path = config.data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok((id.trim().to_owned(), Restart::Same)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = fresh();
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((id, Restart::Same))
}

/// Whether this start continues an earlier one's leases.
#[derive(PartialEq, Eq)]
enum Restart {
    /// The same node as before the last stop: what it held was interrupted.
    Same,
    /// A node of its own: earlier holders' leases lapse by themselves.
    Fresh,
}

/// Gives back what this node held when it last stopped.
async fn release_interrupted(store: &dyn Store, node_id: &str) -> anyhow::Result<()> {
    let released = store.release_leases(node_id).await?;
    if released > 0 {
        tracing::info!(
            count = released,
            "generations interrupted by the last stop are queued again"
        );
    }
    let resent = store.release_delivery_leases(node_id, store.now()).await?;
    if resent > 0 {
        tracing::info!(
            count = resent,
            "webhooks in flight at the last stop will be sent again"
        );
    }
    Ok(())
}

/// Opens the configured database, bringing its schema up to date.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    private_dir(&config.data_dir)?;
    Ok(match config.database() {
        Database::Sqlite(path) => Arc::new(
            SqliteStore::open(&path)
                .with_context(|| format!("opening the database {}", path.display()))?,
        ),
        Database::Postgres(url) => Arc::new(
            PgStore::connect(&url)
                .await
                .context("connecting to PostgreSQL (REELAY_DATABASE_URL)")?
                .with_destination_limit(config.webhook_per_destination),
        ),
    })
}

/// Creates a directory readable by this user only, or tightens an existing one: it holds the
/// database (prompts, callback URLs, key hashes), the master key and the videos.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private (chmod 700)", dir.display()))?;
            tracing::info!(dir = %dir.display(), from = format!("{mode:o}"), "data directory made private (0700)");
        }
    }
    Ok(())
}

fn moderator(config: &Config) -> anyhow::Result<Moderator> {
    match &config.moderation_terms_file {
        None => Ok(Moderator::builtin()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading moderation terms from {}", path.display()))?;
            Moderator::from_rules(&text)
                .map_err(|e| anyhow::anyhow!("moderation terms in {}: {e}", path.display()))
        }
    }
}

fn public_url(config: &Config, bound: SocketAddr) -> String {
    match &config.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let host = match bound.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
                ip if ip.is_ipv6() => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            format!("http://{host}:{}", bound.port())
        }
    }
}

fn master_key(config: &Config) -> anyhow::Result<MasterKey> {
    match &config.master_key {
        Some(key) => MasterKey::from_base64(key).map_err(|e| anyhow::anyhow!("master_key: {e}")),
        None => {
            let path = config.data_dir.join("master.key");
            if matches!(config.database(), Database::Postgres(_)) && !path.exists() {
                bail!(
                    "on PostgreSQL every node must seal and open webhook secrets with the same \
                     master key: set REELAY_MASTER_KEY to the same 32 random bytes in base64 on \
                     every node (e.g. `head -c 32 /dev/urandom | base64`), or copy one node's \
                     {} to the others",
                    path.display()
                );
            }
            MasterKey::load_or_create(&path)
                .with_context(|| format!("reading the master key {}", path.display()))
        }
    }
}

/// Serves the Prometheus exposition of every metric recorded in this process.
fn metrics_renderer() -> anyhow::Result<Arc<dyn Fn() -> String + Send + Sync>> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ])?
        .install_recorder()
        .context("installing the metrics recorder")?;
    reelay_delivery::metrics::describe();
    Ok(Arc::new(move || handle.render()))
}

/// Which command runs the server: `dev` relaxes what only a developer's own machine may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Production,
    Dev,
}

/// Who may read `/metrics`: the admin token's holders; in `dev` on loopback without a token,
/// anyone local.
fn admin_access(config: &Config, mode: Mode) -> AdminAccess {
    match &config.admin_token {
        Some(token) => AdminAccess::token(token),
        None if mode == Mode::Dev && config.listen.ip().is_loopback() => AdminAccess::Open,
        None => AdminAccess::Closed,
    }
}

fn front_door_limits(config: &Config) -> front_door::Limits {
    let mut limits = front_door::Limits {
        header_read_timeout: config.http_header_read_timeout,
        idle_timeout: config.http_idle_timeout,
        max_connections: config.http_max_connections,
        max_requests_in_flight: config.http_max_requests_in_flight,
        shutdown_timeout: config.shutdown_timeout,
    };
    front_door::fit_to_fd_limit(&mut limits, config.webhook_max_in_flight);
    limits
}

/// A bound server, ready to run. `greet` lets `dev` print its greeting once the address is
/// known.
pub async fn serve(
    config: Config,
    mode: Mode,
    greet: impl AsyncFnOnce(&Config, &str, &Keyring) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&config)?;
    let store = open_store(&config).await?;
    let master = master_key(&config)?;
    let video_key = VideoKey::new(master.derive("video-url"));
    let dashboard_key = master.derive("dashboard-session");
    let (node_id, restart) = node_id(&config)?;
    if restart == Restart::Same {
        release_interrupted(store.as_ref(), &node_id).await?;
    }
    let videos_dir = config.videos_dir();
    std::fs::create_dir_all(&videos_dir)?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let public_url = public_url(&config, bound);

    let generator: Arc<dyn Generator> = match config.generator {
        GeneratorKind::Builtin => Arc::new(BuiltinRenderer::new(
            videos_dir.clone(),
            config.inputs_dir(),
            config.render_delay,
            config.render_concurrency,
        )),
        GeneratorKind::Instant => {
            tracing::warn!(
                "the instant generator is for load tests: every task gets one shared video"
            );
            Arc::new(InstantGenerator::prepare(videos_dir.clone()).await?)
        }
        GeneratorKind::External => {
            tracing::info!("generations are made by external workers (/v1/worker/…)");
            Arc::new(ExternalWorkers)
        }
    };
    let sender = Sender::new(&SenderConfig {
        connect_timeout: config.webhook_connect_timeout,
        request_timeout: config.webhook_request_timeout,
        policy: destinations(&config),
        source_ips: config.webhook_source_ips.clone(),
    })
    .context("building the webhook HTTP client")?;
    let dispatcher = Dispatcher::new(
        store.clone(),
        sender,
        Arc::new(Keyring::new(store.clone(), master)),
        DispatcherConfig {
            node_id: node_id.clone(),
            policy: config.retry_policy()?,
            lease: config.webhook_connect_timeout
                + config.webhook_request_timeout
                + DELIVERY_LEASE_MARGIN,
            max_in_flight: config.webhook_max_in_flight,
            per_destination: config.webhook_per_destination,
            poll_interval: POLL_INTERVAL,
            batch: 256,
        },
    );
    let engine = Engine::new(
        store.clone(),
        generator,
        EngineConfig {
            node_id: node_id.clone(),
            lease: LEASE,
            poll_interval: POLL_INTERVAL,
            public_url: public_url.clone(),
            video_key: video_key.clone(),
            moderator: moderator(&config)?,
            prices: config.prices()?,
            generation_timeout: config.generation_timeout,
            outbox: Arc::new(dispatcher.clone()),
            worker_lease: config.worker_lease,
            max_worker_polls: config.worker_max_polls,
            max_lost_leases: config.max_lost_leases,
            inputs_dir: config.inputs_dir(),
        },
    );
    let store_for_retention = store.clone();
    let app = reelay_api::router(AppState {
        live_keys: Default::default(),
        store: store.clone(),
        engine: engine.clone(),
        destinations: destinations(&config),
        videos_dir,
        dispatcher: dispatcher.clone(),
        egress_ips: config.webhook_source_ips.clone(),
        metrics: Some(metrics_renderer()?),
        admin: admin_access(&config, mode),
        create_limiter: CreateLimiter::new(config.create_rate_limit, config.create_rate_burst)
            .map(Arc::new),
        body_read_timeout: config.http_body_read_timeout,
        video_key,
        worker_max_video_bytes: config.worker_max_video_bytes,
        large_bodies: Arc::new(tokio::sync::Semaphore::new(
            config.http_max_large_bodies.max(1),
        )),
        dashboard_key,
    });
    let limits = front_door_limits(&config);

    let shutdown = CancellationToken::new();
    let engine_task = tokio::spawn(engine.run(shutdown.clone()));
    let dispatcher_task = tokio::spawn(dispatcher.clone().run(shutdown.clone()));
    tokio::spawn(
        config
            .retention()
            .run(store_for_retention, shutdown.clone()),
    );
    greet(&config, &public_url, dispatcher.keyring()).await?;
    println!("listening on http://{bound}");
    tracing::info!(%bound, %public_url, "reelay is serving");

    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    let server = front_door::serve(listener, app, limits, shutdown.clone());
    let (mut engine_task, mut dispatcher_task) = (engine_task, dispatcher_task);
    // A background loop that ends while no shutdown was asked for has failed: stop the whole
    // process rather than keep answering requests that nothing will process, so a supervisor
    // restarts it.
    let failed = async {
        let which = tokio::select! {
            _ = &mut engine_task => "the lifecycle engine",
            _ = &mut dispatcher_task => "the webhook dispatcher",
        };
        if shutdown.is_cancelled() {
            std::future::pending::<()>().await;
        }
        which
    };
    let stopped = tokio::select! {
        served = server => served.map_err(anyhow::Error::from),
        which = failed => Err(anyhow::anyhow!("{which} stopped unexpectedly")),
    };
    shutdown.cancel();
    for task in [engine_task, dispatcher_task] {
        // A task that already ended was consumed by the select above.
        if !task.is_finished() {
            let _ = task.await;
        }
    }
    give_back_deliveries(
        store.as_ref(),
        &dispatcher,
        &node_id,
        config.shutdown_timeout,
    )
    .await;
    stopped
}

/// At a stop: once the attempts in flight have ended, gives back the deliveries this node
/// still holds (those whose outcome could not be recorded), and on PostgreSQL takes it off
/// the list of owners whose leases the other nodes count. They are due again at once rather
/// than when their leases lapse. An attempt still sending after `grace` keeps its lease.
async fn give_back_deliveries(
    store: &dyn Store,
    dispatcher: &Dispatcher,
    node_id: &str,
    grace: Duration,
) {
    if !dispatcher.settle(grace).await {
        tracing::warn!("webhooks still being sent at the stop keep their leases until they lapse");
        return;
    }
    if let Err(e) = store.release_delivery_leases(node_id, store.now()).await {
        tracing::warn!(error = %e, "giving back this node's deliveries failed; their leases will lapse");
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
