//! Webhook deliveries on the outbox rows: claiming due ones under a lease, recording attempts,
//! redelivery, and the signing secrets that sign them.

use reelay_core::{AccountId, GenerationId};
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;

use super::backend;
use super::rows::{from_micros, micros, opt_time, parsed};
use crate::*;

const EVENT_COLUMNS: &str = "id, generation_id, account_id, callback_url, payload, created_at, \
    state, total_attempts, next_attempt_at, last_attempt_at, last_status_code, failure_reason, \
    delivered_at, lease_owner IS NOT NULL";

fn event(r: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: r.get(0)?,
        generation_id: parsed(r, 1)?,
        account_id: parsed(r, 2)?,
        callback_url: r.get(3)?,
        payload: r.get(4)?,
        created_at: from_micros(r.get(5)?)?,
        state: parsed(r, 6)?,
        total_attempts: r.get(7)?,
        next_attempt_at: opt_time(r, 8)?,
        last_attempt_at: opt_time(r, 9)?,
        last_status_code: r.get(10)?,
        failure_reason: r.get(11)?,
        delivered_at: opt_time(r, 12)?,
        in_flight: r.get(13)?,
    })
}

pub fn event_for(c: &Connection, generation: GenerationId) -> StoreResult<Option<Event>> {
    let event = c
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE generation_id = ?1"
        ))
        .and_then(|mut s| s.query_row([generation.to_string()], event).optional())
        .map_err(backend)?;
    event
        .map(|mut e| {
            e.payload = body(c, e.generation_id, e.payload)?;
            Ok(e)
        })
        .transpose()
}

/// An event's body: built from its generation's row, or as stored by a version of reelay
/// that kept bodies (non-empty).
fn body(c: &Connection, generation: GenerationId, stored: String) -> StoreResult<String> {
    if !stored.is_empty() {
        return Ok(stored);
    }
    let g = super::generations::get(c, generation)?.ok_or(StoreError::NotFound)?;
    webhook_body(&g).ok_or_else(|| {
        StoreError::Backend(format!(
            "generation {generation} has an event but has not ended"
        ))
    })
}

pub fn due_for_destination(
    c: &Connection,
    destination: &str,
    from: Option<OffsetDateTime>,
    limit: usize,
    now: OffsetDateTime,
) -> StoreResult<Vec<DueAt>> {
    c.prepare_cached(
        "SELECT id, next_attempt_at FROM events \
         WHERE state = 'pending' AND destination = ?1 AND next_attempt_at <= ?2 \
             AND next_attempt_at >= ?4 \
         ORDER BY next_attempt_at LIMIT ?3",
    )
    .and_then(|mut s| {
        s.query_map(
            params![
                destination,
                micros(now),
                limit as i64,
                from.map_or(i64::MIN, micros)
            ],
            |r| {
                Ok(DueAt {
                    event_id: r.get(0)?,
                    due_at: from_micros(r.get(1)?)?,
                })
            },
        )?
        .collect()
    })
    .map_err(backend)
}

/// Most destinations visited by one scan, so a scan's cost stays bounded.
const SCAN_MAX_DESTINATIONS: usize = 10_000;

