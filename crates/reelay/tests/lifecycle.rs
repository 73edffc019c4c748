//! SPEC §3: a generation's life through real HTTP — completed with a playable MP4, refused by
//! moderation, timed out (refunded once), cancelled (refunded once).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Downloads a video and checks it looks like an H.264 MP4.
async fn fetch_mp4(s: &TestServer, url: &str) -> Vec<u8> {
    let r = send(s.http.get(url)).await;
    assert_eq!(r.status, 200, "GET {url} -> {}", r.status);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("video/mp4"),
        "Content-Type of {url}"
    );
    let b = r.bytes;
    assert!(b.len() > 1000, "video is only {} bytes", b.len());
    assert_eq!(&b[4..8], b"ftyp", "an MP4 starts with an ftyp box");
    assert!(find(&b, b"moov"), "the MP4 has a moov box");
    assert!(find(&b, b"mdat"), "the MP4 has an mdat box");
    assert!(find(&b, b"avc1"), "the MP4 carries H.264 (avc1)");
    b
}

#[tokio::test]
async fn completed_generation_serves_a_valid_mp4_with_ranges() {
    let s = TestServer::start(&[("REELAY_RENDER_DELAY", "2s")]).await;
    let a = s.create_account("render", "10").await;

    let body = json!({ "prompt": PROMPT, "seed": 7, "watermark_text": "reelay" });
    let created = s.generate_ok(&a.api_key, &body).await;
    let id = assert_created_shape(&created, "0.2500", "create");
    assert_eq!(created["seed"], 7);

    // Not finished yet: no video.
    let early = s.get_noauth(&format!("/videos/{id}.mp4")).await;
    let g = s.generation(&a.api_key, &id).await;
    assert_generation_shape(&g, "just created");
    if g["status"] != "completed" {
        assert_eq!(
            early.status, 404,
            "video of an unfinished generation: {early}"
        );
    }
    if g["status"] == "pending" || g["status"] == "processing" {
        let q = &g["queue_position"];
        assert!(
            q.is_null() || q.is_u64(),
            "queue_position is a number while pending/processing: {g}"
        );
        let p = &g["progress_pct"];
        assert!(
            p.is_null() || p.as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)),
            "progress_pct is 0..=100: {g}"
        );
    }

    let g = s
        .wait_for_status(&a.api_key, &id, "completed", RENDER_DEADLINE)
        .await;
    assert_generation_shape(&g, "completed");
    assert_eq!(g["prompt"], PROMPT);
    assert_eq!(g["seed"], 7);
    assert!(g["error"].is_null(), "{g}");
    assert!(
        g["queue_position"].is_null(),
        "no queue position once done: {g}"
    );
    let video_url = g["video_url"].as_str().expect("video_url").to_string();
    let capability = video_url
        .strip_prefix(&format!("{}/videos/{id}/", s.url))
        .and_then(|rest| rest.strip_suffix(".mp4"))
        .unwrap_or_else(|| {
            panic!("video_url is absolute, on the public URL, with a capability: {video_url}")
        });
    assert!(
        capability.len() >= 22,
        "the capability carries at least 128 bits: {video_url}"
    );
    // The generation id alone, or with another capability, opens nothing.
    for guess in [
        format!("/videos/{id}.mp4"),
        format!("/videos/{id}/AAAAAAAAAAAAAAAAAAAAAA.mp4"),
        format!("/videos/{id}/{}.mp4", &capability[..21]),
    ] {
        let r = s.get_noauth(&guess).await;
        assert_eq!(r.status, 404, "{guess} must not serve the video: {r}");
    }
    assert!(
        g["completed_at"].as_str().unwrap() >= g["created_at"].as_str().unwrap(),
        "completed_at >= created_at: {g}"
    );
    assert_eq!(
        s.balance(&a.api_key).await,
        "9.7500",
        "completed is not refunded"
    );

    // The video, without any Authorization header.
    let full = fetch_mp4(&s, &video_url).await;

    // Range requests.
    let r = send(s.http.get(&video_url).header("Range", "bytes=0-99")).await;
    assert_eq!(r.status, 206, "Range bytes=0-99: {}", r.status);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some(format!("bytes 0-99/{}", full.len()).as_str()),
        "Content-Range"
    );
    assert_eq!(r.bytes, full[..100], "first 100 bytes");
    let r = send(s.http.get(&video_url).header("Range", "bytes=100-")).await;
    assert_eq!(r.status, 206, "Range bytes=100-: {}", r.status);
    assert_eq!(r.bytes, full[100..], "bytes from 100 to the end");
    let last = full.len() - 1;
    let r = send(
        s.http
            .get(&video_url)
            .header("Range", format!("bytes={last}-{last}")),
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.bytes, full[last..]);

    // Unknown videos.
    let r = s
        .get_noauth(&format!("/videos/{}.mp4", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(r.status, 404, "unknown video: {r}");

    // A finished generation cannot be cancelled.
    let r = s.cancel(&a.api_key, &id).await;
    assert_error(&r, 409, "CONFLICT", "cancel a completed generation");
    assert_eq!(
        s.generation(&a.api_key, &id).await["status"],
        "completed",
        "still completed after a refused cancel"
    );
    assert_eq!(
        s.balance(&a.api_key).await,
        "9.7500",
        "refused cancel refunds nothing"
    );

    // Same inputs → same bytes (SPEC §4).
    let id2 = s.generate_ok(&a.api_key, &body).await["generation_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(id2, id);
    let g2 = s
        .wait_for_status(&a.api_key, &id2, "completed", RENDER_DEADLINE)
        .await;
    let again = fetch_mp4(&s, g2["video_url"].as_str().unwrap()).await;
    assert!(
        again == full,
        "same prompt + seed + options must give the same MP4 bytes"
    );
}

#[tokio::test]
async fn nine_sixteen_and_quality_model_complete_too() {
    let s = TestServer::start(&[]).await;
    let a = s.create_account("portrait", "10").await;
    let b = s
        .generate_ok(
            &a.api_key,
            &json!({ "prompt": PROMPT, "aspect_ratio": "9:16", "model": "veo-3-quality" }),
        )
        .await;
    let id = assert_created_shape(&b, "1.0000", "9:16 quality");
    let g = s
        .wait_for_status(&a.api_key, &id, "completed", RENDER_DEADLINE)
        .await;
    assert_generation_shape(&g, "9:16 completed");
    assert_eq!(g["aspect_ratio"], "9:16");
    fetch_mp4(&s, g["video_url"].as_str().unwrap()).await;
    assert_eq!(s.balance(&a.api_key).await, "9.0000");
}

#[tokio::test]
async fn unsafe_content_fails_and_is_not_refunded() {
    let s = TestServer::start(&[]).await;
    let a = s.create_account("moderation", "10").await;

    let mut ids = Vec::new();
    for p in [
        "A NSFW scene on a crowded beach",
        "nsfw",
        "Some nsfw, then a sunset",
    ] {
        let b = s
            .generate_ok(&a.api_key, &json!({ "prompt": format!("{p} at night") }))
            .await;
        ids.push(assert_created_shape(&b, "0.2500", p));
    }
    for id in &ids {
        let g = s
            .wait_for_status(&a.api_key, id, "failed", RENDER_DEADLINE)
            .await;
        assert_generation_shape(&g, "unsafe");
        assert_eq!(
            g["error"],
            json!({ "message": "UNSAFE_CONTENT", "details": {} }),
            "{g}"
        );
        assert!(g["video_url"].is_null(), "{g}");
        let r = s.get_noauth(&format!("/videos/{id}.mp4")).await;
        assert_eq!(r.status, 404, "no video for a refused prompt");
        let r = s.cancel(&a.api_key, id).await;
        assert_error(&r, 409, "CONFLICT", "cancel an UNSAFE_CONTENT generation");
    }
    assert_eq!(
        s.balance(&a.api_key).await,
        "9.2500",
        "UNSAFE_CONTENT is not refunded"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.balance(&a.api_key).await,
        "9.2500",
        "still not refunded later"
    );
}

#[tokio::test]
async fn moderation_terms_file_replaces_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let terms = dir.path().join("terms.txt");
    std::fs::write(&terms, "dragon\n/fo+bar/\n").unwrap();
    let s = TestServer::start(&[
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_MODERATION_TERMS_FILE", terms.to_str().unwrap()),
    ])
    .await;
    let a = s.create_account("terms", "10").await;

    for p in [
        "A Dragon flying over the city",
        "The fooooobar machine at work",
    ] {
        let id = s.create_generation(&a.api_key, p).await;
        let g = s
            .wait_for_status(&a.api_key, &id, "failed", RENDER_DEADLINE)
            .await;
        assert_eq!(g["error"]["message"], "UNSAFE_CONTENT", "{p}: {g}");
    }
    let id = s
        .create_generation(&a.api_key, "A calm river in the spring")
        .await;
    let g = s
        .wait_for_status(&a.api_key, &id, "completed", RENDER_DEADLINE)
        .await;
    assert_generation_shape(&g, "allowed by the custom list");
}

#[tokio::test]
async fn timeout_fails_and_refunds_exactly_once() {
    // Renders take longer than the time limit; one at a time so others wait while pending.
    let s = TestServer::start(&[
        ("REELAY_GENERATION_TIMEOUT", "2s"),
        ("REELAY_RENDER_DELAY", "6s"),
        ("REELAY_RENDER_CONCURRENCY", "1"),
    ])
    .await;
    let a = s.create_account("timeouts", "10").await;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            s.create_generation(&a.api_key, &format!("A slow glacier, part {i}"))
                .await,
        );
    }
    assert_eq!(
        s.balance(&a.api_key).await,
        "9.2500",
        "three charged at creation"
    );

    for id in &ids {
        let g = s
            .wait_for_status(&a.api_key, id, "failed", Duration::from_secs(60))
            .await;
        assert_generation_shape(&g, "timed out");
        assert_eq!(
            g["error"],
            json!({ "message": "TIMEOUT", "details": {} }),
            "{g}"
        );
        assert!(g["video_url"].is_null());
    }
    assert_eq!(
        s.balance(&a.api_key).await,
        "10.0000",
        "TIMEOUT is refunded"
    );

    // The late renders finish in the meantime; their results are refused, nothing changes.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        s.balance(&a.api_key).await,
        "10.0000",
        "refunded exactly once, even after the late results"
    );
    for id in &ids {
        let g = s.generation(&a.api_key, id).await;
        assert_eq!(g["status"], "failed", "a late result is refused: {g}");
        assert_eq!(g["error"]["message"], "TIMEOUT", "{g}");
        assert!(g["video_url"].is_null(), "{g}");
        let r = s.get_noauth(&format!("/videos/{id}.mp4")).await;
        assert_eq!(r.status, 404, "no video for a timed-out generation");
        let r = s.cancel(&a.api_key, id).await;
        assert_error(&r, 409, "CONFLICT", "cancel a timed-out generation");
    }
    assert_eq!(
        s.balance(&a.api_key).await,
        "10.0000",
        "refused cancels refund nothing"
    );
}

