//! SPEC §5: a request acknowledged is never lost — kill -9 the server while tasks are
//! processing, start it again on the same data directory, and every task completes.

mod common;

use std::time::{Duration, Instant};

use common::*;

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
