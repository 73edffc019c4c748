//! `reelay workers create|list|revoke`: external workers' tokens, straight on the database.
//! A token is 256 random bits behind `rlw_`, shown once; only its SHA-256 is stored, in its
//! own table, so it is never an API key (and no API key is ever a worker token).

use anyhow::bail;
use clap::Subcommand;
use reelay_core::Model;
use reelay_core::apikey::IssuedKey;
use reelay_store::{NewWorker, Store, WorkerInfo};
use reelay_webhooks::timestamp;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Every worker token starts with this, so a leaked one is easy to scan for.
const PREFIX: &str = "rlw_";
/// How many leading characters of a token are kept in clear for listings.
const SHOWN: usize = 12;

#[derive(Subcommand)]
pub enum WorkersCommand {
    /// Create a worker token (printed once)
    Create {
        /// A name for the worker, to tell it apart in `workers list`
        #[arg(long)]
        name: String,
        /// The models this worker may claim, comma-separated; every model when omitted
        #[arg(long, value_delimiter = ',')]
        models: Vec<Model>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List worker tokens (never their secrets)
    List {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Revoke a worker token: it stops working at once
    Revoke {
        id: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

fn worker_json(w: &WorkerInfo) -> Value {
    json!({
        "worker_id": w.id,
        "name": w.name,
        "models": w.models.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "prefix": w.shown_prefix,
        "created_at": timestamp::format(w.created_at),
        "revoked_at": w.revoked_at.map(timestamp::format),
    })
}

pub async fn run(store: &dyn Store, command: WorkersCommand) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    match command {
        WorkersCommand::Create { name, models, json } => {
            let issued = IssuedKey::generate_with_prefix(PREFIX);
            let mut models = models;
            models.sort();
            models.dedup();
            let info = store
                .create_worker(
                    NewWorker {
                        id: issued.id.to_string(),
                        name,
                        models,
                        shown_prefix: issued.secret[..SHOWN].to_owned(),
                        hash: issued.hash,
                    },
                    now,
                )
                .await?;
            if json {
                let mut out = worker_json(&info);
                out["token"] = json!(issued.secret);
                println!("{out}");
            } else {
                println!(
                    "worker token (shown once, store it now): {}\nworker id: {}",
                    issued.secret, info.id
                );
            }
        }
        WorkersCommand::List { json } => {
            let workers = store.list_workers().await?;
            if json {
                let list: Vec<_> = workers.iter().map(worker_json).collect();
                println!("{}", Value::Array(list));
            } else {
                for w in &workers {
                    let models = if w.models.is_empty() {
                        "every model".to_owned()
                    } else {
                        w.models
                            .iter()
                            .map(|m| m.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let revoked = if w.revoked_at.is_some() {
                        "  (revoked)"
                    } else {
                        ""
                    };
                    println!(
                        "{}  {}…  {:<20} {models}{revoked}",
                        w.id, w.shown_prefix, w.name
                    );
                }
            }
        }
        WorkersCommand::Revoke { id, json } => {
            if !store.revoke_worker(&id, now).await? {
                bail!("no live worker token {id}: it does not exist or was already revoked");
            }
            if json {
                println!("{}", json!({"worker_id": id, "revoked": true}));
            } else {
                println!("revoked {id}");
            }
        }
    }
    Ok(())
}
