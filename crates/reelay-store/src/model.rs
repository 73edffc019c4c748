//! The records the store keeps, in domain types.

use reelay_core::apikey::KeyHash;
use reelay_core::retry::AttemptOutcome;
use reelay_core::{
    AccountId, AspectRatio, Credits, FailureCode, GenerationId, GenerationStatus, KeyId, Model,
};
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub balance: Credits,
    pub created_at: OffsetDateTime,
}

/// A processing generation's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub generation: Generation,
    /// The node (built-in renderer) or worker lease id (`wl_…`) holding it.
    pub owner: String,
    /// When it lapses unless renewed.
    pub until: OffsetDateTime,
}

/// An account as an operator's overview lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountOverview {
    pub account: Account,
    /// Keys not revoked.
    pub live_keys: u64,
}

/// A key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: KeyId,
    pub account_id: AccountId,
    pub name: String,
    pub shown_prefix: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A key to store: its hash, never its secret.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: KeyId,
    pub account_id: AccountId,
    pub name: String,
    pub shown_prefix: String,
    pub hash: KeyHash,
}

/// Where the finished video lives: `file` under the videos directory, served at `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    pub file: String,
    pub url: String,
}

/// A generation's stage, with exactly the data each stage has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    Pending,
    Processing {
        started_at: OffsetDateTime,
        progress_pct: u8,
        /// How many times the generation has been claimed, this claim included: every claim
        /// before this one lost its lease.
        claims: u32,
    },
    Completed {
        started_at: Option<OffsetDateTime>,
        completed_at: OffsetDateTime,
        video: Video,
    },
    Failed {
        started_at: Option<OffsetDateTime>,
        completed_at: OffsetDateTime,
        code: FailureCode,
        /// What the worker said of the failure, shown to the customer in `error.details`.
        reason: Option<String>,
    },
}

impl Stage {
    pub fn status(&self) -> GenerationStatus {
        match self {
            Stage::Pending => GenerationStatus::Pending,
            Stage::Processing { .. } => GenerationStatus::Processing,
            Stage::Completed { .. } => GenerationStatus::Completed,
            Stage::Failed { .. } => GenerationStatus::Failed,
        }
    }

    pub fn completed_at(&self) -> Option<OffsetDateTime> {
        match self {
            Stage::Completed { completed_at, .. } | Stage::Failed { completed_at, .. } => {
                Some(*completed_at)
            }
            _ => None,
        }
    }
}

/// What the client asked for, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub prompt: String,
    pub model: Model,
    pub aspect_ratio: AspectRatio,
    pub seed: u32,
    pub watermark_text: Option<String>,
    pub callback_url: Option<String>,
    /// The images it was created with, in their mode's order (none for text to video).
    pub inputs: Vec<InputFile>,
}

/// A finished generation whose media retention is about to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredMedia {
    pub id: GenerationId,
    /// Its video file under the videos directory (completed generations).
    pub video_file: Option<String>,
    /// Whether it has input images (a folder under the inputs directory).
    pub has_inputs: bool,
}

/// What a prune would delete, for `reelay prune --dry-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prunable {
    /// Finished generations whose video and input images are past `REELAY_RETENTION`.
    pub media: u64,
    /// Generations whose rows, events and attempt logs are past `REELAY_RECORDS_RETENTION`.
    pub records: u64,
}

/// An input image, kept as `<name>.<extension>` under `<data dir>/inputs/<generation id>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// `image`, `start_frame`, `end_frame` or `reference_1` … `reference_3`.
    pub name: String,
    pub format: reelay_core::images::ImageFormat,
}

