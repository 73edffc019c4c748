//! The `reelay` binary: the server (`serve`, `dev`), administration (`keys`, `credits`) and
//! client tools (`generate`, `listen`), and the reference worker (`worker`).

mod admin;
mod client;
mod config;
mod front_door;
mod lingering;
mod listen;
mod migrate;
mod server;
mod worker;
mod workers_admin;

use std::io::IsTerminal;
use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reelay_core::{AccountId, Credits, KeyId};
use serde::Serialize;
use serde_json::json;

use config::{Config, ConfigFlags};

#[derive(Parser)]
#[command(
    name = "reelay",
    version,
    about = "Asynchronous generation tasks with webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A command on the database, with the settings that find it (client commands have none).
#[derive(clap::Args)]
struct OnDatabase<C: Subcommand> {
    #[command(flatten)]
    config: ConfigFlags,
    #[command(subcommand)]
    command: C,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (production settings)
    Serve(ServeArgs),
    /// Run the server for local development: insecure callbacks allowed, a ready API key printed
    Dev(ServeArgs),
    /// Create, list and revoke API keys
    Keys(OnDatabase<KeysCommand>),
    /// Manage account credits
    Credits(OnDatabase<CreditsCommand>),
    /// Create, list and revoke external workers' tokens
    Workers(OnDatabase<workers_admin::WorkersCommand>),
    /// Receive webhooks locally: verify, print, optionally forward
    Listen(listen::ListenArgs),
    /// Run jobs for a server with external workers: on the built-in renderer or a Cog model
    Worker(worker::WorkerArgs),
    /// Bring the database's schema up to date (servers also do it when they start), or copy
    /// a SQLite installation into an empty PostgreSQL database
    Migrate {
        #[command(flatten)]
        config: ConfigFlags,
        /// The SQLite database to copy: sqlite://PATH (stop its server first)
        #[arg(long, value_name = "URL", requires = "to")]
        from: Option<String>,
        /// The empty PostgreSQL database to copy into: postgres://…
        #[arg(long, value_name = "URL", requires = "from")]
        to: Option<String>,
    },
    /// Delete what is past retention now (the server does it every minute by itself)
    Prune {
        #[command(flatten)]
        config: ConfigFlags,
        /// Only say how much would be deleted
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Create a generation through the API
    Generate {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(flatten)]
        args: client::GenerateArgs,
    },
}

