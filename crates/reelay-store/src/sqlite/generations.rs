//! Generations: creation with its charge, the lifecycle, and the terminal transition with its
//! refund and outbox event.

use reelay_core::destination::destination_key;
use reelay_core::{AccountId, FailureCode, GenerationId, GenerationStatus};
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::backend;
use super::rows::{GENERATION_COLUMNS, from_micros, generation, micros, parsed};
use crate::*;

pub fn get(c: &Connection, id: GenerationId) -> StoreResult<Option<Generation>> {
    c.prepare_cached(&format!(
        "SELECT {GENERATION_COLUMNS} FROM generations WHERE id = ?1"
    ))
    .and_then(|mut s| s.query_row([id.to_string()], generation).optional())
    .map_err(backend)
}

fn must_get(c: &Connection, id: GenerationId) -> StoreResult<Generation> {
    get(c, id)?.ok_or(StoreError::NotFound)
}

pub fn create(c: &Connection, new: NewGeneration) -> StoreResult<Created> {
    let account = new.account_id.to_string();
    if let Some(idem) = &new.idempotency {
        let seen: Option<(Vec<u8>, String, i64)> = c
            .prepare_cached(
                "SELECT request_hash, generation_id, created_at FROM idempotency_keys \
                 WHERE account_id = ?1 AND key = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![account, idem.key], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(backend)?;
        if let Some((hash, generation_id, created_at)) = seen {
            if created_at >= micros(idem.not_before) {
                if hash != idem.request_hash {
                    return Err(StoreError::IdempotencyConflict);
                }
                let id = generation_id
                    .parse()
                    .map_err(|_| StoreError::Backend("corrupt idempotency row".into()))?;
                return Ok(Created {
                    generation: must_get(c, id)?,
                    replayed: true,
                });
            }
            c.prepare_cached("DELETE FROM idempotency_keys WHERE account_id = ?1 AND key = ?2")
                .and_then(|mut s| s.execute(params![account, idem.key]))
                .map_err(backend)?;
        }
    }

    // Prices are never negative, so the subtraction stays between 0 and the balance.
    if new.price < Credits::ZERO {
        return Err(StoreError::Backend(format!("negative price {}", new.price)));
    }
    let charged = c
        .prepare_cached(
            "UPDATE accounts SET balance = balance - ?2 WHERE id = ?1 AND balance >= ?2",
        )
        .and_then(|mut s| s.execute(params![account, new.price.units()]))
        .map_err(backend)?;
    if charged == 0 {
        return Err(match super::accounts::get(c, new.account_id)? {
            Some(_) => StoreError::InsufficientCredits,
            None => StoreError::NotFound,
        });
    }
    let id = new.id.to_string();
    let spec = &new.spec;
    let start = new.start.as_ref();
    c.prepare_cached(
        "INSERT INTO generations (id, account_id, status, prompt, model, aspect_ratio, seed, \
         watermark_text, callback_url, price, created_at, deadline_at, inputs, \
         lease_owner, lease_until, started_at, claims) \
         VALUES (?1, ?2, CASE WHEN ?13 IS NULL THEN 'pending' ELSE 'processing' END, ?3, ?4, \
         ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
         CASE WHEN ?13 IS NULL THEN NULL ELSE ?10 END, ?13 IS NOT NULL)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            account,
            spec.prompt,
            spec.model.as_str(),
            spec.aspect_ratio.as_str(),
            spec.seed,
            spec.watermark_text,
            spec.callback_url,
            new.price.units(),
            micros(new.created_at),
            micros(new.deadline_at),
            InputFile::join(&spec.inputs),
            start.map(|s| &s.owner),
            start.map(|s| micros(s.until)),
        ])
    })
    .map_err(backend)?;
    ledger(
        c,
        &account,
        &id,
        "charge",
        -new.price.units(),
        new.created_at,
    )?;
    if let Some(idem) = &new.idempotency {
        c.prepare_cached(
            "INSERT INTO idempotency_keys (account_id, key, request_hash, generation_id, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                account,
                idem.key,
                &idem.request_hash[..],
                id,
                micros(new.created_at)
            ])
        })
        .map_err(backend)?;
    }
    Ok(Created::made(new))
}

