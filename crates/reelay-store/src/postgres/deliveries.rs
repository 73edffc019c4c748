//! Webhook deliveries on the outbox rows: claiming due ones under a lease (one conditional
//! UPDATE, so two nodes never lease the same event), recording attempts, redelivery.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use deadpool_postgres::{Client, GenericClient, Transaction};
use futures::future::BoxFuture;
use reelay_core::{AccountId, GenerationId};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::batch::{Write, first_of_each, pipelined};
use super::rows::{GENERATION_COLUMNS, corrupt, generation, get, parsed, unsigned};
use super::sql::{Param, execute, query, query_one, query_opt, query_planned};
use super::{PgStore, backend};
use crate::*;

const EVENT_COLUMNS: &str = "id, generation_id, account_id, callback_url, payload, created_at, \
    state, total_attempts, next_attempt_at, last_attempt_at, last_status_code, failure_reason, \
    delivered_at, lease_owner IS NOT NULL AS in_flight";

/// An HTTP status code kept in an integer column.
fn status_code(row: &Row, column: &str) -> StoreResult<Option<u16>> {
    let code: Option<i32> = get(row, column)?;
    code.map(|c| u16::try_from(c).map_err(|_| corrupt(column, format!("{c} out of range"))))
        .transpose()
}

fn event(row: &Row) -> StoreResult<Event> {
    Ok(Event {
        id: get(row, "id")?,
        generation_id: GenerationId(get(row, "generation_id")?),
        account_id: AccountId(get(row, "account_id")?),
        callback_url: get(row, "callback_url")?,
        payload: get(row, "payload")?,
        created_at: get(row, "created_at")?,
        state: parsed(row, "state")?,
        total_attempts: unsigned::<i32, _>(row, "total_attempts")?,
        next_attempt_at: get(row, "next_attempt_at")?,
        last_attempt_at: get(row, "last_attempt_at")?,
        last_status_code: status_code(row, "last_status_code")?,
        failure_reason: get(row, "failure_reason")?,
        delivered_at: get(row, "delivered_at")?,
        in_flight: get(row, "in_flight")?,
    })
}

/// An event's body: built from its generation, or as stored by a version of reelay that kept
/// bodies (non-empty).
fn body(
    generation_id: GenerationId,
    stored: String,
    generation: Option<Generation>,
) -> StoreResult<String> {
    if !stored.is_empty() {
        return Ok(stored);
    }
    let g = generation.ok_or(StoreError::NotFound)?;
    webhook_body(&g).ok_or_else(|| {
        StoreError::Backend(format!(
            "generation {generation_id} has an event but has not ended"
        ))
    })
}

async fn event_for(c: &impl GenericClient, generation: GenerationId) -> StoreResult<Option<Event>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE generation_id = $1");
    let Some(row) = query_opt(c, &sql, &[&generation.0]).await? else {
        return Ok(None);
    };
    let mut e = event(&row)?;
    let g = if e.payload.is_empty() {
        super::generations::get(c, e.generation_id).await?
    } else {
        None
    };
    e.payload = body(e.generation_id, std::mem::take(&mut e.payload), g)?;
    Ok(Some(e))
}

/// A count or limit as PostgreSQL's bigint.
fn bigint(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn due_for_destination(
    c: &impl GenericClient,
    destination: &str,
    from: Option<OffsetDateTime>,
    limit: usize,
    now: OffsetDateTime,
) -> StoreResult<Vec<DueAt>> {
    query(
        c,
        "SELECT id, next_attempt_at FROM events \
         WHERE state = 'pending' AND destination = $1 AND next_attempt_at <= $2 \
             AND next_attempt_at >= COALESCE($4::timestamptz, '-infinity') \
         ORDER BY next_attempt_at LIMIT $3",
        &[&destination, &now, &bigint(limit), &from],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(DueAt {
            event_id: get(r, "id")?,
            due_at: get(r, "next_attempt_at")?,
        })
    })
    .collect()
}

/// Most destinations visited by one scan, so a scan's cost stays bounded.
const SCAN_MAX_DESTINATIONS: i32 = 10_000;

