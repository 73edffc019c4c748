//! Generations: creation with its charge, the queue under `SKIP LOCKED` claims, and the
//! terminal transition with its refund and outbox event, each one transaction that locks the
//! rows it changes, so that nodes racing on one database never share a lease, charge past a
//! balance or refund twice.

use std::sync::LazyLock;

use async_trait::async_trait;
use deadpool_postgres::{Client, GenericClient, Transaction};
use futures::future::BoxFuture;
use reelay_core::destination::destination_key;
use reelay_core::{AccountId, FailureCode, GenerationId, GenerationStatus};
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::batch::{Write, first_of_each, pipelined};
use super::rows::{GENERATION_COLUMNS, generation, get as column};
use super::sql::{Param, execute, query, query_one, query_opt, query_planned};
use super::{PgStore, backend, balances};
use crate::*;

/// One generation, read on any client (a pooled connection or a transaction).
pub(super) async fn get(
    c: &impl GenericClient,
    id: GenerationId,
) -> StoreResult<Option<Generation>> {
    let sql = format!("SELECT {GENERATION_COLUMNS} FROM generations WHERE id = $1");
    query_opt(c, &sql, &[&id.0])
        .await?
        .as_ref()
        .map(generation)
        .transpose()
}

async fn generations(
    c: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
) -> StoreResult<Vec<Generation>> {
    query(c, sql, params)
        .await?
        .iter()
        .map(generation)
        .collect()
}

/// A create without an idempotency key: committed with the others that arrive with it.
pub(super) struct Create(NewGeneration);

impl Write for Create {
    type Done = Created;
    /// Charges lock balance stripes: every batch takes them in account order.
    type LockOrder = AccountId;

    fn lock_order(&self) -> AccountId {
        self.0.account_id
    }

    /// The batch's creates whose account's stripe covers all of its creates in the batch,
    /// the usual case: one statement, one round trip, so the stripe is held only while it
    /// runs and its commit flushes. The rest, in a transaction, take each create in turn
    /// while the whole balance covers it.
    fn run_alone<'a>(
        writes: &'a [&'a Self],
        c: &'a Client,
    ) -> BoxFuture<'a, StoreResult<Vec<Option<Created>>>> {
        Box::pin(charge_stripe(c, writes))
    }

    fn run_all<'a>(
        writes: Vec<&'a Self>,
        tx: &'a Transaction<'a>,
    ) -> BoxFuture<'a, Vec<StoreResult<Created>>> {
        Box::pin(async move {
            let n = writes.len();
            create_all(writes, tx)
                .await
                .unwrap_or_else(|e| vec![Err(e); n])
        })
    }
}

/// Charges `writes`, per account, to one stripe picked at random, for each account whose
/// stripe covers the whole of its creates, and inserts those: one statement. `None` for each
/// create it left (a stripe short of the total, no such account, a negative price).
async fn charge_stripe(
    c: &impl GenericClient,
    writes: &[&Create],
) -> StoreResult<Vec<Option<Created>>> {
    let creates: Vec<&NewGeneration> = writes
        .iter()
        .map(|Create(new)| new)
        .filter(|new| new.price >= Credits::ZERO)
        .collect();
    let charged = if creates.is_empty() {
        Vec::new()
    } else {
        insert(c, &creates, Some(balances::stripe())).await?
    };
    Ok(writes
        .iter()
        .map(|Create(new)| {
            (new.price >= Credits::ZERO && charged.contains(&new.account_id))
                .then(|| Created::made(new.clone()))
        })
        .collect())
}

