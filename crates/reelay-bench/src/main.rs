//! `reelay-bench`: starts reelay as a real process (SQLite in a temporary directory, or
//! `--database-url`: on PostgreSQL a fresh database per setup, and `--nodes N` processes on
//! it), a receiver and a load generator of its own, all on loopback, and prints a table and one
//! JSON line per scenario. See BENCHMARKS.md.

mod load;
mod pg;
mod receiver;
mod reelay;
mod report;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};

use crate::reelay::Backend;
use crate::report::Row;
use crate::scenarios::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// The raw ceiling: the load generator POSTing to the receiver, no reelay
    Limit,
    /// Creates with a callback → webhooks: saturation and fixed rates (200/s, 1,000/s)
    Pipeline,
    /// N failed events in storage, the receiver up, one bulk redelivery: drain rate
    Dispatch,
    /// A healthy destination's p99 beside 50 and 1,000 that never answer
    Isolation,
    /// N scheduled retries: RSS and storage, then the drain once they are due
    Backlog,
    /// reelay's CPU seconds per 1,000 delivered webhooks at 1,000/s
    Cpu,
    /// External workers claiming and completing with N pending: claims/s and RSS
    Queue,
    /// Every scenario, in this order
    All,
}

impl Scenario {
    /// Whether the scenario means anything with `--nodes` > 1: the others restart, drive or
    /// read one process (its redelivery, RSS, restart or worker protocol).
    fn multi_node(self) -> bool {
        matches!(self, Scenario::Limit | Scenario::Pipeline | Scenario::Cpu)
    }
}

#[derive(Debug, Parser)]
#[command(version, about = "Benchmarks reelay as a real process on loopback")]
struct Cli {
    /// Which scenario (`limit` is always measured first: the others are fractions of it)
    #[arg(value_enum)]
    scenario: Scenario,
    /// Small sizes: `all` finishes in about a minute
    #[arg(long)]
    quick: bool,
    /// reelay's database; a fresh SQLite file in a temporary directory per scenario when unset.
    /// A `postgres://user@host:port/db` URL names a server: each setup gets a database of its
    /// own created there (CREATE DATABASE, from `db`) and dropped after, so the role must be
    /// allowed to create databases. Any other URL is used as is: give an empty database
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// `reelay serve` processes per setup, on the same PostgreSQL database (each its own data
    /// directory and port; creates go round-robin to them; CPU adds them up). More than 1 needs
    /// a postgres:// `--database-url`, and runs only limit, pipeline and cpu
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: u16,
    /// With `--nodes` and `pipeline`: each node's creates under an account of its own,
    /// calling back to a receiver port (a destination) of its own, so the nodes share no
    /// account row and no destination's limit: what more nodes cost apart from coordinating
    #[arg(long)]
    partitioned: bool,
    /// Requests in flight for the saturation loops
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The reelay binary [default: `reelay` next to this executable, after `cargo build
    /// --release -p reelay`]
    #[arg(long, value_name = "PATH")]
    reelay: Option<PathBuf>,
    /// Do not run `cargo build --release -p reelay` first
    #[arg(long)]
    no_build: bool,
    /// An extra setting for every reelay started, like `REELAY_WEBHOOK_PER_DESTINATION=256`
    /// (repeatable; a scenario's own settings win)
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// A setting for each bench database on PostgreSQL, as `ALTER DATABASE <it> SET KEY =
    /// 'VALUE'`, e.g. `log_min_duration_statement=50` to find slow queries (repeatable)
    #[arg(long = "pg-set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pg_settings: Vec<(String, String)>,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("starting the runtime");
    let code = runtime.block_on(run(cli));
    runtime.shutdown_background();
    std::process::exit(code);
}