#[tokio::test]
async fn cancel_refunds_once_and_a_second_cancel_is_409() {
    let s = TestServer::start(&[
        ("REELAY_RENDER_DELAY", "5s"),
        ("REELAY_RENDER_CONCURRENCY", "1"),
    ])
    .await;
    let a = s.create_account("cancels", "10").await;

    let first = s
        .create_generation(&a.api_key, "A train crossing a bridge")
        .await;
    let second = s
        .create_generation(&a.api_key, "A boat leaving the harbour")
        .await;
    assert_eq!(s.balance(&a.api_key).await, "9.5000");

    // Wait until the first one is processing (the second waits behind it, pending).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let g = s.generation(&a.api_key, &first).await;
        if g["status"] == "processing" {
            break;
        }
        assert_eq!(g["status"], "pending", "first generation: {g}");
        assert!(Instant::now() < deadline, "never processing: {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut expected = ["9.7500", "10.0000"].into_iter();
    for id in [&first, &second] {
        let r = s.cancel(&a.api_key, id).await;
        assert_eq!(r.status, 200, "cancel {id}: {r}");
        assert_generation_shape(&r.body, "cancel response");
        assert_eq!(r.body["generation_id"], id.as_str());
        assert_eq!(r.body["status"], "failed", "{r}");
        assert_eq!(
            r.body["error"],
            json!({ "message": "CANCELLED", "details": {} }),
            "{r}"
        );
        assert_eq!(
            s.balance(&a.api_key).await,
            expected.next().unwrap(),
            "refunded"
        );

        let r = s.cancel(&a.api_key, id).await;
        assert_error(&r, 409, "CONFLICT", "second cancel");
    }
    assert_eq!(s.balance(&a.api_key).await, "10.0000", "refunded once each");

    // After the render delay has passed, nothing came back to life.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for id in [&first, &second] {
        let g = s.generation(&a.api_key, id).await;
        assert_eq!(g["status"], "failed", "{g}");
        assert_eq!(g["error"]["message"], "CANCELLED", "{g}");
        assert!(g["video_url"].is_null(), "{g}");
        let r = s.get_noauth(&format!("/videos/{id}.mp4")).await;
        assert_eq!(r.status, 404, "no video for a cancelled generation");
    }
    assert_eq!(s.balance(&a.api_key).await, "10.0000");

    // The queue is not wedged by the cancellations.
    let third = s
        .create_generation(&a.api_key, "A kite above the dunes")
        .await;
    let g = s
        .wait_for_status(&a.api_key, &third, "completed", RENDER_DEADLINE)
        .await;
    assert_generation_shape(&g, "after cancellations");
    assert_eq!(s.balance(&a.api_key).await, "9.7500");

    let listed = s.list(&a.api_key, "?status=failed").await;
    assert_eq!(listed["total"], 2, "{listed}");
}