async fn create(store: &PgStore, new: NewGeneration) -> StoreResult<Created> {
    let Some(idem) = new.idempotency.clone() else {
        return store.creates.run(&store.pool, Create(new)).await;
    };
    let mut conn = store.conn().await?;
    let mut tx = conn.transaction().await.map_err(backend)?;
    let account = new.account_id;
    // Creates with the same key queue here, on every node, so the second one sees the first
    // one's row instead of racing it to the insert.
    execute(
        &tx,
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("idempotency/{account}/{}", idem.key)],
    )
    .await?;
    let seen = query_opt(
        &tx,
        "SELECT request_hash, generation_id, created_at FROM idempotency_keys \
         WHERE account_id = $1 AND key = $2",
        &[&account.0, &idem.key],
    )
    .await?;
    if let Some(row) = seen {
        let created_at: OffsetDateTime = column(&row, "created_at")?;
        if created_at >= idem.not_before {
            let hash: &[u8] = column(&row, "request_hash")?;
            if hash != &idem.request_hash[..] {
                return Err(StoreError::IdempotencyConflict);
            }
            let id = GenerationId(column(&row, "generation_id")?);
            let generation = get(&tx, id).await?.ok_or(StoreError::NotFound)?;
            return Ok(Created {
                generation,
                replayed: true,
            });
        }
        execute(
            &tx,
            "DELETE FROM idempotency_keys WHERE account_id = $1 AND key = $2",
            &[&account.0, &idem.key],
        )
        .await?;
    }
    let write = Create(new);
    // The stripe's lock goes with the savepoint when the stripe falls short: held on while
    // `create_all` locks all the stripes in order, it could deadlock against another create
    // that holds the stripes before it.
    let stripe = tx.savepoint("stripe").await.map_err(backend)?;
    let created = match charge_stripe(&stripe, &[&write]).await?.pop().flatten() {
        Some(created) => {
            stripe.commit().await.map_err(backend)?;
            created
        }
        None => {
            stripe.rollback().await.map_err(backend)?;
            create_all(vec![&write], &tx)
                .await?
                .pop()
                .ok_or_else(|| StoreError::Backend("a create lost its answer".into()))??
        }
    };
    let Create(new) = &write;
    execute(
        &tx,
        "INSERT INTO idempotency_keys (account_id, key, request_hash, generation_id, \
             created_at) VALUES ($1, $2, $3, $4, $5)",
        &[
            &account.0,
            &idem.key,
            &&idem.request_hash[..],
            &new.id.0,
            &new.created_at,
        ],
    )
    .await?;
    tx.commit().await.map_err(backend)?;
    Ok(created)
}

/// Inserts a batch's generations (each pending, or processing under its [`Start`]) with their
/// charges in the ledger, in one statement, for the accounts `{charged}` names; returns those
/// accounts. [`CHARGE_STRIPE`] charges the batch there and then; [`PAID`] says the caller
/// already took it off the balance.
const INSERT: &str = "WITH made AS ( \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], \
             $6::text[], $7::bigint[], $8::text[], $9::text[], $10::timestamptz[], \
             $11::timestamptz[], $12::text[], $13::text[], $14::text[], $15::timestamptz[]) \
         AS m(id, account_id, price, prompt, model, aspect_ratio, seed, watermark_text, \
             callback_url, created_at, deadline_at, inputs, destination, lease_owner, \
             lease_until)), \
     totals AS (SELECT account_id, SUM(price) AS total FROM made GROUP BY account_id), \
     {charged}, \
     inserted AS ( \
         INSERT INTO generations (id, account_id, status, prompt, model, aspect_ratio, seed, \
             watermark_text, callback_url, destination, price, created_at, deadline_at, \
             inputs, lease_owner, lease_until, started_at, claims) \
         SELECT id, account_id, \
             CASE WHEN lease_owner IS NULL THEN 'pending' ELSE 'processing' END, prompt, \
             model, aspect_ratio, seed, watermark_text, callback_url, destination, price, \
             created_at, deadline_at, inputs, lease_owner, lease_until, \
             CASE WHEN lease_owner IS NULL THEN NULL ELSE created_at END, \
             CASE WHEN lease_owner IS NULL THEN 0 ELSE 1 END FROM made \
         WHERE account_id IN (SELECT id FROM charged)), \
     ledger AS ( \
         INSERT INTO ledger (account_id, generation_id, kind, amount, created_at) \
         SELECT account_id, id, 'charge', -price, created_at FROM made \
         WHERE account_id IN (SELECT id FROM charged)) \
     SELECT id FROM charged";

/// Stripe `$16` of each account, locked in account order (so two batches never deadlock) and
/// read as committed last, less the account's total for each stripe that covers it.
const CHARGE_STRIPE: &str = "locked AS MATERIALIZED ( \
         SELECT account_id, balance FROM balance_stripes \
         WHERE account_id IN (SELECT account_id FROM totals) AND stripe = $16 \
         ORDER BY account_id FOR NO KEY UPDATE), \
     covered AS MATERIALIZED ( \
         SELECT l.account_id, t.total FROM locked l JOIN totals t USING (account_id) \
         WHERE l.balance >= t.total), \
     charged AS ( \
         UPDATE balance_stripes s SET balance = s.balance - c.total FROM covered c \
         WHERE s.account_id = c.account_id AND s.stripe = $16 RETURNING s.account_id AS id)";

