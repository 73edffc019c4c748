//! `queue`: how fast external workers take work off a deep queue, through the worker protocol
//! (`docs/workers.md`), and what a million pending tasks cost in memory. A queue whose claim
//! slows as the backlog grows, or whose server holds the backlog in memory, fails exactly when
//! it is needed most: after an outage, or when customers outrun the workers.
//!
//! Each backlog N gets its own reelay with `REELAY_GENERATOR=external` (nothing renders on the
//! server), a worker token from `reelay workers create`, and N generations created through the
//! API (no callback); reelay's RSS and the storage are read once all N are pending. Then for
//! each number of workers W: W requests in flight on hyper's client (a connection each), each a
//! loop of `POST /v1/worker/claim {"max_jobs":1,"wait_seconds":0}` and, at once, `POST
//! /v1/worker/jobs/{lease_id}/complete` with an https URL (no upload: this measures the queue,
//! not file writes). claims/s = cycles ÷ time, latency = the claim's request alone.
//!
//! The backlog is kept at N: cycles run in rounds of [`ROUND`]; after each round (untimed) as
//! many generations are created as it took, so every round starts at N pending and ends at
//! N − ROUND, whatever N is. Only the rounds are timed, `window` in all per N and W. The rounds
//! go round the servers in turn (all of them are up at once), so the machine's other load falls
//! on every N alike and the ratio between two N is not an accident of when each ran.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Deserialize;

use super::{Ctx, Running};
use crate::load::{HyperClient, Outcome, REQUEST_TIMEOUT, closed_loop, hyper_client};
use crate::progress;
use crate::report::Row;
use crate::stats::{Latency, rate};

/// Claim + complete cycles per timed round; the backlog goes from N down to N − ROUND in it.
const ROUND: u64 = 250;

/// reelay's default time limit of a generation: past it, the oldest pending would time out.
const TIME_LIMIT: Duration = Duration::from_secs(600);

const CLAIM: &str = r#"{"max_jobs":1,"wait_seconds":0}"#;
const COMPLETE: &str = r#"{"video_url":"https://cdn.example.com/x.mp4"}"#;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let sizes: &[u64] = ctx.pick(&[1_000, 20_000], &[1_000, 100_000, 1_000_000]);
    let workers: &[u64] = ctx.pick(&[1, 4], &[1, 4, 16]);
    let window = ctx.pick(Duration::from_secs(2), Duration::from_secs(10));
    let mut queues = Vec::new();
    for &n in sizes {
        queues.push(Queue::fill(ctx, n).await?);
    }
    let mut measured: Vec<(u64, u64, Row)> = Vec::new();
    for &w in workers {
        progress!(
            "queue: {w} workers on each backlog for {window:?}, rounds of {ROUND} taking turns"
        );
        let mut tallies = Vec::new();
        for q in &mut queues {
            q.warm_up(ctx, w).await?;
            tallies.push(Tally::default());
        }
        loop {
            let mut ran = false;
            for (q, t) in queues.iter_mut().zip(&mut tallies) {
                if t.timed < window {
                    q.round(ctx, w, window - t.timed, t).await?;
                    ran = true;
                }
            }
            if !ran {
                break;
            }
        }
        for (q, t) in queues.iter().zip(tallies) {
            measured.push((q.n, w, q.row(ctx, w, t)));
        }
    }
    measured.sort_by_key(|(n, w, _)| (*n, *w));
    // Each rate against the smallest backlog's with as many workers.
    let base = |w: u64| {
        measured
            .iter()
            .find(|(n, bw, _)| *n == sizes[0] && *bw == w)
            .and_then(|(_, _, r)| r.claims_per_s)
    };
    let ratios: Vec<Option<f64>> = measured
        .iter()
        .map(|(_, w, r)| r.claims_per_s.zip(base(*w)).map(|(r, b)| r / b))
        .collect();
    Ok(measured
        .into_iter()
        .zip(ratios)
        .map(|((_, _, mut row), ratio)| {
            row.queue_ratio = ratio;
            row
        })
        .collect())
}

