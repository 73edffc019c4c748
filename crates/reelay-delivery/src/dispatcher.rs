//! The dispatcher: claims due deliveries from storage, sends each under a lease with bounded
//! concurrency per destination and in total, and records every attempt with what follows it.
//!
//! Nothing waits in memory: a retry is a row with a due time, so a million scheduled retries
//! cost disk, not RAM. A new event wakes the dispatcher at once; due retries wake it by time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reelay_core::retry::{AttemptOutcome, Next, RetryPolicy};
use reelay_store::{AfterAttempt, AttemptRecord, DueDelivery, Store};
use reelay_webhooks::sign_header;
use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::secrets::Keyring;
use crate::sender::{Delivery, Sender};

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// This process's name on delivery leases.
    pub node_id: String,
    pub policy: RetryPolicy,
    /// How long a claimed delivery is ours: longer than any attempt can take, so a slow
    /// attempt is never sent twice in parallel.
    pub lease: Duration,
    /// Most attempts in flight in this process.
    pub max_in_flight: usize,
    /// Most attempts in flight to one destination (scheme, host and port).
    pub per_destination: usize,
    /// The longest sleep between looks at storage when nothing announced work.
    pub poll_interval: Duration,
    /// Most deliveries leased in one transaction.
    pub batch: usize,
}

/// A handle to the dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    sender: Sender,
    keyring: Arc<Keyring>,
    config: DispatcherConfig,
    wake: Arc<Notify>,
    in_flight: Arc<Semaphore>,
    destinations: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Set while the loop waits for a free slot rather than for work.
    starved: AtomicBool,
}

/// How soon to look again when due rows wait only for busy destinations (a finished attempt
/// wakes the loop sooner).
const STARVED_RECHECK: Duration = Duration::from_millis(100);

/// Candidates read per free slot, so busy destinations' rows do not crowd out others'.
const CANDIDATES_PER_SLOT: usize = 4;

/// Destinations tracked before idle ones are forgotten.
const FORGET_IDLE_ABOVE: usize = 4096;

