//! The dispatcher: finds due deliveries, sends each under a lease with bounded concurrency per
//! destination and in total, and records every attempt with what follows it.
//!
//! Nothing waits only in memory: a retry is a row with a due time, so a million scheduled
//! retries cost disk, not RAM. New events are handed over by whoever wrote them (the
//! [`OutboxListener`] side), so they leave at once; retries coming due and anything written
//! elsewhere are found by a scan of storage that costs a few index seeks per destination.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reelay_core::destination::redact;
use reelay_core::retry::{AttemptOutcome, Next, RetryPolicy};
use reelay_store::{
    AfterAttempt, AttemptRecord, DueDelivery, DueRef, OutboxListener, Store, StoreResult,
};
use reelay_webhooks::sign_header;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::board::Board;
use crate::metrics;
use crate::secrets::Keyring;
use crate::sender::{Delivery, Sender};

/// One slot in this many is kept for destinations with no slow attempt in flight.
const RESERVED_SHARE: usize = 4;
/// An attempt in flight longer than this marks its destination as slow.
const SLOW_ATTEMPT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// This process's name on delivery leases.
    pub node_id: String,
    pub policy: RetryPolicy,
    /// How long a leased delivery is ours: longer than any attempt can take, so a slow
    /// attempt is never sent twice in parallel.
    pub lease: Duration,
    /// Most attempts in flight in this process.
    pub max_in_flight: usize,
    /// Most attempts in flight to one destination (scheme, host and port).
    pub per_destination: usize,
    /// The longest time between scans of storage.
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
    wake: Notify,
    in_flight: Arc<Semaphore>,
    board: Board,
    /// Set when storage must be scanned before the next pick.
    scan_now: AtomicBool,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        sender: Sender,
        keyring: Arc<Keyring>,
        config: DispatcherConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                sender,
                keyring,
                in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
                board: Board::new(config.per_destination),
                config,
                wake: Notify::new(),
                scan_now: AtomicBool::new(true),
            }),
        }
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.inner.keyring
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let mut last_scan: Option<Instant> = None;
        let mut cursor: Option<String> = None;
        // Something was already due at the last scan: until the next, the earliest due time
        // is not worth reading again (it walks every entry of deliveries done since vacuum).
        let mut overdue_since_scan = false;
        loop {
            let scan_due = inner.scan_now.swap(false, Ordering::Relaxed)
                || last_scan.is_none_or(|at| at.elapsed() >= inner.config.poll_interval);
            if scan_due {
                last_scan = Some(Instant::now());
                overdue_since_scan = false;
                if let Err(e) = self.scan(&mut cursor).await {
                    tracing::error!(error = %e, "scanning for due deliveries failed");
                }
            }
            let started = match self.start_ready().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "starting deliveries failed");
                    0
                }
            };
            if started > 0 && inner.in_flight.available_permits() > 0 {
                continue; // picking may have left more for the next batch
            }
            let wait = self
                .until_next_scan(last_scan, &mut overdue_since_scan)
                .await;
            tokio::select! {
                _ = inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Once [`Dispatcher::run`] has returned: waits up to `grace` for the attempts in flight
    /// to end and be recorded, and says whether they all did. Only then may what this node
    /// still holds be given to another node; an attempt still sending keeps its lease until
    /// the lease lapses, or the same webhook could be sent twice at once.
    pub async fn settle(&self, grace: Duration) -> bool {
        let all = u32::try_from(self.inner.config.max_in_flight.max(1)).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout(grace, self.inner.in_flight.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    /// Looks in storage for due deliveries not heard of: retries coming due, work left by a
    /// crashed node or written by another process.
    async fn scan(&self, cursor: &mut Option<String>) -> StoreResult<()> {
        let inner = &self.inner;
        let per = inner.config.per_destination.max(1);
        let found = inner
            .store
            .scan_due(
                inner.store.now(),
                cursor.clone(),
                inner.board.saturated(),
                per,
                inner.config.batch * 4,
            )
            .await?;
        // Start the next scan after the last destination seen, so every destination gets
        // its turn even when one scan cannot reach them all.
        *cursor = found.last().map(|d| d.destination.clone());
        let mut per_destination: HashMap<&str, usize> = HashMap::new();
        for d in &found {
            *per_destination.entry(d.destination.as_str()).or_default() += 1;
        }
        for (destination, n) in per_destination {
            if n >= per {
                inner.board.backlogged(destination);
            }
        }
        inner.board.hear(found);
        Ok(())
    }

    /// Leases what the board picks (refilling backlogged destinations from storage) and
    /// starts each attempt. Returns how many started.
    async fn start_ready(&self) -> StoreResult<usize> {
        let inner = &self.inner;
        let budget = inner.in_flight.available_permits().min(inner.config.batch);
        if budget == 0 {
            return Ok(0);
        }
        let now = inner.store.now();
        let pick = inner.board.pick(
            budget,
            inner.in_flight.available_permits(),
            inner.config.max_in_flight / RESERVED_SHARE,
        );
        let mut asked = pick.due;
        for refill in pick.refill {
            let room = refill.free.min(budget.saturating_sub(asked.len()));
            let found = inner
                .store
                .due_for_destination(&refill.destination, refill.from, room, now)
                .await?;
            inner.board.refilled(&refill, room, &found);
            asked.extend(found.into_iter().map(|due| DueRef {
                event_id: due.event_id,
                destination: refill.destination.clone(),
            }));
        }
        if asked.is_empty() {
            return Ok(0);
        }
        let ids = asked.iter().map(|d| d.event_id.clone()).collect();
        let sending = inner.board.sending(&asked);
        let leased = inner
            .store
            .lease_deliveries(
                &inner.config.node_id,
                ids,
                sending,
                now + inner.config.lease,
                now,
            )
            .await?;
        inner
            .board
            .leased(&asked, leased.iter().map(|d| d.destination.as_str()));
        let started = leased.len();
        for delivery in leased {
            // Only this loop takes slots, and the board picked no more than were free.
            let global = inner
                .in_flight
                .clone()
                .try_acquire_owned()
                .expect("picked no more than the free slots");
            let local = inner
                .board
                .slots(&delivery.destination)
                .try_acquire_owned()
                .expect("picked no more than the destination's free slots");
            tokio::spawn(self.clone().attempt(delivery, global, local));
        }
        Ok(started)
    }

    /// Until the next retry comes due, or the next routine scan.
    async fn until_next_scan(
        &self,
        last_scan: Option<Instant>,
        overdue_since_scan: &mut bool,
    ) -> Duration {
        let inner = &self.inner;
        let routine = last_scan
            .map(|at| inner.config.poll_interval.saturating_sub(at.elapsed()))
            .unwrap_or_default();
        if *overdue_since_scan {
            return routine;
        }
        let Ok(Some(next_due)) = inner.store.next_delivery_due().await else {
            return routine;
        };
        let last_scan_at = inner.store.now() - last_scan.map(|at| at.elapsed()).unwrap_or_default();
        if next_due <= last_scan_at {
            // Already due at the last scan: it is on the board or waits for a busy
            // destination, whose freed slots wake the loop.
            *overdue_since_scan = true;
            return routine;
        }
        let until: Duration = (next_due - inner.store.now())
            .try_into()
            .unwrap_or(Duration::ZERO);
        if until < routine {
            inner.scan_now.store(true, Ordering::Relaxed);
        }
        until.min(routine)
    }

    async fn attempt(
        self,
        d: DueDelivery,
        _global: OwnedSemaphorePermit,
        _local: OwnedSemaphorePermit,
    ) {
        let inner = &self.inner;
        let started_at = inner.store.now();
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
        let mut send = std::pin::pin!(inner.sender.send(Delivery {
            url: &d.url,
            webhook_id: &d.event_id,
            timestamp,
            signature: &signature,
            body: &d.payload,
        }));
        let result = match tokio::time::timeout(SLOW_ATTEMPT, &mut send).await {
            Ok(result) => result,
            Err(_) => {
                inner.board.slow_started(&d.destination);
                let result = send.await;
                inner.board.slow_ended(&d.destination);
                result
            }
        };
        // The destination's slot bounds requests to it; recording the outcome is storage's
        // business and must not hold the destination back.
        drop(_local);
        inner.board.freed(&d.destination);
        inner.wake.notify_one();
        let number = d.round_attempts + 1;
        let next = match inner.config.policy.next(
            number,
            result.outcome,
            result.status,
            result.retry_after,
        ) {
            Next::Delivered => AfterAttempt::Delivered,
            Next::RetryAfter(wait) => AfterAttempt::RetryAt(inner.store.now() + wait),
            Next::GiveUp(reason) => AfterAttempt::Failed(reason),
        };
        metrics::attempt(result.outcome, result.duration);
        match &next {
            AfterAttempt::Delivered => metrics::delivered(d.created_at),
            AfterAttempt::Failed(_) => metrics::failed(),
            AfterAttempt::RetryAt(_) => {}
        }
        let duration_ms = result.duration.as_millis() as u64;
        // Never the URL as stored: its query string and user info may hold secrets.
        let callback = redact(&d.url);
        if result.outcome == AttemptOutcome::Delivered {
            tracing::info!(webhook_id = %d.event_id, generation = %d.generation_id, %callback,
                attempt = number, outcome = result.outcome.as_str(), status = result.status,
                duration_ms, "webhook delivered");
        } else {
            tracing::warn!(webhook_id = %d.event_id, generation = %d.generation_id, %callback,
                attempt = number, outcome = result.outcome.as_str(), status = result.status,
                duration_ms, error = result.error.as_deref().unwrap_or(""), next = %next,
                "webhook attempt failed");
        }
        let record = AttemptRecord {
            event_id: d.event_id.clone(),
            owner: inner.config.node_id.clone(),
            started_at,
            duration_ms,
            outcome: result.outcome,
            status_code: result.status,
            response_body: result.body,
            error: result.error,
            next,
        };
        match inner.store.record_attempt(record).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(webhook_id = %d.event_id,
                "the lease ended during the attempt; its outcome is logged only"),
            Err(e) => tracing::error!(webhook_id = %d.event_id, error = %e,
                "recording an attempt failed; the lease will expire and the event be sent again"),
        }
        drop(_global);
        inner.wake.notify_one();
    }
}

impl OutboxListener for Dispatcher {
    fn due(&self, deliveries: Vec<DueRef>) {
        if !deliveries.is_empty() {
            self.inner.board.hear(deliveries);
            self.inner.wake.notify_one();
        }
    }

    fn look(&self) {
        self.inner.scan_now.store(true, Ordering::Relaxed);
        self.inner.wake.notify_one();
    }
}
