//! `GET /v1/veo/generations/{id}/events`: a generation's status as server-sent events, so a
//! client follows it live instead of polling, and resumes with `Last-Event-ID` after a drop.
//!
//! The store has no history of intermediate states (only the current one), so an event id is
//! not a log position but the state's own rank along the lifecycle ([`rank`]): every node
//! computes the same id for the same state, ids grow as a generation moves on, and a resume
//! needs nothing but the current state — it is sent if its id differs from `Last-Event-ID`,
//! and the stream goes on from there.
//!
//! Each stream computes its next event only when the client is ready for it (a lazy stream,
//! no queue), so a slow reader costs one small state, not a growing buffer. It re-reads the
//! generation when the engine says it changed here, and every [`REREAD_EVERY`] anyway (other
//! nodes, queue positions).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use reelay_core::{AccountId, GenerationId, GenerationStatus};
use reelay_engine::{Watch, WatchRefused};
use reelay_store::{Generation, Stage};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::openapi::error_set;
use crate::{ApiError, AppState, ErrorCode, generations};

error_set!(
    EventsErrors = [
        InvalidTaskId,
        Unauthorized,
        TaskNotFound,
        TooManyStreams,
        Maintenance
    ]
);

/// How often a stream re-reads its generation when nothing told it to.
const REREAD_EVERY: Duration = Duration::from_secs(1);
/// How long a stream may outlive its generation's deadline: the time-limit watchdog fails it
/// with TIMEOUT at the deadline, so the final event comes well before this.
const PAST_DEADLINE: Duration = Duration::from_secs(60);
/// The comment sent on an idle stream, so that proxies and clients see it alive.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(15);
/// How long a client refused for too many streams is told to wait.
const RETRY_STREAM_AFTER_SECS: u64 = 5;

/// The id of the final event: above every other rank, and within JavaScript's exact integers.
const FINAL_ID: u64 = (1 << 53) - 1;
const PENDING_BASE: u64 = 1_000_000;
const PROCESSING_BASE: u64 = 2_000_000;
/// Ranks per claim while processing: progress is 0–100.
const PER_CLAIM: u64 = 1_000;

/// A generation's place along its lifecycle, as the event id: pending ranks rise as the queue
/// position falls; processing ranks by claim (a generation whose worker vanished is claimed
/// again, its progress starting over), then progress; the end is [`FINAL_ID`].
fn rank(g: &Generation, queue_position: u64) -> u64 {
    match &g.stage {
        Stage::Pending => PENDING_BASE - queue_position.min(PENDING_BASE - 1),
        Stage::Processing {
            progress_pct,
            claims,
            ..
        } => PROCESSING_BASE + u64::from(*claims) * PER_CLAIM + u64::from(*progress_pct).min(100),
        Stage::Completed { .. } | Stage::Failed { .. } => FINAL_ID,
    }
}

/// What the `status`, `progress` and `queue` events carry: the fields of the generation's
/// read that move while it is unfinished, with the same values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = StatusEvent)]
pub(crate) struct Snapshot {
    #[schema(format = Uuid)]
    generation_id: String,
    #[schema(value_type = GenerationStatus)]
    status: &'static str,
    progress_pct: u8,
    queue_position: u64,
}

impl Snapshot {
    fn of(g: &Generation, queue_position: u64) -> Self {
        let progress_pct = match &g.stage {
            Stage::Processing { progress_pct, .. } => *progress_pct,
            _ => 0,
        };
        Self {
            generation_id: g.id.to_string(),
            status: g.stage.status().as_str(),
            progress_pct,
            queue_position,
        }
    }