/// The scan as one statement: a loose index scan (a recursive CTE) that steps from one
/// destination to the next through `events_due_by_destination`, one row per step, exactly as
/// SQLite's loop does: from just after `$1` (`''` for the start) up, then one step that wraps
/// to the beginning, then up to `$1` itself, never past it. Each step takes the due ids of its
/// destination (none of a skipped one) up to what `$5` leaves, and the walk stops at `$5`
/// found or `$6` steps.
const SCAN_DUE: &str = "\
WITH RECURSIVE walk (step, wrapped, destination, ids, found) AS (
    SELECT 0, false, $1::text COLLATE \"C\", '{}'::text[], 0::bigint
  UNION ALL
    SELECT w.step + 1, w.wrapped OR n.next IS NULL, COALESCE(n.next, ''), d.ids,
        w.found + cardinality(d.ids)
    FROM walk w
    LEFT JOIN LATERAL (
        SELECT e.destination AS next FROM events e
        WHERE e.state = 'pending' AND e.destination > w.destination
        ORDER BY e.destination LIMIT 1
    ) n ON true
    CROSS JOIN LATERAL (
        SELECT CASE WHEN n.next IS NULL OR n.next = ANY($3::text[]) THEN '{}'::text[]
            ELSE ARRAY(SELECT e.id FROM events e
                       WHERE e.state = 'pending' AND e.destination = n.next
                           AND e.next_attempt_at <= $2
                       ORDER BY e.next_attempt_at
                       LIMIT LEAST($4::bigint, $5::bigint - w.found))
        END AS ids
        OFFSET 0
    ) d
    WHERE w.step < $6::integer AND w.found < $5::bigint
        AND CASE WHEN n.next IS NULL THEN NOT w.wrapped AND $1::text <> ''
            ELSE NOT (w.wrapped AND n.next > $1::text) END
)
SELECT w.destination, t.id
FROM walk w CROSS JOIN LATERAL unnest(w.ids) WITH ORDINALITY AS t (id, k)
ORDER BY w.step, t.k";

async fn scan_due(
    c: &impl GenericClient,
    now: OffsetDateTime,
    after: Option<&str>,
    skip: &[String],
    per_destination: usize,
    limit: usize,
) -> StoreResult<Vec<DueRef>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    query(
        c,
        SCAN_DUE,
        &[
            &after.unwrap_or(""),
            &now,
            &skip,
            &bigint(per_destination),
            &bigint(limit),
            &SCAN_MAX_DESTINATIONS,
        ],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(DueRef {
            event_id: get(r, "id")?,
            destination: get(r, "destination")?,
        })
    })
    .collect()
}

/// How long past the lease that lists it an owner stays in `lease_owners`: it lists itself
/// again only when a lease would outlast its entry, about once a minute while it sends. A node
/// that died is still looked up by the others' leases for as long.
const LISTED_BEYOND_LEASE: time::Duration = time::Duration::seconds(60);

/// The owner this process last listed in `lease_owners`, and until when.
#[derive(Default)]
pub(super) struct Listed(Mutex<Option<(String, OffsetDateTime)>>);

impl Listed {
    fn entry(&self) -> MutexGuard<'_, Option<(String, OffsetDateTime)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Until when `owner` is listed, as far as this process knows.
    fn until(&self, owner: &str) -> Option<OffsetDateTime> {
        self.entry()
            .as_ref()
            .filter(|(listed, _)| listed == owner)
            .map(|(_, until)| *until)
    }

    fn set(&self, owner: &str, until: OffsetDateTime) {
        *self.entry() = Some((owner.to_owned(), until));
    }

    fn forget(&self, owner: &str) {
        let mut entry = self.entry();
        if entry.as_ref().is_some_and(|(listed, _)| listed == owner) {
            *entry = None;
        }
    }
}

