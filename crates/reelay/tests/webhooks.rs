//! SPEC §1–§2: the webhook delivery engine seen from a real receiver — the exact body and
//! headers, Standard Webhooks signatures (checked with the `standardwebhooks` crate as an
//! independent oracle, across a secret rotation), the retry schedule, timeouts, redirects,
//! 410 and Retry-After, redelivery, the SSRF guard at creation and at send time, isolation of
//! a healthy endpoint from 200 dead ones, and the metrics.
//!
//! Every wait is bounded by a generous deadline. The only timing assertions are on the retry
//! schedule, each with its tolerance stated where it is checked.

mod common;
mod receiver;

use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use receiver::{BlackholeListener, Plan, Received, Receiver, Reply, SilentListener};
use serde_json::{Value, json};

/// Upper bound for a webhook that should arrive at once to arrive.
const ARRIVAL: Duration = Duration::from_secs(30);

/// Settings every local-receiver test needs: insecure callbacks (http + loopback) and
/// generations that complete at once.
const LOCAL: [(&str, &str); 2] = [
    ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
    ("REELAY_GENERATOR", "instant"),
];

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = LOCAL.to_vec();
    v.extend_from_slice(extra);
    v
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The webhook body reconstructed from `GET /v1/veo/generations/{id}`: compact JSON, the
/// seed's keys in the seed's order, `error` written `{"message":CODE,"details":{}}`.
fn expected_body(g: &Value) -> String {
    let j = |k: &str| serde_json::to_string(&g[k]).unwrap();
    let error = if g["error"].is_null() {
        "null".to_string()
    } else {
        assert_eq!(g["error"]["details"], json!({}), "error.details in {g}");
        format!(
            r#"{{"message":{},"details":{{}}}}"#,
            serde_json::to_string(&g["error"]["message"]).unwrap()
        )
    };
    format!(
        r#"{{"generation_id":{},"status":{},"prompt":{},"video_url":{},"created_at":{},"completed_at":{},"seed":{},"error":{}}}"#,
        j("generation_id"),
        j("status"),
        j("prompt"),
        j("video_url"),
        j("created_at"),
        j("completed_at"),
        j("seed"),
        error
    )
}

/// Parses a seed-format timestamp (`YYYY-MM-DDTHH:MM:SS.ffffff`, UTC).
fn parse_ts(v: &Value) -> time::OffsetDateTime {
    let text = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {v}"));
    time::PrimitiveDateTime::parse(
        text,
        time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]"
        ),
    )
    .unwrap_or_else(|e| panic!("timestamp {text:?}: {e}"))
    .assume_utc()
}

/// The account's current signing secret.
async fn secret(s: &TestServer, key: &str) -> Value {
    let r = s.get(key, "/v1/webhooks/secret").await;
    assert_eq!(r.status, 200, "GET /v1/webhooks/secret -> {r}");
    assert!(
        r.body["secret"]
            .as_str()
            .is_some_and(|x| x.starts_with("whsec_") && x.len() > 10),
        "secret must look like whsec_<base64>: {r}"
    );
    assert_timestamp(&r.body["created_at"], "secret created_at");
    r.body
}

/// Verifies a received webhook with the `standardwebhooks` crate.
fn verify(secret: &str, r: &Received) -> Result<(), standardwebhooks::WebhookError> {
    standardwebhooks::Webhook::new(secret)
        .expect("the secret is valid whsec_<base64>")
        .verify(&r.body, &r.headers)
}

/// The `v1,<b64>` signature the oracle computes for a received webhook under `secret`.
fn oracle_signature(secret: &str, r: &Received) -> String {
    let ts: i64 = r
        .header("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .expect("numeric webhook-timestamp");
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .sign(&r.webhook_id(), ts, &r.body)
        .unwrap()
}

/// Checks everything a receiver can see of one webhook against the generation it reports.
fn check_webhook(r: &Received, g: &Value, secret: &str, not_before: i64, ctx: &str) {
    assert_eq!(r.method, "POST", "{ctx}: method");
    // Body: byte for byte.
    let expected = expected_body(g);
    assert_eq!(
        r.body_text(),
        expected,
        "{ctx}: body must equal the generation's fields in the seed's order, compact"
    );
    // Headers.
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json"),
        "{ctx}: content-type"
    );
    assert_eq!(
        r.header("user-agent"),
        Some(format!("reelay/{}", env!("CARGO_PKG_VERSION"))),
        "{ctx}: user-agent"
    );
    let id = r.webhook_id();
    assert!(
        id.len() == 36
            && id.starts_with("msg_")
            && id[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{ctx}: webhook-id must be msg_<32 lowercase hex>, got {id:?}"
    );
    assert_eq!(
        g["webhook"]["webhook_id"].as_str(),
        Some(id.as_str()),
        "{ctx}: GET generation's webhook.webhook_id vs the header: {g}"
    );
    let ts: i64 = r
        .header("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{ctx}: webhook-timestamp must be unix seconds: {r:?}"));
    let now = unix_now();
    assert!(
        ts >= not_before - 5 && ts <= now + 5,
        "{ctx}: webhook-timestamp {ts} not within [{}, {}]",
        not_before - 5,
        now + 5
    );
    let sig = r.header("webhook-signature").unwrap_or_default();
    assert!(
        sig.starts_with("v1,") && !sig.contains(' '),
        "{ctx}: one v1 signature expected, got {sig:?}"
    );
    verify(secret, r).unwrap_or_else(|e| {
        panic!("{ctx}: standardwebhooks rejects the signature with the account's secret: {e}")
    });
}

