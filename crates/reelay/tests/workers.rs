//! External workers, black-box: this test acts as a worker over plain HTTP against a real
//! `reelay serve` with `REELAY_GENERATOR=external`, following only `docs/workers.md`.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const EXTERNAL: (&str, &str) = ("REELAY_GENERATOR", "external");

/// A real MP4, rendered by the same renderer the built-in generator uses.
fn real_mp4() -> Vec<u8> {
    reelay_render::render_mp4(&reelay_render::RenderSpec {
        prompt: "a worker's video",
        seed: 7,
        aspect_ratio: reelay_render::AspectRatio::Landscape16x9,
        watermark_text: None,
        first_frame: None,
        last_frame: None,
    })
    .expect("rendering a test video")
}

/// `reelay workers create --name NAME [--models M] --json` → the token.
async fn worker(s: &TestServer, name: &str, models: Option<&str>) -> String {
    let mut args = vec!["workers", "create", "--name", name, "--json"];
    if let Some(m) = models {
        args.extend(["--models", m]);
    }
    let v = s.cli_json(&args).await;
    let token = v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {v}"));
    assert!(token.starts_with("rlw_"), "{v}");
    token.to_owned()
}

async fn claim(s: &TestServer, token: &str, body: Value) -> Resp {
    s.post(token, "/v1/worker/claim", &body).await
}