/// One reelay with its backlog.
struct Queue {
    n: u64,
    run: Running,
    token: String,
    worker: Option<Worker>,
    /// Generations created in the fill (N, unless the fill ran out of time).
    pending: u64,
    /// The number of the next generation to create.
    next: u64,
    fill_started: Instant,
    creates_per_s: Option<f64>,
    rss_mb: Option<f64>,
    storage_mb: f64,
    /// Every generation handed out: one handed out twice would be a broken queue.
    claimed: HashSet<String>,
}

/// What the timed rounds of one N and W add up to.
#[derive(Default)]
struct Tally {
    timed: Duration,
    cpu_seconds: f64,
    latencies: Vec<Duration>,
    rounds: u64,
    failures: u64,
    first_error: Option<String>,
    duplicates: u64,
    peak_rss: f64,
}

impl Queue {
    /// A fresh reelay for external workers, a worker token, and `n` creates through the API.
    async fn fill(ctx: &Ctx, n: u64) -> anyhow::Result<Self> {
        let run = ctx
            .start(&[("REELAY_GENERATOR", "external".into())])
            .await?;
        let token = run.setup.create_worker_token().await?;
        progress!("queue: creating {n} pending generations through the API");
        let fill_started = Instant::now();
        let within = ctx.pick(Duration::from_secs(60), Duration::from_secs(420));
        let (pending, took) = create(ctx, &run, 0..n, within).await?;
        let creates_per_s = rate(pending, took);
        let rss_mb = run.reelay.rss_mb();
        let storage_mb = run.setup.storage_mb();
        progress!(
            "queue: {pending} pending after {:.1} s ({:.0} creates/s); rss {:.1} MB, storage {storage_mb:.1} MB",
            took.as_secs_f64(),
            creates_per_s.unwrap_or(0.0),
            rss_mb.unwrap_or(0.0)
        );
        Ok(Self {
            n,
            run,
            token,
            worker: None,
            pending,
            next: pending,
            fill_started,
            creates_per_s,
            rss_mb,
            storage_mb,
            claimed: HashSet::new(),
        })
    }

    /// `w` new workers (new connections) and one round untimed, the backlog then back at N.
    async fn warm_up(&mut self, ctx: &Ctx, w: u64) -> anyhow::Result<()> {
        let worker = Worker::new(&self.run.reelay.url, &self.token);
        let out = worker
            .cycles(ROUND, w, Instant::now() + REQUEST_TIMEOUT)
            .await;
        out.check("queue: warm-up")?;
        self.worker = Some(worker);
        let done = out.results.len() as u64;
        self.claimed
            .extend(out.results.into_iter().map(|(_, id)| id));
        self.refill(ctx, done).await
    }

    /// One timed round of at most [`ROUND`] cycles and `budget`, then the backlog back at N.
    async fn round(
        &mut self,
        ctx: &Ctx,
        w: u64,
        budget: Duration,
        t: &mut Tally,
    ) -> anyhow::Result<()> {
        let worker = self.worker.as_ref().context("no workers warmed up")?;
        let cpu_before = self.run.reelay.cpu_seconds();
        let out = worker.cycles(ROUND, w, Instant::now() + budget).await;
        out.check("queue: claiming")?;
        t.timed += out.elapsed();
        let cpu_after = self.run.reelay.cpu_seconds();
        t.cpu_seconds += cpu_after.zip(cpu_before).map_or(0.0, |(b, a)| b - a);
        t.rounds += 1;
        t.failures += out.failures;
        if t.first_error.is_none() {
            t.first_error = out.first_error;
        }
        let done = out.results.len() as u64;
        for (latency, id) in out.results {
            t.latencies.push(latency);
            if !self.claimed.insert(id) {
                t.duplicates += 1;
            }
        }
        t.peak_rss = t.peak_rss.max(self.run.reelay.rss_mb().unwrap_or(0.0));
        self.refill(ctx, done).await
    }

    /// Creates `count` more, untimed.
    async fn refill(&mut self, ctx: &Ctx, count: u64) -> anyhow::Result<()> {
        let (created, _) = create(
            ctx,
            &self.run,
            self.next..self.next + count,
            REQUEST_TIMEOUT,
        )
        .await?;
        self.next += created;
        Ok(())
    }

