//! `limit`: the load generator's client POSTing webhook-sized bodies straight to the
//! receiver, same concurrency, no reelay: the ceiling every other figure is compared with.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::Ctx;
use crate::load::closed_loop;
use crate::progress;
use crate::receiver::Receiver;
use crate::report::Row;
use crate::stats::rate;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let receiver = Receiver::start(0)?;
    let duration = ctx.pick(Duration::from_secs(2), Duration::from_secs(10));
    let url: std::sync::Arc<str> = receiver.url(0).into();
    let client = ctx.client.clone();
    let post = move |i: u64| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body = format!(
                r#"{{"generation_id":"limit-{i}","status":"completed","prompt":"benchmark prompt number {i}","video_url":"http://127.0.0.1:8080/videos/limit-{i}.mp4","created_at":"2025-12-06T21:43:03.374000","completed_at":"2025-12-06T21:43:03.375000","seed":319790131,"error":null}}"#
            );
            let response = client
                .post(&*url)
                .header("content-type", "application/json")
                .header("webhook-id", format!("msg_limit_{i}"))
                .body(body)
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("receiver answered {}", response.status());
            }
            response.bytes().await?;
            Ok(())
        }
    };
    // Warm the connection pool, then measure.
    closed_loop(
        ctx.concurrency as u64 * 4,
        ctx.concurrency,
        Instant::now() + Duration::from_secs(5),
        {
            let post = post.clone();
            move |i| post(u64::MAX / 2 + i)
        },
    )
    .await;
    progress!("limit: {} clients for {duration:?}", ctx.concurrency);
    let out = closed_loop(
        100_000_000,
        ctx.concurrency,
        Instant::now() + duration,
        post,
    )
    .await;
    out.check("limit")?;
    let raw = rate(out.results.len() as u64, out.elapsed());
    let mut row = ctx.row("limit", &format!("c={}", ctx.concurrency));
    row.backend = "-".into();
    row.events = Some(out.results.len() as u64);
    row.raw_requests_per_s = raw;
    row.lost = Some(out.failures);
    row.duplicates = Some(receiver.recorder.duplicates());
    Ok(vec![row])
}
