//! Retention, black-box: with short settings a video answers 410 GONE once its retention is
//! over and a generation 404 once its records' is, while balances stay as they were; and the
//! API keeps answering while 100,000 rows are pruned.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::json;

/// Upper bound for retention to act once something is due (it runs every quarter of the
/// media retention, here 1 s, at least).
const PRUNE_DEADLINE: Duration = Duration::from_secs(60);

fn png() -> String {
    let mut out = Vec::new();
    image::RgbImage::from_pixel(32, 18, image::Rgb([10, 200, 90]))
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(out)
}

#[tokio::test]
async fn an_expired_video_answers_410_then_its_generation_404_and_balances_stay() {
    let s = TestServer::start(&[
        ("REELAY_RETENTION", "2s"),
        ("REELAY_RECORDS_RETENTION", "6s"),
    ])
    .await;
    let a = s.create_account("kept", "10").await;
    let body = json!({"prompt": PROMPT, "bytes_image": png()});
    let id = s.generate_ok(&a.api_key, &body).await["generation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let g = s.wait_terminal(&a.api_key, &id, RENDER_DEADLINE).await;
    assert_eq!(g["status"], "completed", "{g}");
    let video_url = g["video_url"].as_str().unwrap().to_owned();
    let r = send(s.http.get(&video_url)).await;
    assert_eq!(r.status, 200, "{r}");
    let balance = s.balance(&a.api_key).await;
    let inputs = s.data_dir().join("inputs").join(&id);
    assert!(inputs.exists(), "its input image is kept meanwhile");

    let until = Instant::now() + PRUNE_DEADLINE;
    let gone = loop {
        let r = send(s.http.get(&video_url)).await;
        if r.status != 200 {
            break r;
        }
        assert!(Instant::now() < until, "the video is still served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_error(&gone, 410, "GONE", "an expired video");
    assert!(!inputs.exists(), "its input images are deleted too");
    let videos: Vec<_> = std::fs::read_dir(s.data_dir().join("videos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.starts_with(&id))
        .collect();
    assert!(videos.is_empty(), "the video file is deleted: {videos:?}");
    // The generation itself is still there until its records' retention.
    assert_eq!(s.generation(&a.api_key, &id).await["status"], "completed");

    let until = Instant::now() + PRUNE_DEADLINE;
    loop {
        let r = s
            .get(&a.api_key, &format!("/v1/veo/generations/{id}"))
            .await;
        if r.status == 404 {
            assert_error(&r, 404, "TASK_NOT_FOUND", "an expired generation");
            break;
        }
        assert!(Instant::now() < until, "the generation is still kept: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.list(&a.api_key, "").await["total"], 0);
    assert_eq!(s.balance(&a.api_key).await, balance, "the balance is kept");
    let (code, out, err) = s.cli(&["prune", "--dry-run", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let preview: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(preview, json!({"dry_run": true, "media": 0, "records": 0}));
}

#[tokio::test]
async fn the_api_keeps_answering_during_a_prune_of_100000_rows() {
    const ROWS: i64 = 100_000;
    let mut s = TestServer::start(&[
        ("REELAY_GENERATOR", "instant"),
        ("REELAY_RETENTION", "1s"),
        ("REELAY_RECORDS_RETENTION", "1s"),
    ])
    .await;
    let a = s.create_account("busy", "1000").await;
    s.kill9();
    // 100,000 generations that ended long ago, written straight into the database.
    let db = rusqlite::Connection::open(s.data_dir().join("reelay.sqlite3")).unwrap();
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) \
         INSERT INTO generations (id, account_id, status, prompt, model, aspect_ratio, seed, \
             price, created_at, deadline_at, started_at, completed_at, progress_pct, \
             video_file, video_url) \
         SELECT printf('00000000-0000-7000-8000-%012d', i), ?1, 'completed', 'an old prompt', \
             'veo-3-fast', '16:9', 0, 0, 1000 + i, 9000 + i, 1000 + i, 2000 + i, 100, \
             'gone.mp4', 'https://example.com/gone.mp4' FROM n",
        rusqlite::params![a.account_id, ROWS],
    )
    .unwrap();
    drop(db);
    let dry = s.cli(&["prune", "--dry-run", "--json"]).await;
    let preview: serde_json::Value = serde_json::from_str(dry.1.trim()).unwrap();
    assert_eq!(preview["media"], ROWS, "{preview}");

    // Retention starts at once with the server; meanwhile the API must keep answering.
    s.restart().await;
    let old_left = || {
        let db = rusqlite::Connection::open_with_flags(
            s.data_dir().join("reelay.sqlite3"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.query_row(
            "SELECT COUNT(*) FROM generations WHERE id LIKE '00000000-0000-7000-8000-%'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    };
    let (mut creates, mut reads) = (0, 0);
    let until = Instant::now() + Duration::from_secs(300);
    let mut left = old_left();
    while left > 0 {
        assert!(
            Instant::now() < until,
            "the prune did not finish: {left} left"
        );
        let created = s.generate(&a.api_key, &json!({"prompt": PROMPT})).await;
        assert_eq!(created.status, 201, "a create during the prune: {created}");
        creates += 1;
        s.balance(&a.api_key).await;
        s.list(&a.api_key, "").await;
        reads += 2;
        left = old_left();
    }
    assert!(
        creates >= 2,
        "requests were answered while it pruned: {creates} creates, {reads} reads"
    );
    eprintln!("answered during the prune of {ROWS} rows: {creates} creates, {reads} reads");
    // Nothing of the ledger went: the balance is what the creates left.
    let expected = 1000.0 - 0.25 * f64::from(creates);
    let balance: f64 = s.balance(&a.api_key).await.parse().unwrap();
    assert!((balance - expected).abs() < 1e-9, "{balance} vs {expected}");
}