/// Every account of the batch, charged already.
const PAID: &str = "charged AS (SELECT account_id AS id FROM totals)";

/// [`INSERT`] for `creates`: charged to `stripe`, or paid already when `None`. The accounts
/// it charged (or, paid, all of them).
pub(super) async fn insert(
    c: &impl GenericClient,
    creates: &[&NewGeneration],
    stripe: Option<i16>,
) -> StoreResult<Vec<AccountId>> {
    static CHARGING: LazyLock<String> =
        LazyLock::new(|| INSERT.replace("{charged}", CHARGE_STRIPE));
    static PAYING: LazyLock<String> = LazyLock::new(|| INSERT.replace("{charged}", PAID));
    let ids: Vec<Uuid> = creates.iter().map(|n| n.id.0).collect();
    let owners: Vec<Uuid> = creates.iter().map(|n| n.account_id.0).collect();
    let prices: Vec<i64> = creates.iter().map(|n| n.price.units()).collect();
    let prompts: Vec<&str> = creates.iter().map(|n| n.spec.prompt.as_str()).collect();
    let models: Vec<&str> = creates.iter().map(|n| n.spec.model.as_str()).collect();
    let ratios: Vec<&str> = creates
        .iter()
        .map(|n| n.spec.aspect_ratio.as_str())
        .collect();
    let seeds: Vec<i64> = creates.iter().map(|n| i64::from(n.spec.seed)).collect();
    let marks: Vec<Option<&str>> = creates
        .iter()
        .map(|n| n.spec.watermark_text.as_deref())
        .collect();
    let callbacks: Vec<Option<&str>> = creates
        .iter()
        .map(|n| n.spec.callback_url.as_deref())
        .collect();
    let created: Vec<OffsetDateTime> = creates.iter().map(|n| n.created_at).collect();
    let deadlines: Vec<OffsetDateTime> = creates.iter().map(|n| n.deadline_at).collect();
    let inputs: Vec<String> = creates
        .iter()
        .map(|n| InputFile::join(&n.spec.inputs))
        .collect();
    let destinations: Vec<Option<String>> = creates
        .iter()
        .map(|n| n.spec.callback_url.as_deref().and_then(destination_key))
        .collect();
    let lease_owners: Vec<Option<&str>> = creates
        .iter()
        .map(|n| n.start.as_ref().map(|s| s.owner.as_str()))
        .collect();
    let leases_until: Vec<Option<OffsetDateTime>> = creates
        .iter()
        .map(|n| n.start.as_ref().map(|s| s.until))
        .collect();
    let mut params: Vec<Param<'_>> = vec![
        &ids,
        &owners,
        &prices,
        &prompts,
        &models,
        &ratios,
        &seeds,
        &marks,
        &callbacks,
        &created,
        &deadlines,
        &inputs,
        &destinations,
        &lease_owners,
        &leases_until,
    ];
    let sql: &str = match &stripe {
        Some(stripe) => {
            params.push(stripe);
            &CHARGING
        }
        None => &PAYING,
    };
    query(c, sql, &params)
        .await?
        .iter()
        .map(|row| column(row, "id").map(AccountId))
        .collect()
}

/// The creates [`charge_stripe`] left, in three statements: the accounts' stripes are all
/// locked (in account order) and read, each create is taken in order while its account's
/// balance covers it, what is left of each balance is spread over its stripes again, and the
/// creates taken are inserted together. One statement per create would cost the database a
/// plan and, for one busy account, a walk along the balance rows' versions that grows with
/// every update in the batch.
async fn create_all(
    writes: Vec<&Create>,
    tx: &Transaction<'_>,
) -> StoreResult<Vec<StoreResult<Created>>> {
    let mut accounts: Vec<Uuid> = writes.iter().map(|w| w.0.account_id.0).collect();
    accounts.dedup(); // in lock order, so sorted by account
    let mut balances = balances::lock(tx, &accounts).await?;
    let mut taken = Vec::with_capacity(writes.len());
    let answers = writes
        .into_iter()
        .map(|Create(new)| {
            let price = new.price.units();
            if price < 0 {
                return Err(StoreError::Backend(format!("negative price {}", new.price)));
            }
            let balance = balances
                .get_mut(&new.account_id.0)
                .ok_or(StoreError::NotFound)?;
            if *balance < price {
                return Err(StoreError::InsufficientCredits);
            }
            *balance -= price;
            taken.push(new);
            Ok(Created::made(new.clone()))
        })
        .collect();
    if !taken.is_empty() {
        balances::spread(tx, &balances).await?;
        insert(tx, &taken, None).await?;
    }
    Ok(answers)
}