/// Claims, waiting up to `wait` seconds, and expects exactly `n` jobs.
async fn claim_n(s: &TestServer, token: &str, n: usize, body: Value) -> Vec<Value> {
    let r = claim(s, token, body).await;
    assert_eq!(r.status, 200, "claim -> {r}");
    let jobs = r.body["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .clone();
    assert_eq!(jobs.len(), n, "claim -> {r}");
    jobs
}

fn lease_of(job: &Value) -> String {
    job["lease_id"].as_str().unwrap().to_owned()
}

async fn job_call(s: &TestServer, token: &str, lease: &str, what: &str, body: Value) -> Resp {
    s.post(token, &format!("/v1/worker/jobs/{lease}/{what}"), &body)
        .await
}

async fn upload(s: &TestServer, token: &str, lease: &str, bytes: Vec<u8>) -> Resp {
    send(
        s.req(
            Method::PUT,
            &format!("/v1/worker/jobs/{lease}/video"),
            Some(token),
        )
        .header("Content-Type", "video/mp4")
        .body(bytes),
    )
    .await
}

#[tokio::test]
async fn a_worker_claims_heartbeats_and_uploads_a_real_mp4() {
    let s = TestServer::start(&[EXTERNAL]).await;
    let a = s.create_account("alice", "10").await;
    let w = worker(&s, "gpu-1", None).await;

    // A long-poll waiting before the work exists is woken by it.
    let waiting = {
        let rb = s
            .req(Method::POST, "/v1/worker/claim", Some(&w))
            .json(&json!({"max_jobs": 4, "wait_seconds": 30}));
        tokio::spawn(send(rb))
    };
    let id = s
        .generate_ok(
            &a.api_key,
            &json!({"prompt": PROMPT, "seed": 42, "watermark_text": "hello", "aspect_ratio": "9:16"}),
        )
        .await["generation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = waiting.await.unwrap();
    assert_eq!(r.status, 200, "{r}");
    let jobs = r.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{r}");
    let job = &jobs[0];
    assert_eq!(job["generation_id"], id.as_str());
    assert_eq!(job["prompt"], PROMPT);
    assert_eq!(job["seed"], 42);
    assert_eq!(job["aspect_ratio"], "9:16");
    assert_eq!(job["watermark_text"], "hello");
    assert_eq!(job["model"], "veo-3-fast");
    assert_timestamp(&job["lease_expires_at"], "lease_expires_at");
    let lease = lease_of(job);
    assert_eq!(s.generation(&a.api_key, &id).await["status"], "processing");
    // Nothing more to claim.
    claim_n(&s, &w, 0, json!({"wait_seconds": 0})).await;

    let r = job_call(
        &s,
        &w,
        &lease,
        "heartbeat",
        json!({"progress_pct": 50, "log": "halfway"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body["cancel_requested"], false, "{r}");
    assert_timestamp(&r.body["lease_expires_at"], "heartbeat");
    assert_eq!(s.generation(&a.api_key, &id).await["progress_pct"], 50);

    // Not an MP4: refused, nothing changes.
    let r = upload(&s, &w, &lease, b"this is not a video".to_vec()).await;
    assert_error(&r, 422, "INVALID_VIDEO", "text upload");
    let mut no_moov = real_mp4();
    no_moov.truncate(32);
    let r = upload(&s, &w, &lease, no_moov).await;
    assert_error(&r, 422, "INVALID_VIDEO", "cut-short upload");
    assert_eq!(s.generation(&a.api_key, &id).await["status"], "processing");

    let mp4 = real_mp4();
    let r = upload(&s, &w, &lease, mp4.clone()).await;
    assert_eq!(r.status, 200, "upload -> {r}");
    assert_eq!(r.body["status"], "completed", "{r}");
    let g = s.generation(&a.api_key, &id).await;
    assert_eq!(g["status"], "completed", "{g}");
    assert_eq!(g["progress_pct"], 100, "{g}");
    let url = g["video_url"].as_str().unwrap().to_owned();
    assert_eq!(r.body["video_url"], url.as_str());
    assert!(
        g["webhook"]["webhook_id"].is_string(),
        "the outbox event is written: {g}"
    );
    let served = s.http.get(&url).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.bytes().await.unwrap().to_vec(), mp4);

    // Repeating the upload (even with other bytes), or completing by URL, with the same lease
    // is harmless: the first video stands.
    let other = reelay_render::render_mp4(&reelay_render::RenderSpec {
        prompt: "another video",
        seed: 8,
        aspect_ratio: reelay_render::AspectRatio::Landscape16x9,
        watermark_text: None,
        first_frame: None,
        last_frame: None,
    })
    .unwrap();
    assert_ne!(other, mp4);
    let again = upload(&s, &w, &lease, other).await;
    assert_eq!(again.status, 200, "{again}");
    assert_eq!(again.body, r.body);
    let by_url = job_call(
        &s,
        &w,
        &lease,
        "complete",
        json!({"video_url": "https://cdn.example.com/v.mp4"}),
    )
    .await;
    assert_eq!(by_url.status, 200, "{by_url}");
    assert_eq!(by_url.body, r.body, "the first result stands");
    let served = s.http.get(&url).send().await.unwrap();
    assert_eq!(
        served.bytes().await.unwrap().to_vec(),
        mp4,
        "the kept video is untouched"
    );
    // But the job is over: a heartbeat or a fail is told the lease is gone.
    let r = job_call(&s, &w, &lease, "heartbeat", json!({})).await;
    assert_error(&r, 409, "LEASE_LOST", "heartbeat after complete");
    let r = job_call(
        &s,
        &w,
        &lease,
        "fail",
        json!({"code": "TASK_FAILED", "message": "x"}),
    )
    .await;
    assert_error(&r, 409, "LEASE_LOST", "fail after complete");
    assert_eq!(
        s.balance(&a.api_key).await,
        "9.7500",
        "charged once, not refunded"
    );
}

#[tokio::test]
async fn a_stale_lease_changes_nothing() {
    let s = TestServer::start(&[EXTERNAL, ("REELAY_WORKER_LEASE", "1s")]).await;
    let a = s.create_account("alice", "10").await;
    let w1 = worker(&s, "slow", None).await;
    let w2 = worker(&s, "fresh", None).await;
    let id = s.create_generation(&a.api_key, PROMPT).await;

    let first = claim_n(&s, &w1, 1, json!({"wait_seconds": 10})).await;
    let stale = lease_of(&first[0]);
    // w1 stops heartbeating; once its lease lapses, w2's long-poll gets the same job.
    let second = claim_n(&s, &w2, 1, json!({"wait_seconds": 30})).await;
    assert_eq!(second[0]["generation_id"], id.as_str());
    let fresh = lease_of(&second[0]);
    assert_ne!(stale, fresh);

    let r = job_call(&s, &w1, &stale, "heartbeat", json!({"progress_pct": 90})).await;
    assert_error(&r, 409, "LEASE_LOST", "stale heartbeat");
    let r = upload(&s, &w1, &stale, real_mp4()).await;
    assert_error(&r, 409, "LEASE_LOST", "stale upload");
    let r = job_call(
        &s,
        &w1,
        &stale,
        "complete",
        json!({"video_url": "https://x.example/v.mp4"}),
    )
    .await;
    assert_error(&r, 409, "LEASE_LOST", "stale complete");
    let r = job_call(
        &s,
        &w1,
        &stale,
        "fail",
        json!({"code": "TASK_FAILED", "message": "x"}),
    )
    .await;
    assert_error(&r, 409, "LEASE_LOST", "stale fail");
    let r = job_call(&s, &w1, "not-a-lease", "heartbeat", json!({})).await;
    assert_error(&r, 409, "LEASE_LOST", "made-up lease");
    let g = s.generation(&a.api_key, &id).await;
    assert_eq!(g["status"], "processing", "{g}");
    assert_eq!(
        g["progress_pct"], 0,
        "the stale heartbeat recorded nothing: {g}"
    );

    // The current holder fails it: refunded once, and a repeat answers the same.
    let r = job_call(&s, &w2, &fresh, "heartbeat", json!({"progress_pct": 10})).await;
    assert_eq!(r.status, 200, "{r}");
    let r = job_call(
        &s,
        &w2,
        &fresh,
        "fail",
        json!({"code": "TASK_FAILED", "message": "out of memory"}),
    )
    .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body["status"], "failed");
    let again = job_call(
        &s,
        &w2,
        &fresh,
        "fail",
        json!({"code": "TASK_FAILED", "message": "again"}),
    )
    .await;
    assert_eq!(again.status, 200, "{again}");
    assert_eq!(again.body, r.body);
    let g = s.generation(&a.api_key, &id).await;
    assert_eq!(g["error"]["message"], "TASK_FAILED", "{g}");
    assert_eq!(s.balance(&a.api_key).await, "10.0000", "refunded once");
    let r = job_call(
        &s,
        &w1,
        &stale,
        "fail",
        json!({"code": "TASK_FAILED", "message": "x"}),
    )
    .await;
    assert_error(&r, 409, "LEASE_LOST", "stale fail after the end");
}

#[tokio::test]
async fn cancel_and_timeout_win_over_a_late_result() {
    let s = TestServer::start(&[EXTERNAL, ("REELAY_GENERATION_TIMEOUT", "3s")]).await;
    let a = s.create_account("alice", "10").await;
    let w = worker(&s, "gpu", None).await;

    // Timed out while a worker holds it.
    let timed = s.create_generation(&a.api_key, PROMPT).await;
    let job = claim_n(&s, &w, 1, json!({"wait_seconds": 10})).await;
    let lease = lease_of(&job[0]);
    s.wait_for_status(&a.api_key, &timed, "failed", RENDER_DEADLINE)
        .await;
    let r = job_call(&s, &w, &lease, "heartbeat", json!({"progress_pct": 5})).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body["cancel_requested"], true, "{r}");
    let r = upload(&s, &w, &lease, real_mp4()).await;
    assert_error(&r, 409, "LEASE_LOST", "upload after timeout");
    let g = s.generation(&a.api_key, &timed).await;
    assert_eq!(g["error"]["message"], "TIMEOUT", "{g}");
    assert_eq!(s.balance(&a.api_key).await, "10.0000", "refunded once");
}

#[tokio::test]
async fn cancel_tells_the_worker_and_refuses_its_result() {
    let s = TestServer::start(&[EXTERNAL]).await;
    let a = s.create_account("alice", "10").await;
    let w = worker(&s, "gpu", None).await;
    let id = s.create_generation(&a.api_key, PROMPT).await;
    let job = claim_n(&s, &w, 1, json!({"wait_seconds": 10})).await;
    let lease = lease_of(&job[0]);
    let r = s.cancel(&a.api_key, &id).await;
    assert_eq!(r.status, 200, "{r}");
    let r = job_call(&s, &w, &lease, "heartbeat", json!({})).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body["cancel_requested"], true, "{r}");
    let r = job_call(
        &s,
        &w,
        &lease,
        "complete",
        json!({"video_url": "https://cdn.example.com/v.mp4"}),
    )
    .await;
    assert_error(&r, 409, "LEASE_LOST", "complete after cancel");
    let r = upload(&s, &w, &lease, real_mp4()).await;
    assert_error(&r, 409, "LEASE_LOST", "upload after cancel");
    let g = s.generation(&a.api_key, &id).await;
    assert_eq!(g["error"]["message"], "CANCELLED", "{g}");
    assert_eq!(s.balance(&a.api_key).await, "10.0000", "refunded once");
}

