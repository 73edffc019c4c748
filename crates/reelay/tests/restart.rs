//! SPEC §5: a request acknowledged is never lost — kill -9 the server while tasks are
//! processing, start it again on the same data directory, and every task completes. And a
//! server stopped on purpose finishes sending what it started.

mod common;
mod receiver;

use std::time::{Duration, Instant};

use common::*;
use receiver::{Plan, Receiver, Reply};

#[tokio::test]
async fn kill9_while_processing_then_restart_completes_everything() {
    let mut s = TestServer::start(&[("REELAY_RENDER_DELAY", "3s")]).await;
    let a = s.create_account("restart", "10").await;

    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            s.create_generation(&a.api_key, &format!("A windmill turning at dusk, shot {i}"))
                .await,
        );
    }
    assert_eq!(s.balance(&a.api_key).await, "8.5000");

    // Wait until at least one is processing (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    'wait: loop {
        for id in &ids {
            let g = s.generation(&a.api_key, id).await;
            if g["status"] == "processing" {
                break 'wait;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no generation became processing within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before: Vec<String> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(
                s.generation(&a.api_key, id).await["status"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        v
    };
    assert!(
        before.iter().any(|st| st != "completed"),
        "some work must still be in flight when the server is killed: {before:?}"
    );

    eprintln!("statuses when killed: {before:?}");
    s.kill9();
    s.restart().await;

    // Same key, same data: every acknowledged generation is there and completes.
    let deadline = Duration::from_secs(90);
    for id in &ids {
        let g = s
            .wait_for_status(&a.api_key, id, "completed", deadline)
            .await;
        assert_generation_shape(&g, "after restart");
        let r = send(s.http.get(g["video_url"].as_str().expect("video_url"))).await;
        assert_eq!(r.status, 200, "video of {id} after restart");
        assert_eq!(&r.bytes[4..8], b"ftyp", "video of {id} is an MP4");
    }
    let list = s.list(&a.api_key, "").await;
    assert_eq!(list["total"], 6, "no generation lost or duplicated: {list}");
    assert_eq!(
        s.balance(&a.api_key).await,
        "8.5000",
        "nothing charged twice or refunded by the restart"
    );

    // The restarted server accepts new work.
    let id = s.create_generation(&a.api_key, PROMPT).await;
    s.wait_for_status(&a.api_key, &id, "completed", RENDER_DEADLINE)
        .await;
}

/// SIGTERM while a webhook is being answered: the server waits for the answer and records it
/// before it exits, so started again it does not send that webhook a second time.
#[tokio::test]
async fn sigterm_while_a_webhook_is_answered_records_it_and_never_sends_it_again() {
    let rx = Receiver::with_plan(Plan::always(Reply::ok().delay(Duration::from_secs(2)))).await;
    let mut s = TestServer::start(&[
        ("REELAY_ALLOW_INSECURE_CALLBACKS", "true"),
        ("REELAY_GENERATOR", "instant"),
    ])
    .await;
    let a = s.create_account("stop", "10").await;
    let id = create_with_callback(&s, &a.api_key, PROMPT, &rx.url("/hook")).await;
    rx.wait_for(1, Duration::from_secs(30)).await;

    let status = s
        .terminate(Duration::from_secs(30))
        .await
        .expect("the server exits within 30 s of SIGTERM");
    assert!(status.success(), "a stop is a clean exit: {status}");
    assert_eq!(rx.count(), 1);

    s.restart().await;
    let g = wait_webhook_state(&s, &a.api_key, &id, "delivered", Duration::from_secs(5)).await;
    let d = deliveries(&s, &a.api_key, &id).await;
    assert_eq!(
        attempts(&d).len(),
        1,
        "one attempt, recorded before the exit: {d}"
    );
    assert_eq!(g["webhook"]["attempts"], 1, "{g}");
    // A resend would leave at once on this start (the lease given back) or when the lease
    // lapses on the next; the receiver's 2 s answer bounds how long one takes to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent: Vec<String> = rx.requests().iter().map(|r| r.webhook_id()).collect();
    assert_eq!(sent.len(), 1, "the webhook was sent once: {sent:?}");
}
