//! What a hostile or careless client can do to the API, tried against the real binary: huge and
//! slow bodies, half-sent requests by the thousand, bodies of many keys, wrong media types,
//! operator routes without the admin token, and a flood of creates under a rate limit.
//!
//! Memory is read from the server's /proc entry (peak resident size), never timed.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most the server's peak resident memory may grow while it refuses three 31 MB bodies at
/// once: the create route reads at most 64 KiB of each, so this is allocator noise, not bodies.
const BODY_ATTACK_RSS_BOUND: u64 = 32 * 1024 * 1024;
/// The create route's body limit (reelay-api's `CREATE_BODY`): three 20 MiB images in base64
/// and 64 KiB for the rest.
const CREATE_BODY: usize = 3 * (20 * 1024 * 1024usize).div_ceil(3) * 4 + 64 * 1024;
/// Upper bound for the server to answer a request that needs no work.
const ANSWER_DEADLINE: Duration = Duration::from_secs(20);

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Sends `head` (request line and headers, without the blank line) and then `body_bytes` of
/// JSON-ish filler in the background, and returns the status line and body of the answer,
/// read while the body is still being sent.
async fn attack(url: &str, head: &str, body_bytes: usize, chunked: bool) -> (u16, String) {
    let stream = TcpStream::connect(host_port(url)).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!("{head}\r\n\r\n");
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'0'; 64 * 1024];
        let mut sent = 0;
        if !chunked {
            wr.write_all(b"[").await?;
        }
        while sent < body_bytes {
            if chunked {
                wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                wr.write_all(&chunk).await?;
                wr.write_all(b"\r\n").await?;
            } else {
                wr.write_all(&chunk).await?;
            }
            sent += chunk.len();
        }
        Ok::<_, std::io::Error>(())
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(ANSWER_DEADLINE, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if let Some((headers, body)) = text.split_once("\r\n\r\n") {
                let len = headers
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
    })
    .await;
    writer.abort();
    assert!(
        read.is_ok(),
        "no complete answer within {ANSWER_DEADLINE:?}"
    );
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

