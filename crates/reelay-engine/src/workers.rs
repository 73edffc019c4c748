//! The engine's side of external workers: claims under a fresh lease per call, heartbeats,
//! and results, every one fenced by the lease.
//!
//! A lease id is `<generation id>.<owner>`: the owner (random, 128 bits) is what the store's
//! lease records, so the store's own fencing (`heartbeat`, `finish` by the lease holder)
//! decides every call. The lease a generation ended under is kept, so a repeated complete or
//! fail answers as the first did, and a worker whose job was cancelled or timed out is told to
//! stop instead of being told it lost the lease.
//!
//! Moderation runs at claim time, in the server: a refused prompt fails with UNSAFE_CONTENT
//! there and is never handed to a worker.

use std::time::Duration;

use reelay_core::{FailureCode, GenerationId, Model};
use reelay_store::{
    Failure, Finished, Finisher, Generation, InputFile, Outcome, Stage, StoreError, Video,
};
use time::OffsetDateTime;

use crate::Engine;

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct WorkerJob {
    pub generation: Generation,
    pub lease_id: String,
    pub lease_expires_at: OffsetDateTime,
}

/// Why a worker's call changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The lease is not (or no longer) the generation's: expired and re-claimed, or the
    /// generation ended under another lease or by a cancel or timeout.
    #[error("the lease is no longer held")]
    LeaseLost,
    /// Too many long-polls wait already.
    #[error("too many workers are waiting")]
    Busy,
    /// The job has no input image of that name.
    #[error("the job has no such input")]
    NoSuchInput,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A lease id taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub generation: GenerationId,
    pub owner: String,
}

/// The prefix of a lease's owner part.
const OWNER_PREFIX: &str = "wl_";

impl Lease {
    /// `None` for anything that is not a lease id this server could have made.
    pub fn parse(lease_id: &str) -> Option<Self> {
        let (generation, owner) = lease_id.split_once('.')?;
        let hex = owner.strip_prefix(OWNER_PREFIX)?;
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Self {
            generation: generation.parse().ok()?,
            owner: owner.to_owned(),
        })
    }

    fn id(&self) -> String {
        format!("{}.{}", self.generation, self.owner)
    }
}

/// The longest failure reason kept from a worker, in characters.
pub const REASON_MAX_CHARS: usize = 1000;

/// A worker's failure message as the customer sees it: trimmed, cut to
/// [`REASON_MAX_CHARS`], none when empty.
fn reason(message: &str) -> Option<String> {
    let message = message.trim();
    if message.is_empty() {
        return None;
    }
    let mut cut: String = message.chars().take(REASON_MAX_CHARS).collect();
    if cut.len() < message.len() {
        cut.push('…');
    }
    Some(cut)
}

fn new_owner() -> String {
    format!("{OWNER_PREFIX}{:032x}", rand::random::<u128>())
}

/// What a heartbeat tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub lease_expires_at: OffsetDateTime,
    /// The generation was cancelled or timed out while this lease held it: stop working.
    pub cancel_requested: bool,
}

impl Engine {
    /// The lease length external workers get.
    pub fn worker_lease(&self) -> Duration {
        self.inner.config.worker_lease
    }

