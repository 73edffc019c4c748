//! `reelay serve` and `reelay dev`: open the store, start the engine, serve the API.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use reelay_api::AppState;
use reelay_core::destination::DestinationPolicy;
use reelay_core::moderation::Moderator;
use reelay_engine::{BuiltinRenderer, Engine, EngineConfig, Generator, InstantGenerator};
use reelay_store::{SqliteStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, GeneratorKind};

/// How long a claim on a generation holds without a heartbeat.
const LEASE: Duration = Duration::from_secs(30);
/// How often the engine looks for work nobody announced.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Holds the data directory for this process: two servers on one SQLite file would each take
/// the other's in-flight work back on start-up.
fn lock_data_dir(config: &Config) -> anyhow::Result<File> {
    let path = config.data_dir.join("reelay.lock");
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!(
            "another reelay server is using {}; stop it or choose another --data-dir",
            config.data_dir.display()
        );
    }
    Ok(file)
}

pub fn open_store(config: &Config) -> anyhow::Result<SqliteStore> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let path = config.database_path()?;
    SqliteStore::open(&path).with_context(|| format!("opening the database {}", path.display()))
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

/// A bound server, ready to run. `before_run` lets `dev` print its greeting once the address
/// is known.
pub async fn serve(
    config: Config,
    before_run: impl FnOnce(&Config, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let store = open_store(&config)?;
    let _lock = lock_data_dir(&config)?;
    let released = store.release_all_leases().await?;
    if released > 0 {
        tracing::info!(
            count = released,
            "generations interrupted by the last stop are queued again"
        );
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
            config.render_delay,
        )),
        GeneratorKind::Instant => {
            tracing::warn!(
                "the instant generator is for load tests: every task gets one shared video"
            );
            Arc::new(InstantGenerator::prepare(videos_dir.clone()).await?)
        }
    };
    let store: Arc<dyn Store> = Arc::new(store);
    let engine = Engine::new(
        store.clone(),
        generator,
        EngineConfig {
            node_id: format!("node-{}", uuid::Uuid::new_v4().simple()),
            concurrency: config.render_concurrency,
            lease: LEASE,
            poll_interval: POLL_INTERVAL,
            public_url: public_url.clone(),
            moderator: moderator(&config)?,
            prices: config.prices()?,
            generation_timeout: config.generation_timeout,
        },
    );
    let app = reelay_api::router(AppState {
        store,
        engine: engine.clone(),
        destinations: DestinationPolicy {
            allow_insecure: config.allow_insecure_callbacks,
        },
        videos_dir,
    });

    let shutdown = CancellationToken::new();
    let engine_task = tokio::spawn(engine.run(shutdown.clone()));
    before_run(&config, &public_url)?;
    println!("listening on http://{bound}");
    tracing::info!(%bound, %public_url, "reelay is serving");

    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    shutdown.cancel();
    let _ = engine_task.await;
    Ok(())
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