/// The value of one Prometheus sample line `name{labels} value`, `series` written exactly as
/// exposed (e.g. `reelay_webhook_attempts_total{outcome="delivered"}`).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        if !rest.starts_with(' ') {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

// ============================================================================ payload

#[tokio::test]
async fn completed_and_unsafe_content_webhooks_carry_the_exact_body_and_headers() {
    let rx = Receiver::start().await;
    let s = TestServer::start(&env(&[])).await;
    let a = s.create_account("payload", "10").await;
    let secret = secret(&s, &a.api_key).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let before = unix_now();

    // Completed: a prompt with characters JSON must escape, and a fixed seed.
    let ok_prompt = "A \"quoted\" caf\u{e9} scene at dusk, rain on the glass \\ neon";
    let created = s
        .generate_ok(
            &a.api_key,
            &json!({ "prompt": ok_prompt, "seed": 319790131, "callback_url": rx.url("/hook/ok") }),
        )
        .await;
    let ok_id = created["generation_id"].as_str().unwrap().to_string();
    // Failed by moderation.
    let bad_id = create_with_callback(
        &s,
        &a.api_key,
        "nsfw footage of a crowded beach at noon",
        &rx.url("/hook/unsafe"),
    )
    .await;

    let got = rx.wait_for(2, ARRIVAL).await;
    for (id, path, status) in [
        (&ok_id, "/hook/ok", "completed"),
        (&bad_id, "/hook/unsafe", "failed"),
    ] {
        let r = got
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no webhook at {path}: {got:?}"));
        let g = wait_webhook_state(&s, &a.api_key, id, "delivered", ARRIVAL).await;
        assert_eq!(g["status"], status, "{path}: {g}");
        check_webhook(r, &g, &secret, before, path);
        let body = r.json();
        assert_eq!(body["generation_id"], id.as_str(), "{path}: generation_id");
        match status {
            "completed" => {
                assert_eq!(body["prompt"], ok_prompt);
                assert_eq!(body["seed"], 319790131);
                assert!(body["error"].is_null(), "completed: error null: {body}");
                let url = body["video_url"].as_str().unwrap_or("");
                assert!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "completed: absolute video_url: {body}"
                );
            }
            _ => {
                assert!(
                    body["video_url"].is_null(),
                    "failed: video_url null: {body}"
                );
                assert_eq!(
                    body["error"],
                    json!({"message": "UNSAFE_CONTENT", "details": {}}),
                    "failed: error: {body}"
                );
            }
        }
        assert_timestamp(&body["created_at"], &format!("{path}: created_at"));
        assert_timestamp(&body["completed_at"], &format!("{path}: completed_at"));

        // The delivery record tells the same story.
        assert_eq!(g["webhook"]["attempts"], 1, "{path}: one attempt: {g}");
        assert_eq!(g["webhook"]["last_status_code"], 200, "{path}: {g}");
        assert!(g["webhook"]["next_attempt_at"].is_null(), "{path}: {g}");
        assert_timestamp(&g["webhook"]["last_attempt_at"], "last_attempt_at");
        let d = deliveries(&s, &a.api_key, id).await;
        assert_eq!(d["generation_id"], id.as_str(), "{d}");
        assert_eq!(d["webhook_id"], r.webhook_id().as_str(), "{d}");
        assert_eq!(d["callback_url"], rx.url(path).as_str(), "{d}");
        assert_eq!(d["webhook"]["state"], "delivered", "{d}");
        let list = attempts(&d);
        assert_eq!(list.len(), 1, "{path}: one attempt listed: {d}");
        let at = &list[0];
        assert_eq!(at["number"], 1, "{d}");
        assert_eq!(at["outcome"], "delivered", "{d}");
        assert_eq!(at["status_code"], 200, "{d}");
        assert_eq!(at["response_body"], r#"{"status":"received"}"#, "{d}");
        assert!(at["duration_ms"].is_u64(), "{d}");
        assert_timestamp(&at["started_at"], "attempt started_at");
    }
    assert_eq!(rx.count(), 2, "exactly one request per event: {got:?}");
}

#[tokio::test]
async fn timeout_webhook_carries_the_exact_body_and_headers() {
    let rx = Receiver::start().await;
    let s = TestServer::start(&[
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
        ("REELAY_RENDER_DELAY", "120s"),
        ("REELAY_GENERATION_TIMEOUT", "2s"),
    ])
    .await;
    let a = s.create_account("timeout", "10").await;
    let secret = secret(&s, &a.api_key).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let before = unix_now();
    let id = create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/hook/timeout")).await;

    let got = rx.wait_for(1, Duration::from_secs(60)).await;
    let r = &got[0];
    let g = wait_webhook_state(&s, &a.api_key, &id, "delivered", ARRIVAL).await;
    assert_eq!(g["status"], "failed", "{g}");
    check_webhook(r, &g, &secret, before, "TIMEOUT");
    let body = r.json();
    assert_eq!(body["generation_id"], id.as_str());
    assert_eq!(body["status"], "failed");
    assert!(
        body["video_url"].is_null(),
        "TIMEOUT: video_url null: {body}"
    );
    assert_eq!(
        body["error"],
        json!({"message": "TIMEOUT", "details": {}}),
        "TIMEOUT: error: {body}"
    );
    // Nothing more arrives for this event (the late render result is refused).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rx.count(), 1, "one webhook for the timed-out task");
}

// ============================================================================ signatures

