//! Several `reelay serve` nodes on one PostgreSQL database (SPEC §5), as real processes on a
//! throwaway database of their own: they share generations and deliveries, a node killed with
//! SIGKILL loses nothing, credits hold across nodes, a revoked key is refused by all of them,
//! and a node that loses its database answers 503 until it comes back, by itself.

mod common;
mod receiver;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use futures::StreamExt;
use receiver::{Plan, Received, Receiver, Reply};
use reelay_store::postgres::TestDatabase;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// The one master key every node of a cluster shares (webhook secrets are sealed with it).
fn master_key() -> String {
    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
}

/// What every node of these tests runs with: `database_url` and the shared master key, the
/// instant generator, callbacks to the loopback receiver, short webhook timeouts (so that the
/// deliveries a dead node held lapse within a test's patience).
fn node_env(database_url: &str) -> Vec<(String, String)> {
    [
        ("REELAY_DATABASE_URL", database_url.to_owned()),
        ("REELAY_MASTER_KEY", master_key()),
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true".into()),
        ("REELAY_GENERATOR", "instant".into()),
        ("REELAY_WEBHOOK_RETRY_INTERVAL", "1s".into()),
        ("REELAY_WEBHOOK_CONNECT_TIMEOUT", "2s".into()),
        ("REELAY_WEBHOOK_REQUEST_TIMEOUT", "5s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn start_nodes(n: usize, env: &[(String, String)]) -> Vec<TestServer> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // All at once: their migrations race, under the advisory lock.
    futures::future::join_all((0..n).map(|_| TestServer::start(&env))).await
}

fn generation_of(r: &Received) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    v["generation_id"].as_str().map(str::to_string)
}

/// How long the receiver takes to answer: long enough that attempts of one webhook-id in
/// parallel would overlap visibly, and that a node killed mid-stream has webhooks in flight.
const ANSWER_DELAY: Duration = Duration::from_millis(100);

#[tokio::test]
async fn three_nodes_share_the_work_and_a_killed_node_loses_nothing() {
    const TOTAL: usize = 2_000;
    let db = TestDatabase::create().await;
    let mut env = node_env(db.url());
    // Eight at a time per node: the deliveries take seconds, so the kill lands among them.
    env.push(("REELAY_WEBHOOK_PER_DESTINATION".into(), "8".into()));
    // One data directory for the three, as on a shared volume (videos, inputs, master key).
    let shared = tempfile::tempdir().unwrap();
    env.push((
        "REELAY_DATA_DIR".into(),
        shared.path().display().to_string(),
    ));
    let mut nodes = start_nodes(3, &env).await;
    let rx = Receiver::with_plan(Plan::always(Reply::ok().delay(ANSWER_DELAY))).await;
    let account = nodes[0].create_account("cluster", "100000").await;
    let url = rx.url("/hook");

    async fn create(
        nodes: &[TestServer],
        key: &str,
        url: &str,
        range: std::ops::Range<usize>,
        alive: usize,
    ) -> Vec<String> {
        futures::stream::iter(range)
            .map(|i| {
                let node = &nodes[i % alive];
                async move {
                    let b = node
                        .generate_ok(
                            key,
                            &json!({
                                "prompt": format!("A harbour at dusk, take {i}"),
                                "callback_url": url,
                            }),
                        )
                        .await;
                    b["generation_id"].as_str().unwrap().to_string()
                }
            })
            .buffer_unordered(24)
            .collect()
            .await
    }
    let key = account.api_key.as_str();
    let mut created = create(&nodes, key, &url, 0..TOTAL / 2, 3).await;
    rx.wait_until(Duration::from_secs(120), "300 webhooks", |r| r.len() >= 300)
        .await;
    nodes[2].kill9();
    let killed_at = Instant::now();
    let at_kill: HashSet<String> = rx.requests().iter().filter_map(generation_of).collect();
    assert!(
        at_kill.len() < TOTAL / 2,
        "the kill should land while the first half's webhooks are still arriving"
    );
    created.extend(create(&nodes, key, &url, TOTAL / 2..TOTAL, 2).await);
    let created: HashSet<String> = created.into_iter().collect();
    assert_eq!(created.len(), TOTAL, "{TOTAL} distinct generations");

    // Every generation's webhook arrives: the dead node's deliveries once their leases lapse.
    let got = rx
        .wait_until(
            Duration::from_secs(240),
            "every generation's webhook",
            |reqs| {
                let seen: HashSet<String> = reqs.iter().filter_map(generation_of).collect();
                created.iter().all(|g| seen.contains(g))
            },
        )
        .await;
    eprintln!(
        "all {TOTAL} webhooks arrived {:.1} s after the kill ({} requests)",
        killed_at.elapsed().as_secs_f64(),
        got.len()
    );

    // No webhook-id ever had two attempts in flight at once.
    let mut by_id: HashMap<String, Vec<(Instant, Instant)>> = HashMap::new();
    for r in &got {
        let end = r.answered_at.unwrap_or(r.at + ANSWER_DELAY);
        by_id.entry(r.webhook_id()).or_default().push((r.at, end));
    }
    assert_eq!(by_id.len(), TOTAL, "one webhook-id per generation");
    for (id, mut spans) in by_id {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "webhook {id}: a second attempt arrived while the first was being answered"
            );
        }
    }

    // The surviving nodes agree that every generation completed.
    for (n, node) in nodes.iter().take(2).enumerate() {
        let mut completed = 0;
        for page in 0..TOTAL.div_ceil(100) {
            let list = node
                .list(
                    &account.api_key,
                    &format!("?limit=100&offset={}", page * 100),
                )
                .await;
            let gens = list["generations"].as_array().unwrap();
            completed += gens.iter().filter(|g| g["status"] == "completed").count();
        }
        assert_eq!(
            completed, TOTAL,
            "node {n} lists every generation completed"
        );
    }
}