    /// Claims up to `max` jobs of `models`, oldest first, waiting up to `wait` for one to
    /// arrive. Empty after the wait. Refused with [`WorkerError::Busy`] when the cap on waiting
    /// long-polls is reached (a claim that does not wait is never refused).
    pub async fn worker_claim(
        &self,
        models: Vec<Model>,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<WorkerJob>, WorkerError> {
        let inner = &self.inner;
        let _permit = if wait.is_zero() {
            None
        } else {
            Some(
                inner
                    .worker_polls
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| WorkerError::Busy)?,
            )
        };
        let until = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so work that arrives during the look wakes us.
            let notified = inner.worker_work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let jobs = self.claim_once(&models, max).await?;
            if !jobs.is_empty() || tokio::time::Instant::now() >= until {
                return Ok(jobs);
            }
            // The poll interval also catches lapsed leases, which nothing announces.
            let next = until.min(tokio::time::Instant::now() + inner.config.poll_interval);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    async fn claim_once(
        &self,
        models: &[Model],
        max: usize,
    ) -> Result<Vec<WorkerJob>, WorkerError> {
        let inner = &self.inner;
        let owner = new_owner();
        let now = inner.store.now();
        let lease_until = now + inner.config.worker_lease;
        let claimed = inner
            .store
            .claim_models(&owner, max, models.to_vec(), lease_until, now)
            .await?;
        let mut jobs = Vec::with_capacity(claimed.len());
        for g in claimed {
            if let Some(failure) = inner.refusal(&g) {
                let refused = inner
                    .store
                    .finish(
                        g.id,
                        Finisher::LeaseHolder(&owner),
                        Outcome::Failed(failure),
                        inner.store.now(),
                    )
                    .await?;
                if let Finished::Applied(done) = refused {
                    inner.ended(&done);
                }
                continue;
            }
            let lease = Lease {
                generation: g.id,
                owner: owner.clone(),
            };
            tracing::info!(generation = %g.id, "claimed by an external worker");
            inner.changes.changed(g.id);
            jobs.push(WorkerJob {
                generation: g,
                lease_id: lease.id(),
                lease_expires_at: lease_until,
            });
        }
        Ok(jobs)
    }

    /// Extends the lease and records progress (`log` goes to this server's log only).
    pub async fn worker_heartbeat(
        &self,
        lease: &Lease,
        progress_pct: u8,
        log: Option<&str>,
    ) -> Result<Beat, WorkerError> {
        let inner = &self.inner;
        let until = inner.store.now() + inner.config.worker_lease;
        if let Some(log) = log {
            tracing::info!(generation = %lease.generation, progress_pct, log, "worker log");
        }
        if inner
            .store
            .heartbeat(lease.generation, &lease.owner, until, progress_pct)
            .await?
        {
            inner.changes.changed(lease.generation);
            return Ok(Beat {
                lease_expires_at: until,
                cancel_requested: false,
            });
        }
        let current = self.ended_under(lease).await?;
        match current.map(|g| g.stage) {
            Some(Stage::Failed {
                code: FailureCode::Cancelled | FailureCode::Timeout,
                completed_at,
                ..
            }) => Ok(Beat {
                lease_expires_at: completed_at,
                cancel_requested: true,
            }),
            _ => Err(WorkerError::LeaseLost),
        }
    }

    /// Completes the generation with `video`. A repeat by the lease that completed it answers
    /// the same; anything else the lease no longer holds is [`WorkerError::LeaseLost`].
    /// Returns the generation and whether `video` is the one it kept (false on a repeat: the
    /// caller removes its file).
    pub async fn worker_complete(
        &self,
        lease: &Lease,
        video: Video,
    ) -> Result<(Generation, bool), WorkerError> {
        let finished = self.finish_leased(lease, Outcome::Completed(video)).await?;
        match finished {
            Finished::Applied(done) => Ok((done, true)),
            Finished::Refused(_) => match self.ended_under(lease).await? {
                Some(g) if matches!(g.stage, Stage::Completed { .. }) => Ok((g, false)),
                _ => Err(WorkerError::LeaseLost),
            },
        }
    }

    /// Fails the generation with one of the codes a worker may report; `message` (cut to
    /// [`REASON_MAX_CHARS`]) is shown to the customer as the failure's reason.
    pub async fn worker_fail(
        &self,
        lease: &Lease,
        code: FailureCode,
        message: &str,
    ) -> Result<Generation, WorkerError> {
        tracing::info!(generation = %lease.generation, code = code.as_str(), message, "a worker failed its job");
        let failure = Failure {
            code,
            reason: reason(message),
        };
        match self.finish_leased(lease, Outcome::Failed(failure)).await? {
            Finished::Applied(done) => Ok(done),
            Finished::Refused(_) => match self.ended_under(lease).await? {
                Some(g) if matches!(g.stage, Stage::Failed { code: c, .. } if c == code) => Ok(g),
                _ => Err(WorkerError::LeaseLost),
            },
        }
    }

    async fn finish_leased(
        &self,
        lease: &Lease,
        outcome: Outcome,
    ) -> Result<Finished, WorkerError> {
        let inner = &self.inner;
        let finished = match inner
            .store
            .finish(
                lease.generation,
                Finisher::LeaseHolder(&lease.owner),
                outcome,
                inner.store.now(),
            )
            .await
        {
            Err(StoreError::NotFound) => return Err(WorkerError::LeaseLost),
            other => other?,
        };
        if let Finished::Applied(done) = &finished {
            inner.ended(done);
        }
        Ok(finished)
    }

    /// The file of input image `name` of the job `lease` holds; [`WorkerError::LeaseLost`]
    /// when the lease does not hold the job now (inputs are never public).
    pub async fn worker_input(
        &self,
        lease: &Lease,
        name: &str,
    ) -> Result<(std::path::PathBuf, InputFile), WorkerError> {
        let store = &self.inner.store;
        if store.lease_holder(lease.generation).await?.as_deref() != Some(lease.owner.as_str()) {
            return Err(WorkerError::LeaseLost);
        }
        let generation = store
            .generation(lease.generation)
            .await?
            .ok_or(WorkerError::LeaseLost)?;
        let input = generation
            .spec
            .inputs
            .into_iter()
            .find(|i| i.name == name)
            .ok_or(WorkerError::NoSuchInput)?;
        let path = crate::inputs::path(&self.inner.config.inputs_dir, lease.generation, &input);
        Ok((path, input))
    }

    /// Where a worker fetches input `input` of the job `lease_id` holds.
    pub fn worker_input_url(&self, lease_id: &str, input: &InputFile) -> String {
        format!(
            "{}/v1/worker/jobs/{lease_id}/inputs/{}",
            self.inner.config.public_url.trim_end_matches('/'),
            input.name
        )
    }

    /// The generation, when it ended while `lease` held it.
    async fn ended_under(&self, lease: &Lease) -> Result<Option<Generation>, WorkerError> {
        let store = &self.inner.store;
        if store.ended_lease(lease.generation).await?.as_deref() != Some(lease.owner.as_str()) {
            return Ok(None);
        }
        Ok(store.generation(lease.generation).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_round_trip_and_reject_anything_else() {
        let lease = Lease {
            generation: GenerationId::random(),
            owner: new_owner(),
        };
        assert_eq!(Lease::parse(&lease.id()), Some(lease.clone()));
        assert_ne!(new_owner(), new_owner());
        for bad in [
            "",
            "x.wl_00000000000000000000000000000000",
            &format!("{}.node-1", lease.generation),
            &format!("{}.wl_123", lease.generation),
            &format!("{}", lease.generation),
        ] {
            assert_eq!(Lease::parse(bad), None, "{bad}");
        }
    }
}