#[tokio::test]
async fn signatures_verify_with_standardwebhooks_across_a_rotation() {
    let rx = Receiver::start().await;
    let s = TestServer::start(&env(&[])).await;
    let a = s.create_account("signatures", "10").await;

    let first = secret(&s, &a.api_key).await;
    assert!(
        first["previous_secret_expires_at"].is_null(),
        "no rotation yet: {first}"
    );
    let old = first["secret"].as_str().unwrap().to_string();
    // Stable until rotated.
    assert_eq!(secret(&s, &a.api_key).await["secret"], old.as_str());

    create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/before")).await;
    let r1 = rx.wait_for(1, ARRIVAL).await.remove(0);
    verify(&old, &r1).unwrap_or_else(|e| panic!("oracle rejects the signature: {e}"));
    assert_eq!(
        r1.header("webhook-signature"),
        Some(oracle_signature(&old, &r1)),
        "the header is exactly the oracle's v1 signature"
    );
    // The oracle is not fooled: another body, id or secret fails.
    let mut tampered = r1.clone();
    tampered.body = r1.body_text().replace("completed", "failed").into_bytes();
    assert!(
        verify(&old, &tampered).is_err(),
        "a tampered body must fail"
    );
    let mut other_id = r1.clone();
    other_id.headers.insert(
        "webhook-id",
        "msg_00000000000000000000000000000000".parse().unwrap(),
    );
    assert!(verify(&old, &other_id).is_err(), "another id must fail");
    assert!(
        verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &r1).is_err(),
        "another secret must fail"
    );

    // Rotate: a new secret, the old one keeps signing beside it for 24 h.
    let t0 = time::OffsetDateTime::now_utc();
    let r = s
        .post(&a.api_key, "/v1/webhooks/secret/rotate", &json!({}))
        .await;
    assert_eq!(r.status, 200, "rotate -> {r}");
    let new = r.body["secret"].as_str().unwrap_or("").to_string();
    assert!(new.starts_with("whsec_"), "rotated secret: {r}");
    assert_ne!(new, old, "rotation must give a new secret");
    assert_timestamp(&r.body["created_at"], "rotated created_at");
    assert_timestamp(
        &r.body["previous_secret_expires_at"],
        "previous_secret_expires_at",
    );
    let expires = parse_ts(&r.body["previous_secret_expires_at"]);
    let overlap = expires - t0;
    assert!(
        overlap > time::Duration::hours(23) && overlap < time::Duration::hours(25),
        "the old secret should keep signing for 24 h, expires at {expires} (now {t0})"
    );
    let shown = secret(&s, &a.api_key).await;
    assert_eq!(shown["secret"], new.as_str(), "GET shows the new secret");
    assert_eq!(
        shown["previous_secret_expires_at"], r.body["previous_secret_expires_at"],
        "GET shows the overlap"
    );

    create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/after")).await;
    let got = rx.wait_for(2, ARRIVAL).await;
    let r2 = got.iter().find(|r| r.path == "/after").unwrap();
    let header = r2.header("webhook-signature").unwrap_or_default();
    let sigs: Vec<&str> = header.split(' ').collect();
    assert_eq!(
        sigs.len(),
        2,
        "during a rotation two space-separated signatures: {header:?}"
    );
    assert!(sigs.iter().all(|x| x.starts_with("v1,")), "{header:?}");
    verify(&old, r2).unwrap_or_else(|e| panic!("the OLD secret must verify: {e}"));
    verify(&new, r2).unwrap_or_else(|e| panic!("the NEW secret must verify: {e}"));
    for (name, sec) in [("old", &old), ("new", &new)] {
        let want = oracle_signature(sec, r2);
        assert!(
            sigs.contains(&want.as_str()),
            "the {name} secret's signature {want} is one of {header:?}"
        );
    }
}

// ============================================================================ schedule

