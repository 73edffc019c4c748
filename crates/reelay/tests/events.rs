//! `GET /v1/veo/generations/{id}/events` against the real binary, read as a client reads it:
//! the server-sent events of a slow generation in order, a resume with `Last-Event-ID`, who may
//! open a stream and how many; and `reelay generate --wait`, which follows it.

mod common;

use std::time::Duration;

use common::{PROMPT, TestServer, assert_error, send};
use reqwest::Method;
use serde_json::Value;

/// A render that takes seconds, one at a time: later generations wait in the queue.
const SLOW: &[(&str, &str)] = &[
    ("REELAY_RENDER_DELAY", "3s"),
    ("REELAY_RENDER_CONCURRENCY", "1"),
];
/// Upper bound for one event to arrive (the server re-reads at least every second).
const EVENT_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Ev {
    name: String,
    id: u64,
    data: Value,
}

/// An open event stream, read a chunk at a time.
struct Stream {
    response: reqwest::Response,
    buf: String,
}

impl Stream {
    async fn open(s: &TestServer, key: &str, id: &str, last_event_id: Option<u64>) -> Stream {
        let response = open_raw(s, key, id, last_event_id).await;
        assert_eq!(response.status().as_u16(), 200, "open the stream of {id}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Stream {
            response,
            buf: String::new(),
        }
    }

    /// The next event; `None` when the server ended the stream.
    async fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse::<u64>().expect("ids are integers"));
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    }
                }
                match (name, id, data) {
                    (Some(name), Some(id), Some(data)) => return Some(Ev { name, id, data }),
                    // A keep-alive comment.
                    (None, None, None) => continue,
                    other => panic!("an incomplete event: {other:?} from {block:?}"),
                }
            }
            let chunk = tokio::time::timeout(EVENT_DEADLINE, self.response.chunk())
                .await
                .expect("an event or the end within the deadline")
                .expect("read the stream")?;
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// Every event up to the end of the stream.
    async fn rest(&mut self) -> Vec<Ev> {
        let mut events = Vec::new();
        while let Some(e) = self.next().await {
            events.push(e);
        }
        events
    }
}

async fn open_raw(
    s: &TestServer,
    key: &str,
    id: &str,
    last_event_id: Option<u64>,
) -> reqwest::Response {
    let mut rb = s
        .http
        .get(format!("{}/v1/veo/generations/{id}/events", s.url))
        .bearer_auth(key)
        .timeout(Duration::from_secs(600));
    if let Some(last) = last_event_id {
        rb = rb.header("last-event-id", last.to_string());
    }
    rb.send().await.expect("send")
}

fn summary(events: &[Ev]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{}#{} {} {}% q{}",
                e.name, e.id, e.data["status"], e.data["progress_pct"], e.data["queue_position"]
            )
        })
        .collect()
}

fn assert_increasing(events: &[Ev], after: u64) {
    let mut last = after;
    for e in events {
        assert!(e.id > last, "ids must increase: {:?}", summary(events));
        last = e.id;
    }
}

