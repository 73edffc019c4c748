//! The HTTP front door: accepts connections and serves the API on them, with the limits that
//! keep a hostile or careless client from holding the server.
//!
//! `axum::serve` sets no timer at all, so one client could hold a connection (and a file
//! descriptor) forever by sending half a request. Here every connection has a header-read
//! timeout, an idle timeout between requests, and a place in a bounded table. When the table is
//! full, the connection idle the longest is closed to make room, so a flood of half-open
//! connections only ever evicts itself; only when every connection is busy does a newcomer get
//! a 503. Requests in flight have their own cap, past which the answer is a 503 at once. On
//! shutdown, idle connections close at once and busy ones get a deadline.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::lingering::Lingering;

/// File descriptors kept back from client connections: the database, the log, and a floor for
/// outbound webhook connections (which also get up to a quarter of the limit).
const RESERVED_FDS: u64 = 256;
/// The most a request's start line and headers may take (hyper answers 431 past it); with the
/// connection cap it bounds what half-sent requests can hold in memory.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// How often idle connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The front door's limits; every one has a `REELAY_HTTP_*` setting.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The longest a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// The longest a keep-alive connection may sit between requests.
    pub idle_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Most requests being handled at once.
    pub max_requests_in_flight: usize,
    /// How long busy connections may finish their requests after a shutdown signal.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    /// The server's defaults (`REELAY_HTTP_*`).
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_requests_in_flight: 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// Raises this process's open-file limit to its hard limit and fits the connection cap under
/// it, so the cap (not the kernel's EMFILE) is what refuses connections.
pub fn fit_to_fd_limit(limits: &mut Limits, outbound: usize) {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise the open-file limit");
            return;
        }
    };
    let reserve = RESERVED_FDS + (outbound as u64).min(soft / 4);
    let room = soft.saturating_sub(reserve).max(16) as usize;
    if room < limits.max_connections {
        tracing::warn!(
            open_file_limit = soft,
            configured = limits.max_connections,
            used = room,
            "the open-file limit leaves room for fewer client connections than \
             REELAY_HTTP_MAX_CONNECTIONS; raise `ulimit -n` to allow more"
        );
        limits.max_connections = room;
    }
    tracing::info!(
        open_file_limit = soft,
        max_connections = limits.max_connections,
        "connection limits set"
    );
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains within the deadline.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let table = Arc::new(Table::new(limits.max_requests_in_flight));
    let graceful = GracefulShutdown::new();
    let sweeper = tokio::spawn(sweep(table.clone(), limits.idle_timeout, shutdown.clone()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait a little
                    // instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if table.len() >= limits.max_connections && !table.evict_longest_idle() {
            refuse(&stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let entry = table.open();
        let service = {
            let (app, entry) = (app.clone(), entry.clone());
            hyper::service::service_fn(move |request: Request<Incoming>| {
                handle(app.clone(), entry.clone(), request)
            })
        };
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(Lingering::new(stream)), service));
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                _ = entry.kill.cancelled() => {}
            }
            entry.close();
        });
    }
    drop(listener);
    sweeper.abort();
    let open = graceful.count();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.shutdown_timeout) => {
            tracing::warn!(
                connections = table.len(),
                "connections still busy at the shutdown deadline are closed"
            );
        }
    }
    tracing::debug!(open, "front door closed");
    Ok(())
}

/// One request through the app, counted as in flight until its response body is done.
async fn handle(
    app: Router,
    entry: Entry,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some(busy) = entry.table().begin(&entry) else {
        return Ok(overloaded());
    };
    let (request, body_read) = track_body(request);
    let mut response = app
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {});
    if !body_read.load(Ordering::Acquire) {
        // Answered before the body was read (a 413 on its declared length, a 401): hyper
        // closes such a connection after the answer, so say so, or the client would send its
        // next request down a connection that is closing.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // The connection counts as busy until the whole body is written (a video download can
    // outlast its handler by minutes), so it is neither swept nor evicted meanwhile.
    Ok(response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _ = &busy;
            frame
        }))
    }))
}

