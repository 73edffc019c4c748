//! Credits are charged atomically at creation: concurrent creates never overdraw a balance, and
//! an Idempotency-Key charges once.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

const INSTANT: &[(&str, &str)] = &[("REELAY_GENERATOR", "instant")];

#[tokio::test]
async fn fifty_concurrent_creates_against_a_balance_for_ten() {
    let s = TestServer::start(INSTANT).await;
    // 2.5 credits = exactly 10 × veo-3-fast (0.25).
    let a = s.create_account("race", "2.5").await;

    let done = Arc::new(AtomicBool::new(false));
    // Watches the balance during the storm: it must never go negative. Bounded: stops when the
    // creates are done, or after 2000 looks.
    let watcher = {
        let done = done.clone();
        let s = &s;
        let key = a.api_key.clone();
        async move {
            let mut seen = Vec::new();
            for _ in 0..2000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let b = s.balance(&key).await;
                assert!(!b.starts_with('-'), "balance went negative: {b}");
                seen.push(b);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }
    };
    let creates = async {
        let bodies: Vec<Value> = (0..50)
            .map(|i| json!({ "prompt": format!("A hummingbird in slow motion, number {i}") }))
            .collect();
        let futs = bodies.iter().map(|b| s.generate(&a.api_key, b));
        let out = join_all(futs).await;
        done.store(true, Ordering::SeqCst);
        out
    };
    let (responses, _seen) = tokio::join!(creates, watcher);

    let mut ids = HashSet::new();
    let mut refused = 0;
    for r in &responses {
        match r.status {
            201 => {
                let id = assert_created_shape(&r.body, "0.2500", "concurrent create");
                assert!(ids.insert(id), "duplicate generation_id: {r}");
            }
            402 => {
                assert_error(r, 402, "INSUFFICIENT_CREDITS", "concurrent create");
                refused += 1;
            }
            _ => panic!("unexpected answer to a concurrent create: {r}"),
        }
    }
    assert_eq!(ids.len(), 10, "exactly 10 creates succeed");
    assert_eq!(refused, 40, "exactly 40 get 402");
    assert_eq!(s.balance(&a.api_key).await, "0.0000", "balance ends at 0");

    // 402 created nothing.
    let list = s.list(&a.api_key, "?limit=100").await;
    assert_eq!(list["total"], 10, "{list}");
    let listed: HashSet<String> = list["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed, ids,
        "the listed generations are the 10 that got 201"
    );

    // Still nothing more to spend.
    let r = s.generate(&a.api_key, &json!({ "prompt": PROMPT })).await;
    assert_error(&r, 402, "INSUFFICIENT_CREDITS", "create at balance 0");
    assert_eq!(s.balance(&a.api_key).await, "0.0000");
    assert_eq!(s.list(&a.api_key, "").await["total"], 10);
}

#[tokio::test]
async fn insufficient_credits_creates_nothing() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("poor", "1.2").await;

    let b = s
        .generate_ok(
            &a.api_key,
            &json!({ "prompt": PROMPT, "model": "veo-3-quality" }),
        )
        .await;
    assert_created_shape(&b, "1.0000", "quality at 1.2");
    assert_eq!(s.balance(&a.api_key).await, "0.2000");

    for model in ["veo-3-fast", "veo-3-quality"] {
        let r = s
            .generate(&a.api_key, &json!({ "prompt": PROMPT, "model": model }))
            .await;
        assert_error(&r, 402, "INSUFFICIENT_CREDITS", &format!("{model} at 0.2"));
    }
    assert_eq!(s.balance(&a.api_key).await, "0.2000");
    assert_eq!(s.list(&a.api_key, "").await["total"], 1);

    // Credits added from the CLI while the server runs unblock the account.
    let v = s.add_credits(&a.account_id, "0.05").await;
    assert_eq!(v["balance"], "0.2500", "{v}");
    let b = s
        .generate_ok(&a.api_key, &json!({ "prompt": PROMPT }))
        .await;
    assert_created_shape(&b, "0.2500", "after top-up");
    assert_eq!(s.balance(&a.api_key).await, "0.0000");

    // An account created with no credits at all.
    let z = s.create_account("zero", "0").await;
    let r = s.generate(&z.api_key, &json!({ "prompt": PROMPT })).await;
    assert_error(&r, 402, "INSUFFICIENT_CREDITS", "zero balance");
    assert_eq!(s.balance(&z.api_key).await, "0.0000");
}