#[tokio::test]
async fn linear_retries_then_failed_then_redelivery_with_the_same_webhook_id() {
    let rx = Receiver::with_plan(Plan::always(Reply::status(500).body("boom"))).await;
    let s = TestServer::start(&env(&[("REELAY_WEBHOOK_RETRY_INTERVAL", "1s")])).await;
    let a = s.create_account("schedule", "10").await;
    let secret = secret(&s, &a.api_key).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let id = create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/flaky")).await;

    // 5 attempts: 1 + 2 + 3 + 4 = 10 s of waiting; 60 s is the bound.
    let got = rx.wait_for(5, Duration::from_secs(60)).await;
    let wid = got[0].webhook_id();
    for (i, r) in got.iter().enumerate() {
        assert_eq!(
            r.webhook_id(),
            wid,
            "attempt {} keeps the webhook-id",
            i + 1
        );
        assert_eq!(r.body, got[0].body, "attempt {} sends the same body", i + 1);
        verify(&secret, r).unwrap_or_else(|e| panic!("attempt {} signature: {e}", i + 1));
    }
    // Each attempt is stamped (and signed) with its own time, not the event's.
    let stamps: Vec<i64> = got
        .iter()
        .map(|r| r.header("webhook-timestamp").unwrap().parse().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[1] >= w[0]) && stamps[4] - stamps[0] >= 8,
        "webhook-timestamp is the attempt's time (10 s between first and last): {stamps:?}"
    );
    // Linear backoff: after the n-th failure wait n × 1 s. Tolerance for each gap: at least
    // 0.9 × n s, at most n s + 2 s (scheduling on a loaded 2-core machine).
    let gaps: Vec<f64> = got
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect();
    eprintln!("retry gaps (s): {gaps:?}");
    for (n, gap) in gaps.iter().enumerate().take(4) {
        let want = (n + 1) as f64;
        assert!(
            *gap >= 0.9 * want && *gap <= want + 2.0,
            "gap after failure {} is {gap:.3} s; want {want} s (tolerance [{:.1}, {:.1}]); all gaps {gaps:?}",
            n + 1,
            0.9 * want,
            want + 2.0
        );
    }

    let g = wait_webhook_state(&s, &a.api_key, &id, "failed", Duration::from_secs(30)).await;
    assert_eq!(g["webhook"]["attempts"], 5, "{g}");
    assert_eq!(g["webhook"]["last_status_code"], 500, "{g}");
    assert!(g["webhook"]["next_attempt_at"].is_null(), "{g}");
    let reason = g["webhook"]["failure_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains('5') && reason.contains("500"),
        "failure_reason should say 5 attempts, last HTTP 500: {g}"
    );
    let d = deliveries(&s, &a.api_key, &id).await;
    let list = attempts(&d);
    assert_eq!(list.len(), 5, "five attempts listed: {d}");
    for (i, at) in list.iter().enumerate() {
        assert_eq!(at["number"], i + 1, "{d}");
        assert_eq!(at["outcome"], "http_error", "{d}");
        assert_eq!(at["status_code"], 500, "{d}");
        assert_eq!(at["response_body"], "boom", "{d}");
    }
    // Nothing more after the last attempt.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.count(), 5, "no sixth attempt after `failed`");

    // Another account sees nothing of it, and cannot redeliver it.
    let other = s.create_account("schedule-other", "1").await;
    let r = s
        .get(
            &other.api_key,
            &format!("/v1/veo/generations/{id}/deliveries"),
        )
        .await;
    assert_error(&r, 404, "TASK_NOT_FOUND", "another account's deliveries");
    let r = s
        .post(
            &other.api_key,
            &format!("/v1/veo/generations/{id}/webhook/redeliver"),
            &json!({}),
        )
        .await;
    assert_error(&r, 404, "TASK_NOT_FOUND", "another account's redeliver");
    let r = s
        .post(
            &other.api_key,
            "/v1/webhooks/redeliver",
            &json!({ "since": "2000-01-01T00:00:00.000000" }),
        )
        .await;
    assert_eq!(
        r.body,
        json!({ "redelivered": 0 }),
        "bulk is per account: {r}"
    );

    // Bulk redelivery: a window that excludes the event counts 0 (RFC 3339 form) …
    let r = s
        .post(
            &a.api_key,
            "/v1/webhooks/redeliver",
            &json!({ "since": "2000-01-01T00:00:00Z", "until": "2000-01-02T00:00:00Z" }),
        )
        .await;
    assert_eq!(r.status, 200, "bulk redeliver -> {r}");
    assert_eq!(r.body, json!({ "redelivered": 0 }), "empty window: {r}");
    // … and one that includes it (seed form, no until) counts it and sends it again.
    rx.set_plan(Plan::always(Reply::ok()));
    let r = s
        .post(
            &a.api_key,
            "/v1/webhooks/redeliver",
            &json!({ "since": "2000-01-01T00:00:00.000000" }),
        )
        .await;
    assert_eq!(r.status, 200, "bulk redeliver -> {r}");
    assert_eq!(
        r.body,
        json!({ "redelivered": 1 }),
        "one failed delivery: {r}"
    );
    let got = rx.wait_for(6, ARRIVAL).await;
    assert_eq!(
        got[5].webhook_id(),
        wid,
        "bulk redelivery keeps the webhook-id"
    );
    assert_eq!(
        got[5].body, got[0].body,
        "bulk redelivery sends the same body"
    );
    verify(&secret, &got[5]).unwrap_or_else(|e| panic!("redelivery signature: {e}"));
    let g = wait_webhook_state(&s, &a.api_key, &id, "delivered", ARRIVAL).await;
    assert_eq!(
        g["webhook"]["attempts"], 6,
        "attempts count every round: {g}"
    );
    // Nothing failed is left to redeliver.
    let r = s
        .post(
            &a.api_key,
            "/v1/webhooks/redeliver",
            &json!({ "since": "2000-01-01T00:00:00.000000" }),
        )
        .await;
    assert_eq!(
        r.body,
        json!({ "redelivered": 0 }),
        "nothing failed now: {r}"
    );

    // Single redelivery: 202, same id; a second one while the round is pending is 409.
    rx.set_plan(Plan::sequence(vec![Reply::status(500), Reply::ok()]));
    let path = format!("/v1/veo/generations/{id}/webhook/redeliver");
    let r = s.post(&a.api_key, &path, &json!({})).await;
    assert_eq!(r.status, 202, "redeliver -> {r}");
    assert_eq!(
        r.body,
        json!({ "generation_id": id, "webhook_id": wid, "state": "pending" }),
        "redeliver body: {r}"
    );
    // The receiver fails the round's first attempt (the new plan counts from 0), so the
    // round stays pending for at least the 1 s retry interval.
    let r = s.post(&a.api_key, &path, &json!({})).await;
    assert_error(&r, 409, "CONFLICT", "redeliver while a round is pending");
    let got = rx.wait_for(8, ARRIVAL).await;
    assert!(
        got.iter().all(|r| r.webhook_id() == wid),
        "every round uses one webhook-id"
    );
    wait_webhook_state(&s, &a.api_key, &id, "delivered", ARRIVAL).await;

    // 409 when there is no callback_url.
    let plain = s.create_generation(&a.api_key, PROMPT).await;
    s.wait_terminal(&a.api_key, &plain, ARRIVAL).await;
    let r = s
        .post(
            &a.api_key,
            &format!("/v1/veo/generations/{plain}/webhook/redeliver"),
            &json!({}),
        )
        .await;
    assert_error(&r, 409, "CONFLICT", "redeliver without callback_url");
}