/// A claim in one statement: the oldest pending generations and the lapsed leases, each read
/// in its own index's order and bounded by the limit, locked with `SKIP LOCKED` so that nodes
/// claiming at once take different rows instead of waiting for each other, then the oldest
/// `limit` of them taken. `{pending}` and `{lapsed}` are the two reads ([`ANY_MODEL`],
/// [`PER_MODEL`]).
///
/// The reads are written so that walking an index in order is their only sensible plan,
/// whatever the statistics say: a queue filled by a burst is far larger than the statistics
/// of a minute ago, and a plan made with those read and sorted every pending generation for
/// each claim (seen in the `queue` benchmark at 20,000 pending). So the deadline is checked
/// on each row read (`+ interval '0 s'` keeps it off `generations_running`, the index a
/// bitmap plan would combine), and a worker's models are read one model at a time, each in
/// `generations_pending_by_model`'s order, instead of all at once and sorted.
const CLAIM: &str = "WITH pending AS ({pending}), lapsed AS ({lapsed}), \
     picked AS MATERIALIZED ( \
         SELECT id AS picked_id FROM (SELECT * FROM pending UNION ALL SELECT * FROM lapsed) c \
         ORDER BY created_at, id LIMIT $2) \
     UPDATE generations SET status = 'processing', started_at = $1, progress_pct = 0, \
         lease_owner = $3, lease_until = $4, claims = claims + 1 \
     FROM picked WHERE id = picked_id \
     RETURNING {columns}";

/// The reads of a claim of any model.
const ANY_MODEL: [&str; 2] = [
    "SELECT id, created_at FROM generations \
     WHERE status = 'pending' AND deadline_at + interval '0 s' > $1 \
     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    "SELECT id, created_at FROM generations \
     WHERE status = 'processing' AND lease_until < $1 AND deadline_at + interval '0 s' > $1 \
     ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED",
];

/// The reads of a claim of the models in `$5`, one model at a time.
const PER_MODEL: [&str; 2] = [
    "SELECT g.id, g.created_at FROM unnest($5::text[]) AS wanted (model) \
     CROSS JOIN LATERAL ( \
         SELECT id, created_at FROM generations \
         WHERE status = 'pending' AND model = wanted.model \
             AND deadline_at + interval '0 s' > $1 \
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED) g",
    "SELECT g.id, g.created_at FROM unnest($5::text[]) AS wanted (model) \
     CROSS JOIN LATERAL ( \
         SELECT id, created_at FROM generations \
         WHERE status = 'processing' AND model = wanted.model AND lease_until < $1 \
             AND deadline_at + interval '0 s' > $1 \
         ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED) g",
];

fn claim_sql([pending, lapsed]: [&str; 2]) -> String {
    CLAIM
        .replace("{pending}", pending)
        .replace("{lapsed}", lapsed)
        .replace("{columns}", GENERATION_COLUMNS)
}

static CLAIM_ANY: LazyLock<String> = LazyLock::new(|| claim_sql(ANY_MODEL));
static CLAIM_SOME: LazyLock<String> = LazyLock::new(|| claim_sql(PER_MODEL));

/// A claim's statement and its parameters: of any model, or of `models`.
fn claim_statement<'a>(
    now: &'a OffsetDateTime,
    limit: &'a i64,
    owner: &'a &str,
    lease_until: &'a OffsetDateTime,
    models: &'a Option<Vec<String>>,
) -> (&'static str, Vec<(Param<'a>, Type)>) {
    let mut params: Vec<(Param<'a>, Type)> = vec![
        (now, Type::TIMESTAMPTZ),
        (limit, Type::INT8),
        (owner, Type::TEXT),
        (lease_until, Type::TIMESTAMPTZ),
    ];
    let sql: &'static str = match models {
        None => &CLAIM_ANY,
        Some(models) => {
            params.push((models, Type::TEXT_ARRAY));
            &CLAIM_SOME
        }
    };
    (sql, params)
}

async fn claim(
    store: &PgStore,
    owner: &str,
    limit: usize,
    models: Option<Vec<String>>,
    lease_until: OffsetDateTime,
    now: OffsetDateTime,
) -> StoreResult<Vec<Generation>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let conn = store.conn().await?;
    let (sql, params) = claim_statement(&now, &limit, &owner, &lease_until, &models);
    // Planned each time: the queue is the table that grows fastest.
    let mut claimed = query_planned(&**conn, sql, &params)
        .await?
        .iter()
        .map(generation)
        .collect::<StoreResult<Vec<_>>>()?;
    claimed.sort_unstable_by_key(|g| (g.created_at, g.id));
    Ok(claimed)
}