pub fn scan_due(
    c: &Connection,
    now: OffsetDateTime,
    after: Option<&str>,
    skip: &[String],
    per_destination: usize,
    limit: usize,
) -> StoreResult<Vec<DueRef>> {
    // A loose index scan by hand: jump from one destination to the next through the
    // (destination, next_attempt_at) index instead of reading every pending row.
    let mut next = c
        .prepare_cached(
            "SELECT destination FROM events WHERE state = 'pending' AND destination > ?1 \
             ORDER BY destination LIMIT 1",
        )
        .map_err(backend)?;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let start = after.unwrap_or("").to_owned();
    let mut cursor = start.clone();
    let mut wrapped = false;
    let mut found = Vec::new();
    for _ in 0..SCAN_MAX_DESTINATIONS {
        let destination: Option<String> = next
            .query_row([&cursor], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        let destination = match destination {
            Some(d) if wrapped && d > start => break,
            Some(d) => d,
            None if !wrapped && !start.is_empty() => {
                wrapped = true;
                cursor.clear();
                continue;
            }
            None => break,
        };
        if !skip.contains(&destination) {
            let want = per_destination.min(limit - found.len());
            for due in due_for_destination(c, &destination, None, want, now)? {
                found.push(DueRef {
                    event_id: due.event_id,
                    destination: destination.clone(),
                });
            }
            if found.len() >= limit {
                break;
            }
        }
        cursor = destination;
    }
    Ok(found)
}

pub fn lease(
    c: &Connection,
    owner: &str,
    event_ids: &[String],
    lease_until: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<Vec<DueDelivery>> {
    let ids = serde_json::to_string(event_ids).map_err(|e| StoreError::Backend(e.to_string()))?;
    let leased: Vec<DueDelivery> = c
        .prepare_cached(
            "UPDATE events SET lease_owner = ?1, next_attempt_at = ?2 \
         WHERE id IN (SELECT value FROM json_each(?4)) \
             AND state = 'pending' AND next_attempt_at <= ?3 \
         RETURNING id, generation_id, account_id, callback_url, destination, payload, \
             created_at, round_attempts",
        )
        .and_then(|mut s| {
            s.query_map(params![owner, micros(lease_until), micros(now), ids], |r| {
                Ok(DueDelivery {
                    event_id: r.get(0)?,
                    generation_id: parsed(r, 1)?,
                    account_id: parsed(r, 2)?,
                    url: r.get(3)?,
                    destination: r.get(4)?,
                    payload: r.get(5)?,
                    created_at: from_micros(r.get(6)?)?,
                    round_attempts: r.get(7)?,
                })
            })?
            .collect()
        })
        .map_err(backend)?;
    leased
        .into_iter()
        .map(|mut d| {
            d.payload = body(c, d.generation_id, d.payload)?;
            Ok(d)
        })
        .collect()
}

pub fn record_attempt(c: &Connection, a: AttemptRecord) -> StoreResult<bool> {
    let started = micros(a.started_at);
    let number: Option<u32> = c
        .prepare_cached(
            "UPDATE events SET total_attempts = total_attempts + 1, last_attempt_at = ?2, \
                 last_status_code = ?3 \
             WHERE id = ?1 RETURNING total_attempts",
        )
        .and_then(|mut s| {
            s.query_row(params![a.event_id, started, a.status_code], |r| r.get(0))
                .optional()
        })
        .map_err(backend)?;
    let number = number.ok_or(StoreError::NotFound)?;
    c.prepare_cached(
        "INSERT INTO delivery_attempts (event_id, number, started_at, duration_ms, outcome, \
             status_code, response_body, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            a.event_id,
            number,
            started,
            a.duration_ms as i64,
            a.outcome.as_str(),
            a.status_code,
            a.response_body,
            a.error
        ])
    })
    .map_err(backend)?;
    let (state, next_at, reason, delivered_at) = match &a.next {
        AfterAttempt::Delivered => ("delivered", None, None, Some(started)),
        AfterAttempt::RetryAt(at) => ("pending", Some(micros(*at)), None, None),
        AfterAttempt::Failed(reason) => ("failed", None, Some(reason.as_str()), None),
    };
    c.prepare_cached(
        "UPDATE events SET state = ?3, next_attempt_at = ?4, failure_reason = ?5, \
             delivered_at = ?6, round_attempts = round_attempts + 1, lease_owner = NULL \
         WHERE id = ?1 AND state = 'pending' AND lease_owner = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            a.event_id,
            a.owner,
            state,
            next_at,
            reason,
            delivered_at
        ])
    })
    .map(|n| n == 1)
    .map_err(backend)
}