/// Lists `owner` in `lease_owners` until `until` at least, before a lease that would outlast
/// its entry, and drops the entries of owners that have lapsed (all their leases lapsed with
/// them). Rows another node is dropping at the same time are skipped, not waited for, so two
/// nodes listing themselves never wait on each other.
async fn list_owner(
    c: &impl GenericClient,
    owner: &str,
    until: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<()> {
    execute(
        c,
        "INSERT INTO lease_owners (owner, live_until) VALUES ($1, $2) \
         ON CONFLICT (owner) DO UPDATE \
             SET live_until = GREATEST(lease_owners.live_until, excluded.live_until)",
        &[&owner, &until],
    )
    .await?;
    execute(
        c,
        "DELETE FROM lease_owners WHERE owner IN ( \
             SELECT owner FROM lease_owners WHERE live_until < $1 AND owner <> $2 \
             FOR UPDATE SKIP LOCKED)",
        &[&now, &owner],
    )
    .await
    .map(drop)
}

/// A lease is two statements in one transaction (after [`list_owner`]'s, when it runs), sent
/// together: the second is on its way while the first runs, so the destinations' locks the
/// first takes are held for no round trip between them, only to the commit. This one reads
/// the asked-for deliveries without locking them and keeps those that look due: one another
/// node has leased since this node heard of it is left alone, for locking its row would hold
/// up that node's record of its attempt until this lease commits (seen with two nodes: each
/// node's refills find the events the other has just finished). It then takes the advisory
/// lock of each of their destinations, in one order on every node (so two leases cannot
/// deadlock), until the transaction ends, and hands the ids whose destination it locked to
/// the second statement in the transaction's setting `reelay.leasing`: the count of live
/// leases that follows, in a statement of its own (a snapshot taken after the locks), then
/// sees every lease another node made of these destinations, and every owner it listed.
/// Due-ness is computed, not filtered on, so the events are found by primary key alone (see
/// [`WITHIN_LIMIT`] for why that matters).
const LOCK_DESTINATIONS: &str = "WITH peek AS MATERIALIZED ( \
         SELECT e.id, e.destination, e.state = 'pending' AND e.next_attempt_at <= $2 AS due \
         FROM unnest($1::text[]) AS want (id) JOIN events e ON e.id = want.id), \
     locked AS MATERIALIZED ( \
         SELECT destination, pg_advisory_xact_lock(hashtextextended(destination, 0)) \
         FROM (SELECT DISTINCT destination FROM peek WHERE due ORDER BY destination) asked) \
     SELECT set_config('reelay.leasing', COALESCE(( \
         SELECT array_agg(peek.id) FROM peek JOIN locked USING (destination) WHERE peek.due \
     ), '{}')::text, true)";

/// The second (with the UPDATE below) leases those of the deliveries the first handed over it
/// may without any destination going past `$4` attempts in flight across the cluster (the other
/// owners' unexpired live leases, the requests this one says it has open, `$5`/`$6`, and the new
/// ones), oldest due first, and brings the bodies to build (the generations of events stored
/// without one).
///
/// The asked-for rows are locked and read by primary key alone, and only then checked for
/// being due. A row another transaction holds is skipped, not waited for: it is being leased
/// by another node or its attempt recorded, so it is not this lease's to take (and waiting
/// for it could deadlock against a batch of attempt records, which lock the same rows); it is
/// found again when it is due. The UPDATE finds them by primary key alone too.
/// Given the due-ness conditions, the planner may instead walk the index of every due event
/// (it did whenever statistics lagged behind a growing backlog, which made a lease cost the
/// size of the backlog); the rows stay locked until the lease commits, so nothing needs
/// checking again. Each step is `MATERIALIZED`, computed once: inlined, the ranking and the
/// live count ran once per candidate row. The other owners' leases are counted owner by
/// owner, for the owners `lease_owners` lists as live, so `events_in_flight` is read only
/// where a live owner's entries are: never this owner's own, nor those a node long gone left
/// behind, dead or not.
const WITHIN_LIMIT: &str = "WITH asked AS MATERIALIZED ( \
         SELECT e.id, e.destination, e.next_attempt_at, e.state \
         FROM unnest(current_setting('reelay.leasing')::text[]) AS want (id) \
             JOIN events e ON e.id = want.id \
         ORDER BY e.id FOR UPDATE OF e SKIP LOCKED), \
     due AS MATERIALIZED ( \
         SELECT id, destination, next_attempt_at FROM asked \
         WHERE state = 'pending' AND next_attempt_at <= $3), \
     live AS MATERIALIZED ( \
         SELECT d.destination, (SELECT COALESCE(SUM(c.n), 0)::bigint FROM lease_owners o \
             CROSS JOIN LATERAL (SELECT COUNT(*) AS n FROM events e \
                 WHERE e.destination = d.destination AND e.lease_owner = o.owner \
                     AND e.state = 'pending' AND e.next_attempt_at > $3) c \
             WHERE o.owner <> $1 AND o.live_until > $3) \
             + COALESCE((SELECT s.n FROM unnest($5::text[], $6::bigint[]) AS s (destination, n) \
                 WHERE s.destination = d.destination), 0) AS n \
         FROM (SELECT DISTINCT destination FROM due) d), \
     ranked AS MATERIALIZED ( \
         SELECT a.id, live.n + row_number() OVER ( \
             PARTITION BY a.destination ORDER BY a.next_attempt_at, a.id) AS k \
         FROM due a JOIN live USING (destination)), \
     chosen AS MATERIALIZED (SELECT id FROM ranked WHERE k <= $4)";

async fn lease(
    c: &impl GenericClient,
    owner: &str,
    event_ids: &[String],
    sending: &HashMap<String, usize>,
    per_destination: i64,
    lease_until: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<Vec<DueDelivery>> {
    let (destinations, open): (Vec<&str>, Vec<i64>) = sending
        .iter()
        .map(|(destination, n)| (destination.as_str(), bigint(*n)))
        .unzip();
    // Planned for these ids each time: a plan cached while the events table was small reads
    // the whole table instead of looking the ids up (seen in auto_explain: a sequential scan of
    // 57,000 rows for 58 ids), and a lease's ids are many enough to make planning cheap.
    let planned = execute(c, "SET LOCAL plan_cache_mode = force_custom_plan", &[]);
    let lock_params: [Param<'_>; 2] = [&event_ids, &now];
    let locked = execute(c, LOCK_DESTINATIONS, &lock_params);
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{WITHIN_LIMIT}, \
         leased AS ( \
             UPDATE events SET lease_owner = $1, next_attempt_at = $2 \
             FROM chosen WHERE events.id = chosen.id \
             RETURNING events.id AS event_id, generation_id AS event_generation_id, \
                 account_id AS event_account_id, callback_url AS url, destination, \
                 payload, created_at AS event_created_at, round_attempts) \
         SELECT l.*, g.id IS NOT NULL AS has_generation, {} \
         FROM leased l LEFT JOIN generations g \
             ON l.payload = '' AND g.id = l.event_generation_id",
            GENERATION_COLUMNS
                .split(", ")
                .map(|column| format!("g.{column}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    let lease_params: [Param<'_>; 6] = [
        &owner,
        &lease_until,
        &now,
        &per_destination,
        &destinations,
        &open,
    ];
    let leasing = query(c, &SQL, &lease_params);
    // Polled together, so sent one after the other without waiting for each other's answers.
    let (_, _, leased) = futures::try_join!(planned, locked, leasing)?;
    leased
        .iter()
        .map(|r| {
            let generation_id = GenerationId(get(r, "event_generation_id")?);
            let g = if get(r, "has_generation")? {
                Some(generation(r)?)
            } else {
                None
            };
            Ok(DueDelivery {
                event_id: get(r, "event_id")?,
                generation_id,
                account_id: AccountId(get(r, "event_account_id")?),
                url: get(r, "url")?,
                destination: get(r, "destination")?,
                payload: body(generation_id, get(r, "payload")?, g)?,
                created_at: get(r, "event_created_at")?,
                round_attempts: unsigned::<i32, _>(r, "round_attempts")?,
            })
        })
        .collect()
}

/// A batch's attempts in one statement (one round trip, one commit, no transaction around
/// it): the events' rows are locked first, in id order (`mine`: still pending under the
/// attempt's lease), then each is numbered and moved on only when it is `mine` (its outcome,
/// a new due time, the lease let go), and each attempt is logged under its number whatever
/// the lease. An event appears at most once: a statement changes a row once. Planned for each
/// batch ([`query_planned`]): a cached plan made while `events` was small joins the ids to the
/// whole table.
const RECORD_ATTEMPTS: &str = "WITH input AS MATERIALIZED ( \
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int4[], \
             $5::text[], $6::timestamptz[], $7::text[], $8::timestamptz[], $9::int8[], \
             $10::text[], $11::text[], $12::text[]) \
         AS i(event_id, owner, started_at, status_code, next_state, next_at, reason, \
             delivered, duration_ms, outcome, body, error)), \
     locked AS MATERIALIZED ( \
         SELECT e.id, e.state = 'pending' AND e.lease_owner IS NOT DISTINCT FROM i.owner AS mine \
         FROM events e JOIN input i ON e.id = i.event_id ORDER BY e.id FOR UPDATE OF e), \
     numbered AS ( \
         UPDATE events e SET total_attempts = e.total_attempts + 1, \
             last_attempt_at = i.started_at, last_status_code = i.status_code, \
             state = CASE WHEN l.mine THEN i.next_state ELSE e.state END, \
             next_attempt_at = CASE WHEN l.mine THEN i.next_at ELSE e.next_attempt_at END, \
             failure_reason = CASE WHEN l.mine THEN i.reason ELSE e.failure_reason END, \
             delivered_at = CASE WHEN l.mine THEN i.delivered ELSE e.delivered_at END, \
             round_attempts = e.round_attempts + CASE WHEN l.mine THEN 1 ELSE 0 END, \
             lease_owner = CASE WHEN l.mine THEN NULL ELSE e.lease_owner END \
         FROM locked l JOIN input i ON i.event_id = l.id WHERE e.id = l.id \
         RETURNING e.id, e.total_attempts AS number, l.mine), \
     logged AS ( \
         INSERT INTO delivery_attempts (event_id, number, started_at, duration_ms, outcome, \
             status_code, response_body, error) \
         SELECT n.id, n.number, i.started_at, i.duration_ms, i.outcome, i.status_code, i.body, \
             i.error \
         FROM numbered n JOIN input i ON i.event_id = n.id) \
     SELECT id, mine FROM numbered";

/// An attempt's record: committed with the others that arrive with it, in one statement.
pub(super) struct RecordAttempt(AttemptRecord);

impl Write for RecordAttempt {
    type Done = bool;
    type LockOrder = String;

    fn lock_order(&self) -> String {
        self.0.event_id.clone()
    }

    /// The first attempt of each event in the batch; another of the same event waits for
    /// [`Write::run_all`].
    fn run_alone<'a>(
        writes: &'a [&'a Self],
        c: &'a Client,
    ) -> BoxFuture<'a, StoreResult<Vec<Option<bool>>>> {
        Box::pin(first_of_each(writes, move |taken| {
            let taken: Vec<&AttemptRecord> = taken.into_iter().map(|w| &w.0).collect();
            async move { record_attempts(&***c, &taken).await }
        }))
    }

    fn run_all<'a>(
        writes: Vec<&'a Self>,
        tx: &'a Transaction<'a>,
    ) -> BoxFuture<'a, Vec<StoreResult<bool>>> {
        pipelined(writes, move |w| {
            Box::pin(async move {
                let recorded = record_attempts(&**tx, &[&w.0]).await?;
                recorded
                    .get(&w.0.event_id)
                    .copied()
                    .ok_or(StoreError::NotFound)
            })
        })
    }
}