impl InputFile {
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.format.extension())
    }

    /// Reads `name.ext` back; `None` for anything else.
    pub fn parse(file_name: &str) -> Option<Self> {
        let (name, extension) = file_name.split_once('.')?;
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        Some(Self {
            name: valid.then(|| name.to_owned())?,
            format: extension.parse().ok()?,
        })
    }

    /// How a backend keeps a generation's inputs: `name.ext` file names, comma-separated
    /// (`""` for text to video).
    pub fn join(inputs: &[InputFile]) -> String {
        inputs
            .iter()
            .map(InputFile::file_name)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads [`InputFile::join`]'s text back; `None` when a name is unreadable.
    pub fn split(text: &str) -> Option<Vec<InputFile>> {
        text.split(',')
            .filter(|f| !f.is_empty())
            .map(InputFile::parse)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub id: GenerationId,
    pub account_id: AccountId,
    pub spec: Spec,
    pub price: Credits,
    pub created_at: OffsetDateTime,
    /// Past this instant the generation fails with TIMEOUT.
    pub deadline_at: OffsetDateTime,
    pub stage: Stage,
    /// When retention deleted its video and input images (its video URL then answers 410).
    pub media_pruned_at: Option<OffsetDateTime>,
}

/// An idempotency key with the hash of the request it was first used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: [u8; 32],
    /// Keys older than this are forgotten and may be reused.
    pub not_before: OffsetDateTime,
}

/// A generation to create, charged its price in the same transaction.
#[derive(Debug, Clone)]
pub struct NewGeneration {
    pub id: GenerationId,
    pub account_id: AccountId,
    pub spec: Spec,
    pub price: Credits,
    pub created_at: OffsetDateTime,
    pub deadline_at: OffsetDateTime,
    pub idempotency: Option<Idempotency>,
    /// Set when the creating node has a generator free to start it at once: the generation
    /// is inserted already claimed under this lease, which spares the queue a claim (a
    /// statement, and a rewrite of the row and its indexes) per generation.
    pub start: Option<Start>,
}

/// The lease a generation is created under when its node starts it at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The node holding it, as in [`Lease::owner`].
    pub owner: String,
    /// When it lapses unless renewed.
    pub until: OffsetDateTime,
}

/// The result of a create: the generation, and whether it was an idempotent replay.
#[derive(Debug, Clone)]
pub struct Created {
    pub generation: Generation,
    pub replayed: bool,
}

impl Created {
    /// What a create that made its generation answers: the new generation as a re-read
    /// returns it.
    pub(crate) fn made(new: NewGeneration) -> Self {
        let created_at = to_microseconds(new.created_at);
        Self {
            generation: Generation {
                id: new.id,
                account_id: new.account_id,
                spec: new.spec,
                price: new.price,
                created_at,
                deadline_at: to_microseconds(new.deadline_at),
                stage: match new.start {
                    None => Stage::Pending,
                    Some(_) => Stage::Processing {
                        started_at: created_at,
                        progress_pct: 0,
                        claims: 1,
                    },
                },
                media_pruned_at: None,
            },
            replayed: false,
        }
    }
}

/// `t` as both backends keep it (to the microsecond), so a returned record equals a re-read
/// one.
pub(crate) fn to_microseconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

/// How a backend keeps a worker's models: their names, comma-separated ('' for every model).
pub(crate) fn join_models(models: &[Model]) -> String {
    models
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads [`join_models`]'s text back. Unknown names (a model since removed) are dropped: such
/// a worker claims only the rest.
pub(crate) fn split_models(text: &str) -> Vec<Model> {
    text.split(',').filter_map(|m| m.parse().ok()).collect()
}

/// How a generation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed(Video),
    Failed(Failure),
}

impl Outcome {
    /// The ended row's columns: its status, failure code and reason, and video.
    pub(crate) fn columns(
        &self,
    ) -> (
        &'static str,
        Option<FailureCode>,
        Option<&str>,
        Option<&Video>,
    ) {
        match self {
            Outcome::Completed(video) => ("completed", None, None, Some(video)),
            Outcome::Failed(f) => ("failed", Some(f.code), f.reason.as_deref(), None),
        }
    }