/// The most requests the receiver was answering at once.
fn most_at_once(requests: &[Received]) -> usize {
    let mut edges: Vec<(Instant, i32)> = Vec::new();
    for r in requests {
        edges.push((r.at, 1));
        edges.push((r.answered_at.unwrap_or(r.at + ANSWER_DELAY), -1));
    }
    // An answer and an arrival at the same instant: the answer first.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test]
async fn a_destination_limit_holds_across_the_cluster() {
    const TOTAL: usize = 300;
    const LIMIT: usize = 8;
    let db = TestDatabase::create().await;
    let mut env = node_env(db.url());
    env.push(("REELAY_WEBHOOK_PER_DESTINATION".into(), LIMIT.to_string()));
    let nodes = start_nodes(3, &env).await;
    let rx = Receiver::with_plan(Plan::always(Reply::ok().delay(ANSWER_DELAY))).await;
    let account = nodes[0].create_account("limited", "1000").await;
    let url = rx.url("/hook");
    let created: Vec<String> = futures::stream::iter(0..TOTAL)
        .map(|i| create_with_callback(&nodes[i % 3], &account.api_key, PROMPT, &url))
        .buffer_unordered(24)
        .collect()
        .await;
    let got = rx
        .wait_until(Duration::from_secs(240), "every webhook", |reqs| {
            let seen: HashSet<String> = reqs.iter().filter_map(generation_of).collect();
            created.iter().all(|g| seen.contains(g))
        })
        .await;
    let most = most_at_once(&got);
    eprintln!("at most {most} requests at once from 3 nodes (limit {LIMIT} per destination)");
    assert!(
        most <= LIMIT,
        "the receiver answered {most} requests at once; the limit is {LIMIT} for the cluster"
    );
    assert!(most > 1, "the nodes sent in parallel at all");
}

#[tokio::test]
async fn credits_hold_across_nodes_and_refunds_happen_once() {
    let db = TestDatabase::create().await;
    let mut env = node_env(db.url());
    // Nothing works on the generations (no external worker), so they stay pending until
    // their time limit, which every node's watchdog then races to apply.
    env.retain(|(k, _)| k != "REELAY_GENERATOR");
    env.push(("REELAY_GENERATOR".into(), "external".into()));
    env.push(("REELAY_GENERATION_TIMEOUT".into(), "5s".into()));
    let nodes = start_nodes(3, &env).await;
    // veo-3-fast costs 0.25: exactly ten fit in 2.5 credits.
    let account = nodes[0].create_account("racer", "2.5").await;

    let bodies: Vec<serde_json::Value> = (0..50)
        .map(|i| json!({"prompt": format!("A kite over the dunes, take {i}")}))
        .collect();
    let answers: Vec<Resp> = futures::future::join_all(
        bodies
            .iter()
            .enumerate()
            .map(|(i, body)| nodes[i % 3].generate(&account.api_key, body)),
    )
    .await;
    let made = answers.iter().filter(|r| r.status == 201).count();
    let refused = answers.iter().filter(|r| r.status == 402).count();
    assert_eq!(
        (made, refused),
        (10, 40),
        "ten creates fit the balance; the rest are 402"
    );
    for n in &nodes {
        assert_eq!(
            n.balance(&account.api_key).await,
            "0.0000",
            "every node sees the balance spent"
        );
    }

    // All ten time out on three watchdogs at once: each is refunded once, not three times.
    let ids: Vec<String> = answers
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["generation_id"].as_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        let g = nodes[0]
            .wait_terminal(&account.api_key, id, Duration::from_secs(60))
            .await;
        assert_eq!(g["error"]["message"], "TIMEOUT", "{g}");
    }
    for n in &nodes {
        assert_eq!(
            n.balance(&account.api_key).await,
            "2.5000",
            "refunded exactly once each"
        );
    }
}