// ============================================================================ timeouts

#[tokio::test]
async fn request_timeout_against_a_listener_that_never_answers() {
    let silent = SilentListener::start().await;
    let s = TestServer::start(&env(&[
        ("REELAY_WEBHOOK_REQUEST_TIMEOUT", "1s"),
        ("REELAY_WEBHOOK_MAX_ATTEMPTS", "2"),
        ("REELAY_WEBHOOK_RETRY_INTERVAL", "1s"),
    ]))
    .await;
    let a = s.create_account("req-timeout", "10").await;
    let id = create_with_callback(&s, &a.api_key, PROMPT, &silent.url("/hook")).await;

    let g = wait_webhook_state(&s, &a.api_key, &id, "failed", Duration::from_secs(60)).await;
    let d = deliveries(&s, &a.api_key, &id).await;
    let list = attempts(&d);
    assert_eq!(list.len(), 2, "{d}");
    for at in list {
        assert_eq!(at["outcome"], "timeout", "request timeout outcome: {d}");
        assert!(at["status_code"].is_null(), "no status on a timeout: {d}");
        let ms = at["duration_ms"].as_u64().unwrap_or(0);
        assert!(
            (900..20_000).contains(&ms),
            "a 1 s request timeout should take about 1 s, took {ms} ms: {d}"
        );
    }
    assert!(
        silent.accepted() >= 2,
        "each attempt connected (accepted {})",
        silent.accepted()
    );
    assert!(g["webhook"]["last_status_code"].is_null(), "{g}");
}

#[tokio::test]
async fn connect_timeout_against_a_listener_that_never_accepts() {
    let hole = BlackholeListener::start().await;
    let s = TestServer::start(&env(&[
        ("REELAY_WEBHOOK_CONNECT_TIMEOUT", "1s"),
        ("REELAY_WEBHOOK_REQUEST_TIMEOUT", "30s"),
        ("REELAY_WEBHOOK_MAX_ATTEMPTS", "1"),
    ]))
    .await;
    let a = s.create_account("connect-timeout", "10").await;
    let id = create_with_callback(&s, &a.api_key, PROMPT, &hole.url("/hook")).await;

    wait_webhook_state(&s, &a.api_key, &id, "failed", Duration::from_secs(60)).await;
    let d = deliveries(&s, &a.api_key, &id).await;
    let list = attempts(&d);
    assert_eq!(list.len(), 1, "{d}");
    let at = &list[0];
    eprintln!(
        "connect timeout reported as outcome={} error={}",
        at["outcome"], at["error"]
    );
    assert!(
        at["outcome"] == "timeout" || at["outcome"] == "connect_error",
        "connect timeout outcome: {d}"
    );
    let ms = at["duration_ms"].as_u64().unwrap_or(0);
    assert!(
        (900..15_000).contains(&ms),
        "the 1 s connect timeout (not the 30 s request timeout) should end the attempt; took {ms} ms: {d}"
    );
}

// ============================================================================ status codes

#[tokio::test]
async fn redirects_are_never_followed() {
    let target = Receiver::start().await;
    let rx = Receiver::with_plan(Plan::always(
        Reply::status(301).header("location", &target.url("/moved")),
    ))
    .await;
    let s = TestServer::start(&env(&[
        ("REELAY_WEBHOOK_RETRY_INTERVAL", "1s"),
        ("REELAY_WEBHOOK_MAX_ATTEMPTS", "2"),
    ]))
    .await;
    let a = s.create_account("redirect", "10").await;
    let id = create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/old")).await;

    let g = wait_webhook_state(&s, &a.api_key, &id, "failed", Duration::from_secs(60)).await;
    let d = deliveries(&s, &a.api_key, &id).await;
    let list = attempts(&d);
    assert_eq!(list.len(), 2, "{d}");
    for at in list {
        assert_eq!(at["outcome"], "redirect", "{d}");
        assert_eq!(at["status_code"], 301, "{d}");
    }
    assert_eq!(g["webhook"]["last_status_code"], 301, "{g}");
    assert_eq!(rx.count(), 2, "two attempts at the callback_url");
    assert_eq!(
        target.count(),
        0,
        "the Location target must receive nothing: {:?}",
        target.requests()
    );
}

#[tokio::test]
async fn gone_410_fails_after_one_attempt() {
    let long = "x".repeat(3000);
    let rx = Receiver::with_plan(Plan::always(Reply::status(410).body(&long))).await;
    let s = TestServer::start(&env(&[("REELAY_WEBHOOK_RETRY_INTERVAL", "1s")])).await;
    let a = s.create_account("gone", "10").await;
    let id = create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/gone")).await;

    let g = wait_webhook_state(&s, &a.api_key, &id, "failed", ARRIVAL).await;
    assert_eq!(g["webhook"]["attempts"], 1, "{g}");
    assert_eq!(g["webhook"]["last_status_code"], 410, "{g}");
    let reason = g["webhook"]["failure_reason"].as_str().unwrap_or("");
    assert!(reason.contains("410"), "failure_reason mentions 410: {g}");
    let d = deliveries(&s, &a.api_key, &id).await;
    assert_eq!(attempts(&d).len(), 1, "{d}");
    assert_eq!(attempts(&d)[0]["outcome"], "http_error", "{d}");
    assert_eq!(
        attempts(&d)[0]["response_body"].as_str().map(str::len),
        Some(1024),
        "the first 1 KiB of a 3000-byte response body is kept"
    );
    // With a 1 s interval a retry would come within ~1 s; none comes in 2.5 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.count(), 1, "no retry after 410");
}

