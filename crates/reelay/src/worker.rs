//! `reelay worker`: the command line of the reference worker (the `reelay-worker` crate).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use reelay_worker::{Backend, Builtin, Cog, InputMap, Options};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// reelay server URL
    #[arg(long, env = "REELAY_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Worker token (`reelay workers create`)
    #[arg(long, env = "REELAY_WORKER_TOKEN", hide_env_values = true)]
    token: String,
    /// Jobs run at once
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Claim only these models, comma-separated [default: every model the token allows]
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Run jobs on the built-in renderer
    #[arg(long, conflicts_with = "cog", required_unless_present = "cog")]
    builtin: bool,
    /// With --builtin: extra time each job takes, like a real model
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    render_delay: Duration,
    /// Run jobs on the Cog model server at this URL (like http://127.0.0.1:5000)
    #[arg(long, value_name = "URL")]
    cog: Option<String>,
    /// With --cog: the predictor's input names, as JOB_FIELD=INPUT pairs, comma-separated
    /// (fields: prompt, seed, aspect_ratio, watermark_text; INPUT empty to never send one)
    #[arg(long, value_delimiter = ',', value_name = "FIELD=INPUT")]
    input_map: Vec<String>,
    /// With --cog: where this worker receives the model server's progress webhooks (the
    /// model server must reach it; a random loopback port by default)
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    cog_webhook_listen: SocketAddr,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let backend = match (&args.cog, args.builtin) {
        (Some(url), false) => {
            let map = InputMap::parse(&args.input_map)?;
            Backend::Cog(Cog::connect(url, map, args.cog_webhook_listen).await?)
        }
        (None, true) => {
            if !args.input_map.is_empty() {
                bail!("--input-map goes with --cog");
            }
            Backend::Builtin(Builtin {
                delay: args.render_delay,
            })
        }
        _ => bail!("give one of --builtin or --cog URL"),
    };
    let (drain, abort) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(signals(drain.clone(), abort.clone()));
    let options = Options {
        server: args.server,
        token: args.token,
        concurrency: args.concurrency,
        models: args.models,
    };
    reelay_worker::run(options, backend, drain, abort).await
}

/// The first SIGTERM or Ctrl-C stops claiming and lets the jobs held finish; a second one
/// drops them (their leases lapse and the server hands them to another worker).
async fn signals(drain: CancellationToken, abort: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    let steps = [
        (
            drain,
            "claiming no more jobs; finishing the ones held (signal again to drop them)",
        ),
        (
            abort,
            "dropping the jobs held; the server gives them to another worker",
        ),
    ];
    for (token, what) in steps {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("{what}");
        token.cancel();
    }
}