/// Terminal transitions in one statement (one round trip, one commit), one per generation:
/// the rows are locked first, in id order, so two statements never deadlock on them. Each
/// generation ends only from pending or processing, and only under its finish's lease when one
/// is named (a finish racing another waits for the row lock, then finds the status changed);
/// its refund is written when its code is refunded, into the account's balance stripe `$11`
/// (the ledger's unique index refuses a second, and a balance past the largest bigint fails
/// the whole statement, so nothing is half written); and its outbox event is inserted, due at
/// once when it has a callback. Refunds lock a stripe without an order among accounts, so a
/// statement that refunds holds one finish only. Planned for each batch ([`query_planned`]): a
/// cached plan made while `generations` was small joins the ids to the whole table.
const FINISH: &str = "WITH input AS MATERIALIZED ( \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], \
             $5::text[], $6::text[], $7::text[], $8::text[], $9::bool[], $10::text[]) \
         AS i(in_id, in_status, in_at, in_code, in_file, in_url, in_owner, in_reason, \
             in_refund, in_event)), \
     locked AS MATERIALIZED ( \
         SELECT g.id AS locked_id FROM generations g JOIN input i ON g.id = i.in_id \
         ORDER BY g.id FOR UPDATE OF g), \
     ended AS ( \
         UPDATE generations g SET status = in_status, completed_at = in_at, \
             failure_code = in_code, video_file = in_file, video_url = in_url, \
             progress_pct = CASE WHEN in_status = 'completed' THEN 100 ELSE progress_pct END, \
             ended_lease = COALESCE(in_owner, lease_owner), failure_reason = in_reason, \
             lease_owner = NULL, lease_until = NULL \
         FROM locked JOIN input ON in_id = locked_id \
         WHERE g.id = locked_id AND status IN ('pending', 'processing') \
             AND (in_owner IS NULL OR (status = 'processing' AND lease_owner = in_owner)) \
         RETURNING {columns}, destination, in_at, in_refund, in_event), \
     refund AS ( \
         INSERT INTO ledger (account_id, generation_id, kind, amount, created_at) \
         SELECT account_id, id, 'refund', price, in_at FROM ended WHERE in_refund \
         RETURNING account_id, amount), \
     refunded AS ( \
         UPDATE balance_stripes s SET balance = s.balance + refund.amount \
         FROM refund WHERE s.account_id = refund.account_id AND s.stripe = $11), \
     event AS ( \
         INSERT INTO events (id, generation_id, account_id, callback_url, destination, \
             created_at, state, next_attempt_at) \
         SELECT in_event, id, account_id, callback_url, destination, in_at, \
             CASE WHEN callback_url IS NULL THEN 'none' ELSE 'pending' END, \
             CASE WHEN callback_url IS NULL THEN NULL ELSE in_at END \
         FROM ended) \
     SELECT {columns} FROM ended";

/// A terminal transition. Without a refund it is committed with the others that arrive with
/// it, locking only its generation's row (and adding an outbox row). A refunded finish also
/// locks a balance stripe of its account, which creates lock in account order: it runs alone
/// rather than risk a deadlock against a create batch.
pub(super) struct Finish {
    id: GenerationId,
    owner: Option<String>,
    outcome: Outcome,
    now: OffsetDateTime,
}

impl Write for Finish {
    type Done = Finished;
    type LockOrder = GenerationId;

    fn lock_order(&self) -> GenerationId {
        self.id
    }

    /// The first finish of each generation in the batch; another of the same generation, and
    /// one the statement refused, go to [`Write::run_all`], which says why.
    fn run_alone<'a>(
        writes: &'a [&'a Self],
        c: &'a Client,
    ) -> BoxFuture<'a, StoreResult<Vec<Option<Finished>>>> {
        Box::pin(first_of_each(writes, move |taken| async move {
            let ended = end(&***c, &taken).await?;
            Ok(ended
                .into_iter()
                .map(|g| (g.id, Finished::Applied(g)))
                .collect())
        }))
    }

    fn run_all<'a>(
        writes: Vec<&'a Self>,
        tx: &'a Transaction<'a>,
    ) -> BoxFuture<'a, Vec<StoreResult<Finished>>> {
        pipelined(writes, move |w| Box::pin(finish_on(&**tx, w)))
    }
}