/// A TCP proxy in front of the test's PostgreSQL that the test can cut (every connection
/// dropped, new ones refused) and restore: a network partition between one node and its
/// database.
struct Partition {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Partition {
    async fn start(upstream: String) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (up, links) = (up.clone(), links.clone());
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: the node sees its connection refused or reset
                    }
                    let upstream = upstream.clone();
                    links.lock().await.push(tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    }));
                }
            }
        });
        Partition {
            addr,
            up,
            links,
            accept,
        }
    }

    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for link in self.links.lock().await.drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Each node takes a key it found live as live for a second without asking the database again
/// (`reelay_api::KEY_FRESHNESS`); `reelay keys revoke` returns only once that second has
/// passed, so by then no node accepts the key, including the nodes that used it just before.
#[tokio::test]
async fn a_key_revoked_from_the_cli_is_refused_by_every_node_once_it_returns() {
    let db = TestDatabase::create().await;
    let nodes = start_nodes(2, &node_env(db.url())).await;
    let account = nodes[0].create_account("leaky", "1").await;
    let spare = nodes[0].add_key(&account.account_id, "spare").await;
    for n in &nodes {
        assert_eq!(n.balance(&account.api_key).await, "1.0000");
    }

    let (code, _out, stderr) = nodes[1].cli(&["keys", "revoke", &account.key_id]).await;
    assert_eq!(code, 0, "keys revoke: {stderr}");
    for n in &nodes {
        let r = n.get(&account.api_key, "/v1/data/balance").await;
        assert_error(
            &r,
            401,
            "UNAUTHORIZED",
            "a revoked key, right after revoke returned",
        );
        assert_eq!(
            n.balance(&spare.api_key).await,
            "1.0000",
            "the other key still works"
        );
    }
}

#[tokio::test]
async fn a_node_cut_from_its_database_answers_503_and_recovers_by_itself() {
    let db = TestDatabase::create().await;
    let (server, _) = db
        .url()
        .split_once("://")
        .map(|(_, rest)| rest.split_once('@').map_or(rest, |(_, host)| host))
        .and_then(|hostpath| hostpath.split_once('/'))
        .expect("a postgres://user@host:port/db URL");
    let proxy = Partition::start(server.to_owned()).await;
    let through_proxy = db.url().replace(server, &proxy.addr.to_string());
    let rx = Receiver::start().await;
    let node = TestServer::start(
        &node_env(&through_proxy)
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
    let account = node.create_account("partitioned", "100").await;
    let before = create_with_callback(&node, &account.api_key, PROMPT, &rx.url("/hook")).await;

    proxy.cut().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let r = node
            .get(&account.api_key, &format!("/v1/veo/generations/{before}"))
            .await;
        if r.status != 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_error(
        &answer,
        503,
        "MAINTENANCE",
        "a read while the database is unreachable",
    );
    assert!(
        answer.header("retry-after").is_some(),
        "a 503 says when to retry"
    );
    let create = node
        .generate(&account.api_key, &json!({"prompt": PROMPT}))
        .await;
    assert_error(
        &create,
        503,
        "MAINTENANCE",
        "a create while the database is unreachable",
    );

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = node
            .get(&account.api_key, &format!("/v1/veo/generations/{before}"))
            .await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the node did not recover: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing acknowledged was lost: the generation made before the cut completes and its
    // webhook arrives, and the node takes new work again.
    let after = create_with_callback(&node, &account.api_key, PROMPT, &rx.url("/hook")).await;
    let got = rx
        .wait_until(Duration::from_secs(120), "both webhooks", |reqs| {
            let seen: HashSet<String> = reqs.iter().filter_map(generation_of).collect();
            seen.contains(&before) && seen.contains(&after)
        })
        .await;
    assert!(got.len() >= 2);
}