#[tokio::test]
async fn tokens_keys_models_and_moderation() {
    let s = TestServer::start(&[EXTERNAL, ("REELAY_WORKER_MAX_VIDEO_BYTES", "1000")]).await;
    let a = s.create_account("alice", "10").await;
    let quality = worker(&s, "quality-only", Some("veo-3-quality")).await;
    let any = worker(&s, "any", None).await;

    // Neither kind of secret opens the other's routes.
    let r = claim(&s, &a.api_key, json!({})).await;
    assert_error(&r, 401, "UNAUTHORIZED", "API key as a worker token");
    let r = s.get(&any, "/v1/data/balance").await;
    assert_error(&r, 401, "UNAUTHORIZED", "worker token as an API key");

    let unsafe_id = s.create_generation(&a.api_key, "nsfw at night").await;
    let fast = s.create_generation(&a.api_key, PROMPT).await;
    let q = s
        .generate_ok(
            &a.api_key,
            &json!({"prompt": PROMPT, "model": "veo-3-quality"}),
        )
        .await["generation_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The quality-only token gets only the quality job, even when it asks for more.
    let jobs = claim_n(
        &s,
        &quality,
        1,
        json!({"max_jobs": 16, "models": ["veo-3-fast", "veo-3-quality"]}),
    )
    .await;
    assert_eq!(jobs[0]["generation_id"], q.as_str());
    claim_n(&s, &quality, 0, json!({"max_jobs": 16})).await;
    // A refused prompt never reaches a worker: moderation fails it at claim.
    let jobs = claim_n(
        &s,
        &any,
        1,
        json!({"max_jobs": 16, "models": ["veo-3-fast"]}),
    )
    .await;
    assert_eq!(jobs[0]["generation_id"], fast.as_str());
    let g = s.generation(&a.api_key, &unsafe_id).await;
    assert_eq!(g["error"]["message"], "UNSAFE_CONTENT", "{g}");

    // Over the size cap: 413, nothing changes.
    let r = upload(&s, &any, &lease_of(&jobs[0]), real_mp4()).await;
    assert_error(&r, 413, "PAYLOAD_TOO_LARGE", "over the cap");
    assert_eq!(
        s.generation(&a.api_key, &fast).await["status"],
        "processing"
    );

    // Bad claims.
    let r = claim(&s, &any, json!({"max_jobs": 17})).await;
    assert_invalid_field(&r, "max_jobs", "max_jobs 17");
    let r = claim(&s, &any, json!({"wait_seconds": 31})).await;
    assert_invalid_field(&r, "wait_seconds", "wait 31");
    let r = claim(&s, &any, json!({"models": ["sora"]})).await;
    assert_invalid_field(&r, "models", "unknown model");

    // Listed without secrets; a revoked token stops at once.
    let list = s.cli_json(&["workers", "list", "--json"]).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["models"], json!(["veo-3-quality"]));
    assert!(
        !format!("{list:?}").contains(&any),
        "no secret in the listing"
    );
    let id = list[1]["worker_id"].as_str().unwrap();
    let (code, _, err) = s.cli(&["workers", "revoke", id]).await;
    assert_eq!(code, 0, "{err}");
    let r = claim(&s, &any, json!({})).await;
    assert_error(&r, 401, "UNAUTHORIZED", "revoked worker token");
}