/// Records `attempts` (one per event) in one statement: whether each was still the event's
/// lease holder's, by event id. An event that does not exist has no answer.
async fn record_attempts(
    c: &(impl tokio_postgres::GenericClient + Sync),
    attempts: &[&AttemptRecord],
) -> StoreResult<HashMap<String, bool>> {
    if attempts.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<&str> = attempts.iter().map(|a| a.event_id.as_str()).collect();
    let owners: Vec<&str> = attempts.iter().map(|a| a.owner.as_str()).collect();
    let started: Vec<OffsetDateTime> = attempts.iter().map(|a| a.started_at).collect();
    let statuses: Vec<Option<i32>> = attempts
        .iter()
        .map(|a| a.status_code.map(i32::from))
        .collect();
    let afters: Vec<_> = attempts
        .iter()
        .map(|a| after(&a.next, a.started_at))
        .collect();
    let states: Vec<&str> = afters.iter().map(|a| a.0).collect();
    let next_at: Vec<Option<OffsetDateTime>> = afters.iter().map(|a| a.1).collect();
    let reasons: Vec<Option<&str>> = afters.iter().map(|a| a.2).collect();
    let delivered: Vec<Option<OffsetDateTime>> = afters.iter().map(|a| a.3).collect();
    let durations: Vec<i64> = attempts
        .iter()
        .map(|a| i64::try_from(a.duration_ms).unwrap_or(i64::MAX))
        .collect();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    let bodies: Vec<Option<&str>> = attempts
        .iter()
        .map(|a| a.response_body.as_deref())
        .collect();
    let errors: Vec<Option<&str>> = attempts.iter().map(|a| a.error.as_deref()).collect();
    query_planned(
        c,
        RECORD_ATTEMPTS,
        &[
            (&ids, Type::TEXT_ARRAY),
            (&owners, Type::TEXT_ARRAY),
            (&started, Type::TIMESTAMPTZ_ARRAY),
            (&statuses, Type::INT4_ARRAY),
            (&states, Type::TEXT_ARRAY),
            (&next_at, Type::TIMESTAMPTZ_ARRAY),
            (&reasons, Type::TEXT_ARRAY),
            (&delivered, Type::TIMESTAMPTZ_ARRAY),
            (&durations, Type::INT8_ARRAY),
            (&outcomes, Type::TEXT_ARRAY),
            (&bodies, Type::TEXT_ARRAY),
            (&errors, Type::TEXT_ARRAY),
        ],
    )
    .await?
    .iter()
    .map(|row| Ok((get(row, "id")?, get(row, "mine")?)))
    .collect()
}

