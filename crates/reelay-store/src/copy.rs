//! `reelay migrate --from sqlite://… --to postgres://…`: copies a SQLite installation into an
//! empty PostgreSQL database, every table in one transaction, so that a platform outgrowing
//! one machine keeps its accounts, keys, balances and ledger, generations, webhook history
//! and signing secrets. Ids, hashes and sealed secrets are copied as they are: the nodes must
//! use the installation's master key, and its API keys keep working. Rows stream from a
//! reader thread through a bounded queue, so an installation of any size copies in bounded
//! memory.

use std::path::Path;

use rusqlite::types::Value;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::postgres::PgStore;
use crate::{SqliteStore, StoreError, StoreResult};

/// How a SQLite column becomes a PostgreSQL one.
#[derive(Clone, Copy)]
enum Kind {
    Uuid,
    Time,
    Text,
    Bytes,
    I64,
    I32,
    I16,
}
use Kind::*;

/// Every table, parents before children, with its columns.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "accounts",
        &[
            ("id", Uuid),
            ("name", Text),
            ("balance", I64),
            ("created_at", Time),
        ],
    ),
    (
        "api_keys",
        &[
            ("id", Uuid),
            ("account_id", Uuid),
            ("name", Text),
            ("shown_prefix", Text),
            ("secret_hash", Bytes),
            ("created_at", Time),
            ("revoked_at", Time),
        ],
    ),
    (
        "generations",
        &[
            ("id", Uuid),
            ("account_id", Uuid),
            ("status", Text),
            ("prompt", Text),
            ("model", Text),
            ("aspect_ratio", Text),
            ("seed", I64),
            ("watermark_text", Text),
            ("callback_url", Text),
            ("price", I64),
            ("inputs", Text),
            ("created_at", Time),
            ("deadline_at", Time),
            ("started_at", Time),
            ("completed_at", Time),
            ("progress_pct", I16),
            ("claims", I32),
            ("lease_owner", Text),
            ("lease_until", Time),
            ("ended_lease", Text),
            ("failure_code", Text),
            ("failure_reason", Text),
            ("video_file", Text),
            ("video_url", Text),
            ("media_pruned_at", Time),
        ],
    ),
    (
        "ledger",
        &[
            ("id", I64),
            ("account_id", Uuid),
            ("generation_id", Uuid),
            ("kind", Text),
            ("amount", I64),
            ("created_at", Time),
        ],
    ),
    (
        "idempotency_keys",
        &[
            ("account_id", Uuid),
            ("key", Text),
            ("request_hash", Bytes),
            ("generation_id", Uuid),
            ("created_at", Time),
        ],
    ),
    (
        "events",
        &[
            ("id", Text),
            ("generation_id", Uuid),
            ("account_id", Uuid),
            ("callback_url", Text),
            ("destination", Text),
            ("payload", Text),
            ("created_at", Time),
            ("state", Text),
            ("round_attempts", I32),
            ("total_attempts", I32),
            ("next_attempt_at", Time),
            ("lease_owner", Text),
            ("last_attempt_at", Time),
            ("last_status_code", I32),
            ("failure_reason", Text),
            ("delivered_at", Time),
        ],
    ),
    (
        "delivery_attempts",
        &[
            ("event_id", Text),
            ("number", I32),
            ("started_at", Time),
            ("duration_ms", I64),
            ("outcome", Text),
            ("status_code", I32),
            ("response_body", Text),
            ("error", Text),
        ],
    ),
    (
        "signing_secrets",
        &[
            ("id", I64),
            ("account_id", Uuid),
            ("sealed", Bytes),
            ("created_at", Time),
            ("retired_at", Time),
        ],
    ),
    (
        "worker_tokens",
        &[
            ("id", Text),
            ("name", Text),
            ("models", Text),
            ("shown_prefix", Text),
            ("secret_hash", Bytes),
            ("created_at", Time),
            ("revoked_at", Time),
        ],
    ),
];