    /// The event's name: what changed since `before` (everything, on a connection's first).
    fn kind(&self, before: Option<&Snapshot>) -> &'static str {
        match before {
            Some(b) if b.status == self.status && b.progress_pct != self.progress_pct => "progress",
            Some(b) if b.status == self.status && b.progress_pct == self.progress_pct => "queue",
            _ => "status",
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/veo/generations/{id}/events",
    tag = "generations",
    summary = "Follow a generation live (server-sent events)",
    description = "A `text/event-stream` of the generation's changes until it ends. Events: \
                   `status` (first event of every connection, then whenever `status` changes), \
                   `progress` (`progress_pct` changed), `queue` (only `queue_position` changed); \
                   their `data` is a `StatusEvent`. The last event is `completed` or `failed`, \
                   whose `data` is the whole `Generation` as the read route answers it, with id \
                   9007199254740991; the server then ends the stream. A comment line every 15 s \
                   keeps it alive. Ids are the state's rank (opaque, growing): reconnect with \
                   `Last-Event-ID` to get only what changed. At most 16 streams per account and \
                   256 per server process.",
    security(("api_key" = [])),
    params(
        ("id" = String, Path, format = Uuid, description = "The generation id"),
        ("Last-Event-ID" = Option<String>, Header,
            description = "The id of the last event received, to resume after a drop."),
    ),
    responses(
        (status = 200, description = "The stream of events.", content_type = "text/event-stream",
            body = String,
            headers(("X-Accel-Buffering" = String, description = "`no`: proxies pass events at once")),
            example = "event: status\nid: 999999\ndata: {\"generation_id\":\"ffd473d5-5bef-4e14-bf22-8d559be3c19f\",\"status\":\"pending\",\"progress_pct\":0,\"queue_position\":1}\n\nevent: progress\nid: 2001039\ndata: {\"generation_id\":\"ffd473d5-5bef-4e14-bf22-8d559be3c19f\",\"status\":\"processing\",\"progress_pct\":39,\"queue_position\":0}\n\n"),
        (status = 204, description = "`Last-Event-ID` is the final event's and the generation \
                                      has ended: nothing more to send (stops EventSource \
                                      reconnecting)."),
        EventsErrors,
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    Caller(account): Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The same answers as the read route for a bad, unknown or another account's id.
    let id = generations::generation_id(&raw)?;
    let g = match state.store.generation(id).await? {
        Some(g) if g.account_id == account => g,
        _ => return Err(ApiError::task_not_found()),
    };
    let resume = last_event_id(&headers);
    if g.stage.status().is_terminal() && resume == Some(FINAL_ID) {
        // The client has the final event. 204 is what tells a browser's EventSource to stop
        // reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // Watching starts before the stream's first read, so no change falls between the two.
    let watch = state.engine.watch(account, id).map_err(too_many)?;
    let left = (g.deadline_at - state.store.now())
        .try_into()
        .unwrap_or(Duration::ZERO);
    let cursor = Cursor {
        state,
        account,
        id,
        closing: watch.closing(),
        watch,
        last_id: resume,
        last: None,
        ends_at: Instant::now() + left + PAST_DEADLINE,
        done: false,
    };
    let stream = futures::stream::unfold(cursor, |mut c| async move {
        let event = c.next().await?;
        Some((Ok::<_, Infallible>(event), c))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE_EVERY))
        .into_response();
    // Reverse proxies (nginx) otherwise hold events back to fill their buffers.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn too_many(refused: WatchRefused) -> ApiError {
    let message = match refused {
        WatchRefused::AccountLimit(n) => format!(
            "your account already has {n} event streams open, the most allowed; close one \
             (or poll GET /v1/veo/generations/{{id}}) and retry"
        ),
        WatchRefused::ServerLimit(n) => format!(
            "the server already has {n} event streams open, the most it keeps; retry shortly \
             or poll GET /v1/veo/generations/{{id}}"
        ),
    };
    ApiError::new(ErrorCode::TooManyStreams, message).with_retry_after(RETRY_STREAM_AFTER_SECS)
}

/// The `Last-Event-ID` a reconnecting client sends; anything unreadable counts as none (the
/// stream then starts from the current state, which is always safe).
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// One stream's state between events.
struct Cursor {
    state: AppState,
    account: AccountId,
    id: GenerationId,
    watch: Watch,
    closing: CancellationToken,
    /// The id of the last event the client has, from this connection or `Last-Event-ID`.
    last_id: Option<u64>,
    /// What this connection last sent.
    last: Option<Snapshot>,
    ends_at: Instant,
    done: bool,
}

impl Cursor {
    /// The next event, waiting for the generation to change; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        loop {
            match self.look().await {
                Ok(Some(event)) => return Some(event),
                Ok(None) => {}
                Err(Gone) => {
                    self.done = true;
                    return None;
                }
            }
            tokio::select! {
                _ = self.watch.changed() => {}
                _ = tokio::time::sleep(REREAD_EVERY) => {}
                _ = tokio::time::sleep_until(self.ends_at) => return None,
                _ = self.closing.cancelled() => return None,
            }
        }
    }

    /// Reads the generation and makes the event its change calls for, if any. A storage
    /// error is logged and the stream looks again later: it may be a passing outage.
    async fn look(&mut self) -> Result<Option<Event>, Gone> {
        let store = &self.state.store;
        let g = match store.generation(self.id).await {
            Ok(Some(g)) => g,
            // Retention removed it while watched.
            Ok(None) => return Err(Gone),
            Err(e) => {
                tracing::warn!(generation = %self.id, error = %e, "status stream: reading failed");
                return Ok(None);
            }
        };
        let status = g.stage.status();
        if status.is_terminal() {
            return Ok(self.final_event(status).await);
        }
        let position = match store.queue_position(&g).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(generation = %self.id, error = %e, "status stream: reading failed");
                return Ok(None);
            }
        };
        let id = rank(&g, position);
        if self.last_id == Some(id) {
            return Ok(None);
        }
        let snapshot = Snapshot::of(&g, position);
        let kind = snapshot.kind(self.last.as_ref());
        let event = Event::default()
            .event(kind)
            .id(id.to_string())
            .json_data(&snapshot);
        self.last_id = Some(id);
        self.last = Some(snapshot);
        match event {
            Ok(event) => Ok(Some(event)),
            Err(e) => {
                tracing::error!(error = %e, "status stream: an event did not serialize");
                Ok(None)
            }
        }
    }

    /// The last event: the generation exactly as `GET /v1/veo/generations/{id}` shows it.
    async fn final_event(&mut self, status: GenerationStatus) -> Option<Event> {
        let view = generations::get(
            State(self.state.clone()),
            Caller(self.account),
            Path(self.id.to_string()),
        )
        .await;
        let view = match view {
            Ok(view) => view.0,
            Err(e) => {
                tracing::warn!(generation = %self.id, error = e.detail(), "status stream: reading the final state failed");
                return None;
            }
        };
        let kind = match status {
            GenerationStatus::Completed => "completed",
            _ => "failed",
        };
        match Event::default()
            .event(kind)
            .id(FINAL_ID.to_string())
            .json_data(&view)
        {
            Ok(event) => {
                self.done = true;
                Some(event)
            }
            Err(e) => {
                tracing::error!(error = %e, "status stream: the final event did not serialize");
                None
            }
        }
    }
}

/// The generation no longer exists.
struct Gone;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_ids_are_read_leniently() {
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h), None);
        h.insert("last-event-id", HeaderValue::from_static(" 2001040 "));
        assert_eq!(last_event_id(&h), Some(2_001_040));
        h.insert("last-event-id", HeaderValue::from_static("abc"));
        assert_eq!(last_event_id(&h), None);
    }

    #[test]
    fn event_names_say_what_changed() {
        let s = |status, progress_pct, queue_position| Snapshot {
            generation_id: "g".into(),
            status,
            progress_pct,
            queue_position,
        };
        assert_eq!(s("pending", 0, 3).kind(None), "status");
        assert_eq!(s("pending", 0, 2).kind(Some(&s("pending", 0, 3))), "queue");
        assert_eq!(
            s("processing", 0, 0).kind(Some(&s("pending", 0, 0))),
            "status"
        );
        assert_eq!(
            s("processing", 40, 0).kind(Some(&s("processing", 10, 0))),
            "progress"
        );
    }
}