async fn run(cli: Cli) -> i32 {
    reelay::raise_fd_limit();
    let bin = match reelay::locate(cli.reelay.clone(), cli.no_build) {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let backend = match &cli.database_url {
        Some(url) => Backend::from_url(url, cli.pg_settings.clone()),
        None => Backend::TempSqlite,
    };
    if !cli.pg_settings.is_empty() && !backend.is_postgres() {
        eprintln!("error: --pg-set needs a postgres:// --database-url");
        return 2;
    }
    let nodes = usize::from(cli.nodes);
    if nodes > 1 && !backend.is_postgres() {
        eprintln!(
            "error: --nodes {nodes} needs PostgreSQL (--database-url postgres://…): nodes share \
             one database, and SQLite is one process's"
        );
        return 2;
    }
    if nodes > 1 && !cli.scenario.multi_node() && cli.scenario != Scenario::All {
        eprintln!(
            "error: {} measures one reelay process (it restarts, drives or reads one node); \
             with --nodes {nodes} only limit, pipeline and cpu run",
            format!("{:?}", cli.scenario).to_lowercase()
        );
        return 2;
    }
    if cli.partitioned && (nodes < 2 || cli.scenario != Scenario::Pipeline) {
        eprintln!(
            "error: --partitioned splits pipeline's load between nodes: it needs pipeline and --nodes 2 or more"
        );
        return 2;
    }
    let client = match load::client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let mut ctx = Ctx {
        bin,
        backend,
        quick: cli.quick,
        concurrency: cli.concurrency,
        client,
        raw_requests_per_s: None,
        settings: cli.settings.clone(),
        nodes,
        partitioned: cli.partitioned,
    };
    // Refuse early and clearly when reelay cannot run on the backend asked for.
    if let Backend::Postgres { url, .. } = &ctx.backend
        && let Err(e) = pg::probe(url).await
    {
        eprintln!("error: PostgreSQL is unreachable, so nothing was measured:\n  {e:#}");
        return 3;
    }
    match ctx.start(&[]).await {
        Ok(r) => drop(r),
        Err(e) => {
            eprintln!(
                "error: reelay cannot run on the {} backend, so nothing was measured:\n  {e:#}",
                ctx.backend_label()
            );
            return 3;
        }
    }

    let order = [
        Scenario::Limit,
        Scenario::Pipeline,
        Scenario::Dispatch,
        Scenario::Isolation,
        Scenario::Backlog,
        Scenario::Cpu,
        Scenario::Queue,
    ];
    let wanted: Vec<Scenario> = match cli.scenario {
        Scenario::All if nodes > 1 => {
            eprintln!(
                "with --nodes {nodes}: running limit, pipeline and cpu only (the others measure \
                 one process)"
            );
            order.into_iter().filter(|s| s.multi_node()).collect()
        }
        Scenario::All => order.to_vec(),
        Scenario::Limit => vec![Scenario::Limit],
        one => vec![Scenario::Limit, one],
    };
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut failed = false;
    for scenario in wanted {
        let name = format!("{scenario:?}").to_lowercase();
        eprintln!(
            "[{:5.1} s] {name} ({})",
            started.elapsed().as_secs_f64(),
            if ctx.quick { "quick" } else { "full" }
        );
        let result = match scenario {
            Scenario::Limit => scenarios::limit::run(&ctx).await,
            Scenario::Pipeline => scenarios::pipeline::run(&ctx).await,
            Scenario::Dispatch => scenarios::dispatch::run(&ctx).await,
            Scenario::Isolation => scenarios::isolation::run(&ctx).await,
            Scenario::Backlog => scenarios::backlog::run(&ctx).await,
            Scenario::Cpu => scenarios::cpu::run(&ctx).await,
            Scenario::Queue => scenarios::queue::run(&ctx).await,
            Scenario::All => unreachable!(),
        };
        let scenario_rows = match result {
            Ok(r) => r,
            Err(e) => {
                failed = true;
                eprintln!("  ! {name} failed: {e:#}");
                vec![ctx.row(&name, "error").note(format!("{e:#}"))]
            }
        };
        if scenario == Scenario::Limit {
            // The ceiling is the fastest client's.
            ctx.raw_requests_per_s = scenario_rows
                .iter()
                .filter_map(|r| r.raw_requests_per_s)
                .reduce(f64::max);
        }
        let headline = headline(&name, &scenario_rows, &ctx);
        lines.push(report::json_line(&headline, &scenario_rows));
        rows.extend(scenario_rows);
    }
    eprintln!("[{:5.1} s] done", started.elapsed().as_secs_f64());
    println!("{}", report::table(&rows));
    for line in lines {
        println!("{line}");
    }
    if failed { 1 } else { 0 }
}

/// The scenario's top-level figures: its one row, or for `pipeline` the saturation rates with
/// the 1,000/s latencies, and for `isolation` the worst dead-destination variant.
fn headline(name: &str, rows: &[Row], ctx: &Ctx) -> Row {
    let mut head = rows[0].clone();
    let total = |f: fn(&Row) -> Option<u64>| rows.iter().filter_map(f).reduce(|a, b| a + b);
    match name {
        "pipeline" if rows.len() > 1 => {
            head.variant = "summary".into();
            if let Some(r) = rows.iter().find(|r| r.variant == "rate=1000/s") {
                head.p50_ms = r.p50_ms;
                head.p90_ms = r.p90_ms;
                head.p99_ms = r.p99_ms;
                head.max_ms = r.max_ms;
            }
            head.lost = total(|r| r.lost);
            head.duplicates = total(|r| r.duplicates);
            head.note = Some(
                "rates from saturation; latencies at 1,000/s; lost and duplicates over all runs"
                    .into(),
            );
        }
        "isolation" if rows.len() > 1 => {
            if let Some(worst) = rows[1..]
                .iter()
                .max_by(|a, b| a.p99_ratio.partial_cmp(&b.p99_ratio).unwrap())
            {
                head = worst.clone();
            }
            head.lost = total(|r| r.lost);
            head.duplicates = total(|r| r.duplicates);
            head.note = Some(
                "the variant with the worst p99_ratio; lost and duplicates over all runs".into(),
            );
        }
        "queue" if rows.len() > 1 => {
            // The largest backlog (its rows come last), with the workers that did worst on it.
            let largest = rows[rows.len() - 1].variant.split(' ').next().unwrap_or("");
            if let Some(worst) = rows
                .iter()
                .filter(|r| r.variant.split(' ').next() == Some(largest))
                .min_by(|a, b| a.queue_ratio.partial_cmp(&b.queue_ratio).unwrap())
            {
                head = worst.clone();
            }
            head.duplicates = total(|r| r.duplicates);
            head.note = Some(
                "the largest backlog with the worst queue_ratio; duplicates over all runs".into(),
            );
        }
        _ => {}
    }
    if head.backend.is_empty() {
        head.backend = ctx.backend_label();
    }
    head
}
