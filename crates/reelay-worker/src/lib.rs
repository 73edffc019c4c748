//! `reelay worker`: the reference worker for reelay's external-worker protocol.
//!
//! It claims jobs from a reelay server (`REELAY_GENERATOR=external`) with a worker token,
//! keeps each job's lease alive with heartbeats that carry its progress, runs the job on a
//! [`Backend`] — the built-in renderer, or any Cog model server — and uploads the video or
//! reports the failure. It uses nothing but the public HTTP protocol (docs/workers.md), so
//! it runs on any machine that can reach the server, and a worker in another language can
//! copy what it does.
//!
//! On a cancel or a time limit (a heartbeat answers `cancel_requested`) or a lost lease, the
//! job's work is stopped (a Cog prediction is cancelled) and its result dropped.

mod builtin;
mod cog;
pub mod protocol;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use protocol::{CallError, FailCode, Job, Server};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use builtin::Builtin;
pub use cog::{Cog, InputMap};

/// How long one claim waits for work before asking again.
const CLAIM_WAIT: Duration = Duration::from_secs(20);
/// Pauses after a failed claim, doubling up to the last.
const CLAIM_BACKOFF: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];
/// Tries of a result call (upload, complete, fail) that fails in transit.
const REPORT_TRIES: u32 = 5;
/// Shortest pause between heartbeats.
const MIN_BEAT: Duration = Duration::from_secs(1);

/// Where the worker gets its jobs and how many it runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub server: String,
    pub token: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Claim only these models (the token's when `None`).
    pub models: Option<Vec<String>>,
}

/// What runs the jobs.
pub enum Backend {
    Builtin(Builtin),
    Cog(Cog),
}

/// What a backend made.
#[derive(Debug)]
pub enum Output {
    /// The MP4 itself, uploaded to the server.
    Mp4(Vec<u8>),
    /// An `https` URL where the video already is; the server hands it to the customer as is.
    Url(String),
}

/// Why a backend made nothing.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: FailCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: FailCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The work was stopped; never reported (the job is no longer this worker's).
    pub(crate) fn stopped() -> Self {
        Self::new(FailCode::TaskFailed, "stopped before it finished")
    }
}

/// An input image of a job, fetched.
#[derive(Debug, Clone)]
pub struct Image {
    /// `image`, `start_frame`, `end_frame`, `reference_1` … `reference_3`.
    pub name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// How far along a job is, in percent (0–99); sent with each heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicU8>);

impl Progress {
    /// Records `pct`, capped at 99; progress never goes down.
    pub fn set(&self, pct: u8) {
        self.0.fetch_max(pct.min(99), Ordering::Relaxed);
    }