#[derive(clap::Args, Serialize)]
struct ServeArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlags,
    /// Address to listen on
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// Base URL of video links
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    public_url: Option<String>,
    /// Print the effective configuration and exit
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key, for a new account (with --credits) or an existing one (--account)
    Create {
        /// A name for the key, to tell it apart in `keys list`
        #[arg(long, default_value = "default")]
        name: String,
        /// Credits for the new account, or added to --account (a decimal, like 10 or 2.5)
        #[arg(long)]
        credits: Option<Credits>,
        /// The account to add the key to (its id); a new account when omitted
        #[arg(long)]
        account: Option<AccountId>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets)
    List {
        /// Only this account's keys
        #[arg(long)]
        account: Option<AccountId>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it stops working at once
    Revoke {
        key_id: KeyId,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CreditsCommand {
    /// Add credits to an account (a negative amount removes them)
    Add {
        /// The account's id
        #[arg(long)]
        account: AccountId,
        /// Credits to add, a decimal like 10 or 2.5; negative to remove
        #[arg(long, allow_hyphen_values = true)]
        amount: Credits,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

/// The account `dev` keeps its keys in, and what it starts with.
const DEV_ACCOUNT: &str = "dev";
const DEV_CREDITS: Credits = Credits::from_units(100 * 10_000);

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        Command::Serve(_) | Command::Dev(_) | Command::Worker(_)
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| if serving { "info" } else { "warn" }.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(&args.config, serde_json::to_value(&args)?)?;
            if args.print_config {
                print!("{}", config.to_toml()?);
                return Ok(());
            }
            server::serve(config, server::Mode::Production, async |_, _, _| Ok(())).await
        }
        Command::Dev(args) => {
            let mut overrides = serde_json::to_value(&args)?;
            overrides["allow_insecure_callbacks"] = json!(true);
            let config = Config::load(&args.config, overrides)?;
            if args.print_config {
                print!("{}", config.to_toml()?);
                return Ok(());
            }
            let store = server::open_store(&config).await?;
            let account = store.account_by_name(DEV_ACCOUNT).await?.map(|a| a.id);
            let credits = account.is_none().then_some(DEV_CREDITS);
            let key = admin::create_key(store.as_ref(), account, DEV_ACCOUNT, credits).await?;
            drop(store);
            server::serve(
                config,
                server::Mode::Dev,
                async move |config, url, keyring| {
                    let secrets = keyring.show(key.account.id).await?;
                    print_dev_greeting(config, url, &key, &secrets.current.to_string());
                    Ok(())
                },
            )
            .await
        }
        Command::Keys(on) => keys(&on.config, on.command).await,
        Command::Workers(on) => {
            let store = server::open_store(&Config::load(&on.config, json!({}))?).await?;
            workers_admin::run(store.as_ref(), on.command).await
        }
        Command::Credits(OnDatabase {
            config,
            command:
                CreditsCommand::Add {
                    account,
                    amount,
                    json,
                },
        }) => {
            let store = server::open_store(&Config::load(&config, json!({}))?).await?;
            let balance = admin::add_credits(store.as_ref(), account, amount).await?;
            if json {
                println!(
                    "{}",
                    json!({"account_id": account.to_string(), "balance": balance.to_string()})
                );
            } else {
                println!("balance of {account}: {balance}");
            }
            Ok(())
        }
        Command::Generate { client, args } => client::generate(client, args).await,
        Command::Listen(args) => listen::listen(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Migrate { config, from, to } => {
            let config = Config::load(&config, json!({}))?;
            match (from, to) {
                (Some(from), Some(to)) => migrate::copy(&from, &to).await,
                _ => {
                    drop(server::open_store(&config).await?);
                    println!("the database schema is up to date");
                    Ok(())
                }
            }
        }
        Command::Prune {
            config,
            dry_run,
            json,
        } => {
            let config = Config::load(&config, json!({}))?;
            let store = server::open_store(&config).await?;
            let retention = config.retention();
            let (media, records) = if dry_run {
                let p = retention.preview(store.as_ref()).await?;
                (p.media, p.records)
            } else {
                let stop = tokio_util::sync::CancellationToken::new();
                let p = retention.prune(store.as_ref(), &stop).await?;
                (p.media, p.records)
            };
            if json {
                println!(
                    "{}",
                    json!({"dry_run": dry_run, "media": media, "records": records})
                );
            } else {
                let verb = if dry_run { "would delete" } else { "deleted" };
                println!(
                    "{verb} the videos and input images of {media} generations (ended over {} \
                     ago) and the rows, webhook events and attempt logs of {records} \
                     (ended over {} ago); balances and the ledger are kept",
                    humantime::format_duration(config.retention),
                    humantime::format_duration(config.records_retention),
                );
            }
            Ok(())
        }
    }
}

fn print_dev_greeting(config: &Config, url: &str, key: &admin::NewAccountKey, signing: &str) {
    println!(
        "\nreelay dev server\n\
         \n  API key (shown once): {secret}\
         \n  webhook secret:       {signing}\
         \n  account:              {account} (balance {balance})\
         \n  videos are written to {videos}\
         \n  insecure callbacks (http, loopback) are allowed: this is for development only\n\
         \nTry it:\n\
         \n  curl -X POST {url}/v1/veo/generate \\\
         \n    -H \"Authorization: Bearer {secret}\" \\\
         \n    -H \"Content-Type: application/json\" \\\
         \n    -d '{{\"prompt\": \"A sunset over mountains\"}}'\n\
         \n  curl {url}/v1/veo/generations/<generation_id> -H \"Authorization: Bearer {secret}\"\n\
         \nOr open {url}/dashboard and sign in with the API key. The API is described at \
         {url}/openapi.json\n",
        secret = key.secret,
        account = key.account.id,
        balance = key.account.balance,
        videos = config.videos_dir().display(),
    );
}

async fn keys(flags: &ConfigFlags, command: KeysCommand) -> anyhow::Result<()> {
    let store = server::open_store(&Config::load(flags, json!({}))?).await?;
    match command {
        KeysCommand::Create {
            name,
            credits,
            account,
            json,
        } => {
            let made = admin::create_key(store.as_ref(), account, &name, credits).await?;
            if json {
                println!("{}", made.to_json());
            } else {
                println!(
                    "API key (shown once, store it now): {}\nkey id:  {}\naccount: {} (balance {})",
                    made.secret, made.key.id, made.account.id, made.account.balance
                );
            }
        }
        KeysCommand::List { account, json } => {
            let keys = store.list_keys(account).await?;
            if json {
                let list: Vec<_> = keys.iter().map(admin::key_json).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for key in &keys {
                    println!(
                        "{}  {}…  {:<20} account {}{}",
                        key.id,
                        key.shown_prefix,
                        key.name,
                        key.account_id,
                        if key.revoked_at.is_some() {
                            "  (revoked)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        KeysCommand::Revoke { key_id, json } => {
            admin::revoke_key(store.as_ref(), key_id)
                .await
                .context("revoking the key")?;
            if json {
                println!("{}", json!({"key_id": key_id.to_string(), "revoked": true}));
            } else {
                println!("revoked {key_id}");
            }
        }
    }
    Ok(())
}
