//! `dispatch`: N terminal events already in storage, then the receiver starts: the drain rate.
//!
//! The events are made with callbacks to a closed loopback port and one attempt per round, so
//! each fails at once (connection refused) and waits as `failed`. Then the receiver starts on
//! that port and one `POST /v1/webhooks/redeliver` makes all N due together; the drain is
//! timed from that request to the last arrival.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::{CpuMeter, Ctx, DELIVERIES};
use crate::load::closed_loop;
use crate::progress;
use crate::receiver::{Receiver, closed_port, hook_url};
use crate::report::Row;
use crate::stats::rate;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let n: u64 = ctx.pick(5_000, 100_000);
    let run = ctx
        .start(&[
            ("REELAY_WEBHOOK_MAX_ATTEMPTS", "1".into()),
            // Every event's one failed attempt would log a warning.
            ("RUST_LOG", "error".into()),
        ])
        .await?;
    let port = closed_port()?;
    let failed_before = run.reelay.metric(DELIVERIES, r#"state="failed""#).await?;
    progress!("dispatch: creating {n} events whose first attempt is refused");
    let creator = run.creator.clone();
    let out = closed_loop(
        n,
        ctx.concurrency,
        Instant::now() + ctx.pick(Duration::from_secs(20), Duration::from_secs(300)),
        move |i| {
            let creator = creator.clone();
            async move { creator.create(i, &hook_url(port, i)).await }
        },
    )
    .await;
    out.check("dispatch: creating")?;
    let created = out.results.len() as u64;
    let target = failed_before + created as f64;
    let failed = run
        .reelay
        .wait_metric(
            DELIVERIES,
            r#"state="failed""#,
            Duration::from_millis(100),
            Instant::now() + ctx.pick(Duration::from_secs(20), Duration::from_secs(120)),
            |v| v >= target,
        )
        .await?;
    if failed < target {
        bail!(
            "only {} of {created} events failed their first attempt in time",
            failed - failed_before
        );
    }
    let storage_mb = run.setup.storage_mb();
    let receiver = Receiver::start(port)?;
    progress!("dispatch: {created} events in storage; receiver up, redelivering them all");
    let cpu = CpuMeter::start(&run.reelay, &ctx.backend);
    let t0 = Instant::now();
    let response = ctx
        .client
        .post(format!("{}/v1/webhooks/redeliver", run.reelay.url))
        .bearer_auth(&run.key)
        .header("content-type", "application/json")
        .body(r#"{"since": "2000-01-01T00:00:00Z"}"#)
        .send()
        .await?;
    let redeliver_ms = crate::stats::ms(t0.elapsed());
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("POST /v1/webhooks/redeliver answered {status}: {body}");
    }
    let deadline = Instant::now() + ctx.pick(Duration::from_secs(20), Duration::from_secs(300));
    let mut peak_rss: f64 = 0.0;
    let got = loop {
        peak_rss = peak_rss.max(run.reelay.rss_mb().unwrap_or(0.0));
        let got = receiver.recorder.distinct() as u64;
        if got >= created || Instant::now() >= deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (cpu, db_cpu) = cpu.per_1k(got);
    let (first, last) = receiver.recorder.span().unwrap_or((t0, t0));
    let mut row = ctx.row("dispatch", &format!("n={created}"));
    row.events = Some(created);
    row.webhooks_per_s = rate(got, last.saturating_duration_since(t0));
    row = row.against(ctx.raw_requests_per_s);
    row.lost = Some(created - got.min(created));
    row.duplicates = Some(receiver.recorder.duplicates());
    row.rss_mb = Some(peak_rss);
    row.storage_mb = Some(storage_mb);
    row.cpu_s_per_1k = cpu;
    row.db_cpu_s_per_1k = db_cpu;
    row = row.note(format!(
        "redeliver request {:.0} ms, first arrival after {:.0} ms, drain {:.2} s; rss = peak while draining",
        redeliver_ms,
        crate::stats::ms(first.saturating_duration_since(t0)),
        last.saturating_duration_since(t0).as_secs_f64()
    ));
    if body["redelivered"].as_u64() != Some(created) {
        row = row.note(format!("redeliver answered {body}"));
    }
    Ok(vec![row])
}