async fn finish(
    store: &PgStore,
    id: GenerationId,
    owner: Option<&str>,
    outcome: Outcome,
    now: OffsetDateTime,
) -> StoreResult<Finished> {
    let write = Finish {
        id,
        owner: owner.map(str::to_owned),
        outcome,
        now,
    };
    if write.outcome.refunded() {
        return finish_on(&**store.conn().await?, &write).await;
    }
    store.finishes.run(&store.pool, write).await
}

/// One finish: applied, or refused with the generation as it is.
async fn finish_on(
    c: &(impl tokio_postgres::GenericClient + Sync),
    write: &Finish,
) -> StoreResult<Finished> {
    if let Some(generation) = end(c, &[write]).await?.pop() {
        return Ok(Finished::Applied(generation));
    }
    let sql = format!("SELECT {GENERATION_COLUMNS} FROM generations WHERE id = $1");
    let rows = query_planned(c, &sql, &[(&write.id.0, Type::UUID)]).await?;
    let current = rows.first().ok_or(StoreError::NotFound)?;
    Ok(Finished::Refused(generation(current)?))
}

/// Runs `finishes` (one per generation, at most one refunded) in one statement: the
/// generations it ended.
async fn end(
    c: &(impl tokio_postgres::GenericClient + Sync),
    finishes: &[&Finish],
) -> StoreResult<Vec<Generation>> {
    if finishes.is_empty() {
        return Ok(Vec::new());
    }
    static SQL: LazyLock<String> =
        LazyLock::new(|| FINISH.replace("{columns}", GENERATION_COLUMNS));
    let columns: Vec<_> = finishes.iter().map(|f| f.outcome.columns()).collect();
    let ids: Vec<Uuid> = finishes.iter().map(|f| f.id.0).collect();
    let statuses: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let ended_at: Vec<OffsetDateTime> = finishes.iter().map(|f| f.now).collect();
    let codes: Vec<Option<&str>> = columns
        .iter()
        .map(|c| c.1.map(FailureCode::as_str))
        .collect();
    let files: Vec<Option<&str>> = columns
        .iter()
        .map(|c| c.3.map(|v| v.file.as_str()))
        .collect();
    let urls: Vec<Option<&str>> = columns
        .iter()
        .map(|c| c.3.map(|v| v.url.as_str()))
        .collect();
    let owners: Vec<Option<&str>> = finishes.iter().map(|f| f.owner.as_deref()).collect();
    let reasons: Vec<Option<&str>> = columns.iter().map(|c| c.2).collect();
    let refunds: Vec<bool> = finishes.iter().map(|f| f.outcome.refunded()).collect();
    let events: Vec<String> = finishes.iter().map(|f| event_id(f.id)).collect();
    let stripe = balances::stripe();
    query_planned(
        c,
        &SQL,
        &[
            (&ids, Type::UUID_ARRAY),
            (&statuses, Type::TEXT_ARRAY),
            (&ended_at, Type::TIMESTAMPTZ_ARRAY),
            (&codes, Type::TEXT_ARRAY),
            (&files, Type::TEXT_ARRAY),
            (&urls, Type::TEXT_ARRAY),
            (&owners, Type::TEXT_ARRAY),
            (&reasons, Type::TEXT_ARRAY),
            (&refunds, Type::BOOL_ARRAY),
            (&events, Type::TEXT_ARRAY),
            (&stripe, Type::INT2),
        ],
    )
    .await?
    .iter()
    .map(generation)
    .collect()
}

#[async_trait]
impl GenerationStore for PgStore {
    fn announce_work(&self) {
        self.announce();
    }

    fn watch_work(&self, wake: WakeFn) {
        self.watch(wake);
    }

    async fn create_generation(&self, new: NewGeneration) -> StoreResult<Created> {
        create(self, new).await
    }

    async fn generation(&self, id: GenerationId) -> StoreResult<Option<Generation>> {
        get(&self.conn().await?, id).await
    }