/// The event's state after an attempt that is still its lease holder's: the state, when it
/// is due again, why it failed, and when it was delivered.
fn after(
    next: &AfterAttempt,
    started_at: OffsetDateTime,
) -> (
    &'static str,
    Option<OffsetDateTime>,
    Option<&str>,
    Option<OffsetDateTime>,
) {
    match next {
        AfterAttempt::Delivered => ("delivered", None, None, Some(started_at)),
        AfterAttempt::RetryAt(at) => ("pending", Some(*at), None, None),
        AfterAttempt::Failed(reason) => ("failed", None, Some(reason.as_str()), None),
    }
}

/// The columns a new round resets.
const NEW_ROUND: &str = "state = 'pending', round_attempts = 0, next_attempt_at = $2, \
    lease_owner = NULL, failure_reason = NULL, delivered_at = NULL";

/// In a transaction: the event row is locked before the decision, so the answer is about the
/// row the new round starts from.
async fn redeliver(
    c: &impl GenericClient,
    generation: GenerationId,
    now: OffsetDateTime,
) -> StoreResult<Redelivery> {
    let lock = "SELECT id, state FROM events WHERE generation_id = $1 FOR UPDATE";
    let Some(row) = query_opt(c, lock, &[&generation.0]).await? else {
        return Ok(Redelivery::NotFinished);
    };
    let id: String = get(&row, "id")?;
    match parsed::<DeliveryState>(&row, "state")? {
        DeliveryState::None => return Ok(Redelivery::NoCallback),
        DeliveryState::Pending => return Ok(Redelivery::AlreadyPending),
        DeliveryState::Delivered | DeliveryState::Failed => {}
    }
    let start = format!("UPDATE events SET {NEW_ROUND} WHERE id = $1");
    execute(c, &start, &[&id, &now]).await?;
    Ok(Redelivery::Started { webhook_id: id })
}

