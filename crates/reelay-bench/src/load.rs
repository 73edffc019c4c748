//! The load generator: one pooled HTTP/1 client (and hyper's, the fastest), a closed loop (N
//! requests in flight) and an open loop (a fixed rate, each request its own task). Both stop at
//! a count and a deadline.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// Every request gives up after this long, so no loop waits forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .build()?)
}

/// hyper's client used directly: connections reused (one per request in flight), Nagle off.
/// The fastest client this machine can build (see `limit`).
pub type HyperClient = Client<HttpConnector, Full<Bytes>>;

pub fn hyper_client() -> HyperClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// What a loop produced: the results in completion order, failures, and when it ran.
pub struct Outcome<T> {
    pub results: Vec<T>,
    pub failures: u64,
    pub first_error: Option<String>,
    pub started: Instant,
    pub finished: Instant,
}

impl<T> Outcome<T> {
    fn new(started: Instant) -> Self {
        Self {
            results: Vec::new(),
            failures: 0,
            first_error: None,
            started,
            finished: started,
        }
    }

    /// "N creates failed: <first error>", when any did.
    pub fn failure_note(&self) -> Option<String> {
        (self.failures > 0).then(|| {
            format!(
                "{} creates failed: {}",
                self.failures,
                self.first_error.as_deref().unwrap_or_default()
            )
        })
    }

    pub fn elapsed(&self) -> Duration {
        self.finished - self.started
    }

    /// Stops the scenario when nothing worked at all: a misconfiguration, not a measurement.
    pub fn check(&self, what: &str) -> anyhow::Result<()> {
        if self.results.is_empty() && self.failures > 0 {
            bail!(
                "{what}: all {} requests failed; first error: {}",
                self.failures,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        Ok(())
    }
}

/// Runs `f(0..count)` with `concurrency` requests in flight until the count is done or the
/// deadline passed (a request started before the deadline is awaited, bounded by its timeout).
pub async fn closed_loop<F, Fut, T>(
    count: u64,
    concurrency: usize,
    deadline: Instant,
    f: F,
) -> Outcome<T>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (f, next) = (f.clone(), next.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            let mut failures = 0u64;
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || Instant::now() >= deadline {
                    break;
                }
                match f(i).await {
                    Ok(t) => done.push(t),
                    Err(e) => {
                        failures += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (done, failures, first_error)
        });
    }
    let mut out = Outcome::new(started);
    while let Some(joined) = workers.join_next().await {
        if let Ok((done, failures, first_error)) = joined {
            out.results.extend(done);
            out.failures += failures;
            if out.first_error.is_none() {
                out.first_error = first_error;
            }
        }
    }
    out.finished = Instant::now();
    out
}

/// Starts `f(i)` at `start + i / rate` for `i` in `0..count`, stopping at the deadline; each
/// request is its own task, so a slow answer does not delay the next send.
pub async fn open_loop<F, Fut, T>(rate: f64, count: u64, deadline: Instant, f: F) -> Outcome<T>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let f = Arc::new(f);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let at = started + Duration::from_secs_f64(i as f64 / rate);
        if at >= deadline {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let f = f.clone();
        tasks.spawn(async move { f(i).await });
    }
    let mut out = Outcome::new(started);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(t)) => out.results.push(t),
            Ok(Err(e)) => {
                out.failures += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                out.failures += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    out.finished = Instant::now();
    out
}

/// Creates generations on one reelay, or round-robin (by request number) on several nodes.
/// Request `n` goes to node `n % nodes` under key `n % keys`: with a key per node, each
/// node's creates are its own account's.
#[derive(Clone)]
pub struct Creator {
    client: reqwest::Client,
    endpoints: Arc<[String]>,
    auths: Arc<[String]>,
}

/// A generation created: its id and the instant its create request was sent.
pub struct Created {
    pub generation_id: String,
    pub sent: Instant,
}

#[derive(Deserialize)]
struct CreatedView {
    generation_id: String,
}

impl Creator {
    pub fn round_robin(client: reqwest::Client, base_urls: &[&str], api_keys: &[String]) -> Self {
        Self {
            client,
            endpoints: base_urls
                .iter()
                .map(|u| format!("{u}/v1/veo/generate"))
                .collect(),
            auths: api_keys.iter().map(|k| format!("Bearer {k}")).collect(),
        }
    }

    /// `POST /v1/veo/generate` with a callback; expects 201.
    pub async fn create(&self, n: u64, callback_url: &str) -> anyhow::Result<Created> {
        self.send(
            n,
            format!(
                r#"{{"prompt":"benchmark prompt number {n}","callback_url":"{callback_url}"}}"#
            ),
        )
        .await
    }

    /// `POST /v1/veo/generate` without a callback (a task for a worker, no webhook); expects 201.
    pub async fn create_without_callback(&self, n: u64) -> anyhow::Result<Created> {
        self.send(n, format!(r#"{{"prompt":"benchmark prompt number {n}"}}"#))
            .await
    }

    async fn send(&self, n: u64, body: String) -> anyhow::Result<Created> {
        let endpoint = &self.endpoints[(n % self.endpoints.len() as u64) as usize];
        let auth = &self.auths[(n % self.auths.len() as u64) as usize];
        let sent = Instant::now();
        let response = self
            .client
            .post(endpoint)
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .context("POST /v1/veo/generate")?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the 201")?;
        if status.as_u16() != 201 {
            bail!(
                "POST /v1/veo/generate answered {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            );
        }
        let view: CreatedView = serde_json::from_slice(&bytes).context("parsing the 201")?;
        Ok(Created {
            generation_id: view.generation_id,
            sent,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};

    use super::*;

    type Seen = Arc<Mutex<Vec<(String, String)>>>;

    /// Answers every create with 201, noting the path it came to and its authorization.
    async fn created(
        State(seen): State<Seen>,
        uri: Uri,
        headers: HeaderMap,
    ) -> (StatusCode, String) {
        let auth = headers["authorization"].to_str().unwrap().to_owned();
        seen.lock().unwrap().push((uri.path().to_owned(), auth));
        (StatusCode::CREATED, r#"{"generation_id":"g"}"#.to_owned())
    }

    #[tokio::test]
    async fn with_a_key_per_node_each_nodes_creates_are_its_own_accounts() {
        let seen = Seen::default();
        let app = Router::new().fallback(created).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        // Two "nodes" told apart by path on one server.
        let nodes = [format!("{base}/a"), format!("{base}/b")];
        let urls: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let keys = ["k0".to_owned(), "k1".to_owned()];
        let creator = Creator::round_robin(client().unwrap(), &urls, &keys);
        for n in 0..4 {
            creator.create(n, "http://127.0.0.1:1/hook").await.unwrap();
        }
        let node_a = ("/a/v1/veo/generate".to_owned(), "Bearer k0".to_owned());
        let node_b = ("/b/v1/veo/generate".to_owned(), "Bearer k1".to_owned());
        assert_eq!(
            *seen.lock().unwrap(),
            [node_a.clone(), node_b.clone(), node_a, node_b]
        );
    }
}