    async fn list_generations(
        &self,
        account: AccountId,
        status: Option<GenerationStatus>,
        limit: u32,
        offset: u64,
    ) -> StoreResult<Page<Generation>> {
        let conn = self.conn().await?;
        let status = status.map(GenerationStatus::as_str);
        let (limit, offset) = (i64::from(limit), i64::try_from(offset).unwrap_or(i64::MAX));
        let items = generations(
            &conn,
            &format!(
                "SELECT {GENERATION_COLUMNS} FROM generations \
                 WHERE account_id = $1 AND ($2::text IS NULL OR status = $2) \
                 ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
            ),
            &[&account.0, &status, &limit, &offset],
        )
        .await?;
        let total = query(
            &conn,
            "SELECT COUNT(*) AS n FROM generations \
             WHERE account_id = $1 AND ($2::text IS NULL OR status = $2)",
            &[&account.0, &status],
        )
        .await?;
        let total: i64 = column(&total[0], "n")?;
        Ok(Page {
            items,
            total: total as u64,
        })
    }

    async fn pending_before(&self, created_at: OffsetDateTime) -> StoreResult<u64> {
        let cap = QUEUE_POSITION_CAP as i64;
        let row = query_one(
            &self.conn().await?,
            "SELECT COUNT(*) AS n FROM (SELECT 1 FROM generations \
                 WHERE status = 'pending' AND created_at < $1 LIMIT $2) older",
            &[&created_at, &cap],
        )
        .await?;
        column::<i64>(&row, "n").map(|n| n as u64)
    }

    async fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Generation>> {
        claim(self, owner, limit, None, lease_until, now).await
    }

    async fn heartbeat(
        &self,
        id: GenerationId,
        owner: &str,
        lease_until: OffsetDateTime,
        progress_pct: u8,
    ) -> StoreResult<bool> {
        let progress = i16::from(progress_pct.min(99));
        execute(
            &self.conn().await?,
            "UPDATE generations SET lease_until = $3, progress_pct = GREATEST(progress_pct, $4) \
             WHERE id = $1 AND status = 'processing' AND lease_owner = $2",
            &[&id.0, &owner, &lease_until, &progress],
        )
        .await
        .map(|n| n == 1)
    }

    async fn finish(
        &self,
        id: GenerationId,
        by: Finisher<'_>,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> StoreResult<Finished> {
        let owner = match by {
            Finisher::LeaseHolder(owner) => Some(owner),
            Finisher::Anyone => None,
        };
        finish(self, id, owner, outcome, now).await
    }