#[tokio::test]
async fn the_stream_of_a_slow_generation_goes_pending_processing_progress_completed() {
    let s = TestServer::start(SLOW).await;
    let a = s.create_account("events-order", "10").await;
    // Two ahead of it: the first takes the only render slot, the second waits before it.
    s.create_generation(&a.api_key, PROMPT).await;
    s.create_generation(&a.api_key, PROMPT).await;
    let id = s.create_generation(&a.api_key, PROMPT).await;

    let mut stream = Stream::open(&s, &a.api_key, &id, None).await;
    let events = stream.rest().await;
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let shown = summary(&events);

    // It opens on the current state, waiting in the queue behind the other two.
    assert_eq!(events[0].name, "status", "{shown:?}");
    assert_eq!(events[0].data["status"], "pending", "{shown:?}");
    assert_eq!(events[0].data["generation_id"], id.as_str());
    assert!(
        events[0].data["queue_position"].as_u64().unwrap() >= 1,
        "{shown:?}"
    );
    // The queue moves up as the one before it is claimed.
    assert!(
        events
            .iter()
            .any(|e| e.name == "queue" && e.data["status"] == "pending"),
        "{shown:?}"
    );
    let processing = events
        .iter()
        .position(|e| e.name == "status" && e.data["status"] == "processing")
        .unwrap_or_else(|| panic!("no processing event: {shown:?}"));
    assert!(
        events[..processing]
            .iter()
            .all(|e| e.data["status"] == "pending"),
        "{shown:?}"
    );
    let progress: Vec<u64> = events
        .iter()
        .filter(|e| e.name == "progress")
        .map(|e| e.data["progress_pct"].as_u64().unwrap())
        .collect();
    assert!(!progress.is_empty(), "no progress event: {shown:?}");
    assert!(
        progress.windows(2).all(|w| w[0] < w[1]) && progress[0] > 0,
        "{shown:?}"
    );
    assert!(
        names.iter().position(|n| *n == "progress").unwrap() > processing,
        "{shown:?}"
    );
    assert_increasing(&events, 0);

    // It ends with the final object, the same JSON as a read of the generation.
    let last = events.last().unwrap();
    assert_eq!(last.name, "completed", "{shown:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "completed").count(),
        1,
        "{shown:?}"
    );
    let read = s.generation(&a.api_key, &id).await;
    assert_eq!(last.data, read);
    assert_eq!(last.data["status"], "completed");
    assert!(last.data["video_url"].as_str().unwrap().starts_with("http"));
    assert_eq!(last.data["progress_pct"], 100);

    // A finished generation's stream is its final event alone; a client that has it is told
    // to stop (204, which ends a browser's EventSource).
    let again = Stream::open(&s, &a.api_key, &id, None).await.rest().await;
    assert_eq!(summary(&again), summary(&events[events.len() - 1..]));
    assert_eq!(again[0].data, read);
    let done = open_raw(&s, &a.api_key, &id, Some(last.id)).await;
    assert_eq!(done.status().as_u16(), 204);
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing() {
    let s = TestServer::start(&[("REELAY_RENDER_DELAY", "6s")]).await;
    let a = s.create_account("events-resume", "10").await;
    let id = s.create_generation(&a.api_key, PROMPT).await;

    // Read until the generation is processing, then drop the connection mid-stream.
    let mut stream = Stream::open(&s, &a.api_key, &id, None).await;
    let mut before = Vec::new();
    while let Some(e) = stream.next().await {
        let processing = e.data["status"] == "processing";
        before.push(e);
        if processing {
            break;
        }
    }
    drop(stream);
    let seen = before.last().expect("an event before the drop").clone();
    assert_eq!(seen.data["status"], "processing", "{:?}", summary(&before));

    // Progress moves on while disconnected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut resumed = Stream::open(&s, &a.api_key, &id, Some(seen.id)).await;
    let after = resumed.rest().await;
    let shown = summary(&after);
    assert!(!after.is_empty());
    assert_increasing(&after, seen.id);
    assert!(
        after.iter().all(|e| !before.iter().any(|b| b.id == e.id)),
        "an event from before the drop came again: {shown:?}"
    );
    assert_ne!(after[0].data, seen.data, "{shown:?}");
    let last = after.last().unwrap();
    assert_eq!(last.name, "completed", "{shown:?}");
    assert_eq!(last.data, s.generation(&a.api_key, &id).await);
}

#[tokio::test]
async fn only_the_owner_may_stream_and_errors_are_the_api_s() {
    let s = TestServer::start(&[("REELAY_GENERATOR", "external")]).await;
    let owner = s.create_account("events-owner", "10").await;
    let other = s.create_account("events-other", "10").await;
    let id = s.create_generation(&owner.api_key, PROMPT).await;
    let path = format!("/v1/veo/generations/{id}/events");

    let r = s.get(&other.api_key, &path).await;
    assert_error(&r, 404, "TASK_NOT_FOUND", "another account's generation");
    let unknown = format!("/v1/veo/generations/{}/events", uuid::Uuid::new_v4());
    let r2 = s.get(&owner.api_key, &unknown).await;
    assert_error(&r2, 404, "TASK_NOT_FOUND", "an unknown generation");
    assert_eq!(
        r.body, r2.body,
        "another's must look exactly like an unknown one"
    );
    let r = s
        .get(&owner.api_key, "/v1/veo/generations/nope/events")
        .await;
    assert_error(&r, 400, "INVALID_TASK_ID", "not a UUID");
    let r = send(s.req(Method::GET, &path, None)).await;
    assert_error(&r, 401, "UNAUTHORIZED", "no key");

    // The owner's stream opens on the current state.
    let mut stream = Stream::open(&s, &owner.api_key, &id, None).await;
    let first = stream.next().await.unwrap();
    assert_eq!(first.name, "status");
    assert_eq!(first.data["status"], "pending");
    assert_eq!(first.data["queue_position"], 0);
}

#[tokio::test]
async fn an_account_past_its_stream_limit_gets_429_and_a_closed_stream_frees_its_place() {
    let s = TestServer::start(&[("REELAY_GENERATOR", "external")]).await;
    let a = s.create_account("events-limit", "10").await;
    let id = s.create_generation(&a.api_key, PROMPT).await;

    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(Stream::open(&s, &a.api_key, &id, None).await);
    }
    let r = s
        .get(&a.api_key, &format!("/v1/veo/generations/{id}/events"))
        .await;
    assert_error(&r, 429, "TOO_MANY_STREAMS", "the 17th stream");
    assert!(r.header("retry-after").is_some(), "{r}");
    assert!(r.body["message"].as_str().unwrap().contains("16"), "{r}");

    // Other accounts are not held up by it.
    let b = s.create_account("events-limit-other", "10").await;
    let theirs = s.create_generation(&b.api_key, PROMPT).await;
    let _b_stream = Stream::open(&s, &b.api_key, &theirs, None).await;

    // A client that goes away gives its place back.
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = open_raw(&s, &a.api_key, &id, None).await;
        if r.status().as_u16() == 200 {
            break;
        }
        assert_eq!(r.status().as_u16(), 429);
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn generate_wait_prints_one_plain_line_per_change_when_stderr_is_not_a_terminal() {
    let s = TestServer::start(&[("REELAY_RENDER_DELAY", "3s")]).await;
    let a = s.create_account("events-cli", "10").await;
    let (code, stdout, stderr) = s
        .cli(&[
            "generate",
            PROMPT,
            "--wait",
            "--server",
            &s.url,
            "--api-key",
            &a.api_key,
        ])
        .await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains('\r'), "carriage returns in {stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].starts_with("created ") && lines[0].ends_with("(price 0.2500)"),
        "{stderr}"
    );
    assert!(!stderr.contains('"'), "quotes in {stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("processing") && l.ends_with('%')),
        "{stderr}"
    );
    for line in &lines {
        assert!(
            !line.contains("queue position") || line.starts_with("pending"),
            "a queue position outside the queue: {stderr}"
        );
    }
    let last = lines.last().unwrap();
    assert_eq!(
        last.split_whitespace().collect::<Vec<_>>(),
        ["completed", "100%"],
        "{stderr}"
    );
    let generation: Value = serde_json::from_str(&stdout).expect("the result is JSON");
    assert_eq!(generation["status"], "completed");
    assert_eq!(generation["price"], "0.2500");

    // --json: one JSON document on stdout, nothing for a person on stderr.
    let (code, stdout, stderr) = s
        .cli(&[
            "generate",
            PROMPT,
            "--wait",
            "--json",
            "--server",
            &s.url,
            "--api-key",
            &a.api_key,
        ])
        .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stderr.trim(), "");
    let generation: Value = serde_json::from_str(stdout.trim()).expect("one JSON document");
    assert_eq!(generation["status"], "completed");
}

