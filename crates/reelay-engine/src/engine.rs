//! The lifecycle engine: claims pending generations with bounded concurrency, runs them
//! through moderation and the generator under a lease, and fails those past their deadline.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reelay_core::capability::VideoKey;
use reelay_core::moderation::Moderator;
use reelay_core::pricing::Prices;
use reelay_core::request::GenerateRequest;
use reelay_core::{AccountId, FailureCode, GenerationId};
use reelay_store::{
    Created, DueRef, Failure, Finished, Finisher, Generation, Idempotency, NewGeneration,
    OutboxListener, Outcome, Spec, Stage, Start, Store, StoreError, StoreResult, Video,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::changes::{Changes, MAX_STREAMS, MAX_STREAMS_PER_ACCOUNT, Watch, WatchRefused};
use crate::generator::{Generator, Progress};
use crate::inputs;

/// Keeps the watchdog from spinning when a deadline is due but storage keeps failing.
const MIN_WATCHDOG_WAIT: Duration = Duration::from_millis(10);
/// How often a running generation's progress is written when it changes, so that status
/// reads and streams (on any node) follow it closely; the lease is renewed by the same write.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct EngineConfig {
    /// This process's name on leases; unique per process.
    pub node_id: String,
    /// How long a claim holds without a heartbeat; a crashed node's work returns after this.
    pub lease: Duration,
    /// How often to look for work that no wake-up announced (expired leases, other nodes).
    pub poll_interval: Duration,
    /// Base of `video_url`, like `https://reelay.example.com`.
    pub public_url: String,
    /// Makes the unguessable part of each `video_url`.
    pub video_key: VideoKey,
    pub moderator: Moderator,
    pub prices: Prices,
    /// A generation not finished this long after its creation fails with TIMEOUT.
    pub generation_timeout: Duration,
    /// Told whenever a generation ends, so its webhook goes out without waiting for a poll.
    pub outbox: Arc<dyn OutboxListener>,
    /// How long an external worker's lease holds without a heartbeat.
    pub worker_lease: Duration,
    /// The most worker long-polls waiting at once; past it a claim is refused (busy).
    pub max_worker_polls: usize,
    /// After this many lost leases a claim fails the generation with TASK_FAILED (at least 1).
    pub max_lost_leases: u32,
    /// Where input images are kept, a folder per generation.
    pub inputs_dir: PathBuf,
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// A handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    generator: Arc<dyn Generator>,
    pub(crate) config: EngineConfig,
    work: Notify,
    /// Wakes every waiting worker long-poll (they all look; the store hands each job once).
    pub(crate) worker_work: Notify,
    /// One permit per worker long-poll allowed to wait.
    pub(crate) worker_polls: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    /// Set while the claim loop waits for a slot to free: only then does a generation that
    /// ends wake it. A wake per ended generation would cost a claim (a planned query) each,
    /// most of them finding nothing the previous claim had not taken.
    slot_wanted: AtomicBool,
    /// Counts the times work was queued that this node did not start itself: announced by
    /// another node, or created here with no generator free.
    queued: AtomicU64,
    /// What `queued` read before the last claim that left the queue empty (it took fewer
    /// than it had room for). While the two are equal, nothing older than a new create
    /// waits, so a node with a free generator starts the create itself and the queue keeps
    /// its order.
    drained_at: AtomicU64,
    running: Mutex<HashMap<GenerationId, CancellationToken>>,
    /// Wakes the status streams of generations this process changes.
    pub(crate) changes: Arc<Changes>,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, generator: Arc<dyn Generator>, config: EngineConfig) -> Self {
        let engine = Self {
            inner: Arc::new(Inner {
                store,
                slots: Arc::new(Semaphore::new(generator.concurrency().max(1))),
                slot_wanted: AtomicBool::new(false),
                queued: AtomicU64::new(0),
                // Unknown until the first claim: work a previous run left may be waiting.
                drained_at: AtomicU64::new(u64::MAX),
                generator,
                work: Notify::new(),
                worker_work: Notify::new(),
                worker_polls: Arc::new(Semaphore::new(config.max_worker_polls.max(1))),
                config,
                running: Mutex::new(HashMap::new()),
                changes: Arc::new(Changes::new(MAX_STREAMS_PER_ACCOUNT, MAX_STREAMS)),
            }),
        };
        // Work queued by another node on a shared database wakes this one too.
        let inner = Arc::downgrade(&engine.inner);
        engine.inner.store.watch_work(Box::new(move || {
            if let Some(inner) = inner.upgrade() {
                inner.queued.fetch_add(1, Ordering::SeqCst);
                inner.work.notify_one();
                inner.worker_work.notify_waiters();
            }
        }));
        engine
    }

    /// Creates a generation for `account`, charged its model's price, and starts it. With an
    /// idempotency key, a retry of the same request returns the first generation instead.
    pub async fn submit(
        &self,
        account: AccountId,
        request: GenerateRequest,
        idempotency_key: Option<String>,
    ) -> StoreResult<Created> {
        let config = &self.inner.config;
        let now = self.inner.store.now();
        let idempotency = idempotency_key.map(|key| Idempotency {
            key,
            request_hash: request.fingerprint(),
            not_before: now - IDEMPOTENCY_WINDOW,
        });
        let id = GenerationId::random();
        // The images are on disk before the generation exists, so no worker can claim it
        // without them; a create that makes nothing (refused, or a replay) removes them.
        let inputs = inputs::keep(&config.inputs_dir, id, request.images)
            .await
            .map_err(|e| StoreError::Backend(format!("keeping the input images: {e}")))?;
        let has_inputs = !inputs.is_empty();
        let slot = self.inner.free_slot_for_new_work();
        let created = self
            .inner
            .store
            .create_generation(NewGeneration {
                id,
                account_id: account,
                price: config.prices.of(request.model),
                created_at: now,
                deadline_at: now + config.generation_timeout,
                idempotency,
                start: slot.as_ref().map(|_| Start {
                    owner: config.node_id.clone(),
                    until: now + config.lease,
                }),
                spec: Spec {
                    seed: request.seed.unwrap_or_else(rand::random),
                    prompt: request.prompt,
                    model: request.model,
                    aspect_ratio: request.aspect_ratio,
                    watermark_text: request.watermark_text,
                    callback_url: request.callback_url.map(String::from),
                    inputs,
                },
            })
            .await;
        if has_inputs && !matches!(&created, Ok(c) if !c.replayed) {
            inputs::remove(&config.inputs_dir, id).await;
        }
        let created = created?;
        if !created.replayed {
            match slot {
                Some(slot) => {
                    tokio::spawn(self.clone().run_one(created.generation.clone(), slot));
                }
                None => {
                    self.inner.queued.fetch_add(1, Ordering::SeqCst);
                    self.wake();
                }
            }
        }
        Ok(created)
    }

    /// Says that new work may be waiting, so it starts without waiting for a poll: here, and
    /// on the other nodes sharing the database when this one cannot start it itself (its
    /// generators are all busy, or they are external workers, who may be polling any node).
    /// Woken for work this node takes at once, every other node would spend a claim finding
    /// nothing; the claim loop wakes them when it finds more than it has room for.
    pub fn wake(&self) {
        let inner = &self.inner;
        inner.work.notify_one();
        inner.worker_work.notify_waiters();
        if !inner.generator.runs_here() || inner.slots.available_permits() == 0 {
            inner.store.announce_work();
        }
    }

    /// The absolute URL a finished generation's video is served at.
    pub fn video_url(&self, id: GenerationId) -> String {
        format!(
            "{}{}",
            self.inner.config.public_url.trim_end_matches('/'),
            self.inner.config.video_key.path(id)
        )
    }

    /// Opens a status stream's watch on generation `id` of `account`: it wakes whenever this
    /// process changes the generation. Refused past the per-account or per-server cap on
    /// streams; the place is given back when the watch is dropped.
    pub fn watch(&self, account: AccountId, id: GenerationId) -> Result<Watch, WatchRefused> {
        self.inner.changes.watch(account, id)
    }

    /// Cancels a generation: it fails with CANCELLED (refunded) and any work on it stops.
    pub async fn cancel(&self, id: GenerationId) -> StoreResult<Finished> {
        let finished = self
            .inner
            .store
            .finish(
                id,
                Finisher::Anyone,
                Outcome::Failed(FailureCode::Cancelled.into()),
                self.inner.store.now(),
            )
            .await?;
        if let Finished::Applied(done) = &finished {
            self.inner.ended(done);
        }
        self.inner.stop_work_on(&[id]);
        Ok(finished)
    }

    /// Runs the claim loop and the time-limit watchdog until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        let changes = self.inner.changes.clone();
        let close_streams = async {
            shutdown.cancelled().await;
            changes.close();
        };
        tokio::join!(
            self.clone().claim_loop(shutdown.clone()),
            self.watchdog(shutdown.clone()),
            close_streams
        );
    }

    async fn claim_loop(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        if !inner.generator.runs_here() {
            // External workers claim through the API; only the watchdog runs here.
            return shutdown.cancelled().await;
        }
        loop {
            let free = inner.slots.available_permits();
            let mut claimed = 0;
            if free > 0 {
                let queued = inner.queued.load(Ordering::SeqCst);
                let now = inner.store.now();
                match inner
                    .store
                    .claim(&inner.config.node_id, free, now + inner.config.lease, now)
                    .await
                {
                    Ok(generations) => {
                        claimed = generations.len();
                        if claimed < free {
                            inner.drained_at.store(queued, Ordering::SeqCst);
                        }
                        for g in generations {
                            inner.changes.changed(g.id);
                            let this = self.clone();
                            match inner.slots.clone().try_acquire_owned() {
                                Ok(slot) => tokio::spawn(this.run_one(g, slot)),
                                // A create started work in the slot meanwhile.
                                Err(_) => tokio::spawn(async move {
                                    if let Some(slot) = this.inner.next_slot(&g).await {
                                        this.run_one(g, slot).await
                                    }
                                }),
                            };
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "claiming generations failed"),
                }
            }
            if free > 0 && claimed == free {
                // There may be more waiting than this node has room for.
                inner.store.announce_work();
                continue;
            }
            if inner.slots.available_permits() == 0 {
                inner.slot_wanted.store(true, Ordering::SeqCst);
                // A slot freed before the flag was up woke no one.
                if inner.slots.available_permits() > 0 {
                    continue;
                }
            }
            tokio::select! {
                _ = inner.work.notified() => {}
                _ = tokio::time::sleep(inner.config.poll_interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn run_one(self, g: Generation, _slot: OwnedSemaphorePermit) {
        let inner = &self.inner;
        let stop = CancellationToken::new();
        inner
            .running
            .lock()
            .expect("running map")
            .insert(g.id, stop.clone());

        let outcome = match inner.refusal(&g) {
            Some(failure) => Some(Outcome::Failed(failure)),
            None => self.generate(&g, &stop).await,
        };
        if let Some(outcome) = outcome {
            let file = match &outcome {
                Outcome::Completed(video) => Some(video.file.clone()),
                Outcome::Failed(_) => None,
            };
            let holder = Finisher::LeaseHolder(&inner.config.node_id);
            match inner
                .store
                .finish(g.id, holder, outcome, inner.store.now())
                .await
            {
                Ok(Finished::Applied(done)) => {
                    inner.ended(&done);
                    tracing::info!(generation = %g.id, status = %done.stage.status(), "generation finished")
                }
                Ok(Finished::Refused(current)) => {
                    tracing::info!(generation = %g.id, status = %current.stage.status(),
                        "late result discarded: the generation had already ended");
                    if let Some(file) = file {
                        inner.generator.discard(&file).await;
                    }
                }
                Err(e) => {
                    tracing::error!(generation = %g.id, error = %e, "recording the result failed; the lease will expire and the work be retried")
                }
            }
        }
        inner.running.lock().expect("running map").remove(&g.id);
        drop(_slot);
        if inner.slot_wanted.swap(false, Ordering::SeqCst) {
            inner.work.notify_one();
        }
    }

    /// Runs the generator while heartbeating the lease. `None` when the work was stopped
    /// because the generation ended elsewhere (timeout, cancel, lease lost).
    async fn generate(&self, g: &Generation, stop: &CancellationToken) -> Option<Outcome> {
        let inner = &self.inner;
        let progress = Progress::default();
        let heartbeat = async {
            let renew_every = inner.config.lease / 3;
            let mut renewed = tokio::time::Instant::now();
            let mut written = 0;
            loop {
                tokio::time::sleep(renew_every.min(PROGRESS_EVERY)).await;
                let pct = progress.get();
                // Between renewals only a change of progress is worth a write.
                if pct == written && renewed.elapsed() < renew_every {
                    continue;
                }
                let until = inner.store.now() + inner.config.lease;
                match inner
                    .store
                    .heartbeat(g.id, &inner.config.node_id, until, pct)
                    .await
                {
                    Ok(true) => {
                        renewed = tokio::time::Instant::now();
                        if pct != written {
                            written = pct;
                            inner.changes.changed(g.id);
                        }
                    }
                    Ok(false) => return,
                    Err(e) => tracing::warn!(generation = %g.id, error = %e, "heartbeat failed"),
                }
            }
        };
        tokio::select! {
            result = inner.generator.generate(g, &progress) => Some(match result {
                Ok(file) => Outcome::Completed(Video { file, url: self.video_url(g.id) }),
                Err(e) => {
                    tracing::warn!(generation = %g.id, error = %e, "generator failed");
                    Outcome::Failed(FailureCode::TaskFailed.into())
                }
            }),
            _ = heartbeat => {
                tracing::info!(generation = %g.id, "lease lost; stopping work");
                None
            }
            _ = stop.cancelled() => None,
        }
    }

    /// Fails generations past their deadline with TIMEOUT (refunded), and stops their work.
    async fn watchdog(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        loop {
            let now = inner.store.now();
            match inner.store.expire(now).await {
                Ok(expired) if !expired.is_empty() => {
                    tracing::info!(count = expired.len(), "generations timed out");
                    inner.config.outbox.look();
                    for id in &expired {
                        inner.changes.changed(*id);
                    }
                    inner.stop_work_on(&expired);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "expiring generations failed"),
            }
            let wait = match inner.store.next_deadline().await {
                Ok(Some(deadline)) => (deadline - inner.store.now())
                    .try_into()
                    .unwrap_or(Duration::ZERO)
                    .min(inner.config.poll_interval),
                _ => inner.config.poll_interval,
            }
            .max(MIN_WATCHDOG_WAIT);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

impl Inner {
    /// A generator slot for a create to start at once, when one is free and nothing queued
    /// is waiting for it (see [`Inner::drained_at`]). Work on the database that no one
    /// announced (a lease lapsed on a node that died) is claimed at the next poll.
    fn free_slot_for_new_work(&self) -> Option<OwnedSemaphorePermit> {
        let drained = self.drained_at.load(Ordering::SeqCst) == self.queued.load(Ordering::SeqCst);
        (self.generator.runs_here() && drained)
            .then(|| self.slots.clone().try_acquire_owned().ok())
            .flatten()
    }

    /// Waits for a slot for `g`, claimed while a create took the one it was claimed for,
    /// ahead of any create (a semaphore hands a freed permit to its waiters first). Its lease
    /// is renewed meanwhile, so it does not lapse while another generation takes minutes;
    /// `None` when it was lost (the generation ended elsewhere).
    async fn next_slot(&self, g: &Generation) -> Option<OwnedSemaphorePermit> {
        let slot = self.slots.clone().acquire_owned();
        tokio::pin!(slot);
        loop {
            tokio::select! {
                slot = &mut slot => return Some(slot.expect("the slots are never closed")),
                _ = tokio::time::sleep(self.config.lease / 3) => {}
            }
            let until = self.store.now() + self.config.lease;
            match self
                .store
                .heartbeat(g.id, &self.config.node_id, until, 0)
                .await
            {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => tracing::warn!(generation = %g.id, error = %e, "heartbeat failed"),
            }
        }
    }

    /// Why a just-claimed generation must fail instead of being worked on, if it must: its
    /// prompt is refused by moderation (UNSAFE_CONTENT), or it has lost too many leases to be
    /// handed out again (TASK_FAILED, refunded) — a job that kills or stalls every worker that
    /// takes it must not go round forever.
    pub(crate) fn refusal(&self, g: &Generation) -> Option<Failure> {
        if let Err(blocked) = self.config.moderator.check(&g.spec.prompt) {
            tracing::info!(generation = %g.id, rule = %blocked.rule, "prompt refused by moderation");
            return Some(FailureCode::UnsafeContent.into());
        }
        let lost = match g.stage {
            Stage::Processing { claims, .. } => claims.saturating_sub(1),
            _ => 0,
        };
        if lost >= self.config.max_lost_leases.max(1) {
            tracing::warn!(generation = %g.id, lost_leases = lost,
                "the generation lost its lease too many times; failing it");
            return Some(Failure {
                code: FailureCode::TaskFailed,
                reason: Some(format!(
                    "the task was interrupted {lost} times (its worker stopped or the server restarted)"
                )),
            });
        }
        None
    }

    /// Hands the webhook a just-ended generation owes (if any) to the outbox's listener.
    pub(crate) fn ended(&self, generation: &Generation) {
        self.changes.changed(generation.id);
        self.config
            .outbox
            .due(DueRef::of(generation).into_iter().collect());
    }

    fn stop_work_on(&self, ids: &[GenerationId]) {
        let running = self.running.lock().expect("running map");
        for id in ids {
            if let Some(stop) = running.get(id) {
                stop.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use async_trait::async_trait;
    use reelay_core::request::ImageInputs;
    use reelay_core::{AspectRatio, Credits, GenerationStatus, Model};
    use reelay_store::postgres::{TestDatabase, Wakes};
    use reelay_store::{PgStore, SqliteStore};

    use super::*;
    use crate::generator::GenerateError;

    /// One generation at a time, done at once.
    struct OneAtATime;

    #[async_trait]
    impl Generator for OneAtATime {
        async fn generate(&self, _: &Generation, _: &Progress) -> Result<String, GenerateError> {
            Ok("video.mp4".into())
        }

        fn concurrency(&self) -> usize {
            1
        }
    }

    struct NoWebhooks;

    impl OutboxListener for NoWebhooks {
        fn due(&self, _: Vec<DueRef>) {}
        fn look(&self) {}
    }

    /// An engine on `store` whose claim loop polls once an hour, so only wake-ups start work.
    fn engine(store: Arc<dyn Store>, generator: Arc<dyn Generator>, inputs: &Path) -> Engine {
        leasing(store, generator, inputs, Duration::from_secs(30))
    }

    /// [`engine`] with leases of `lease`.
    fn leasing(
        store: Arc<dyn Store>,
        generator: Arc<dyn Generator>,
        inputs: &Path,
        lease: Duration,
    ) -> Engine {
        Engine::new(
            store,
            generator,
            EngineConfig {
                node_id: "node".into(),
                lease,
                poll_interval: Duration::from_secs(3600),
                public_url: "http://localhost".into(),
                video_key: VideoKey::new([7; 32]),
                moderator: Moderator::builtin(),
                prices: Prices::default(),
                generation_timeout: Duration::from_secs(600),
                outbox: Arc::new(NoWebhooks),
                worker_lease: Duration::from_secs(30),
                max_worker_polls: 1,
                max_lost_leases: 3,
                inputs_dir: inputs.to_owned(),
            },
        )
    }

    async fn submit(engine: &Engine, account: AccountId) -> GenerationId {
        let request = GenerateRequest {
            prompt: "a lighthouse at dusk".into(),
            callback_url: None,
            model: Model::Veo3Fast,
            aspect_ratio: AspectRatio::Landscape,
            seed: Some(1),
            watermark_text: None,
            images: ImageInputs::default(),
        };
        engine
            .submit(account, request, None)
            .await
            .unwrap()
            .generation
            .id
    }

    /// A fresh SQLite store in `dir`.
    fn sqlite(dir: &Path) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(dir.join("db.sqlite3")).unwrap())
    }

    async fn account(store: &Arc<dyn Store>) -> AccountId {
        store
            .create_account("alice", Credits::from_units(1_000_000_000), store.now())
            .await
            .unwrap()
            .id
    }

    /// Waits up to a minute for `id` to be in `status`.
    async fn reaches(store: &Arc<dyn Store>, id: GenerationId, status: GenerationStatus) -> bool {
        let reached = async {
            while store.generation(id).await.unwrap().unwrap().stage.status() != status {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), reached)
            .await
            .is_ok()
    }

    /// With every slot taken, the generation that ends wakes the claim loop for the next
    /// one: the poll that would otherwise find it is an hour away.
    #[tokio::test]
    async fn a_freed_slot_starts_the_next_generation_without_a_poll() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(dir.path());
        let account = account(&store).await;
        let engine = engine(
            store.clone(),
            Arc::new(OneAtATime),
            &dir.path().join("inputs"),
        );
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(submit(&engine, account).await);
        }
        // Started after all three are queued: the first claim takes one, the slot's only.
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(engine.clone().run(shutdown.clone()));
        let mut all_completed = true;
        for id in &ids {
            all_completed &= reaches(&store, *id, GenerationStatus::Completed).await;
        }
        shutdown.cancel();
        running.await.unwrap();
        assert!(all_completed, "the queued generations waited for a poll");
    }

    /// Two generations at a time, each held until the test ends; says which it started.
    struct Held(tokio::sync::mpsc::UnboundedSender<GenerationId>);

    #[async_trait]
    impl Generator for Held {
        async fn generate(&self, g: &Generation, _: &Progress) -> Result<String, GenerateError> {
            let _ = self.0.send(g.id);
            std::future::pending().await
        }

        fn concurrency(&self) -> usize {
            2
        }
    }

    /// A create that finds a generator free and nothing older waiting starts at once, created
    /// processing under this node's lease; otherwise it waits its turn in the queue.
    #[tokio::test]
    async fn a_create_starts_at_once_only_when_nothing_older_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(dir.path());
        let account = account(&store).await;
        let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
        let engine = engine(
            store.clone(),
            Arc::new(Held(started)),
            &dir.path().join("inputs"),
        );
        let stage = |id| {
            let store = store.clone();
            async move { store.generation(id).await.unwrap().unwrap().stage }
        };

        // Before its first claim a node does not know what a previous run left queued.
        let first = submit(&engine, account).await;
        assert_eq!(stage(first).await, Stage::Pending);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(engine.clone().run(shutdown.clone()));
        assert_eq!(starts.recv().await, Some(first));

        // That claim left the queue empty, and one generator is free.
        let second = submit(&engine, account).await;
        assert!(
            matches!(stage(second).await, Stage::Processing { claims: 1, .. }),
            "not started at once"
        );
        assert_eq!(store.lease_holder(second).await, Ok(Some("node".into())));
        assert_eq!(starts.recv().await, Some(second));

        // Both busy: queued.
        let third = submit(&engine, account).await;
        assert_eq!(stage(third).await, Stage::Pending);
        shutdown.cancel();
        running.await.unwrap();
    }

    /// A generation claimed while a create took its slot keeps its lease until a slot frees,
    /// and gives up waiting once it ends elsewhere.
    #[tokio::test]
    async fn a_claimed_generation_waiting_for_a_slot_keeps_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(dir.path());
        let account = account(&store).await;
        let (started, _starts) = tokio::sync::mpsc::unbounded_channel();
        let lease = Duration::from_secs(2);
        let engine = leasing(
            store.clone(),
            Arc::new(Held(started)),
            &dir.path().join("inputs"),
            lease,
        );
        let inner = engine.inner.clone();
        let taken = inner.slots.clone().try_acquire_many_owned(2).unwrap();
        let [first, second] = [
            submit(&engine, account).await,
            submit(&engine, account).await,
        ];
        let now = store.now();
        let claimed = store.claim("node", 2, now + lease, now).await.unwrap();
        let waiting = claimed.into_iter().map(|g| {
            let inner = inner.clone();
            tokio::spawn(async move { inner.next_slot(&g).await.map(|_| g.id) })
        });
        let [for_first, for_second] = <[_; 2]>::try_from(waiting.collect::<Vec<_>>()).unwrap();

        // Past the lease it claimed them under, nobody else can take them.
        tokio::time::sleep(lease * 2).await;
        let now = store.now();
        assert_eq!(store.claim("other", 2, now + lease, now).await, Ok(vec![]));
        // One ends elsewhere: its wait ends.
        engine.cancel(second).await.unwrap();
        assert_eq!(for_second.await.unwrap(), None);
        // A slot frees: the other gets it.
        drop(taken);
        assert_eq!(for_first.await.unwrap(), Some(first));
    }

    /// One generation at a time, each held until the test ends.
    struct Busy;

    #[async_trait]
    impl Generator for Busy {
        async fn generate(&self, _: &Generation, _: &Progress) -> Result<String, GenerateError> {
            std::future::pending().await
        }

        fn concurrency(&self) -> usize {
            1
        }
    }

    /// On a shared database, a node wakes the others for work it has no room for, and only
    /// then: woken for work their peer starts at once, they would each spend a claim on it.
    #[tokio::test]
    async fn other_nodes_are_woken_only_for_work_this_one_has_no_room_for() {
        let db = TestDatabase::create().await;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(db.url()).await.unwrap());
        let account = account(&store).await;
        // Another node's ears.
        let other = PgStore::connect(db.url()).await.unwrap();
        let mut wakes = Wakes::of(&other);
        assert!(
            wakes.within(Duration::from_secs(10)).await,
            "never listened"
        );
        let engine = engine(store.clone(), Arc::new(Busy), &dir.path().join("inputs"));

        // Two queued while the engine is stopped, its one slot free: nobody else is told.
        let first = submit(&engine, account).await;
        let second = submit(&engine, account).await;
        let quiet = Duration::from_millis(500);
        assert!(
            !wakes.within(quiet).await,
            "woken for work with room for it"
        );
        // Its claim fills its only slot and may have left more: now the others look.
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(engine.clone().run(shutdown.clone()));
        assert!(reaches(&store, first, GenerationStatus::Processing).await);
        assert!(
            wakes.within(Duration::from_secs(10)).await,
            "not woken when the claim left work behind"
        );
        // And for a create that finds the slot taken.
        while wakes.within(quiet).await {}
        submit(&engine, account).await;
        assert!(
            wakes.within(Duration::from_secs(10)).await,
            "not woken for a create this node has no room for"
        );
        shutdown.cancel();
        running.await.unwrap();
        let second = store.generation(second).await.unwrap().unwrap();
        assert_eq!(second.stage.status(), GenerationStatus::Pending);
    }
}