#[tokio::test]
async fn long_polls_past_the_cap_are_refused() {
    let s = TestServer::start(&[EXTERNAL, ("REELAY_WORKER_MAX_POLLS", "1")]).await;
    let w = worker(&s, "gpu", None).await;
    // A claim that does not wait is never refused.
    claim_n(&s, &w, 0, json!({"wait_seconds": 0})).await;
    // One long-poll waits; a second one meanwhile is refused. (Which of the two arrives first
    // is up to the scheduler: retry until the second came while the first was waiting.)
    for _ in 0..20 {
        let rb = s
            .req(Method::POST, "/v1/worker/claim", Some(&w))
            .json(&json!({"wait_seconds": 3}));
        let long = tokio::spawn(send(rb));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let probe = claim(&s, &w, json!({"wait_seconds": 1})).await;
        let long = long.await.unwrap();
        if probe.status == 503 {
            assert_error(&probe, 503, "BUSY", "second long-poll");
            assert_eq!(
                long.status, 200,
                "the first long-poll ends normally: {long}"
            );
            assert_eq!(long.body["jobs"], json!([]));
            return;
        }
    }
    panic!("no long-poll was refused in 20 tries with a cap of 1");
}

#[tokio::test]
async fn a_job_that_keeps_losing_its_lease_fails_refunded_once() {
    let s = TestServer::start(&[
        EXTERNAL,
        ("REELAY_WORKER_LEASE", "1s"),
        ("REELAY_MAX_LOST_LEASES", "2"),
    ])
    .await;
    let a = s.create_account("alice", "10").await;
    let w = worker(&s, "crashy", None).await;
    let id = s.create_generation(&a.api_key, PROMPT).await;
    assert_eq!(s.balance(&a.api_key).await, "9.7500");

    // Two workers take it and vanish without a heartbeat; each time it comes back.
    let first = claim_n(&s, &w, 1, json!({"wait_seconds": 10})).await;
    let second = claim_n(&s, &w, 1, json!({"wait_seconds": 30})).await;
    assert_eq!(second[0]["generation_id"], id.as_str());
    // After the second lost lease it is not handed out again: it fails, refunded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        claim_n(&s, &w, 0, json!({"wait_seconds": 2})).await;
        if s.generation(&a.api_key, &id).await["status"] == "failed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still not failed after its leases lapsed twice"
        );
    }
    let g = s.generation(&a.api_key, &id).await;
    assert_eq!(g["error"]["message"], "TASK_FAILED", "{g}");
    assert_eq!(s.balance(&a.api_key).await, "10.0000", "refunded");
    // Neither lost lease can bring a result in, and nothing is refunded twice.
    for job in [&first[0], &second[0]] {
        let r = upload(&s, &w, &lease_of(job), real_mp4()).await;
        assert_error(&r, 409, "LEASE_LOST", "late upload");
        let r = job_call(
            &s,
            &w,
            &lease_of(job),
            "fail",
            json!({"code": "TASK_FAILED", "message": "x"}),
        )
        .await;
        assert_error(&r, 409, "LEASE_LOST", "late fail");
    }
    assert_eq!(s.balance(&a.api_key).await, "10.0000", "refunded once");
}

#[tokio::test]
async fn a_server_restart_leaves_workers_their_jobs() {
    let mut s = TestServer::start(&[EXTERNAL]).await;
    let a = s.create_account("alice", "10").await;
    let w = worker(&s, "steady", None).await;
    let id = s.create_generation(&a.api_key, PROMPT).await;
    let job = claim_n(&s, &w, 1, json!({"wait_seconds": 10})).await;
    let lease = lease_of(&job[0]);

    // kill -9 and start again on the same data: the worker's lease is not the server's to
    // release, so the worker carries on as if nothing happened.
    s.restart().await;
    let r = job_call(&s, &w, &lease, "heartbeat", json!({"progress_pct": 50})).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.body["cancel_requested"], false, "{r}");
    claim_n(&s, &w, 0, json!({"wait_seconds": 0})).await;
    let r = upload(&s, &w, &lease, real_mp4()).await;
    assert_eq!(r.status, 200, "{r}");
    let g = s.generation(&a.api_key, &id).await;
    assert_eq!(g["status"], "completed", "{g}");
}
