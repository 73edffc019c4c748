//! SPEC §2 "at least once": 1000 generations with a callback, the server killed with SIGKILL
//! while their webhooks are arriving, restarted on the same data directory — every event
//! still reaches the receiver (duplicates allowed: receivers dedupe by `webhook-id`).
//!
//! A request counts as acknowledged only if the receiver answered it before the kill; a
//! request that arrived but was still being answered when the server died must arrive again.

mod common;
mod receiver;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use receiver::{Plan, Received, Receiver, Reply};
use serde_json::json;

const TOTAL: usize = 1000;

fn generation_of(r: &Received) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    v["generation_id"].as_str().map(str::to_string)
}

#[tokio::test]
async fn kill9_while_webhooks_arrive_then_every_event_arrives_at_least_once() {
    // A receiver that takes 100 ms per request, and at most 4 requests at once to it: about
    // 40 webhooks a second, so the kill lands while they are still arriving, and while some
    // are being answered.
    let rx = Receiver::with_plan(Plan::always(Reply::ok().delay(Duration::from_millis(100)))).await;
    let mut s = TestServer::start(&[
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_RENDER_CONCURRENCY", "64"),
        ("REELAY_WEBHOOK_PER_DESTINATION", "4"),
        ("REELAY_WEBHOOK_RETRY_INTERVAL", "1s"),
    ])
    .await;
    let a = s.create_account("crash", "1000").await;

    let url = rx.url("/hook");
    let sref = &s;
    let key = a.api_key.as_str();
    let created: Vec<String> = futures::stream::iter(0..TOTAL)
        .map(|i| {
            let url = url.clone();
            async move {
                let b = sref
                    .generate_ok(
                        key,
                        &json!({
                            "prompt": format!("A lighthouse in a storm, take {i}"),
                            "callback_url": url,
                        }),
                    )
                    .await;
                b["generation_id"].as_str().unwrap().to_string()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let created: HashSet<String> = created.into_iter().collect();
    assert_eq!(created.len(), TOTAL, "{TOTAL} distinct generations created");

    // Kill right after a request arrives (it is then being answered), once some, but not
    // all, have arrived.
    rx.wait_until(Duration::from_secs(120), "100 webhooks", |r| r.len() >= 100)
        .await;
    let t_kill = Instant::now();
    s.kill9();
    let before = rx.requests();
    let unique_before: HashSet<String> = before.iter().filter_map(generation_of).collect();
    assert!(
        unique_before.len() < TOTAL,
        "all {TOTAL} webhooks arrived before the kill; the test did not kill mid-stream"
    );
    let acked: HashSet<String> = before
        .iter()
        .filter(|r| r.answered_at.is_some_and(|t| t < t_kill))
        .filter_map(generation_of)
        .collect();
    let unacked: HashSet<String> = unique_before.difference(&acked).cloned().collect();
    eprintln!(
        "killed with {} requests received: {} answered, {} still being answered",
        before.len(),
        acked.len(),
        unacked.len()
    );
    assert!(
        !unacked.is_empty(),
        "the kill should land while a webhook is being answered (100 ms each)"
    );
    s.restart().await;

    // Every generation's event is acknowledged before the kill or arrives after it.
    let deadline = Duration::from_secs(120);
    let started = Instant::now();
    let got = rx
        .wait_until(deadline, "every generation's webhook", |reqs| {
            let mut seen: HashSet<String> = acked.clone();
            seen.extend(
                reqs.iter()
                    .filter(|r| r.at > t_kill)
                    .filter_map(generation_of),
            );
            created.iter().all(|g| seen.contains(g))
        })
        .await;
    eprintln!(
        "every event delivered {:.1} s after the restart",
        started.elapsed().as_secs_f64()
    );
    let after: HashSet<String> = got
        .iter()
        .filter(|r| r.at > t_kill)
        .filter_map(generation_of)
        .collect();
    for g in &unacked {
        assert!(
            after.contains(g),
            "{g} was in flight at the kill and must be sent again"
        );
    }

    // One webhook-id per generation, always the same one.
    let mut id_of: HashMap<String, String> = HashMap::new();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &got {
        let gen_id = generation_of(r).expect("a generation_id in every body");
        assert!(created.contains(&gen_id), "unknown generation {gen_id}");
        let wid = r.webhook_id();
        if let Some(prev) = id_of.insert(gen_id.clone(), wid.clone()) {
            assert_eq!(
                prev, wid,
                "generation {gen_id} was sent under two webhook-ids"
            );
        }
        *per_id.entry(wid).or_default() += 1;
    }
    assert_eq!(per_id.len(), TOTAL, "{TOTAL} distinct webhook-ids");

    // The API agrees: every delivery is `delivered` (bounded wait for the last records).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut delivered = 0;
        let mut other = Vec::new();
        for page in 0..TOTAL.div_ceil(100) {
            let list = s
                .list(&a.api_key, &format!("?limit=100&offset={}", page * 100))
                .await;
            for g in list["generations"].as_array().unwrap() {
                if g["webhook"]["state"] == "delivered" {
                    delivered += 1;
                } else {
                    other.push(g["webhook"].clone());
                }
            }
        }
        if delivered == TOTAL {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {TOTAL} deliveries `delivered` 60 s after all arrived; others: {:?}",
            other.iter().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let all = rx.requests();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &all {
        *counts.entry(r.webhook_id()).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let most = counts.values().max().copied().unwrap_or(0);
    eprintln!(
        "duplicates: {duplicates} extra requests over {TOTAL} events ({} requests in all, {} \
         before the kill; most for one event: {most})",
        all.len(),
        before.len()
    );
}