/// The request with a body that records when it has been read to its end (a request without
/// a body counts as read).
fn track_body(request: Request<Incoming>) -> (Request<Body>, Arc<AtomicBool>) {
    let (parts, inner) = request.into_parts();
    let read = Arc::new(AtomicBool::new(inner.is_end_stream()));
    let tracked = Tracked {
        inner,
        read: read.clone(),
    };
    (Request::from_parts(parts, Body::new(tracked)), read)
}

/// A request body that sets `read` once it has given its last frame.
struct Tracked {
    inner: Incoming,
    read: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = <Incoming as HttpBody>::Data;
    type Error = <Incoming as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn overloaded() -> Response<Body> {
    let mut response = Response::new(Body::from(OVERLOADED_BODY));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

const OVERLOADED_BODY: &str = r#"{"detail":"OVERLOADED","message":"the server is at its limit of connections or requests in flight; retry in a second"}"#;

/// Answers a connection the table has no room for, without reading from it or spawning a task
/// for it: a best-effort write into the socket's buffer, then close.
fn refuse(stream: &TcpStream) {
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{OVERLOADED_BODY}",
        OVERLOADED_BODY.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Every open connection, with whether it is handling a request and since when it is idle.
struct Table {
    state: Mutex<State>,
    max_busy: usize,
}

#[derive(Default)]
struct State {
    next_id: u64,
    busy: usize,
    connections: HashMap<u64, Slot>,
}

struct Slot {
    kill: CancellationToken,
    /// `None` while a request is being handled.
    idle_since: Option<Instant>,
}

/// A connection's handle on its row of the table.
#[derive(Clone)]
struct Entry {
    id: u64,
    table: Arc<Table>,
    kill: CancellationToken,
}

/// Marks a connection busy; dropping it marks it idle again.
struct Busy(Entry);

impl Table {
    fn new(max_busy: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_busy: max_busy.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("connection table")
    }

    fn len(&self) -> usize {
        self.lock().connections.len()
    }

    fn open(self: &Arc<Self>) -> Entry {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        let kill = CancellationToken::new();
        state.connections.insert(
            id,
            Slot {
                kill: kill.clone(),
                idle_since: Some(Instant::now()),
            },
        );
        Entry {
            id,
            table: self.clone(),
            kill,
        }
    }

    /// Closes the connection that has waited longest for a request; false when all are busy.
    fn evict_longest_idle(&self) -> bool {
        let mut state = self.lock();
        let oldest = state
            .connections
            .iter()
            .filter_map(|(id, slot)| Some((*id, slot.idle_since?)))
            .min_by_key(|(_, since)| *since)
            .map(|(id, _)| id);
        match oldest.and_then(|id| state.connections.remove(&id)) {
            Some(slot) => {
                slot.kill.cancel();
                true
            }
            None => false,
        }
    }

    fn begin(&self, entry: &Entry) -> Option<Busy> {
        let mut state = self.lock();
        if state.busy >= self.max_busy {
            return None;
        }
        let slot = state.connections.get_mut(&entry.id)?;
        slot.idle_since = None;
        state.busy += 1;
        Some(Busy(entry.clone()))
    }
}

impl Entry {
    fn table(&self) -> &Table {
        &self.table
    }

    fn close(&self) {
        let mut state = self.table.lock();
        if let Some(slot) = state.connections.remove(&self.id)
            && slot.idle_since.is_none()
        {
            state.busy -= 1;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.table.lock();
        if let Some(slot) = state.connections.get_mut(&self.0.id)
            && slot.idle_since.is_none()
        {
            slot.idle_since = Some(Instant::now());
            state.busy -= 1;
        }
    }
}

/// Closes connections idle longer than `idle_timeout`.
async fn sweep(table: Arc<Table>, idle_timeout: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let mut state = table.lock();
        state.connections.retain(|_, slot| match slot.idle_since {
            Some(since) if since.elapsed() >= idle_timeout => {
                slot.kill.cancel();
                false
            }
            _ => true,
        });
    }
}