    async fn overdue(&self, now: OffsetDateTime, limit: usize) -> StoreResult<Vec<GenerationId>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        query(
            &self.conn().await?,
            "SELECT id FROM generations WHERE status IN ('pending', 'processing') \
             AND deadline_at <= $1 ORDER BY deadline_at LIMIT $2",
            &[&now, &limit],
        )
        .await?
        .iter()
        .map(|r| column::<Uuid>(r, "id").map(GenerationId))
        .collect()
    }

    async fn next_deadline(&self) -> StoreResult<Option<OffsetDateTime>> {
        let row = query_one(
            &self.conn().await?,
            "SELECT MIN(deadline_at) AS at FROM generations \
             WHERE status IN ('pending', 'processing')",
            &[],
        )
        .await?;
        column(&row, "at")
    }

    async fn release_leases(&self, owner: &str) -> StoreResult<u64> {
        execute(
            &self.conn().await?,
            "UPDATE generations SET status = 'pending', started_at = NULL, progress_pct = 0, \
                 lease_owner = NULL, lease_until = NULL \
             WHERE status = 'processing' AND lease_owner = $1",
            &[&owner],
        )
        .await
    }

    async fn claim_models(
        &self,
        owner: &str,
        limit: usize,
        models: Vec<reelay_core::Model>,
        lease_until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<Generation>> {
        if models.is_empty() {
            return Ok(Vec::new());
        }
        let models = models.iter().map(|m| m.as_str().to_owned()).collect();
        claim(self, owner, limit, Some(models), lease_until, now).await
    }

    async fn ended_lease(&self, id: GenerationId) -> StoreResult<Option<String>> {
        let row = query_opt(
            &self.conn().await?,
            "SELECT ended_lease FROM generations WHERE id = $1",
            &[&id.0],
        )
        .await?;
        Ok(row
            .map(|r| column::<Option<String>>(&r, "ended_lease"))
            .transpose()?
            .flatten())
    }

    async fn leases(&self, limit: u32) -> StoreResult<Vec<Lease>> {
        let sql = format!(
            "SELECT {GENERATION_COLUMNS}, lease_owner, lease_until FROM generations \
             WHERE status = 'processing' AND lease_until IS NOT NULL \
             ORDER BY lease_until, id LIMIT $1"
        );
        query(&self.conn().await?, &sql, &[&i64::from(limit)])
            .await?
            .iter()
            .map(|row| {
                Ok(Lease {
                    generation: generation(row)?,
                    owner: column(row, "lease_owner")?,
                    until: column(row, "lease_until")?,
                })
            })
            .collect()
    }

    async fn lease_holder(&self, id: GenerationId) -> StoreResult<Option<String>> {
        let row = query_opt(
            &self.conn().await?,
            "SELECT lease_owner FROM generations WHERE id = $1 AND status = 'processing'",
            &[&id.0],
        )
        .await?;
        Ok(row
            .map(|r| column::<Option<String>>(&r, "lease_owner"))
            .transpose()?
            .flatten())
    }

    async fn media_to_prune(
        &self,
        before: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Vec<ExpiredMedia>> {
        super::retention::media_to_prune(self, before, limit).await
    }

    async fn mark_media_pruned(
        &self,
        ids: Vec<GenerationId>,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        super::retention::mark_media_pruned(self, ids, now).await
    }

    async fn prune_records(&self, before: OffsetDateTime, limit: usize) -> StoreResult<u64> {
        super::retention::prune_records(self, before, limit).await
    }

    async fn prunable(
        &self,
        media_before: OffsetDateTime,
        records_before: OffsetDateTime,
    ) -> StoreResult<Prunable> {
        super::retention::prunable(self, media_before, records_before).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::TestDatabase;

    /// Adds pending generations `from..from + n`, oldest first, in SQL.
    async fn fill(c: &tokio_postgres::Client, from: i32, n: i32) {
        c.execute(
            "INSERT INTO generations (id, account_id, status, prompt, model, aspect_ratio, \
                 seed, price, created_at, deadline_at) \
             SELECT gen_random_uuid(), '00000000-0000-7000-8000-000000000000', 'pending', \
                 'a prompt', 'veo-3-fast', '16:9', 0, 0, \
                 timestamptz '2030-01-01' + i * interval '1 ms', timestamptz '2031-01-01' \
             FROM generate_series($1::integer, $1::integer + $2::integer - 1) AS i",
            &[&from, &n],
        )
        .await
        .unwrap();
    }

    /// The buffers a claim of 8 reads (shared hits and reads of the whole statement, from
    /// `EXPLAIN (ANALYZE, BUFFERS)`), planned as claims are; rolled back.
    async fn claim_buffers(c: &mut deadpool_postgres::Object, models: Option<Vec<String>>) -> u64 {
        let now = time::macros::datetime!(2030-06-01 00:00 UTC);
        let lease_until = now + time::Duration::minutes(1);
        let (limit, owner) = (8_i64, "node");
        let (sql, params) = claim_statement(&now, &limit, &owner, &lease_until, &models);
        let tx = c.transaction().await.unwrap();
        let plan: Vec<String> = tx
            .query_typed(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"), &params)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        tx.rollback().await.unwrap();
        assert!(
            plan.iter().any(|l| l.contains("rows=8 ")),
            "claimed 8: {plan:#?}"
        );
        // The root's line comes first: the statement's total.
        let buffers = plan.iter().find(|l| l.contains("Buffers: shared")).unwrap();
        ["hit=", "read="]
            .iter()
            .filter_map(|key| buffers.split(key).nth(1))
            .map(|n| n.split_whitespace().next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// A burst fills the queue after the statistics last looked (an empty queue, as after a
    /// start): a claim reads as much with 20,000 pending as with 200, for any model and for
    /// a worker's models.
    #[tokio::test]
    async fn claims_read_no_more_after_a_burst_fills_the_queue() {
        let db = TestDatabase::create().await;
        let store = PgStore::connect(db.url()).await.unwrap();
        let mut c = store.conn().await.unwrap();
        c.batch_execute(
            "INSERT INTO accounts (id, name, created_at) \
             VALUES ('00000000-0000-7000-8000-000000000000', 'a', now()); \
             ANALYZE generations",
        )
        .await
        .unwrap();
        let models = || Some(vec!["veo-3-fast".to_owned(), "veo-3-quality".to_owned()]);
        fill(&c, 0, 200).await;
        let small = [
            claim_buffers(&mut c, None).await,
            claim_buffers(&mut c, models()).await,
        ];
        fill(&c, 200, 19_800).await;
        let big = [
            claim_buffers(&mut c, None).await,
            claim_buffers(&mut c, models()).await,
        ];
        for (small, big) in small.into_iter().zip(big) {
            assert!(
                big <= small * 2,
                "buffers read by a claim: {small} with 200 pending, {big} with 20,000"
            );
        }
    }
}
