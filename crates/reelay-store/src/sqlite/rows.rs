//! Conversions between SQLite values and domain types.

use reelay_core::{AccountId, Credits, FailureCode, GenerationId, GenerationStatus};
use rusqlite::Row;
use rusqlite::types::Type;
use time::OffsetDateTime;

use crate::{Generation, InputFile, Spec, Stage, Video};

pub fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

pub fn from_micros(us: i64) -> rusqlite::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1_000)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, Type::Integer, Box::new(e)))
}

/// `t` as the database keeps it (microseconds), so a returned record equals a re-read one.
pub fn stored(t: OffsetDateTime) -> OffsetDateTime {
    from_micros(micros(t)).unwrap_or(t)
}

fn corrupt(column: usize, what: impl Into<String>) -> rusqlite::Error {
    let msg: Box<dyn std::error::Error + Send + Sync> = what.into().into();
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, msg)
}

/// Reads a column holding text that parses into `T` (ids, enums).
pub fn parsed<T: std::str::FromStr>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    text.parse()
        .map_err(|_| corrupt(idx, format!("unexpected value {text:?}")))
}

pub fn opt_time(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<OffsetDateTime>> {
    row.get::<_, Option<i64>>(idx)?.map(from_micros).transpose()
}

/// The generation columns, in the order [`generation`] reads them.
pub const GENERATION_COLUMNS: &str = "id, account_id, status, prompt, model, aspect_ratio, seed, \
    watermark_text, callback_url, price, created_at, deadline_at, started_at, completed_at, \
    progress_pct, failure_code, video_file, video_url, claims, failure_reason, inputs, \
    media_pruned_at";

fn inputs(row: &Row<'_>, i: usize) -> rusqlite::Result<Vec<InputFile>> {
    let text: String = row.get(i)?;
    InputFile::split(&text).ok_or_else(|| corrupt(i, "an unreadable input file name"))
}

pub fn generation(row: &Row<'_>) -> rusqlite::Result<Generation> {
    let status: GenerationStatus = parsed(row, 2)?;
    let started_at = opt_time(row, 12)?;
    let completed_at = opt_time(row, 13)?;
    let stage = match status {
        GenerationStatus::Pending => Stage::Pending,
        GenerationStatus::Processing => Stage::Processing {
            started_at: started_at.ok_or_else(|| corrupt(12, "processing without a start"))?,
            progress_pct: row.get(14)?,
            claims: row.get(18)?,
        },
        GenerationStatus::Completed => Stage::Completed {
            started_at,
            completed_at: completed_at.ok_or_else(|| corrupt(13, "completed without an end"))?,
            video: Video {
                file: row.get(16)?,
                url: row.get(17)?,
            },
        },
        GenerationStatus::Failed => Stage::Failed {
            started_at,
            completed_at: completed_at.ok_or_else(|| corrupt(13, "failed without an end"))?,
            code: parsed::<FailureCode>(row, 15)?,
            reason: row.get(19)?,
        },
    };
    Ok(Generation {
        id: parsed::<GenerationId>(row, 0)?,
        account_id: parsed::<AccountId>(row, 1)?,
        spec: Spec {
            prompt: row.get(3)?,
            model: parsed(row, 4)?,
            aspect_ratio: parsed(row, 5)?,
            seed: row.get(6)?,
            watermark_text: row.get(7)?,
            callback_url: row.get(8)?,
            inputs: inputs(row, 20)?,
        },
        price: Credits::from_units(row.get(9)?),
        created_at: from_micros(row.get(10)?)?,
        deadline_at: from_micros(row.get(11)?)?,
        stage,
        media_pruned_at: opt_time(row, 21)?,
    })
}
