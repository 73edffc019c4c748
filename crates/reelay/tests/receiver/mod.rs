//! Test receivers for webhooks: a recording HTTP endpoint with a programmable answer plan, a
//! listener that accepts connections and never answers (request timeouts) and one whose
//! backlog is full so new connections hang (connect timeouts).
//!
//! Everything listens on 127.0.0.1 with a port the OS picks, and stops when dropped. Every wait
//! in here is bounded by a deadline that is a generous upper bound, never a timing assertion.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    /// The raw body bytes, exactly as sent.
    pub body: Vec<u8>,
    pub at: Instant,
    pub peer: SocketAddr,
    /// When the handler finished waiting and handed its answer over (None: not yet, or the
    /// sender hung up first). A request answered after the sender died was never
    /// acknowledged from the sender's point of view.
    pub answered_at: Option<Instant>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
    }

    /// The `webhook-id` header (empty when absent).
    pub fn webhook_id(&self) -> String {
        self.header("webhook-id").unwrap_or_default()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One answer of the receiver.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Waits this long before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: format!("{{\"answer\":{status}}}"),
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Reply {
        Reply {
            body: r#"{"status":"received"}"#.into(),
            ..Reply::status(200)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: &str) -> Reply {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// How the receiver answers: the n-th request carrying a given `webhook-id` (counted from 0)
/// gets `replies[n]`, and the last reply repeats once the list runs out.
#[derive(Debug, Clone)]
pub struct Plan {
    pub replies: Vec<Reply>,
}

impl Plan {
    pub fn always(reply: Reply) -> Plan {
        Plan {
            replies: vec![reply],
        }
    }

    pub fn sequence(replies: Vec<Reply>) -> Plan {
        assert!(!replies.is_empty(), "a plan needs at least one reply");
        Plan { replies }
    }

    fn reply(&self, n: usize) -> Reply {
        self.replies[n.min(self.replies.len() - 1)].clone()
    }
}

#[derive(Default)]
struct Log {
    requests: Vec<Received>,
    per_id: HashMap<String, usize>,
}

struct Shared {
    plan: Mutex<Plan>,
    log: Mutex<Log>,
    arrived: Notify,
}

/// A recording HTTP receiver on 127.0.0.1.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// A receiver that answers every request 200 `{"status":"received"}`.
    pub async fn start() -> Receiver {
        Receiver::with_plan(Plan::always(Reply::ok())).await
    }

    pub async fn with_plan(plan: Plan) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test receiver");
        let addr = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Shared {
            plan: Mutex::new(plan),
            log: Mutex::new(Log::default()),
            arrived: Notify::new(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Receiver { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces the plan; its per-`webhook-id` counting starts again from 0.
    pub fn set_plan(&self, plan: Plan) {
        let mut log = self.shared.log.lock().unwrap();
        log.per_id.clear();
        *self.shared.plan.lock().unwrap() = plan;
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.shared.log.lock().unwrap().requests.len()
    }

    /// Waits until at least `n` requests have arrived; panics after `deadline`.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Received> {
        self.wait_until(deadline, &format!("{n} requests"), |r| r.len() >= n)
            .await
    }

    /// Waits until `done(requests so far)` holds; panics after `deadline` naming `what`.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let end = Instant::now() + deadline;
        loop {
            let notified = self.shared.arrived.notified();
            {
                let log = self.shared.log.lock().unwrap();
                if done(&log.requests) {
                    return log.requests.clone();
                }
            }
            let now = Instant::now();
            if now >= end {
                let log = self.shared.log.lock().unwrap();
                panic!(
                    "receiver {}: not {what} within {deadline:?}; got {} request(s): {:?}",
                    self.addr,
                    log.requests.len(),
                    log.requests
                        .iter()
                        .map(|r| (r.path.clone(), r.webhook_id()))
                        .collect::<Vec<_>>()
                );
            }
            let left = (end - now).min(Duration::from_millis(250));
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Received {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
        at: Instant::now(),
        peer,
        answered_at: None,
    };
    let id = received.webhook_id();
    let (reply, index) = {
        let mut log = shared.log.lock().unwrap();
        let n = log.per_id.entry(id).or_insert(0);
        let reply = shared.plan.lock().unwrap().reply(*n);
        *n += 1;
        log.requests.push(received);
        (reply, log.requests.len() - 1)
    };
    shared.arrived.notify_waiters();
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    shared.log.lock().unwrap().requests[index].answered_at = Some(Instant::now());
    let mut response = Response::builder()
        .status(StatusCode::from_u16(reply.status).expect("a valid status code"))
        .header("content-type", "application/json");
    for (k, v) in &reply.headers {
        response = response.header(k.as_str(), v.as_str());
    }
    response
        .body(Body::from(reply.body))
        .expect("build the receiver's response")
}

/// Accepts connections, reads whatever comes, and never answers: each attempt to it can only
/// end by the sender's request timeout.
pub struct SilentListener {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl SilentListener {
    pub async fn start() -> SilentListener {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the silent listener");
        let addr = listener.local_addr().expect("silent listener address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            // Ends when the listener is dropped (the task is aborted) or accept fails.
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(swallow(stream));
            }
        });
        SilentListener {
            addr,
            accepted,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads and drops the peer's bytes until it closes (bounded by a 10-minute cap).
async fn swallow(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(600), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A listening socket that never accepts, with its accept queue filled by a few raw
/// connections, so a new connection attempt hangs in the handshake (a connect timeout).
pub struct BlackholeListener {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl BlackholeListener {
    pub async fn start() -> BlackholeListener {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind the blackhole listener");
        let listener = socket.listen(1).expect("listen(1)");
        let addr = listener.local_addr().expect("blackhole address");
        // Fill the backlog: connect until a connection no longer completes quickly.
        let mut fillers = Vec::new();
        let mut hung = false;
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                Ok(Err(e)) => panic!("blackhole listener: filler connect failed: {e}"),
                Err(_) => {
                    hung = true;
                    break;
                }
            }
        }
        assert!(
            hung,
            "blackhole listener: after {} connections to a listen(1) socket that never accepts, \
             new connections still complete at once; this machine's TCP stack does not hold \
             them back, so a connect timeout cannot be provoked this way",
            fillers.len()
        );
        BlackholeListener {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// An HTTPS receiver on 127.0.0.1 whose certificate is self-signed (made by rcgen for
/// `localhost`), so no client that verifies certificates gets past the handshake. Counts the
/// requests that do arrive (there should be none).
pub struct SelfSignedTlsReceiver {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    handle: axum_server::Handle<SocketAddr>,
    task: JoinHandle<()>,
}

impl SelfSignedTlsReceiver {
    pub async fn start() -> SelfSignedTlsReceiver {
        // rustls needs a process-wide crypto provider; aws-lc-rs is the one reqwest already
        // brings. Another test may have installed it first, which is fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("make a self-signed certificate");
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            made.cert.pem().into_bytes(),
            made.signing_key.serialize_pem().into_bytes(),
        )
        .await
        .expect("TLS config from the self-signed certificate");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the TLS receiver");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("TLS receiver address");
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let app = Router::new().fallback(move || {
            count.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        });
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, config)
            .expect("TLS server on the listener")
            .handle(handle.clone());
        let task = tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        SelfSignedTlsReceiver {
            addr,
            requests,
            handle,
            task,
        }
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    /// Requests that got through the handshake.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for SelfSignedTlsReceiver {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.task.abort();
    }
}