pub fn release(c: &Connection, event_id: &str, owner: &str, at: OffsetDateTime) -> StoreResult<()> {
    c.prepare_cached(
        "UPDATE events SET next_attempt_at = ?3, lease_owner = NULL \
         WHERE id = ?1 AND state = 'pending' AND lease_owner = ?2",
    )
    .and_then(|mut s| s.execute(params![event_id, owner, micros(at)]))
    .map(drop)
    .map_err(backend)
}

pub fn release_owned(c: &Connection, owner: &str, now: OffsetDateTime) -> StoreResult<u64> {
    c.prepare_cached(
        "UPDATE events SET next_attempt_at = MIN(created_at, ?1), lease_owner = NULL \
         WHERE state = 'pending' AND lease_owner = ?2",
    )
    .and_then(|mut s| s.execute(params![micros(now), owner]))
    .map(|n| n as u64)
    .map_err(backend)
}

pub fn next_due(c: &Connection) -> StoreResult<Option<OffsetDateTime>> {
    c.prepare_cached("SELECT MIN(next_attempt_at) FROM events WHERE state = 'pending'")
        .and_then(|mut s| {
            s.query_row([], |r| r.get::<_, Option<i64>>(0))?
                .map(from_micros)
                .transpose()
        })
        .map_err(backend)
}

pub fn attempts(c: &Connection, event_id: &str) -> StoreResult<Vec<Attempt>> {
    c.prepare_cached(
        "SELECT number, started_at, duration_ms, outcome, status_code, response_body, error \
         FROM delivery_attempts WHERE event_id = ?1 ORDER BY number",
    )
    .and_then(|mut s| {
        s.query_map([event_id], |r| {
            Ok(Attempt {
                number: r.get(0)?,
                started_at: from_micros(r.get(1)?)?,
                duration_ms: r.get::<_, i64>(2)? as u64,
                outcome: parsed(r, 3)?,
                status_code: r.get(4)?,
                response_body: r.get(5)?,
                error: r.get(6)?,
            })
        })?
        .collect()
    })
    .map_err(backend)
}

/// The columns a new round resets.
const NEW_ROUND: &str = "state = 'pending', round_attempts = 0, next_attempt_at = ?2, \
    lease_owner = NULL, failure_reason = NULL, delivered_at = NULL";

pub fn redeliver(
    c: &Connection,
    generation: GenerationId,
    now: OffsetDateTime,
) -> StoreResult<Redelivery> {
    let Some(current) = event_for(c, generation)? else {
        return Ok(Redelivery::NotFinished);
    };
    match current.state {
        DeliveryState::None => return Ok(Redelivery::NoCallback),
        DeliveryState::Pending => return Ok(Redelivery::AlreadyPending),
        DeliveryState::Delivered | DeliveryState::Failed => {}
    }
    c.prepare_cached(&format!(
        "UPDATE events SET {NEW_ROUND} WHERE id = ?1 AND state IN ('delivered', 'failed')"
    ))
    .and_then(|mut s| s.execute(params![current.id, micros(now)]))
    .map_err(backend)?;
    Ok(Redelivery::Started {
        webhook_id: current.id,
    })
}

