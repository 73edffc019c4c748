//! Conversions between PostgreSQL rows and domain types.

use reelay_core::{AccountId, Credits, FailureCode, GenerationId, GenerationStatus};
use time::OffsetDateTime;
use tokio_postgres::Row;

use crate::{Generation, InputFile, Spec, Stage, StoreError, StoreResult, Video};

/// A column whose value no version of reelay writes.
pub fn corrupt(column: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("column {column}: {what}"))
}

/// Reads a column, naming it when its type is not the one asked for.
pub fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    column: &str,
) -> StoreResult<T> {
    row.try_get(column).map_err(|e| corrupt(column, e))
}

/// Reads a text column that parses into `T` (enums).
pub fn parsed<T: std::str::FromStr>(row: &Row, column: &str) -> StoreResult<T> {
    let text: &str = get(row, column)?;
    text.parse()
        .map_err(|_| corrupt(column, format!("unexpected value {text:?}")))
}

/// An unsigned number kept in a signed column.
pub fn unsigned<S, T>(row: &Row, column: &str) -> StoreResult<T>
where
    S: for<'a> tokio_postgres::types::FromSql<'a> + Copy + std::fmt::Display,
    T: TryFrom<S>,
{
    let value: S = get(row, column)?;
    T::try_from(value).map_err(|_| corrupt(column, format!("{value} out of range")))
}

pub(crate) use crate::model::to_microseconds as stored;

/// The generation columns [`generation`] reads.
pub const GENERATION_COLUMNS: &str = "id, account_id, status, prompt, model, aspect_ratio, seed, \
    watermark_text, callback_url, price, created_at, deadline_at, started_at, completed_at, \
    progress_pct, failure_code, video_file, video_url, claims, failure_reason, inputs, \
    media_pruned_at";

pub fn generation(row: &Row) -> StoreResult<Generation> {
    let status: GenerationStatus = parsed(row, "status")?;
    let started_at: Option<OffsetDateTime> = get(row, "started_at")?;
    let completed_at: Option<OffsetDateTime> = get(row, "completed_at")?;
    let stage = match status {
        GenerationStatus::Pending => Stage::Pending,
        GenerationStatus::Processing => Stage::Processing {
            started_at: started_at
                .ok_or_else(|| corrupt("started_at", "processing without a start"))?,
            progress_pct: unsigned::<i16, _>(row, "progress_pct")?,
            claims: unsigned::<i32, _>(row, "claims")?,
        },
        GenerationStatus::Completed => Stage::Completed {
            started_at,
            completed_at: completed_at
                .ok_or_else(|| corrupt("completed_at", "completed without an end"))?,
            video: Video {
                file: get(row, "video_file")?,
                url: get(row, "video_url")?,
            },
        },
        GenerationStatus::Failed => Stage::Failed {
            started_at,
            completed_at: completed_at
                .ok_or_else(|| corrupt("completed_at", "failed without an end"))?,
            code: parsed::<FailureCode>(row, "failure_code")?,
            reason: get(row, "failure_reason")?,
        },
    };
    let inputs: &str = get(row, "inputs")?;
    Ok(Generation {
        id: GenerationId(get(row, "id")?),
        account_id: AccountId(get(row, "account_id")?),
        spec: Spec {
            prompt: get(row, "prompt")?,
            model: parsed(row, "model")?,
            aspect_ratio: parsed(row, "aspect_ratio")?,
            seed: unsigned::<i64, _>(row, "seed")?,
            watermark_text: get(row, "watermark_text")?,
            callback_url: get(row, "callback_url")?,
            inputs: InputFile::split(inputs)
                .ok_or_else(|| corrupt("inputs", "an unreadable input file name"))?,
        },
        price: Credits::from_units(get(row, "price")?),
        created_at: get(row, "created_at")?,
        deadline_at: get(row, "deadline_at")?,
        stage,
        media_pruned_at: get(row, "media_pruned_at")?,
    })
}