/// Rows copied, per table, in copy order.
pub type Copied = Vec<(&'static str, u64)>;

/// Copies the SQLite database at `source` (brought up to date first) into `target`, which
/// must hold no account yet. Stop the server using `source` first.
pub async fn sqlite_to_postgres(source: &Path, target: &PgStore) -> StoreResult<Copied> {
    drop(SqliteStore::open(source)?);
    let mut conn = target.conn().await?;
    let tx = conn.transaction().await.map_err(crate::postgres::backend)?;
    let existing: i64 = tx
        .query_one("SELECT COUNT(*) FROM accounts", &[])
        .await
        .map_err(crate::postgres::backend)?
        .get(0);
    if existing > 0 {
        return Err(StoreError::Backend(
            "the PostgreSQL database already holds accounts; copy into an empty one".into(),
        ));
    }
    // A reader thread streams the rows through a bounded queue: memory stays at
    // COPY_BUFFER rows whatever the installation's size.
    let (rows_out, mut rows) = mpsc::channel(COPY_BUFFER);
    let source = source.to_owned();
    let reader = tokio::task::spawn_blocking(move || read_all(&source, &rows_out));
    let mut copied = Vec::new();
    for (table, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let overriding = if names.first() == Some(&"id") && matches!(columns[0].1, I64) {
            "OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let insert = match *table {
            // PostgreSQL keeps a balance in stripes (`balance_stripes`), spread evenly.
            "accounts" => format!(
                "WITH a AS (INSERT INTO accounts (id, name, created_at) \
                 VALUES ($1, $2, $4) RETURNING id) \
                 INSERT INTO balance_stripes (account_id, stripe, balance) \
                 SELECT id, s, reelay_stripe_share($3, s) FROM a, generate_series(0, {}) AS s",
                crate::postgres::STRIPES - 1
            ),
            _ => format!(
                "INSERT INTO {table} ({}) {overriding} VALUES ({})",
                names.join(", "),
                placeholders.join(", ")
            ),
        };
        let insert = tx
            .prepare(&insert)
            .await
            .map_err(crate::postgres::backend)?;
        let mut count = 0u64;
        loop {
            let row = match rows.recv().await {
                Some(Ok(Read::Row(row))) => row,
                Some(Ok(Read::TableEnd)) => break,
                Some(Err(e)) => return Err(e),
                None => {
                    let stopped = reader.await.map_err(|e| e.to_string());
                    return Err(StoreError::Backend(format!(
                        "reading the SQLite database stopped: {stopped:?}"
                    )));
                }
            };
            let params: Vec<&(dyn ToSql + Sync)> =
                row.iter().map(|cell| cell.as_ref() as _).collect();
            tx.execute(&insert, &params)
                .await
                .map_err(crate::postgres::backend)?;
            count += 1;
        }
        if !overriding.is_empty() {
            // The identity column goes on after the copied ids.
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                         GREATEST((SELECT MAX(id) FROM {table}), 1))"
                ),
                &[],
            )
            .await
            .map_err(crate::postgres::backend)?;
        }
        copied.push((*table, count));
    }
    // SQLite keeps no destination on a generation; an unfinished one needs it for its event.
    let unfinished = tx
        .query(
            "SELECT id, callback_url FROM generations \
             WHERE callback_url IS NOT NULL AND completed_at IS NULL",
            &[],
        )
        .await
        .map_err(crate::postgres::backend)?;
    for row in unfinished {
        let (id, url): (Uuid, String) = (row.get(0), row.get(1));
        tx.execute(
            "UPDATE generations SET destination = $2 WHERE id = $1",
            &[&id, &reelay_core::destination::destination_key(&url)],
        )
        .await
        .map_err(crate::postgres::backend)?;
    }
    tx.commit().await.map_err(crate::postgres::backend)?;
    Ok(copied)
}

type Cell = Box<dyn ToSql + Sync + Send>;

/// What the reader thread hands over: a table's rows, each table closed by `TableEnd`.
enum Read {
    Row(Vec<Cell>),
    TableEnd,
}

/// Rows read ahead of the inserts at most.
const COPY_BUFFER: usize = 1_024;

/// Reads every table in [`TABLES`] order into `out`; stops early when the copy gave up.
fn read_all(source: &Path, out: &mpsc::Sender<StoreResult<Read>>) {
    if let Err(e) = read_tables(source, out) {
        let _ = out.blocking_send(Err(e));
    }
}

fn read_tables(source: &Path, out: &mpsc::Sender<StoreResult<Read>>) -> StoreResult<()> {
    let c =
        rusqlite::Connection::open_with_flags(source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(crate::sqlite::backend)?;
    for (table, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
        let mut statement = c
            .prepare(&format!("SELECT {} FROM {table}", names.join(", ")))
            .map_err(crate::sqlite::backend)?;
        let mut rows = statement.query([]).map_err(crate::sqlite::backend)?;
        while let Some(row) = rows.next().map_err(crate::sqlite::backend)? {
            let cells = columns
                .iter()
                .enumerate()
                .map(|(i, (name, kind))| {
                    let value: Value = row.get(i).map_err(crate::sqlite::backend)?;
                    cell(value, *kind)
                        .map_err(|what| StoreError::Backend(format!("{table}.{name}: {what}")))
                })
                .collect::<StoreResult<Vec<Cell>>>()?;
            if out.blocking_send(Ok(Read::Row(cells))).is_err() {
                return Ok(());
            }
        }
        if out.blocking_send(Ok(Read::TableEnd)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn cell(value: Value, kind: Kind) -> Result<Cell, String> {
    let int = |v: &Value| match v {
        Value::Integer(n) => Ok(Some(*n)),
        Value::Null => Ok(None),
        other => Err(format!("expected an integer, found {other:?}")),
    };
    Ok(match kind {
        Uuid => Box::new(match value {
            Value::Text(text) => {
                Some(Uuid::parse_str(&text).map_err(|e| format!("{text:?} is not a UUID: {e}"))?)
            }
            Value::Null => None,
            other => return Err(format!("expected a UUID, found {other:?}")),
        }),
        Time => Box::new(
            int(&value)?
                .map(|us| OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000))
                .transpose()
                .map_err(|e| e.to_string())?,
        ),
        Text => Box::new(match value {
            Value::Text(text) => Some(text),
            Value::Null => None,
            other => return Err(format!("expected text, found {other:?}")),
        }),
        Bytes => Box::new(match value {
            Value::Blob(bytes) => Some(bytes),
            Value::Null => None,
            other => return Err(format!("expected bytes, found {other:?}")),
        }),
        I64 => Box::new(int(&value)?),
        I32 => Box::new(
            int(&value)?
                .map(i32::try_from)
                .transpose()
                .map_err(|e| e.to_string())?,
        ),
        I16 => Box::new(
            int(&value)?
                .map(i16::try_from)
                .transpose()
                .map_err(|e| e.to_string())?,
        ),
    })
}
