//! `backlog`: N scheduled retries in storage: reelay's resident memory and the storage size;
//! then the receiver comes back and the drain rate is measured.
//!
//! The events are made with callbacks to a closed loopback port; each first attempt is refused
//! and the retry is scheduled `interval` later (constant backoff, attempts enough never to give
//! up). With all N scheduled, RSS and storage are read. reelay is then stopped (SIGTERM) until
//! every retry is due, the receiver starts on that port, and reelay starts again: the drain is
//! timed from reelay answering `/healthz` to the last arrival, so it measures the dispatcher
//! on N due rows, not the spread of their due times.

use std::time::{Duration, Instant};

use super::{CpuMeter, Ctx, DELIVERIES};
use crate::load::closed_loop;
use crate::progress;
use crate::receiver::{Receiver, closed_port, hook_url};
use crate::report::Row;
use crate::stats::rate;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let n: u64 = ctx.pick(10_000, 1_000_000);
    let interval = ctx.pick(Duration::from_secs(5), Duration::from_secs(120));
    let mut run = ctx
        .start(&[
            ("REELAY_WEBHOOK_BACKOFF", "constant".into()),
            (
                "REELAY_WEBHOOK_RETRY_INTERVAL",
                format!("{}s", interval.as_secs()),
            ),
            ("REELAY_WEBHOOK_MAX_ATTEMPTS", "1000".into()),
            // Every refused attempt would log a warning.
            ("RUST_LOG", "error".into()),
        ])
        .await?;
    let port = closed_port()?;
    let scheduled_before = run
        .reelay
        .metric(DELIVERIES, r#"state="scheduled""#)
        .await?;
    progress!(
        "backlog: creating {n} events whose first attempt is refused (retry in {interval:?})"
    );
    let creator = run.creator.clone();
    let started = Instant::now();
    let out = closed_loop(
        n,
        ctx.concurrency,
        started + ctx.pick(Duration::from_secs(15), Duration::from_secs(1200)),
        move |i| {
            let creator = creator.clone();
            async move { creator.create(i, &hook_url(port, i)).await }
        },
    )
    .await;
    out.check("backlog: creating")?;
    let created = out.results.len() as u64;
    let creates_per_s = rate(created, out.elapsed());
    let target = scheduled_before + created as f64;
    let scheduled = run
        .reelay
        .wait_metric(
            DELIVERIES,
            r#"state="scheduled""#,
            Duration::from_millis(250),
            Instant::now() + ctx.pick(Duration::from_secs(10), Duration::from_secs(300)),
            |v| v >= target,
        )
        .await?;
    // Every retry is due at most `interval` after this instant (constant backoff).
    let all_scheduled_at = Instant::now();
    let rss_scheduled = run.reelay.rss_mb();
    let storage_mb = run.setup.storage_mb();
    progress!(
        "backlog: {} scheduled after {:.1} s; rss {:.1} MB, storage {storage_mb:.1} MB; stopping reelay until they are due",
        scheduled - scheduled_before,
        started.elapsed().as_secs_f64(),
        rss_scheduled.unwrap_or(0.0)
    );
    run.reelay.stop(Duration::from_secs(30)).await;
    tokio::time::sleep_until((all_scheduled_at + interval + Duration::from_secs(1)).into()).await;

    let receiver = Receiver::start(port)?;
    run.setup.set("RUST_LOG", "warn");
    let reelay = run
        .setup
        .serve(ctx.pick(Duration::from_secs(30), Duration::from_secs(300)))
        .await?;
    let ready = Instant::now();
    progress!(
        "backlog: receiver up, reelay restarted in {:.2} s; draining",
        reelay.started_in.as_secs_f64()
    );
    let cpu = CpuMeter::start(&reelay, &ctx.backend);
    let deadline = Instant::now() + ctx.pick(Duration::from_secs(30), Duration::from_secs(900));
    let mut peak_rss: f64 = 0.0;
    let mut next_sample = Instant::now();
    let got = loop {
        if Instant::now() >= next_sample {
            peak_rss = peak_rss.max(reelay.rss_mb().unwrap_or(0.0));
            next_sample += Duration::from_millis(200);
        }
        let got = receiver.recorder.distinct() as u64;
        if got >= created || Instant::now() >= deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (cpu, db_cpu) = cpu.per_1k(got);
    let (first, last) = receiver.recorder.span().unwrap_or((ready, ready));
    let mut row = ctx.row("backlog", &format!("n={created}"));
    row.events = Some(created);
    row.creates_per_s = creates_per_s;
    row.webhooks_per_s = rate(got, last.saturating_duration_since(ready));
    row = row.against(ctx.raw_requests_per_s);
    row.lost = Some(created - got.min(created));
    row.duplicates = Some(receiver.recorder.duplicates());
    row.rss_mb = rss_scheduled;
    row.storage_mb = Some(storage_mb);
    row.cpu_s_per_1k = cpu;
    row.db_cpu_s_per_1k = db_cpu;
    row = row.note(format!(
        "rss/storage with {} scheduled; restart took {:.2} s, first arrival {:.0} ms after ready, drain {:.2} s, peak rss while draining {peak_rss:.1} MB",
        scheduled - scheduled_before,
        reelay.started_in.as_secs_f64(),
        crate::stats::ms(first.saturating_duration_since(ready)),
        last.saturating_duration_since(ready).as_secs_f64(),
    ));
    if scheduled < target {
        row = row.note(format!(
            "only {} of {created} were scheduled when measured",
            scheduled - scheduled_before
        ));
    }
    Ok(vec![row])
}