/// A stand-in server without the events route (like an older reelay): `generate --wait` falls
/// back to polling, and still shows the queue only while pending and a final completed line.
#[tokio::test]
async fn generate_wait_polls_when_the_server_has_no_event_stream() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Json;
    use axum::routing::{get, post};
    use serde_json::json;

    let id = uuid::Uuid::new_v4().to_string();
    let reads = Arc::new(AtomicUsize::new(0));
    let states = [
        ("pending", 0, 2),
        ("pending", 0, 1),
        ("processing", 0, 0),
        ("processing", 50, 0),
        ("completed", 100, 0),
    ];
    let app = axum::Router::new()
        .route(
            "/v1/veo/generate",
            post({
                let id = id.clone();
                move || async move {
                    (
                        axum::http::StatusCode::CREATED,
                        Json(json!({"generation_id": id, "status": "pending", "seed": 1, "price": "0.2500"})),
                    )
                }
            }),
        )
        .route(
            "/v1/veo/generations/{id}",
            get({
                let reads = reads.clone();
                move |axum::extract::Path(id): axum::extract::Path<String>| async move {
                    let n = reads.fetch_add(1, Ordering::SeqCst).min(states.len() - 1);
                    let (status, pct, queue) = states[n];
                    Json(json!({"generation_id": id, "status": status, "progress_pct": pct,
                        "queue_position": queue, "price": "0.2500", "error": null}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let out = tokio::process::Command::new(common::bin())
        .args([
            "generate",
            PROMPT,
            "--wait",
            "--server",
            &url,
            "--api-key",
            "k",
        ])
        .env_remove("REELAY_SERVER")
        .env_remove("REELAY_API_KEY")
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(common::CLI_DEADLINE, out)
        .await
        .expect("the CLI finishes")
        .expect("run the CLI");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Vec<&str>> = stderr
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[1..],
        [
            vec!["pending", "0%", "queue", "position", "2"],
            vec!["pending", "0%", "queue", "position", "1"],
            vec!["processing", "0%"],
            vec!["processing", "50%"],
            vec!["completed", "100%"],
        ],
        "{stderr}"
    );
}

/// Two nodes on one PostgreSQL database: a stream on the node that does not render (its
/// engine never touches the generation, so nothing wakes the stream there) still follows every
/// change the other node makes, by re-reading the shared store.
#[tokio::test]
async fn a_stream_follows_a_generation_rendered_on_another_node() {
    let db = reelay_store::postgres::TestDatabase::create().await;
    let shared = [
        ("REELAY_DATABASE_URL", db.url()),
        (
            "REELAY_MASTER_KEY",
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        ),
        ("REELAY_RENDER_DELAY", "3s"),
    ];
    let renderer = TestServer::start(&shared).await;
    let mut watcher_env = shared.to_vec();
    watcher_env.push(("REELAY_GENERATOR", "external"));
    let watcher = TestServer::start(&watcher_env).await;
    let a = watcher.create_account("events-cluster", "10").await;
    let id = watcher.create_generation(&a.api_key, PROMPT).await;

    let events = Stream::open(&watcher, &a.api_key, &id, None)
        .await
        .rest()
        .await;
    let shown = summary(&events);
    assert!(
        events.iter().any(|e| e.data["status"] == "processing"),
        "{shown:?}"
    );
    assert!(events.iter().any(|e| e.name == "progress"), "{shown:?}");
    assert_increasing(&events, 0);
    let last = events.last().unwrap();
    assert_eq!(last.name, "completed", "{shown:?}");
    assert_eq!(last.data, renderer.generation(&a.api_key, &id).await);
}