async fn create_with_key(s: &TestServer, api_key: &str, idem: &str, body: &Value) -> Resp {
    send(
        s.req(Method::POST, "/v1/veo/generate", Some(api_key))
            .header("Idempotency-Key", idem)
            .json(body),
    )
    .await
}

#[tokio::test]
async fn same_idempotency_key_twenty_times_at_once_charges_once() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("idem", "10").await;
    let body = json!({ "prompt": PROMPT, "seed": 1234 });
    let key = "order-42-attempt";

    let responses = join_all((0..20).map(|_| create_with_key(&s, &a.api_key, key, &body))).await;
    let mut ids = HashSet::new();
    let mut first_success: Option<Value> = None;
    for r in &responses {
        match r.status {
            201 => {
                assert_created_shape(&r.body, "0.2500", "idempotent create");
                ids.insert(r.body["generation_id"].as_str().unwrap().to_string());
                if let Some(f) = &first_success {
                    assert_eq!(&r.body, f, "every success returns the first response");
                } else {
                    first_success = Some(r.body.clone());
                }
            }
            // A request racing the first one may be told to retry, but never charged.
            409 => assert!(
                ["IDEMPOTENCY_CONFLICT", "CONFLICT"]
                    .contains(&r.body["detail"].as_str().unwrap_or("")),
                "{r}"
            ),
            _ => panic!("unexpected answer to a repeated Idempotency-Key: {r}"),
        }
    }
    assert_eq!(
        ids.len(),
        1,
        "all successes carry the same generation_id: {ids:?}"
    );
    let first = first_success.expect("at least one 201");
    assert_eq!(s.balance(&a.api_key).await, "9.7500", "charged once");
    assert_eq!(s.list(&a.api_key, "").await["total"], 1, "one generation");

    // Later replays get the same response.
    for _ in 0..3 {
        let r = create_with_key(&s, &a.api_key, key, &body).await;
        assert_eq!(r.status, 201, "{r}");
        assert_eq!(r.body, first, "replay returns the first response");
    }
    assert_eq!(s.balance(&a.api_key).await, "9.7500");

    // Same key, another body → 409, nothing created.
    let other = json!({ "prompt": "A completely different prompt here", "seed": 1234 });
    let r = create_with_key(&s, &a.api_key, key, &other).await;
    assert_error(&r, 409, "IDEMPOTENCY_CONFLICT", "same key, other body");
    let r = create_with_key(
        &s,
        &a.api_key,
        key,
        &json!({ "prompt": PROMPT, "seed": 1235 }),
    )
    .await;
    assert_error(&r, 409, "IDEMPOTENCY_CONFLICT", "same key, other seed");
    assert_eq!(s.balance(&a.api_key).await, "9.7500");
    assert_eq!(s.list(&a.api_key, "").await["total"], 1);

    // Another key → another generation.
    let r = create_with_key(&s, &a.api_key, "order-43", &body).await;
    assert_eq!(r.status, 201, "{r}");
    assert_ne!(r.body["generation_id"], first["generation_id"]);
    assert_eq!(s.balance(&a.api_key).await, "9.5000");

    // Keys belong to an account: another account using the same key string is independent.
    let b = s.create_account("idem-other", "10").await;
    let r = create_with_key(&s, &b.api_key, key, &body).await;
    assert_eq!(r.status, 201, "{r}");
    assert_ne!(
        r.body["generation_id"], first["generation_id"],
        "another account's Idempotency-Key never returns someone else's generation"
    );
    assert_eq!(s.balance(&b.api_key).await, "9.7500");
    assert_eq!(s.balance(&a.api_key).await, "9.5000");
}

#[tokio::test]
async fn idempotency_key_length_limit() {
    let s = TestServer::start(INSTANT).await;
    let a = s.create_account("idem-len", "10").await;
    let body = json!({ "prompt": PROMPT });

    let ok = "k".repeat(255);
    let r = create_with_key(&s, &a.api_key, &ok, &body).await;
    assert_eq!(r.status, 201, "255-char Idempotency-Key: {r}");

    let too_long = "k".repeat(256);
    let r = create_with_key(&s, &a.api_key, &too_long, &body).await;
    assert_error(&r, 422, "INVALID_PARAMETERS", "256-char Idempotency-Key");
    assert_eq!(s.balance(&a.api_key).await, "9.7500");
}