pub fn redeliver_failed(
    c: &Connection,
    account: AccountId,
    since: OffsetDateTime,
    until: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<u64> {
    c.prepare_cached(&format!(
        "UPDATE events SET {NEW_ROUND} \
         WHERE account_id = ?1 AND state = 'failed' AND created_at >= ?3 AND created_at < ?4"
    ))
    .and_then(|mut s| {
        s.execute(params![
            account.to_string(),
            micros(now),
            micros(since),
            micros(until)
        ])
    })
    .map(|n| n as u64)
    .map_err(backend)
}

pub fn counts(c: &Connection, now: OffsetDateTime) -> StoreResult<DeliveryCounts> {
    let (due, scheduled): (Option<i64>, Option<i64>) = c
        .prepare_cached(
            "SELECT SUM(in_flight OR next_attempt_at <= ?1), \
                 SUM(NOT in_flight AND next_attempt_at > ?1) \
             FROM (SELECT next_attempt_at, lease_owner IS NOT NULL AS in_flight \
                   FROM events WHERE state = 'pending')",
        )
        .and_then(|mut s| s.query_row([micros(now)], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(backend)?;
    let failed: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM events WHERE state = 'failed'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    Ok(DeliveryCounts {
        due: due.unwrap_or(0) as u64,
        scheduled: scheduled.unwrap_or(0) as u64,
        failed: failed as u64,
    })
}

/// `LIMIT 2`: rotations leave at most two signing, and on a database written before they
/// retired older secrets, the current one and the newest rotated-out one still are the two.
pub fn signing_secrets(
    c: &Connection,
    account: AccountId,
    now: OffsetDateTime,
) -> StoreResult<Vec<SealedSecret>> {
    c.prepare_cached(
        "SELECT sealed, created_at, retired_at FROM signing_secrets \
         WHERE account_id = ?1 AND (retired_at IS NULL OR retired_at > ?2) \
         ORDER BY retired_at IS NOT NULL, id DESC LIMIT 2",
    )
    .and_then(|mut s| {
        s.query_map(params![account.to_string(), micros(now)], |r| {
            Ok(SealedSecret {
                sealed: r.get(0)?,
                created_at: from_micros(r.get(1)?)?,
                retired_at: opt_time(r, 2)?,
            })
        })?
        .collect()
    })
    .map_err(backend)
}

pub fn add_signing_secret(
    c: &Connection,
    account: AccountId,
    sealed: Vec<u8>,
    now: OffsetDateTime,
) -> StoreResult<bool> {
    c.prepare_cached(
        "INSERT INTO signing_secrets (account_id, sealed, created_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT DO NOTHING",
    )
    .and_then(|mut s| s.execute(params![account.to_string(), sealed, micros(now)]))
    .map(|n| n == 1)
    .map_err(backend)
}

/// One transaction on the writer: the rate-limit check, the retirements and the new secret
/// cannot interleave with another rotation, from this process or any other.
pub fn rotate_signing_secret(
    c: &Connection,
    account: AccountId,
    sealed: Vec<u8>,
    now: OffsetDateTime,
    rotation: Rotation,
) -> StoreResult<Rotated> {
    let account = account.to_string();
    // The current secret, and whether a rotation made it (an older secret exists) rather than
    // first use: the first secret is made on demand, and rotating it at once is fine.
    let current: Option<(i64, i64, bool)> = c
        .prepare_cached(
            "SELECT id, created_at, EXISTS (SELECT 1 FROM signing_secrets o \
                 WHERE o.account_id = s.account_id AND o.id < s.id) \
             FROM signing_secrets s WHERE account_id = ?1 AND retired_at IS NULL",
        )
        .and_then(|mut s| {
            s.query_row([&account], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(backend)?;
    if let Some((id, created_at, rotated)) = current {
        if rotated && created_at > micros(rotation.refuse_if_rotated_after) {
            return Ok(Rotated::TooSoon {
                last_rotation: from_micros(created_at).map_err(backend)?,
            });
        }
        // Older secrets still in their overlap stop now; the one rotated out gets its own.
        c.prepare_cached(
            "UPDATE signing_secrets SET retired_at = ?2 WHERE account_id = ?1 AND retired_at > ?2",
        )
        .and_then(|mut s| s.execute(params![account, micros(now)]))
        .map_err(backend)?;
        c.prepare_cached("UPDATE signing_secrets SET retired_at = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, micros(rotation.overlap_until)]))
            .map_err(backend)?;
    }
    c.prepare_cached(
        "INSERT INTO signing_secrets (account_id, sealed, created_at) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut s| s.execute(params![account, sealed, micros(now)]))
    .map_err(backend)?;
    Ok(Rotated::Done)
}