#[async_trait]
impl DeliveryStore for PgStore {
    async fn event_for(&self, generation: GenerationId) -> StoreResult<Option<Event>> {
        event_for(&self.conn().await?, generation).await
    }

    async fn due_for_destination(
        &self,
        destination: &str,
        from: Option<OffsetDateTime>,
        limit: usize,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<DueAt>> {
        due_for_destination(&self.conn().await?, destination, from, limit, now).await
    }

    async fn scan_due(
        &self,
        now: OffsetDateTime,
        after: Option<String>,
        skip: Vec<String>,
        per_destination: usize,
        limit: usize,
    ) -> StoreResult<Vec<DueRef>> {
        let c = self.conn().await?;
        scan_due(&c, now, after.as_deref(), &skip, per_destination, limit).await
    }

    async fn lease_deliveries(
        &self,
        owner: &str,
        event_ids: Vec<String>,
        sending: HashMap<String, usize>,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<DueDelivery>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let per_destination = i64::try_from(self.per_destination).unwrap_or(i64::MAX);
        let listed_until = lease_until + LISTED_BEYOND_LEASE;
        let relist = self
            .listed
            .until(owner)
            .is_none_or(|until| until < lease_until);
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(backend)?;
        if relist {
            list_owner(&tx, owner, listed_until, now).await?;
        }
        let leased = lease(
            &tx,
            owner,
            &event_ids,
            &sending,
            per_destination,
            lease_until,
            now,
        )
        .await?;
        tx.commit().await.map_err(backend)?;
        if relist {
            self.listed.set(owner, listed_until);
        }
        Ok(leased)
    }

    async fn record_attempt(&self, attempt: AttemptRecord) -> StoreResult<bool> {
        self.attempts.run(&self.pool, RecordAttempt(attempt)).await
    }

    async fn release_delivery(
        &self,
        event_id: &str,
        owner: &str,
        at: OffsetDateTime,
    ) -> StoreResult<()> {
        execute(
            &self.conn().await?,
            "UPDATE events SET next_attempt_at = $3, lease_owner = NULL \
             WHERE id = $1 AND state = 'pending' AND lease_owner = $2",
            &[&event_id, &owner, &at],
        )
        .await
        .map(drop)
    }

    /// Also takes `owner` off `lease_owners`: it holds nothing now, and if it leases again it
    /// lists itself again first.
    async fn release_delivery_leases(&self, owner: &str, now: OffsetDateTime) -> StoreResult<u64> {
        let c = self.conn().await?;
        let released = execute(
            &c,
            "UPDATE events SET next_attempt_at = LEAST(created_at, $1), lease_owner = NULL \
             WHERE state = 'pending' AND lease_owner = $2",
            &[&now, &owner],
        )
        .await?;
        self.listed.forget(owner);
        execute(&c, "DELETE FROM lease_owners WHERE owner = $1", &[&owner]).await?;
        Ok(released)
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<OffsetDateTime>> {
        let row = query_one(
            &self.conn().await?,
            "SELECT MIN(next_attempt_at) AS next FROM events WHERE state = 'pending'",
            &[],
        )
        .await?;
        get(&row, "next")
    }

    async fn attempts(&self, event_id: &str) -> StoreResult<Vec<Attempt>> {
        query(
            &self.conn().await?,
            "SELECT number, started_at, duration_ms, outcome, status_code, response_body, \
                 error \
             FROM delivery_attempts WHERE event_id = $1 ORDER BY number",
            &[&event_id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(Attempt {
                number: unsigned::<i32, _>(r, "number")?,
                started_at: get(r, "started_at")?,
                duration_ms: unsigned::<i64, _>(r, "duration_ms")?,
                outcome: parsed(r, "outcome")?,
                status_code: status_code(r, "status_code")?,
                response_body: get(r, "response_body")?,
                error: get(r, "error")?,
            })
        })
        .collect()
    }

    async fn redeliver(
        &self,
        generation: GenerationId,
        now: OffsetDateTime,
    ) -> StoreResult<Redelivery> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await.map_err(backend)?;
        let answer = redeliver(&tx, generation, now).await?;
        tx.commit().await.map_err(backend)?;
        Ok(answer)
    }

    async fn redeliver_failed(
        &self,
        account: AccountId,
        since: OffsetDateTime,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<u64> {
        let sql = format!(
            "UPDATE events SET {NEW_ROUND} \
             WHERE account_id = $1 AND state = 'failed' AND created_at >= $3 \
                 AND created_at < $4"
        );
        execute(
            &self.conn().await?,
            &sql,
            &[&account.0, &now, &since, &until],
        )
        .await
    }

    async fn delivery_counts(&self, now: OffsetDateTime) -> StoreResult<DeliveryCounts> {
        let row = query_one(
            &self.conn().await?,
            "SELECT COUNT(*) FILTER (WHERE lease_owner IS NOT NULL OR next_attempt_at <= $1) \
                 AS due, \
             COUNT(*) FILTER (WHERE lease_owner IS NULL AND next_attempt_at > $1) \
                 AS scheduled, \
             (SELECT COUNT(*) FROM events WHERE state = 'failed') AS failed \
             FROM events WHERE state = 'pending'",
            &[&now],
        )
        .await?;
        Ok(DeliveryCounts {
            due: unsigned::<i64, _>(&row, "due")?,
            scheduled: unsigned::<i64, _>(&row, "scheduled")?,
            failed: unsigned::<i64, _>(&row, "failed")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::{PgStore, TestDatabase};

    /// A lease asked for a delivery that another node leased after this node heard of it
    /// leaves that delivery's row unlocked, so the other node records its attempt without
    /// waiting for this lease to commit; and a lease that finds nothing due takes no
    /// destination's lock.
    #[tokio::test]
    async fn a_lease_leaves_alone_what_another_node_has_leased() {
        let db = TestDatabase::create().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        let mut other = store.conn().await.unwrap();
        let now = time::macros::datetime!(2030-06-01 00:00 UTC);
        other
            .execute(
                "INSERT INTO events (id, generation_id, account_id, callback_url, destination, \
                     payload, created_at, state, next_attempt_at, lease_owner) \
                 SELECT id, gen_random_uuid(), gen_random_uuid(), 'https://r.example/hook', \
                     'https://r.example:443', '{}', $1::timestamptz, 'pending', $1::timestamptz + ahead, owner \
                 FROM (VALUES ('taken', interval '1 minute', 'b'), \
                              ('free', interval '-1 second', NULL)) AS v (id, ahead, owner)",
                &[&now],
            )
            .await
            .unwrap();
        let row_free = "SELECT id FROM events WHERE id = 'taken' FOR UPDATE NOWAIT";
        let destination_free =
            "SELECT pg_try_advisory_xact_lock(hashtextextended('https://r.example:443', 0))";
        let until = now + time::Duration::minutes(1);
        let mut a = store.conn().await.unwrap();
        for (asked, expected) in [
            (vec!["taken", "free"], vec!["free"]),
            (vec!["taken"], vec![]),
        ] {
            let asked: Vec<String> = asked.into_iter().map(String::from).collect();
            let tx = a.transaction().await.unwrap();
            let leased = lease(&tx, "a", &asked, &HashMap::new(), 64, until, now)
                .await
                .unwrap();
            let leased: Vec<&str> = leased.iter().map(|d| d.event_id.as_str()).collect();
            assert_eq!(leased, expected, "leased when asked for {asked:?}");
            // The lease is still open: the other node's record of `taken` does not wait.
            let locked = other.query(row_free, &[]).await;
            assert!(
                locked.is_ok(),
                "{asked:?}: the row of a delivery leased by another node was locked: {locked:?}"
            );
            let other_tx = other.transaction().await.unwrap();
            let free: bool = other_tx
                .query_one(destination_free, &[])
                .await
                .unwrap()
                .get(0);
            other_tx.rollback().await.unwrap();
            assert_eq!(
                free,
                expected.is_empty(),
                "{asked:?}: the destination's lock taken"
            );
            tx.rollback().await.unwrap();
        }
    }

    /// Adds pending deliveries `e{from}..e{from + n}` to one destination, all due.
    async fn fill(c: &tokio_postgres::Client, from: i32, n: i32) {
        c.execute(
            "INSERT INTO events (id, generation_id, account_id, callback_url, destination, \
                 payload, created_at, state, next_attempt_at) \
             SELECT 'e' || i, gen_random_uuid(), gen_random_uuid(), 'https://r.example/hook', \
                 'https://r.example:443', '{}', timestamptz '2030-01-01', 'pending', \
                 timestamptz '2030-01-01' + i * interval '1 ms' \
             FROM generate_series($1::integer, $1::integer + $2::integer - 1) AS i",
            &[&from, &n],
        )
        .await
        .unwrap();
    }

    /// The rows of `events` a lease of 64 deliveries and the batch of their attempts read, in
    /// a transaction rolled back.
    async fn rows_read_by_a_batch(c: &mut deadpool_postgres::Object, of: i32) -> i64 {
        let now = time::macros::datetime!(2030-06-01 00:00 UTC);
        let asked: Vec<String> = (0..64).map(|k| format!("e{}", k * (of / 64))).collect();
        let tx = c.transaction().await.unwrap();
        // Counted from here: the counters also hold what earlier transactions read.
        let before = events_rows_read(&tx).await;
        let leased = lease(&tx, "a", &asked, &HashMap::new(), 64, now, now)
            .await
            .unwrap();
        assert_eq!(leased.len(), 64, "leased all it asked for");
        let records: Vec<AttemptRecord> = leased
            .iter()
            .map(|d| AttemptRecord {
                event_id: d.event_id.clone(),
                owner: "a".into(),
                started_at: now,
                duration_ms: 1,
                outcome: reelay_core::retry::AttemptOutcome::Delivered,
                status_code: Some(200),
                response_body: None,
                error: None,
                next: AfterAttempt::Delivered,
            })
            .collect();
        let recorded = record_attempts(&*tx, &records.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        assert!(
            recorded.values().all(|mine| *mine),
            "each attempt under its lease"
        );
        let read = events_rows_read(&tx).await - before;
        tx.rollback().await.unwrap();
        read
    }

    /// The rows of `events` this connection has read (fetched by an index or read by a
    /// sequential scan) and not yet added to the server's statistics.
    async fn events_rows_read(c: &impl GenericClient) -> i64 {
        c.query_one(
            "SELECT seq_tup_read + COALESCE(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables \
             WHERE relname = 'events'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    }

    /// A lease and a batch of attempt records look up the rows they name whatever the size of
    /// the table: with 6,400 events they read no more of its rows than with 256 (at most
    /// twice as many; read whole, 25 times as many).
    #[tokio::test]
    async fn a_batch_reads_as_many_rows_of_a_larger_table() {
        let db = TestDatabase::create().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        let mut c = store.conn().await.unwrap();
        fill(&c, 0, 256).await;
        let small = rows_read_by_a_batch(&mut c, 256).await;
        fill(&c, 256, 6_144).await;
        let big = rows_read_by_a_batch(&mut c, 6_400).await;
        assert!(
            big <= small * 2,
            "rows of events read by a batch of 64: {small} of 256, {big} of 6,400"
        );
    }
}