    pub fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Backend {
    async fn run(
        &self,
        job: &Job,
        images: &[Image],
        progress: &Progress,
        stop: &CancellationToken,
    ) -> Result<Output, Failure> {
        match self {
            Backend::Builtin(b) => b.run(job, images, progress, stop).await,
            Backend::Cog(c) => c.run(job, images, progress, stop).await,
        }
    }
}

/// Claims and runs jobs until `drain` fires, then finishes the jobs it holds and returns.
/// `abort` stops those too: their work is dropped and their leases lapse on the server.
pub async fn run(
    options: Options,
    backend: Backend,
    drain: CancellationToken,
    abort: CancellationToken,
) -> anyhow::Result<()> {
    let server = Server::new(&options.server, &options.token)?;
    let backend = Arc::new(backend);
    let slots = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut running = JoinSet::new();
    let mut failures = 0usize;
    tracing::info!(server = %options.server, concurrency = options.concurrency, "worker started");
    loop {
        // Wait for a free slot, then ask for as many jobs as there are free slots.
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => permit?,
            _ = drain.cancelled() => break,
        };
        let free = 1 + slots.available_permits();
        let claimed = tokio::select! {
            claimed = server.claim(free, CLAIM_WAIT, options.models.as_deref()) => claimed,
            _ = drain.cancelled() => break,
        };
        let jobs = match claimed {
            Ok(jobs) => {
                failures = 0;
                jobs
            }
            Err(e) => {
                let pause = CLAIM_BACKOFF[failures.min(CLAIM_BACKOFF.len() - 1)];
                failures += 1;
                tracing::warn!(error = %e, retry_in = ?pause, "claiming jobs failed");
                if matches!(e, CallError::Refused { status: 401, .. }) {
                    anyhow::bail!("the server refused the worker token: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => continue,
                    _ = drain.cancelled() => break,
                }
            }
        };
        let mut permits = Some(first);
        for job in jobs {
            let permit = match permits.take() {
                Some(p) => p,
                None => slots
                    .clone()
                    .try_acquire_owned()
                    .expect("claimed no more jobs than free slots"),
            };
            let (server, backend, abort) = (server.clone(), backend.clone(), abort.clone());
            running.spawn(async move {
                work(&server, &backend, job, &abort).await;
                drop(permit);
            });
        }
        while running.try_join_next().is_some() {}
    }
    if !running.is_empty() {
        tracing::info!(
            jobs = running.len(),
            "no longer claiming; finishing the jobs held"
        );
    }
    while running.join_next().await.is_some() {}
    tracing::info!("worker stopped");
    Ok(())
}

/// Runs one job under its lease and reports how it ended.
async fn work(server: &Server, backend: &Backend, job: Job, abort: &CancellationToken) {
    let progress = Progress::default();
    let stop = abort.child_token();
    tracing::info!(generation = %job.generation_id, model = %job.model, "job claimed");
    let outcome = async {
        let made = match fetch_inputs(server, &job).await {
            Ok(images) => backend.run(&job, &images, &progress, &stop).await,
            Err(CallError::LeaseLost) => {
                tracing::warn!(generation = %job.generation_id, "the lease was lost; dropping the job");
                stop.cancel();
                return;
            }
            Err(e) => Err(Failure::new(
                FailCode::TaskFailed,
                format!("could not fetch the job's input images: {e}"),
            )),
        };
        if stop.is_cancelled() {
            return;
        }
        report(server, &job, made).await;
    };
    let lease = keep_lease(server, &job, &progress, &stop);
    tokio::pin!(outcome);
    tokio::select! {
        _ = &mut outcome => {}
        _ = lease => outcome.await,
    }
    stop.cancel();
}

/// Fetches the job's input images, retrying calls that failed in transit.
async fn fetch_inputs(server: &Server, job: &Job) -> Result<Vec<Image>, CallError> {
    let mut images = Vec::with_capacity(job.inputs.len());
    for input in &job.inputs {
        let mut attempt = 1;
        let bytes = loop {
            match server.input(input).await {
                Err(e) if e.is_transient() && attempt < REPORT_TRIES => {
                    tracing::warn!(generation = %job.generation_id, input = %input.name, error = %e, "fetching an input failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    attempt += 1;
                }
                other => break other?,
            }
        };
        images.push(Image {
            name: input.name.clone(),
            content_type: input.content_type.clone(),
            bytes,
        });
    }
    Ok(images)
}

/// Heartbeats until the job is no longer this worker's, then stops its work.
async fn keep_lease(server: &Server, job: &Job, progress: &Progress, stop: &CancellationToken) {
    let mut expires = job.lease_expires_at;
    loop {
        let left = expires - OffsetDateTime::now_utc();
        let every = Duration::try_from(left / 3)
            .unwrap_or(MIN_BEAT)
            .max(MIN_BEAT);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match server.heartbeat(&job.lease_id, progress.get(), None).await {
            Ok(beat) if beat.cancel_requested => {
                tracing::info!(generation = %job.generation_id, "the job was cancelled or timed out; stopping it");
                break;
            }
            Ok(beat) => expires = beat.lease_expires_at,
            Err(CallError::LeaseLost) => {
                tracing::warn!(generation = %job.generation_id, "the lease was lost; dropping the job");
                break;
            }
            // The lease still runs; the next beat, sooner, may get through.
            Err(e) => {
                tracing::warn!(generation = %job.generation_id, error = %e, "heartbeat failed")
            }
        }
    }
    stop.cancel();
}

/// Uploads the video or reports the failure, retrying calls that failed in transit (a repeat
/// of a call that did arrive is harmless: the server answers it as the first).
async fn report(server: &Server, job: &Job, made: Result<Output, Failure>) {
    let lease = job.lease_id.as_str();
    let mut pause = Duration::from_secs(1);
    for attempt in 1..=REPORT_TRIES {
        let result = match &made {
            Ok(Output::Mp4(mp4)) => server.upload(lease, mp4.clone()).await,
            Ok(Output::Url(url)) => server.complete(lease, url).await,
            Err(failure) => server.fail(lease, failure.code, &failure.message).await,
        };
        match result {
            Ok(()) => {
                match &made {
                    Ok(_) => tracing::info!(generation = %job.generation_id, "job completed"),
                    Err(f) => {
                        tracing::info!(generation = %job.generation_id, code = ?f.code, message = %f.message, "job failed")
                    }
                }
                return;
            }
            Err(e) if e.is_transient() && attempt < REPORT_TRIES => {
                tracing::warn!(generation = %job.generation_id, error = %e, attempt, "reporting the result failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => {
                tracing::error!(generation = %job.generation_id, error = %e, "the result was not accepted; the job is dropped");
                return;
            }
        }
    }
}