    /// Whether this ending gives the generation's price back.
    pub fn refunded(&self) -> bool {
        matches!(self, Outcome::Failed(f) if f.code.refunded())
    }
}

/// A failure: its code, and what the worker said of it when that is worth showing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: FailureCode,
    pub reason: Option<String>,
}

/// The `details` of a failure's `error`, in the API and the webhook alike: its reason, when a
/// worker gave one.
pub fn failure_details(reason: Option<&str>) -> serde_json::Map<String, serde_json::Value> {
    reason
        .map(|r| ("reason".to_owned(), serde_json::Value::from(r)))
        .into_iter()
        .collect()
}

impl From<FailureCode> for Failure {
    fn from(code: FailureCode) -> Self {
        Self { code, reason: None }
    }
}

/// Who may end a generation: the worker holding its lease, or anyone (cancel, time limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finisher<'a> {
    LeaseHolder(&'a str),
    Anyone,
}

/// The answer to a request to end a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// It ended now, with this record.
    Applied(Generation),
    /// It had already ended (or the lease was lost); nothing changed.
    Refused(Generation),
}

/// A page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

reelay_core::named_enum! {
    /// Where a generation's webhook stands.
    pub enum DeliveryState {
        /// No callback URL: nothing to deliver.
        None => "none",
        /// Waiting for its next attempt, or being attempted.
        Pending => "pending",
        Delivered => "delivered",
        /// Every attempt of the last round failed; redeliverable.
        Failed => "failed",
    }
}

/// An outbox event, written at the terminal transition, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `webhook-id`: the same on every attempt and redelivery.
    pub id: String,
    pub generation_id: GenerationId,
    pub account_id: AccountId,
    pub callback_url: Option<String>,
    pub payload: String,
    /// When the generation became terminal.
    pub created_at: OffsetDateTime,
    pub state: DeliveryState,
    pub total_attempts: u32,
    pub next_attempt_at: Option<OffsetDateTime>,
    pub last_attempt_at: Option<OffsetDateTime>,
    pub last_status_code: Option<u16>,
    pub failure_reason: Option<String>,
    pub delivered_at: Option<OffsetDateTime>,
    /// An attempt is being made right now (its `next_attempt_at` is then the lease's end).
    pub in_flight: bool,
}

/// A delivery a refill found due in storage, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueAt {
    pub event_id: String,
    pub due_at: OffsetDateTime,
}

/// A delivery that is (or is about to be) due, before it is leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRef {
    pub event_id: String,
    pub destination: String,
}

impl DueRef {
    /// The delivery a just-finished generation owes, if it has a callback URL.
    pub fn of(generation: &Generation) -> Option<Self> {
        let url = generation.spec.callback_url.as_deref()?;
        Some(Self {
            event_id: event_id(generation.id),
            destination: reelay_core::destination::destination_key(url)?,
        })
    }
}

/// The webhook body of a finished generation: the seed's fields, order and format. The same
/// bytes every time it is built (nothing in it changes once the generation has ended), so
/// every attempt and redelivery sends, and signs, the same body. `None` while unfinished.
pub fn webhook_body(g: &Generation) -> Option<String> {
    use reelay_webhooks::{EventError, EventStatus, GenerationEvent};
    let (status, video_url, error, completed_at) = match &g.stage {
        Stage::Completed {
            video,
            completed_at,
            ..
        } => (
            EventStatus::Completed,
            Some(video.url.clone()),
            None,
            *completed_at,
        ),
        Stage::Failed {
            code,
            completed_at,
            reason,
            ..
        } => (
            EventStatus::Failed,
            None,
            Some(EventError {
                message: code.as_str().to_owned(),
                details: failure_details(reason.as_deref()),
            }),
            *completed_at,
        ),
        _ => return None,
    };
    let event = GenerationEvent {
        generation_id: g.id.0,
        status,
        prompt: g.spec.prompt.clone(),
        video_url,
        created_at: g.created_at,
        completed_at,
        seed: g.spec.seed,
        error,
    };
    Some(event.to_json())
}