    fn row(&self, ctx: &Ctx, w: u64, t: Tally) -> Row {
        let cycles = t.latencies.len() as u64;
        let mut row = ctx.row("queue", &format!("n={} w={w}", self.n));
        row.events = Some(cycles);
        row.creates_per_s = self.creates_per_s;
        row.claims_per_s = rate(cycles, t.timed);
        row = row.latency(Latency::of(t.latencies));
        row.duplicates = Some(t.duplicates);
        row.rss_mb = self.rss_mb;
        row.storage_mb = Some(self.storage_mb);
        row.cpu_s_per_1k = (cycles > 0).then(|| t.cpu_seconds / (cycles as f64 / 1000.0));
        row = row.note(format!(
            "{} rounds over {:.1} s; peak rss while claiming {:.1} MB",
            t.rounds,
            t.timed.as_secs_f64(),
            t.peak_rss
        ));
        if self.pending < self.n {
            row = row.note(format!(
                "only {} of {} were created in time",
                self.pending, self.n
            ));
        }
        if self.fill_started.elapsed() > TIME_LIMIT {
            row = row.note("the oldest pending outlived their 10-minute time limit during the run");
        }
        if t.failures > 0 {
            row = row.note(format!(
                "{} cycles failed: {}",
                t.failures,
                t.first_error.unwrap_or_default()
            ));
        }
        row
    }
}

/// Creates generations numbered `range` (no callback), `ctx.concurrency` in flight: how many
/// were created, and in how long.
async fn create(
    ctx: &Ctx,
    run: &Running,
    range: std::ops::Range<u64>,
    within: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let creator = run.creator.clone();
    let first = range.start;
    let out = closed_loop(
        range.end - range.start,
        ctx.concurrency,
        Instant::now() + within,
        move |i| {
            let creator = creator.clone();
            async move { creator.create_without_callback(first + i).await.map(drop) }
        },
    )
    .await;
    out.check("queue: creating")?;
    Ok((out.results.len() as u64, out.elapsed()))
}

/// A simulated worker: hyper's client (each request in flight on a connection of its own).
#[derive(Clone)]
struct Worker {
    client: HyperClient,
    base: Arc<str>,
    auth: Arc<str>,
}

#[derive(Deserialize)]
struct Claimed {
    jobs: Vec<Job>,
}

#[derive(Deserialize)]
struct Job {
    generation_id: String,
    lease_id: String,
}

impl Worker {
    fn new(base_url: &str, token: &str) -> Self {
        Self {
            client: hyper_client(),
            base: base_url.into(),
            auth: format!("Bearer {token}").into(),
        }
    }

    /// `count` cycles, `w` at a time, started until `deadline`.
    async fn cycles(&self, count: u64, w: u64, deadline: Instant) -> Outcome<(Duration, String)> {
        let worker = self.clone();
        closed_loop(count, w as usize, deadline, move |_| {
            let worker = worker.clone();
            async move { worker.cycle().await }
        })
        .await
    }

    /// One claim, then its completion: the claim's latency and the generation it got.
    async fn cycle(&self) -> anyhow::Result<(Duration, String)> {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let sent = Instant::now();
            let body = self.post("/v1/worker/claim", CLAIM).await?;
            let latency = sent.elapsed();
            let claimed: Claimed = serde_json::from_slice(&body).context("parsing the claim")?;
            let job = claimed
                .jobs
                .into_iter()
                .next()
                .context("the claim found no job")?;
            let path = format!("/v1/worker/jobs/{}/complete", job.lease_id);
            self.post(&path, COMPLETE).await?;
            Ok((latency, job.generation_id))
        })
        .await
        .context("a claim and its completion took over the request timeout")?
    }

    /// POSTs `body` to `path`; expects 200 and returns the answer's body.
    async fn post(&self, path: &str, body: &'static str) -> anyhow::Result<Bytes> {
        let request = hyper::Request::post(format!("{}{path}", self.base))
            .header("authorization", &*self.auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status != hyper::StatusCode::OK {
            bail!(
                "POST {path} answered {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            );
        }
        Ok(bytes)
    }
}