#[tokio::test]
async fn retry_after_on_429_holds_the_next_attempt_back() {
    let rx = Receiver::with_plan(Plan::sequence(vec![
        Reply::status(429).header("retry-after", "3"),
        Reply::ok(),
    ]))
    .await;
    let s = TestServer::start(&env(&[("REELAY_WEBHOOK_RETRY_INTERVAL", "1s")])).await;
    let a = s.create_account("retry-after", "10").await;
    let id = create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/busy")).await;
    // A receiver asking for an hour is capped at 15 minutes.
    let greedy = Receiver::with_plan(Plan::always(
        Reply::status(503).header("retry-after", "3600"),
    ))
    .await;
    let capped = create_with_callback(&s, &a.api_key, PROMPT, &greedy.url("/later")).await;

    let got = rx.wait_for(2, ARRIVAL).await;
    let gap = (got[1].at - got[0].at).as_secs_f64();
    eprintln!("gap after 429 Retry-After: 3 = {gap:.3} s");
    // Retry-After: 3 beats the 1 s interval. Tolerance: at least 2.8 s (whole-second
    // rounding of the header), at most 3 s + 3 s.
    assert!(
        (2.8..=6.0).contains(&gap),
        "second attempt {gap:.3} s after a 429 with Retry-After: 3 (want ≥ ~3 s)"
    );
    let g = wait_webhook_state(&s, &a.api_key, &id, "delivered", ARRIVAL).await;
    assert_eq!(g["webhook"]["attempts"], 2, "{g}");
    let d = deliveries(&s, &a.api_key, &id).await;
    assert_eq!(attempts(&d)[0]["status_code"], 429, "{d}");
    assert_eq!(attempts(&d)[0]["outcome"], "http_error", "{d}");
    assert_eq!(attempts(&d)[1]["outcome"], "delivered", "{d}");

    greedy.wait_for(1, ARRIVAL).await;
    let deadline = Instant::now() + ARRIVAL;
    let g = loop {
        let g = s.generation(&a.api_key, &capped).await;
        if g["webhook"]["attempts"] == 1 && g["webhook"]["next_attempt_at"].is_string() {
            break g;
        }
        assert!(Instant::now() < deadline, "first attempt not recorded: {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(g["webhook"]["state"], "pending", "{g}");
    let wait =
        parse_ts(&g["webhook"]["next_attempt_at"]) - parse_ts(&g["webhook"]["last_attempt_at"]);
    assert!(
        wait >= time::Duration::seconds(890) && wait <= time::Duration::seconds(910),
        "Retry-After: 3600 on a 503 is capped at 15 min; next attempt is {wait} after the last: {g}"
    );
}

#[tokio::test]
async fn constant_backoff_waits_the_same_interval_every_time() {
    let rx = Receiver::with_plan(Plan::always(Reply::status(503))).await;
    let s = TestServer::start(&env(&[
        ("REELAY_WEBHOOK_RETRY_INTERVAL", "1s"),
        ("REELAY_WEBHOOK_BACKOFF", "constant"),
        ("REELAY_WEBHOOK_MAX_ATTEMPTS", "3"),
    ]))
    .await;
    let a = s.create_account("constant", "10").await;
    let id = create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/c")).await;
    let got = rx.wait_for(3, ARRIVAL).await;
    let gaps: Vec<f64> = got
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect();
    eprintln!("constant backoff gaps (s): {gaps:?}");
    // Tolerance for each gap: [0.9 s, 1 s + 1.5 s]; linear would make the second one 2 s.
    for gap in &gaps {
        assert!(
            (0.9..=2.5).contains(gap),
            "constant 1 s backoff: gaps {gaps:?}"
        );
    }
    assert!(
        gaps[1] < 1.8,
        "the second wait is 1 s, not linear's 2 s: {gaps:?}"
    );
    let g = wait_webhook_state(&s, &a.api_key, &id, "failed", ARRIVAL).await;
    assert_eq!(g["webhook"]["attempts"], 3, "{g}");
    assert_eq!(g["webhook"]["last_status_code"], 503, "{g}");
}

// ============================================================================ SSRF

#[tokio::test]
async fn ssrf_guard_at_creation_in_strict_and_dev_mode() {
    // A long render delay: nothing created here is ever sent anywhere.
    let strict = TestServer::start(&[("REELAY_RENDER_DELAY", "10m")]).await;
    let a = strict.create_account("ssrf-strict", "10").await;
    for url in [
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://127.1.2.3:8443/hook",
        "https://localhost/hook",
        "https://LOCALHOST./hook",
        "https://api.localhost/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "http://2130706433/",
        "https://2130706433/",
        "https://0177.0.0.1/hook",
        "https://0x7f.0.0.1/hook",
        "https://192.168.1.1/hook",
        "https://[fd00::1]/hook",
    ] {
        let r = strict
            .generate(
                &a.api_key,
                &json!({ "prompt": PROMPT, "callback_url": url }),
            )
            .await;
        assert_invalid_field(&r, "callback_url", &format!("strict mode, {url}"));
    }
    // A public-looking https name is accepted (judged again on its addresses at send time).
    let r = strict
        .generate(
            &a.api_key,
            &json!({ "prompt": PROMPT, "callback_url": "https://hooks.example.com/webhook" }),
        )
        .await;
    assert_eq!(r.status, 201, "public https name: {r}");

    let rx = Receiver::start().await;
    let dev = TestServer::start(&[
        ("REELAY_RENDER_DELAY", "10m"),
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
    ])
    .await;
    let b = dev.create_account("ssrf-dev", "10").await;
    for url in [
        rx.url("/hook"),
        format!("http://localhost:{}/hook", rx.addr.port()),
        format!("http://[::1]:{}/hook", rx.addr.port()),
    ] {
        let r = dev
            .generate(
                &b.api_key,
                &json!({ "prompt": PROMPT, "callback_url": url }),
            )
            .await;
        assert_eq!(r.status, 201, "dev mode admits loopback {url}: {r}");
        // Not finished (10 min render delay): a webhook is owed, and nothing to redeliver yet.
        let id = r.body["generation_id"].as_str().unwrap();
        let g = dev.generation(&b.api_key, id).await;
        assert_eq!(g["webhook"]["state"], "pending", "{g}");
        assert_eq!(g["webhook"]["attempts"], 0, "{g}");
        let r = dev
            .post(
                &b.api_key,
                &format!("/v1/veo/generations/{id}/webhook/redeliver"),
                &json!({}),
            )
            .await;
        assert_error(&r, 409, "CONFLICT", "redeliver before the generation ends");
    }
    assert_eq!(rx.count(), 0, "nothing is sent for unfinished generations");
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "https://10.0.0.1/hook",
        "http://167772161/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://[::ffff:169.254.169.254]/hook",
    ] {
        let r = dev
            .generate(
                &b.api_key,
                &json!({ "prompt": PROMPT, "callback_url": url }),
            )
            .await;
        assert_invalid_field(&r, "callback_url", &format!("dev mode, {url}"));
    }
}

/// A `reelay serve` started by hand on a killed TestServer's data directory, with some
/// settings overridden (the harness restarts only with the same settings).
struct HandServer {
    child: Child,
    url: String,
    stderr: std::path::PathBuf,
    _logs: tempfile::TempDir,
}

impl HandServer {
    async fn start(s: &TestServer, overrides: &[(&str, &str)]) -> HandServer {
        let logs = tempfile::tempdir().expect("log dir");
        let out = logs.path().join("stdout.log");
        let err = logs.path().join("stderr.log");
        let mut cmd = s.command();
        for (k, v) in overrides {
            cmd.env(k, v);
        }
        cmd.arg("serve")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        let mut child = cmd.spawn().expect("spawn reelay serve");
        let deadline = Instant::now() + START_DEADLINE;
        let url = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(url) = text.lines().find_map(|l| {
                let rest = &l[l.find("listening on ")? + "listening on ".len()..];
                Some(
                    rest.split_whitespace()
                        .next()?
                        .trim_end_matches('/')
                        .to_string(),
                )
            }) {
                break url;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "hand-started reelay serve exited ({status}): {}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "hand-started reelay serve printed no address within {START_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        loop {
            if let Ok(r) = s.http.get(format!("{url}/healthz")).send().await
                && r.status().as_u16() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "hand-started server: /healthz not 200"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        HandServer {
            child,
            url,
            stderr: err,
            _logs: logs,
        }
    }
}

impl Drop for HandServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            let skip = text.chars().count().saturating_sub(6000);
            eprintln!(
                "---- hand-started reelay serve stderr ----\n{}\n---- end ----",
                text.chars().skip(skip).collect::<String>()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn pending_retries_are_blocked_after_a_restart_without_insecure_mode() {
    let rx = Receiver::with_plan(Plan::always(Reply::status(500))).await;
    let mut s = TestServer::start(&env(&[
        ("REELAY_WEBHOOK_RETRY_INTERVAL", "2s"),
        ("REELAY_WEBHOOK_MAX_ATTEMPTS", "3"),
    ]))
    .await;
    let a = s.create_account("ssrf-restart", "10").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            create_with_callback(&s, &a.api_key, PROMPT, &rx.url(&format!("/hook/{i}"))).await,
        );
    }
    // Each event failed its first attempt: a retry is scheduled ~2 s later.
    rx.wait_until(ARRIVAL, "a first attempt for all 3 events", |r| {
        (0..3).all(|i| r.iter().any(|x| x.path == format!("/hook/{i}")))
    })
    .await;
    for id in &ids {
        let g = s.generation(&a.api_key, id).await;
        assert_eq!(
            g["webhook"]["state"], "pending",
            "a retry is scheduled: {g}"
        );
    }
    s.kill9();
    let seen = rx.count();

    // Same data, strict mode.
    let hand = HandServer::start(&s, &[("REELAY_ALLOW_INSECURE_CALLBACKS", "false")]).await;
    s.url = hand.url.clone();
    for id in &ids {
        let g = wait_webhook_state(&s, &a.api_key, id, "failed", Duration::from_secs(60)).await;
        let d = deliveries(&s, &a.api_key, id).await;
        let list = attempts(&d);
        let blocked: Vec<_> = list
            .iter()
            .filter(|at| at["outcome"] == "blocked_destination")
            .collect();
        assert!(
            !blocked.is_empty(),
            "after the restart in strict mode, http://127.0.0.1 must be blocked: {d}"
        );
        // The first blocked attempt ends the round: a blocked destination is not retried.
        let first = list
            .iter()
            .position(|at| at["outcome"] == "blocked_destination")
            .unwrap();
        assert_eq!(
            list.len(),
            first + 1,
            "the first blocked attempt ends the round: {d}"
        );
        assert!(g["webhook"]["failure_reason"].is_string(), "{g}");
    }
    assert_eq!(
        rx.count(),
        seen,
        "the receiver must get nothing after the restart in strict mode"
    );
}

// ============================================================================ isolation

#[tokio::test]
async fn two_hundred_dead_endpoints_do_not_delay_a_healthy_one() {
    let mut dead = Vec::new();
    for _ in 0..200 {
        dead.push(SilentListener::start().await);
    }
    let healthy = Receiver::start().await;
    let s = TestServer::start(&env(&[
        ("REELAY_WEBHOOK_REQUEST_TIMEOUT", "60s"),
        ("REELAY_RENDER_CONCURRENCY", "64"),
    ]))
    .await;
    let a = s.create_account("isolation", "100").await;

    let key = a.api_key.clone();
    let sref = &s;
    let creates = dead.iter().enumerate().map(|(i, l)| {
        let key = key.clone();
        let url = l.url(&format!("/dead/{i}"));
        async move { create_with_callback(sref, &key, PROMPT, &url).await }
    });
    futures::stream::iter(creates)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    // All 200 attempts are hanging (each dead listener holds a connection).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = dead.iter().filter(|l| l.accepted() > 0).count();
        if n == dead.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of 200 dead endpoints got a connection within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            create_with_callback(&s, &a.api_key, PROMPT, &healthy.url(&format!("/ok/{i}"))).await,
        );
    }
    // Well under the 60 s request timeout the dead ones are stuck in.
    healthy.wait_for(20, Duration::from_secs(20)).await;
    eprintln!(
        "20 healthy webhooks arrived {:.2} s after the first was created, beside 200 hanging attempts",
        started.elapsed().as_secs_f64()
    );
    let got = healthy.requests();
    for id in &ids {
        assert!(
            got.iter().any(|r| r.json()["generation_id"] == id.as_str()),
            "healthy webhook for {id} arrived"
        );
    }
}

// ============================================================================ metrics

#[tokio::test]
async fn metrics_and_ip_ranges_after_deliveries() {
    let rx = Receiver::start().await;
    let gone = Receiver::with_plan(Plan::always(Reply::status(410))).await;
    let admin = "metrics-admin-token-0123456789";
    let s = TestServer::start(&env(&[
        ("REELAY_WEBHOOK_SOURCE_IPS", "127.0.0.1"),
        ("REELAY_ADMIN_TOKEN", admin),
    ]))
    .await;
    let a = s.create_account("metrics", "10").await;

    let r = s.get(&a.api_key, "/v1/webhooks/ip-ranges").await;
    assert_eq!(r.status, 200, "ip-ranges -> {r}");
    assert_eq!(r.body["ip_ranges"], json!(["127.0.0.1/32"]), "{r}");
    assert!(r.body["message"].is_string(), "{r}");

    let no_content = Receiver::with_plan(Plan::always(Reply::status(204).body(""))).await;
    let ok = create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/m")).await;
    let ok204 = create_with_callback(&s, &a.api_key, PROMPT, &no_content.url("/n")).await;
    let bad = create_with_callback(&s, &a.api_key, PROMPT, &gone.url("/g")).await;
    let got = rx.wait_for(1, ARRIVAL).await;
    assert_eq!(
        got[0].peer.ip().to_string(),
        "127.0.0.1",
        "sent from the configured source address"
    );
    wait_webhook_state(&s, &a.api_key, &ok, "delivered", ARRIVAL).await;
    let g = wait_webhook_state(&s, &a.api_key, &ok204, "delivered", ARRIVAL).await;
    assert_eq!(
        g["webhook"]["last_status_code"], 204,
        "any 2xx delivers: {g}"
    );
    wait_webhook_state(&s, &a.api_key, &bad, "failed", ARRIVAL).await;

    let m = s.get(admin, "/metrics").await;
    assert_eq!(m.status, 200, "GET /metrics -> {}", m.status);
    let text = m.text();
    let show = || {
        text.lines()
            .filter(|l| l.contains("reelay_webhook"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let delivered = metric(
        &text,
        r#"reelay_webhook_attempts_total{outcome="delivered"}"#,
    );
    assert!(
        delivered.is_some_and(|v| v >= 1.0),
        "attempts_total{{outcome=delivered}} ≥ 1:\n{}",
        show()
    );
    let http_error = metric(
        &text,
        r#"reelay_webhook_attempts_total{outcome="http_error"}"#,
    );
    assert!(
        http_error.is_some_and(|v| v >= 1.0),
        "attempts_total{{outcome=http_error}} ≥ 1 (the 410):\n{}",
        show()
    );
    let count = metric(&text, "reelay_webhook_delivery_latency_seconds_count");
    assert!(
        count.is_some_and(|v| v >= 1.0),
        "delivery latency histogram count ≥ 1:\n{}",
        show()
    );
    assert!(
        text.contains("reelay_webhook_delivery_latency_seconds_bucket{le="),
        "the latency is a histogram with buckets:\n{}",
        show()
    );
    let failed_total = metric(&text, "reelay_webhook_deliveries_failed_total");
    assert!(
        failed_total.is_some_and(|v| v >= 1.0),
        "deliveries_failed_total ≥ 1:\n{}",
        show()
    );
    let failed_gauge = metric(&text, r#"reelay_webhook_deliveries{state="failed"}"#);
    assert_eq!(failed_gauge, Some(1.0), "one failed delivery:\n{}", show());
    for state in ["due", "scheduled"] {
        let v = metric(
            &text,
            &format!(r#"reelay_webhook_deliveries{{state="{state}"}}"#),
        );
        assert_eq!(v, Some(0.0), "no delivery {state}:\n{}", show());
    }
}