/// Writes one ledger row. The unique index on (generation, kind) makes a second charge or
/// refund of the same generation fail here, whatever the calling code does.
fn ledger(
    c: &Connection,
    account: &str,
    generation: &str,
    kind: &str,
    amount: i64,
    now: OffsetDateTime,
) -> StoreResult<()> {
    c.prepare_cached(
        "INSERT INTO ledger (account_id, generation_id, kind, amount, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![account, generation, kind, amount, micros(now)]))
    .map(drop)
    .map_err(backend)
}

pub fn list(
    c: &Connection,
    account: AccountId,
    status: Option<GenerationStatus>,
    limit: u32,
    offset: u64,
) -> StoreResult<Page<Generation>> {
    let account = account.to_string();
    let status = status.map(GenerationStatus::as_str);
    let items = c
        .prepare_cached(&format!(
            "SELECT {GENERATION_COLUMNS} FROM generations \
             WHERE account_id = ?1 AND (?2 IS NULL OR status = ?2) \
             ORDER BY created_at DESC, id DESC LIMIT ?3 OFFSET ?4"
        ))
        .and_then(|mut s| {
            s.query_map(params![account, status, limit, offset as i64], generation)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    let total: i64 = c
        .prepare_cached(
            "SELECT COUNT(*) FROM generations WHERE account_id = ?1 AND (?2 IS NULL OR status = ?2)",
        )
        .and_then(|mut s| s.query_row(params![account, status], |r| r.get(0)))
        .map_err(backend)?;
    Ok(Page {
        items,
        total: total as u64,
    })
}

const QUEUE_POSITION: &str = "SELECT COUNT(*) FROM ( \
         SELECT 1 FROM generations INDEXED BY generations_pending \
         WHERE status = 'pending' AND created_at < ?1 LIMIT ?2)";

pub fn queue_position(c: &Connection, created_at: OffsetDateTime) -> StoreResult<u64> {
    c.prepare_cached(QUEUE_POSITION)
        .and_then(|mut s| {
            s.query_row(
                params![micros(created_at), QUEUE_POSITION_CAP as i64],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n as u64)
        .map_err(backend)
}

/// The oldest pending generations, walked in the pending index's order and stopped at the
/// limit: no sort, no read of the rest of the backlog.
const OLDEST_PENDING: &str = "SELECT created_at, id FROM generations INDEXED BY generations_pending \
     WHERE status = 'pending' AND deadline_at > ?1 ORDER BY created_at LIMIT ?2";

/// Processing generations whose lease ran out (their node died), in the lease index's order.
const LAPSED_LEASES: &str = "SELECT created_at, id FROM generations INDEXED BY generations_leases \
     WHERE status = 'processing' AND lease_until < ?1 AND deadline_at > ?1 \
     ORDER BY lease_until LIMIT ?2";

/// Claims up to `limit` generations, oldest first: each candidate list is read from its own
/// index and bounded by `limit`, so a claim costs O(limit · log n) whatever the backlog.
pub fn claim(
    c: &Connection,
    owner: &str,
    limit: usize,
    lease_until: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<Vec<Generation>> {
    let mut found = Vec::with_capacity(limit * 2);
    for sql in [OLDEST_PENDING, LAPSED_LEASES] {
        found.extend(candidates(c, sql, params![micros(now), limit as i64])?);
    }
    take(c, owner, limit, found, lease_until, now)
}

/// One bounded index walk of a claim: `(created_at, id)` of each row it finds.
fn candidates(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<(i64, String)>> {
    c.prepare_cached(sql)
        .and_then(|mut s| {
            s.query_map(params, |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(backend)
}

/// Takes the oldest `limit` of `candidates` under `owner`'s lease.
fn take(
    c: &Connection,
    owner: &str,
    limit: usize,
    mut candidates: Vec<(i64, String)>,
    lease_until: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<Vec<Generation>> {
    candidates.sort_unstable();
    candidates.dedup();
    candidates.truncate(limit);
    let mut take = c
        .prepare_cached(&format!(
            "UPDATE generations SET status = 'processing', started_at = ?1, progress_pct = 0, \
                 lease_owner = ?2, lease_until = ?3, claims = claims + 1 \
             WHERE id = ?4 RETURNING {GENERATION_COLUMNS}"
        ))
        .map_err(backend)?;
    candidates
        .iter()
        .map(|(_, id)| {
            take.query_row(
                params![micros(now), owner, micros(lease_until), id],
                generation,
            )
            .map_err(backend)
        })
        .collect()
}

/// The oldest pending generations of one model, from the per-model pending index.
const OLDEST_PENDING_OF_MODEL: &str = "SELECT created_at, id FROM generations \
     INDEXED BY generations_pending_by_model \
     WHERE status = 'pending' AND model = ?3 AND deadline_at > ?1 ORDER BY created_at LIMIT ?2";

/// Lapsed leases of one model, from the per-model lease index.
const LAPSED_LEASES_OF_MODEL: &str = "SELECT created_at, id FROM generations \
     INDEXED BY generations_leases_by_model \
     WHERE status = 'processing' AND model = ?3 AND lease_until < ?1 AND deadline_at > ?1 \
     ORDER BY lease_until LIMIT ?2";

/// Like [`claim`], restricted to `models`: two index walks per model, each bounded by `limit`,
/// so the cost is O(models · limit · log n) whatever the backlog of other models.
pub fn claim_models(
    c: &Connection,
    owner: &str,
    limit: usize,
    models: &[reelay_core::Model],
    lease_until: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<Vec<Generation>> {
    let mut found = Vec::with_capacity(limit * 2 * models.len());
    for model in models {
        for sql in [OLDEST_PENDING_OF_MODEL, LAPSED_LEASES_OF_MODEL] {
            let params = params![micros(now), limit as i64, model.as_str()];
            found.extend(candidates(c, sql, params)?);
        }
    }
    take(c, owner, limit, found, lease_until, now)
}

pub fn heartbeat(
    c: &Connection,
    id: GenerationId,
    owner: &str,
    lease_until: OffsetDateTime,
    progress_pct: u8,
) -> StoreResult<bool> {
    c.prepare_cached(
        "UPDATE generations SET lease_until = ?3, progress_pct = MAX(progress_pct, ?4) \
         WHERE id = ?1 AND status = 'processing' AND lease_owner = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            id.to_string(),
            owner,
            micros(lease_until),
            progress_pct.min(99)
        ])
    })
    .map(|n| n == 1)
    .map_err(backend)
}

pub fn finish(
    c: &Connection,
    id: GenerationId,
    owner: Option<&str>,
    outcome: Outcome,
    now: OffsetDateTime,
) -> StoreResult<Finished> {
    let (status, code, reason, video) = outcome.columns();
    let updated = c
        .prepare_cached(&format!(
            "UPDATE generations SET status = ?2, completed_at = ?3, failure_code = ?4, \
                 video_file = ?5, video_url = ?6, \
                 progress_pct = CASE WHEN ?2 = 'completed' THEN 100 ELSE progress_pct END, \
                 ended_lease = COALESCE(?7, lease_owner), failure_reason = ?8, \
                 lease_owner = NULL, lease_until = NULL \
             WHERE id = ?1 AND status IN ('pending', 'processing') \
                 AND (?7 IS NULL OR (status = 'processing' AND lease_owner = ?7)) \
             RETURNING {GENERATION_COLUMNS}"
        ))
        .and_then(|mut s| {
            s.query_row(
                params![
                    id.to_string(),
                    status,
                    micros(now),
                    code.map(FailureCode::as_str),
                    video.map(|v| &v.file),
                    video.map(|v| &v.url),
                    owner,
                    reason,
                ],
                generation,
            )
            .optional()
        })
        .map_err(backend)?;
    let Some(generation) = updated else {
        return Ok(Finished::Refused(must_get(c, id)?));
    };
    let account = generation.account_id.to_string();
    if outcome.refunded() {
        ledger(
            c,
            &account,
            &id.to_string(),
            "refund",
            generation.price.units(),
            now,
        )?;
        // Checked: SQLite would turn an overflowing sum into a float. The balance rule
        // (`Credits::balance_after`) keeps balance plus held charges in range, so this never
        // fails unless that rule was bypassed; then the whole finish is undone, not corrupted.
        let refunded = c
            .prepare_cached(
                "UPDATE accounts SET balance = balance + ?2 WHERE id = ?1 AND balance <= ?3 - ?2",
            )
            .and_then(|mut s| {
                s.execute(params![
                    account,
                    generation.price.units(),
                    Credits::MAX.units()
                ])
            })
            .map_err(backend)?;
        if refunded != 1 {
            return Err(StoreError::Backend(format!(
                "refunding generation {id} would take account {account}'s balance past the \
                 maximum of {} credits",
                Credits::MAX
            )));
        }
    }
    write_event(c, &generation, now)?;
    Ok(Finished::Applied(generation))
}

/// The outbox row for a generation that just became terminal. Its body is not stored: it is
/// built from the generation's row when it is sent ([`webhook_body`]), so nothing of the
/// generation is kept twice.
fn write_event(c: &Connection, g: &Generation, now: OffsetDateTime) -> StoreResult<()> {
    if g.stage.completed_at().is_none() {
        return Err(StoreError::Backend(
            "an event for an unfinished generation".into(),
        ));
    }
    let event_id = event_id(g.id);
    let url = g.spec.callback_url.as_deref();
    let (state, due) = match url {
        Some(_) => ("pending", Some(micros(now))),
        None => ("none", None),
    };
    c.prepare_cached(
        "INSERT INTO events (id, generation_id, account_id, callback_url, destination, payload, \
             created_at, state, next_attempt_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            event_id,
            g.id.to_string(),
            g.account_id.to_string(),
            url,
            url.and_then(destination_key),
            "",
            micros(now),
            state,
            due,
        ])
    })
    .map(drop)
    .map_err(backend)
}

pub fn overdue(
    c: &Connection,
    now: OffsetDateTime,
    limit: usize,
) -> StoreResult<Vec<GenerationId>> {
    c.prepare_cached(
        "SELECT id FROM generations WHERE status IN ('pending', 'processing') \
         AND deadline_at <= ?1 ORDER BY deadline_at LIMIT ?2",
    )
    .and_then(|mut s| {
        s.query_map(params![micros(now), limit as i64], |r| parsed(r, 0))?
            .collect()
    })
    .map_err(backend)
}

pub fn next_deadline(c: &Connection) -> StoreResult<Option<OffsetDateTime>> {
    c.prepare_cached(
        "SELECT MIN(deadline_at) FROM generations WHERE status IN ('pending', 'processing')",
    )
    .and_then(|mut s| {
        s.query_row([], |r| r.get::<_, Option<i64>>(0))?
            .map(from_micros)
            .transpose()
    })
    .map_err(backend)
}

pub fn release_leases(c: &Connection, owner: &str) -> StoreResult<u64> {
    c.prepare_cached(
        "UPDATE generations SET status = 'pending', started_at = NULL, progress_pct = 0, \
             lease_owner = NULL, lease_until = NULL \
         WHERE status = 'processing' AND lease_owner = ?1",
    )
    .and_then(|mut s| s.execute([owner]))
    .map(|n| n as u64)
    .map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// A database with `n` pending generations (and an account for them), made in SQL.
    fn backlog(c: &Connection, from: usize, n: usize) {
        c.execute_batch(
            "INSERT OR IGNORE INTO accounts (id, name, balance, created_at) VALUES ('00000000-0000-7000-8000-000000000000', 'bench', 0, 0)",
        )
        .unwrap();
        c.execute(
            "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) \
             INSERT INTO generations (id, account_id, status, prompt, model, aspect_ratio, seed, \
                 price, created_at, deadline_at) \
             SELECT printf('00000000-0000-7000-8000-%012d', i), '00000000-0000-7000-8000-000000000000', 'pending', 'a prompt', 'veo-3-fast', '16:9', \
                 0, 0, 1000 + i, 9000000000000000 FROM n",
            params![from as i64, (from + n - 1) as i64],
        )
        .unwrap();
    }

    /// A migrated, empty database, opened directly.
    fn queue_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sqlite3");
        drop(super::super::SqliteStore::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        (dir, c)
    }

    /// Virtual-machine steps and sorts the statement ran since the last look.
    fn cost(c: &Connection, sql: &str) -> (i32, i32) {
        let s = c.prepare_cached(sql).unwrap();
        let steps = s.get_status(StatementStatus::VmStep);
        let sorts = s.get_status(StatementStatus::Sort);
        s.reset_status(StatementStatus::VmStep);
        s.reset_status(StatementStatus::Sort);
        (steps, sorts)
    }

    /// The queue's reads walk their index and stop: a claim and a queue position cost the same
    /// with 100,000 pending as with 1,000 (counted in SQLite's own steps, not in time).
    #[test]
    fn claim_and_queue_position_do_not_grow_with_the_backlog() {
        let (_dir, c) = queue_db();
        let now = from_micros(5_000_000).unwrap();
        let lease = from_micros(60_000_000).unwrap();
        let measure = |c: &Connection| {
            let claimed = claim(c, "node", 64, lease, now).unwrap();
            assert_eq!(claimed.len(), 64);
            assert!(
                claimed
                    .windows(2)
                    .all(|w| w[0].created_at <= w[1].created_at)
            );
            let (pending_steps, sorts) = cost(c, OLDEST_PENDING);
            assert_eq!(
                sorts, 0,
                "the oldest pending are read in index order, not sorted"
            );
            let (lapsed_steps, _) = cost(c, LAPSED_LEASES);
            let last = from_micros(1_000_000).unwrap();
            let position = queue_position(c, last).unwrap();
            let (position_steps, _) = cost(c, QUEUE_POSITION);
            (pending_steps + lapsed_steps, position_steps, position)
        };

        backlog(&c, 0, 1_000);
        let (small_claim, small_position, position) = measure(&c);
        assert_eq!(position, 1_000 - 64, "exact below the cap");
        backlog(&c, 1_000, 99_000);
        let (big_claim, big_position, position) = measure(&c);
        assert_eq!(position, QUEUE_POSITION_CAP, "capped above it");
        assert!(
            big_claim <= small_claim + small_claim / 10,
            "claim steps: {small_claim} with 1,000 pending, {big_claim} with 100,000"
        );
        assert!(
            big_position <= small_position * 2,
            "queue position steps: {small_position} with 1,000 pending, {big_position} with 100,000"
        );
    }

    /// The same for a claim filtered by model: it walks each model's own index, so neither the
    /// backlog of its model nor that of another model makes it cost more.
    #[test]
    fn claim_by_model_does_not_grow_with_the_backlog() {
        use reelay_core::Model;
        let (_dir, c) = queue_db();
        let now = from_micros(5_000_000).unwrap();
        let lease = from_micros(60_000_000).unwrap();
        let measure = |c: &Connection| {
            let claimed = claim_models(
                c,
                "node",
                64,
                &[Model::Veo3Fast, Model::Veo3Quality],
                lease,
                now,
            )
            .unwrap();
            assert_eq!(claimed.len(), 64);
            assert!(
                claimed
                    .windows(2)
                    .all(|w| w[0].created_at <= w[1].created_at)
            );
            let (pending, sorts) = cost(c, OLDEST_PENDING_OF_MODEL);
            assert_eq!(sorts, 0, "read in index order, not sorted");
            let (lapsed, _) = cost(c, LAPSED_LEASES_OF_MODEL);
            // Another model's backlog: nothing to claim, nothing walked.
            assert!(
                claim_models(c, "node", 64, &[Model::Veo3Quality], lease, now)
                    .unwrap()
                    .is_empty()
            );
            let (other, _) = cost(c, OLDEST_PENDING_OF_MODEL);
            cost(c, LAPSED_LEASES_OF_MODEL);
            (pending + lapsed, other)
        };
        backlog(&c, 0, 1_000);
        let (small, small_other) = measure(&c);
        backlog(&c, 1_000, 99_000);
        let (big, big_other) = measure(&c);
        assert!(
            big <= small + small / 10,
            "claim steps: {small} with 1,000 pending, {big} with 100,000"
        );
        assert!(
            big_other <= small_other + 2,
            "other-model steps: {small_other} with 1,000 pending, {big_other} with 100,000"
        );
    }
}
