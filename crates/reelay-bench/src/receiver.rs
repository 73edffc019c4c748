//! The bench's own webhook receiver (an axum server on a runtime of its own, so the load
//! generator cannot starve it) and "dead" destinations that accept and never answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

/// What arrived: the first arrival of each generation and how often each `webhook-id` came.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<Arrivals>,
}

#[derive(Default)]
struct Arrivals {
    first: HashMap<String, Instant>,
    seen: HashMap<String, u32>,
    duplicates: u64,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

#[derive(Deserialize)]
struct Hook<'a> {
    #[serde(borrow)]
    generation_id: &'a str,
}

impl Recorder {
    fn record(&self, at: Instant, webhook_id: Option<&str>, generation_id: Option<&str>) {
        let mut a = self.inner.lock().unwrap();
        a.first_at.get_or_insert(at);
        a.last_at = Some(at);
        if let Some(id) = generation_id {
            a.first.entry(id.to_owned()).or_insert(at);
        }
        if let Some(id) = webhook_id {
            let n = a.seen.entry(id.to_owned()).or_insert(0);
            *n += 1;
            if *n > 1 {
                a.duplicates += 1;
            }
        }
    }

    /// Distinct generations that arrived.
    pub fn distinct(&self) -> usize {
        self.inner.lock().unwrap().first.len()
    }

    /// Requests whose `webhook-id` had been received before.
    pub fn duplicates(&self) -> u64 {
        self.inner.lock().unwrap().duplicates
    }

    pub fn first_arrival(&self, generation_id: &str) -> Option<Instant> {
        self.inner.lock().unwrap().first.get(generation_id).copied()
    }

    /// The first and the last request received.
    pub fn span(&self) -> Option<(Instant, Instant)> {
        let a = self.inner.lock().unwrap();
        Some((a.first_at?, a.last_at?))
    }

    /// Waits (polling) until `want` distinct generations arrived or the deadline passed;
    /// returns how many arrived.
    pub async fn wait_distinct(&self, want: usize, deadline: Instant) -> usize {
        loop {
            let got = self.distinct();
            if got >= want || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn hook(State(rec): State<Arc<Recorder>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at = Instant::now();
    let webhook_id = headers.get("webhook-id").and_then(|v| v.to_str().ok());
    let generation_id = serde_json::from_slice::<Hook>(&body)
        .ok()
        .map(|h| h.generation_id);
    rec.record(at, webhook_id, generation_id);
    StatusCode::OK
}

/// A receiver listening on loopback ports, answering 200 to every request. Each port is a
/// destination of its own to reelay (scheme, host and port); one recorder counts them all.
pub struct Receiver {
    /// The first port's address.
    pub addr: SocketAddr,
    hooks: Hooks,
    pub recorder: Arc<Recorder>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts on `127.0.0.1:port` (0 for any free port).
    pub fn start(port: u16) -> anyhow::Result<Self> {
        Self::listen(&[port])
    }

    /// Starts on `count` free ports (at least one).
    pub fn start_ports(count: usize) -> anyhow::Result<Self> {
        Self::listen(&vec![0; count.max(1)])
    }

    fn listen(ports: &[u16]) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("receiver")
            .enable_all()
            .build()?;
        let recorder = Arc::new(Recorder::default());
        let app = Router::new().fallback(hook).with_state(recorder.clone());
        let mut addrs = Vec::new();
        for &port in ports {
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))
                .with_context(|| format!("binding the receiver to 127.0.0.1:{port}"))?;
            listener.set_nonblocking(true)?;
            addrs.push(listener.local_addr()?);
            let app = app.clone();
            runtime.spawn(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("receiver listener");
                let _ = axum::serve(listener, app).await;
            });
        }
        Ok(Self {
            addr: addrs[0],
            hooks: Hooks(addrs.iter().map(SocketAddr::port).collect()),
            recorder,
            runtime: Some(runtime),
        })
    }

    pub fn url(&self, n: u64) -> String {
        self.hooks.url(n)
    }

    /// Its callback URLs, for load loops to own.
    pub fn hooks(&self) -> Hooks {
        self.hooks.clone()
    }
}

/// A receiver's callback URLs.
#[derive(Clone)]
pub struct Hooks(Arc<[u16]>);

impl Hooks {
    /// The callback URL for the event numbered `n`: port `n % ports`, so with a port per node
    /// and creates round-robin, each node calls back to a port of its own.
    pub fn url(&self, n: u64) -> String {
        hook_url(self.0[(n % self.0.len() as u64) as usize], n)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

pub fn hook_url(port: u16, n: u64) -> String {
    format!("http://127.0.0.1:{port}/hook/{n}")
}

/// A loopback port nobody listens on (bound once and released): connecting is refused.
pub fn closed_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Listeners that accept connections and hold them open without reading or answering, up to
/// `max_held` connections in all (further ones are closed at once). Dropping closes everything.
pub struct BlackHoles {
    pub ports: Vec<u16>,
    held: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BlackHoles {
    pub fn start(count: usize, max_held: u64) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("blackholes")
            .enable_all()
            .build()?;
        let held = Arc::new(AtomicU64::new(0));
        let mut ports = Vec::with_capacity(count);
        for _ in 0..count {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.set_nonblocking(true)?;
            ports.push(listener.local_addr()?.port());
            let held = held.clone();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let mut open = Vec::new();
                while let Ok((stream, _)) = listener.accept().await {
                    if held.fetch_add(1, Ordering::Relaxed) < max_held {
                        open.push(stream);
                    } else {
                        held.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            });
        }
        Ok(Self {
            ports,
            held,
            runtime: Some(runtime),
        })
    }

    /// Connections held open right now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for BlackHoles {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(url: &str) -> Option<u16> {
        reqwest::Url::parse(url).unwrap().port()
    }

    #[tokio::test]
    async fn a_port_per_node_makes_each_nodes_callbacks_a_destination_of_their_own() {
        let receiver = Receiver::start_ports(2).unwrap();
        // Create n goes to node n % 2, so its callback must go to port n % 2.
        assert_ne!(port(&receiver.url(0)), port(&receiver.url(1)));
        assert_eq!(port(&receiver.url(0)), port(&receiver.url(2)));
        assert_eq!(port(&receiver.url(1)), port(&receiver.url(3)));
        let client = crate::load::client().unwrap();
        for n in 0..4 {
            let answer = client
                .post(receiver.url(n))
                .json(&serde_json::json!({ "generation_id": format!("g{n}") }))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
        }
        assert_eq!(
            receiver.recorder.distinct(),
            4,
            "one recorder counts every port"
        );

        let single = Receiver::start_ports(1).unwrap();
        assert_eq!(port(&single.url(0)), port(&single.url(1)));
    }
}
