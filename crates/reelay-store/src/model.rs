//! The records the store keeps, in domain types.

use reelay_core::apikey::KeyHash;
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
}

/// The result of a create: the generation, and whether it was an idempotent replay.
#[derive(Debug, Clone)]
pub struct Created {
    pub generation: Generation,
    pub replayed: bool,
}

/// How a generation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed(Video),
    Failed(FailureCode),
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

/// An outbox event, as written at the terminal transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub generation_id: GenerationId,
    pub account_id: AccountId,
    pub callback_url: Option<String>,
    pub payload: String,
    pub created_at: OffsetDateTime,
}