/// The `webhook-id` of a generation's event. There is one event per generation, so deriving
/// it lets whoever finished the generation name the event without asking storage.
pub fn event_id(generation: GenerationId) -> String {
    format!("msg_{}", generation.0.simple())
}

/// Told when events are written, so they are delivered without waiting for a poll.
pub trait OutboxListener: Send + Sync {
    /// These deliveries were just committed, due now.
    fn due(&self, deliveries: Vec<DueRef>);
    /// Deliveries became due that the caller cannot name (a batch of timeouts, a bulk
    /// redelivery): look in storage.
    fn look(&self);
}

/// A delivery claimed for one attempt, under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub event_id: String,
    pub generation_id: GenerationId,
    pub account_id: AccountId,
    pub url: String,
    pub destination: String,
    pub payload: String,
    pub created_at: OffsetDateTime,
    /// Attempts already made in this round (0 for the first).
    pub round_attempts: u32,
}

/// What follows an attempt, as decided by the retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAttempt {
    Delivered,
    RetryAt(OffsetDateTime),
    Failed(String),
}

/// As a log line shows it: `delivered`, `retry at 2026-12-02T14:00:30Z`, `failed: why`.
impl std::fmt::Display for AfterAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Delivered => f.write_str("delivered"),
            Self::RetryAt(at) => {
                let at = at
                    .format(&time::format_description::well_known::Rfc3339)
                    .map_err(|_| std::fmt::Error)?;
                write!(f, "retry at {at}")
            }
            Self::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

/// One attempt to record, with what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub event_id: String,
    pub owner: String,
    pub started_at: OffsetDateTime,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    pub status_code: Option<u16>,
    /// The first KiB of the response body.
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub next: AfterAttempt,
}

/// One recorded attempt, as the deliveries API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub number: u32,
    pub started_at: OffsetDateTime,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    pub status_code: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
}

/// The answer to a redelivery request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redelivery {
    /// A new round is due now, under the same webhook id.
    Started { webhook_id: String },
    /// A round is already under way.
    AlreadyPending,
    /// The generation has no callback URL.
    NoCallback,
    /// The generation has not finished: there is no event yet.
    NotFinished,
}

/// Webhooks waiting, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeliveryCounts {
    /// Due now (or in flight).
    pub due: u64,
    /// Waiting for a later retry.
    pub scheduled: u64,
    pub failed: u64,
}

/// A signing secret as stored: sealed by the server's master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub sealed: Vec<u8>,
    pub created_at: OffsetDateTime,
    /// `None` for the current secret; for a rotated-out one, when it stops signing.
    pub retired_at: Option<OffsetDateTime>,
}

/// A rotation of an account's signing secret. Storage keeps no clock: every instant is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// When the secret being rotated out stops signing: the overlap in which receivers move to
    /// the new one.
    pub overlap_until: OffsetDateTime,
    /// The rate limit: refuse when the current secret was made by a rotation after this.
    pub refuse_if_rotated_after: OffsetDateTime,
}

/// The answer to a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotated {
    /// The new secret is current.
    Done,
    /// Refused, nothing changed: the current secret was made by a rotation at `last_rotation`.
    TooSoon { last_rotation: OffsetDateTime },
}

/// A worker token as listed: never its secret, only the first characters of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub id: String,
    pub name: String,
    /// The models this worker may claim; empty means every model.
    pub models: Vec<reelay_core::Model>,
    pub shown_prefix: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// A worker token to store: its hash, never its secret.
#[derive(Debug, Clone)]
pub struct NewWorker {
    pub id: String,
    pub name: String,
    pub models: Vec<reelay_core::Model>,
    pub shown_prefix: String,
    pub hash: reelay_core::apikey::KeyHash,
}