/// Writes `request` as is and returns the first answer read back (its start, as text).
async fn raw_exchange(url: &str, request: &str, expect: &str) -> String {
    let mut stream = TcpStream::connect(host_port(url)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(ANSWER_DEADLINE, stream.read(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer within {ANSWER_DEADLINE:?}: {expect}"))
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

fn create_head(key: &str, framing: &str) -> String {
    format!(
        "POST /v1/veo/generate HTTP/1.1\r\nHost: reelay\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\n{framing}"
    )
}

#[tokio::test]
async fn huge_bodies_are_refused_with_413_without_the_server_growing() {
    let s = TestServer::start(&[]).await;
    // Even an account with no credits may send bodies: the limit is not about money.
    let a = s.create_account("big-bodies", "0").await;
    let r = s.generate(&a.api_key, &json!({ "prompt": PROMPT })).await;
    assert_error(&r, 402, "INSUFFICIENT_CREDITS", "a normal create first");
    let before = peak_rss(s.pid());

    // Over the create route's limit (three images' worth, 84 MB); sent chunked, a body must
    // stay within the small limit (a large one must declare its length).
    let size = 90 * 1024 * 1024;
    let declared = create_head(&a.api_key, &format!("Content-Length: {}", size + 1));
    let chunked = create_head(&a.api_key, "Transfer-Encoding: chunked");
    let (one, two, three) = tokio::join!(
        attack(&s.url, &declared, size, false),
        attack(&s.url, &chunked, size, true),
        attack(&s.url, &chunked, size, true),
    );
    for (status, body) in [one, two, three] {
        assert_eq!(status, 413, "a 90 MB body: {body}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(body["detail"], "PAYLOAD_TOO_LARGE", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("65536") || message.contains(&CREATE_BODY.to_string()),
            "the message names the limit: {body}"
        );
    }
    let grown = peak_rss(s.pid()).saturating_sub(before);
    assert!(
        grown < BODY_ATTACK_RSS_BOUND,
        "peak RSS grew by {grown} bytes refusing three 90 MB bodies (bound {BODY_ATTACK_RSS_BOUND})"
    );
    // Nothing was created or charged.
    assert_eq!(s.list(&a.api_key, "").await["total"], 0);
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_answered_before_any_body_is_sent() {
    let s = TestServer::start(&[]).await;
    let a = s.create_account("headers-only", "1").await;
    let head = create_head(&a.api_key, "Content-Length: 104857600");
    // No body follows: the answer must come from the headers alone.
    let text = raw_exchange(
        &s.url,
        &format!("{head}\r\n\r\n"),
        "an answer without waiting for the 100 MiB body",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("PAYLOAD_TOO_LARGE"), "{text}");
}

#[tokio::test]
async fn a_body_that_never_arrives_times_out() {
    let s = TestServer::start(&[("REELAY_HTTP_BODY_READ_TIMEOUT", "1s")]).await;
    let a = s.create_account("slow-body", "1").await;
    let head = create_head(&a.api_key, "Content-Length: 100");
    let text = raw_exchange(
        &s.url,
        &format!("{head}\r\n\r\n{{\"prompt\":"),
        "an answer once the body read timeout passes",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("REQUEST_TIMEOUT"), "{text}");
    assert_eq!(s.list(&a.api_key, "").await["total"], 0);
}

#[tokio::test]
async fn many_keys_and_many_bad_fields_get_a_short_answer() {
    let s = TestServer::start(&[]).await;
    let a = s.create_account("many-keys", "1").await;

    // 3,000 and 50,000 unknown keys (0.5 MB), within the create route's limit (images):
    // refused early, one error, a short answer.
    for n in [3_000, 50_000] {
        let keys: String = (0..n).map(|i| format!("\"k{i}\":0,")).collect();
        let body = format!("{{{keys}\"prompt\":\"{PROMPT}\"}}");
        let r = send(
            s.req(reqwest::Method::POST, "/v1/veo/generate", Some(&a.api_key))
                .header("Content-Type", "application/json")
                .body(body),
        )
        .await;
        assert_invalid_field(&r, "body", &format!("{n} keys"));
        assert!(
            r.bytes.len() < 2048,
            "a short answer: {} bytes",
            r.bytes.len()
        );
    }

    // Twelve bad fields: ten listed, each once; the message counts the rest.
    let mut body = serde_json::Map::new();
    body.insert("prompt".into(), json!("short"));
    body.insert("seed".into(), json!(-1));
    for i in 0..10 {
        body.insert(format!("unknown{i}"), json!(i));
    }
    let r = s
        .generate(&a.api_key, &serde_json::Value::Object(body))
        .await;
    assert_error(&r, 422, "INVALID_PARAMETERS", "twelve bad fields");
    let errors = r.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 10, "{r}");
    let message = r.body["message"].as_str().unwrap();
    assert!(
        message.contains("12 fields") && message.contains("2 more"),
        "{r}"
    );
    for e in errors {
        let text = e["message"].as_str().unwrap();
        assert!(!message.contains(text), "{text:?} is written twice: {r}");
    }
}

#[tokio::test]
async fn only_the_json_media_type_is_accepted() {
    let s = TestServer::start(&[("REELAY_GENERATOR", "instant")]).await;
    let a = s.create_account("media-type", "5").await;
    let body = json!({ "prompt": PROMPT }).to_string();
    for (content_type, status) in [
        ("application/jsonx", 422),
        ("application/json-seq", 422),
        ("text/plain", 422),
        ("application/json; charset=utf-8", 201),
        ("Application/JSON", 201),
    ] {
        let r = send(
            s.req(reqwest::Method::POST, "/v1/veo/generate", Some(&a.api_key))
                .header("Content-Type", content_type)
                .body(body.clone()),
        )
        .await;
        assert_eq!(r.status, status, "Content-Type: {content_type}: {r}");
        if status == 422 {
            assert_invalid_field(&r, "body", content_type);
        }
    }
}

#[tokio::test]
async fn a_thousand_half_sent_requests_neither_block_others_nor_stay_open() {
    // The common default open-file limit: today's code ran out of descriptors at about 1,000.
    let s =
        TestServer::start_with_open_file_limit(&[("REELAY_HTTP_HEADER_READ_TIMEOUT", "3s")], 1024)
            .await;
    let a = s.create_account("loris", "1").await;
    let mut half_open = Vec::new();
    for _ in 0..1000 {
        let mut c = TcpStream::connect(host_port(&s.url))
            .await
            .expect("connect");
        c.write_all(b"GET /v1/data/balance HTTP/1.1\r\nHost: reelay\r\n")
            .await
            .unwrap();
        half_open.push(c);
    }
    // A normal client is still served, on a new connection.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .timeout(ANSWER_DEADLINE)
        .build()
        .unwrap();
    let r = fresh
        .get(format!("{}/v1/data/balance", s.url))
        .bearer_auth(&a.api_key)
        .send()
        .await
        .expect("a normal request is answered while 1,000 requests hang half-sent");
    assert_eq!(r.status(), 200);

    // Every half-sent request is closed by the server: by the header timeout, or earlier to
    // make room. A closed connection reads EOF (or a reset, or a 408).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (i, c) in half_open.iter_mut().enumerate() {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
                Err(_) => panic!("half-sent request {i} still open after the header timeout"),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
            }
        }
    }
    assert!(
        s.log().contains("open_file_limit"),
        "the start-up log says what open-file limit it got"
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_forever_for_hanging_clients() {
    let mut s = TestServer::start(&[("REELAY_SHUTDOWN_TIMEOUT", "2s")]).await;
    let mut hanging = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(host_port(&s.url)).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        hanging.push(c);
    }
    let status = s.terminate(Duration::from_secs(30)).await;
    assert!(
        status.is_some(),
        "SIGTERM with 20 half-sent requests open: the server must exit"
    );
}

#[tokio::test]
async fn operator_routes_need_the_admin_token_and_say_nothing_inside() {
    let admin = "an-operator-token-0123456789";
    let s = TestServer::start(&[("REELAY_ADMIN_TOKEN", admin)]).await;
    let a = s.create_account("ops", "1").await;

    let r = s.get_noauth("/metrics").await;
    assert_error(&r, 401, "UNAUTHORIZED", "/metrics without a token");
    let r = s.get(&a.api_key, "/metrics").await;
    assert_error(&r, 401, "UNAUTHORIZED", "/metrics with an API key");
    let r = s.get(&format!("{admin}x"), "/metrics").await;
    assert_error(&r, 401, "UNAUTHORIZED", "/metrics with a wrong token");
    let r = s.get(admin, "/metrics").await;
    assert_eq!(r.status, 200, "/metrics with the admin token: {r}");
    assert!(r.text().contains("# TYPE"), "Prometheus text: {r}");

    let r = s.get_noauth("/readyz").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({ "status": "ready" }),
        "nothing but the verdict"
    );

    // Without a token configured, `serve` keeps /metrics closed.
    let closed = TestServer::start(&[]).await;
    let r = closed.get_noauth("/metrics").await;
    assert_error(
        &r,
        403,
        "FORBIDDEN",
        "/metrics with no admin token configured",
    );
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("REELAY_ADMIN_TOKEN"),
        "{r}"
    );
}

#[tokio::test]
async fn creates_past_the_rate_limit_get_429_and_cost_nothing() {
    let s = TestServer::start(&[
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_CREATE_RATE_LIMIT", "1"),
        ("REELAY_CREATE_RATE_BURST", "3"),
    ])
    .await;
    let a = s.create_account("limited", "10").await;
    let b = s.create_account("other", "10").await;
    let body = json!({ "prompt": PROMPT });
    let mut refused = None;
    for _ in 0..6 {
        let r = s.generate(&a.api_key, &body).await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 201, "{r}");
    }
    let r = refused.expect("a burst of 6 creates at 1/s with a burst of 3 meets the limit");
    assert_error(&r, 429, "RATE_LIMITED", "past the burst");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let made = s.list(&a.api_key, "").await["total"].as_u64().unwrap();
    let charged = format!("{:.4}", 10.0 - 0.25 * made as f64);
    assert_eq!(
        s.balance(&a.api_key).await,
        charged,
        "the refused create cost nothing"
    );
    // Another account has its own bucket.
    assert_eq!(s.generate(&b.api_key, &body).await.status, 201);
}