impl Dispatcher {
    /// `wake` is shared with whoever creates events (the lifecycle engine).
    pub fn new(
        store: Arc<dyn Store>,
        sender: Sender,
        keyring: Arc<Keyring>,
        config: DispatcherConfig,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                sender,
                keyring,
                in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
                config,
                wake,
                destinations: Mutex::new(HashMap::new()),
                starved: AtomicBool::new(false),
            }),
        }
    }

    /// Says that deliveries may be due now (a new event, a redelivery).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.inner.keyring
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        loop {
            let free = inner.in_flight.available_permits();
            let want = free.min(inner.config.batch);
            let mut got = 0;
            if want > 0 {
                inner.starved.store(false, Ordering::Relaxed);
                match self.claim(want).await {
                    Ok(claimed) => got = claimed,
                    Err(e) => tracing::error!(error = %e, "claiming deliveries failed"),
                }
            } else {
                inner.starved.store(true, Ordering::Relaxed);
            }
            if want > 0 && got == want {
                continue; // more may be due
            }
            let sleep = match inner.store.next_delivery_due().await {
                Ok(Some(at)) => (at - OffsetDateTime::now_utc())
                    .try_into()
                    .unwrap_or(Duration::ZERO)
                    .min(inner.config.poll_interval),
                _ => inner.config.poll_interval,
            };
            let sleep = if sleep.is_zero() {
                // Due rows remain, all for saturated destinations: wait for a slot to free.
                inner.starved.store(true, Ordering::Relaxed);
                STARVED_RECHECK
            } else {
                sleep
            };
            tokio::select! {
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Leases up to `want` due deliveries, no more for each destination than it has free
    /// slots, and starts them. Returns how many candidates there were, so the loop knows
    /// whether more may be waiting.
    async fn claim(&self, want: usize) -> reelay_store::StoreResult<usize> {
        let inner = &self.inner;
        let now = OffsetDateTime::now_utc();
        // Read more candidates than wanted: some may be for destinations with few free slots.
        let candidates = inner
            .store
            .due_deliveries(want * CANDIDATES_PER_SLOT, now, inner.saturated())
            .await?;
        let mut free: HashMap<&str, usize> = HashMap::new();
        let mut picked = Vec::with_capacity(want);
        for candidate in &candidates {
            let slots = free
                .entry(candidate.destination.as_str())
                .or_insert_with(|| {
                    inner
                        .destination(&candidate.destination)
                        .available_permits()
                });
            if *slots > 0 {
                *slots -= 1;
                picked.push(candidate.event_id.clone());
                if picked.len() == want {
                    break;
                }
            }
        }
        if picked.is_empty() {
            return Ok(0);
        }
        let leased = inner
            .store
            .lease_deliveries(&inner.config.node_id, picked, now + inner.config.lease, now)
            .await?;
        for delivery in leased {
            // Only this loop takes slots, and it picked no more than were free.
            let global = inner
                .in_flight
                .clone()
                .try_acquire_owned()
                .expect("picked no more than the free slots");
            let local = inner
                .destination(&delivery.destination)
                .try_acquire_owned()
                .expect("picked no more than the destination's free slots");
            tokio::spawn(self.clone().attempt(delivery, global, local));
        }
        Ok(candidates.len().min(want))
    }

    async fn attempt(
        self,
        d: DueDelivery,
        _global: OwnedSemaphorePermit,
        _local: OwnedSemaphorePermit,
    ) {
        let inner = &self.inner;
        let started_at = OffsetDateTime::now_utc();
        let secrets = match inner.keyring.signing(d.account_id).await {
            Ok(secrets) => secrets,
            Err(e) => {
                tracing::error!(webhook_id = %d.event_id, error = %e, "no signing secret; will retry");
                let retry = started_at + inner.config.policy.interval;
                let _ = inner
                    .store
                    .release_delivery(&d.event_id, &inner.config.node_id, retry)
                    .await;
                return;
            }
        };
        let timestamp = started_at.unix_timestamp();
        let signature = sign_header(&secrets, &d.event_id, timestamp, d.payload.as_bytes());
        let result = inner
            .sender
            .send(Delivery {
                url: &d.url,
                webhook_id: &d.event_id,
                timestamp,
                signature: &signature,
                body: &d.payload,
            })
            .await;
        let number = d.round_attempts + 1;
        let next = match inner.config.policy.next(
            number,
            result.outcome,
            result.status,
            result.retry_after,
        ) {
            Next::Delivered => AfterAttempt::Delivered,
            Next::RetryAfter(wait) => AfterAttempt::RetryAt(OffsetDateTime::now_utc() + wait),
            Next::GiveUp(reason) => AfterAttempt::Failed(reason),
        };
        metrics::attempt(result.outcome, result.duration);
        match &next {
            AfterAttempt::Delivered => metrics::delivered(d.created_at),
            AfterAttempt::Failed(_) => metrics::failed(),
            AfterAttempt::RetryAt(_) => {}
        }
        let level_ok = result.outcome == AttemptOutcome::Delivered;
        if level_ok {
            tracing::info!(webhook_id = %d.event_id, generation = %d.generation_id, attempt = number,
                outcome = result.outcome.as_str(), status = result.status, duration_ms = result.duration.as_millis() as u64,
                "webhook delivered");
        } else {
            tracing::warn!(webhook_id = %d.event_id, generation = %d.generation_id, attempt = number,
                outcome = result.outcome.as_str(), status = result.status, duration_ms = result.duration.as_millis() as u64,
                error = result.error.as_deref().unwrap_or(""), next = ?next, "webhook attempt failed");
        }
        let retry_soon = matches!(next, AfterAttempt::RetryAt(_));
        let record = AttemptRecord {
            event_id: d.event_id.clone(),
            owner: inner.config.node_id.clone(),
            started_at,
            duration_ms: result.duration.as_millis() as u64,
            outcome: result.outcome,
            status_code: result.status,
            response_body: result.body,
            error: result.error,
            next,
        };
        match inner.store.record_attempt(record).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(webhook_id = %d.event_id, "the lease ended during the attempt; its outcome is logged only")
            }
            Err(e) => {
                tracing::error!(webhook_id = %d.event_id, error = %e, "recording an attempt failed; the lease will expire and the event be sent again")
            }
        }
        drop(_local);
        drop(_global);
        if retry_soon || inner.starved.load(Ordering::Relaxed) {
            inner.wake.notify_one();
        }
    }
}

impl Inner {
    fn destination(&self, key: &str) -> Arc<Semaphore> {
        let mut map = self.destinations.lock().expect("destinations");
        if map.len() > FORGET_IDLE_ABOVE {
            let full = self.config.per_destination;
            map.retain(|_, s| s.available_permits() < full);
        }
        map.entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_destination.max(1))))
            .clone()
    }

    /// Destinations with no free slot: the claim skips their rows.
    fn saturated(&self) -> Vec<String> {
        self.destinations
            .lock()
            .expect("destinations")
            .iter()
            .filter(|(_, s)| s.available_permits() == 0)
            .map(|(k, _)| k.clone())
            .collect()
    }
}
