//! `limit`: a client POSTing webhook-sized bodies straight to the receiver, same concurrency, no
//! reelay: the ceiling every other figure is compared with.
//!
//! Measured with two clients: the load generator's own (reqwest, which every other scenario
//! uses) and hyper's client used directly (connections reused, Nagle off), the fastest this
//! machine can build. The ceiling is the faster of the two, so `limit_ratio` is never flattered
//! by a slow client.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use super::Ctx;
use crate::load::{closed_loop, hyper_client};
use crate::progress;
use crate::receiver::Receiver;
use crate::report::Row;
use crate::stats::rate;

fn webhook_body(i: u64) -> String {
    format!(
        r#"{{"generation_id":"limit-{i}","status":"completed","prompt":"benchmark prompt number {i}","video_url":"http://127.0.0.1:8080/videos/limit-{i}.mp4","created_at":"2025-12-06T21:43:03.374000","completed_at":"2025-12-06T21:43:03.375000","seed":319790131,"error":null}}"#
    )
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let receiver = Receiver::start(0)?;
    let url: Arc<str> = receiver.url(0).into();

    let client = ctx.client.clone();
    let reqwest_url = url.clone();
    let with_reqwest = move |i: u64| {
        let (client, url) = (client.clone(), reqwest_url.clone());
        async move {
            let response = client
                .post(&*url)
                .header("content-type", "application/json")
                .header("webhook-id", format!("msg_limit_reqwest_{i}"))
                .body(webhook_body(i))
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("receiver answered {}", response.status());
            }
            response.bytes().await?;
            Ok(())
        }
    };

    let hyper_client = hyper_client();
    let uri: hyper::Uri = url.parse()?;
    let with_hyper = move |i: u64| {
        let (client, uri) = (hyper_client.clone(), uri.clone());
        async move {
            let request = hyper::Request::post(uri)
                .header("content-type", "application/json")
                .header("webhook-id", format!("msg_limit_hyper_{i}"))
                .body(Full::new(Bytes::from(webhook_body(i))))?;
            let response = client.request(request).await?;
            if !response.status().is_success() {
                bail!("receiver answered {}", response.status());
            }
            response.into_body().collect().await?;
            Ok(())
        }
    };

    let mut rows = vec![
        measure(ctx, "hyper", with_hyper).await?,
        measure(ctx, "reqwest", with_reqwest).await?,
    ];
    for row in &mut rows {
        row.duplicates = Some(receiver.recorder.duplicates());
    }
    Ok(rows)
}

/// Warms the client's pool, then runs it closed-loop for the scenario's duration.
async fn measure<F, Fut>(ctx: &Ctx, client: &str, post: F) -> anyhow::Result<Row>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let duration = ctx.pick(Duration::from_secs(2), Duration::from_secs(10));
    let warm = post.clone();
    closed_loop(
        ctx.concurrency as u64 * 4,
        ctx.concurrency,
        Instant::now() + Duration::from_secs(5),
        move |i| warm(u64::MAX / 2 + i),
    )
    .await;
    progress!(
        "limit: {} {client} clients for {duration:?}",
        ctx.concurrency
    );
    let out = closed_loop(
        100_000_000,
        ctx.concurrency,
        Instant::now() + duration,
        post,
    )
    .await;
    out.check("limit")?;
    let mut row = ctx.row("limit", &format!("c={} {client}", ctx.concurrency));
    row.backend = "-".into();
    row.events = Some(out.results.len() as u64);
    row.raw_requests_per_s = rate(out.results.len() as u64, out.elapsed());
    row.lost = Some(out.failures);
    Ok(row)
}
