//! `pipeline`: generations created through the API with a callback, the instant generator,
//! webhooks to the receiver. Saturation (closed loop), then fixed rates (open loop) with
//! latency from create sent to webhook arrival, each on a fresh server; then the same fixed rate
//! right after a burst on one server, as in production; then two bursts ten times apart in
//! size, whose drain rates should match if a backlog costs nothing per step.

use std::time::{Duration, Instant};

use super::{CpuMeter, Ctx, Delivered, Running, await_all};
use crate::load::{Created, Outcome, closed_loop, open_loop};
use crate::progress;
use crate::receiver::Receiver;
use crate::report::Row;
use crate::stats::rate;

pub const RATES: [u64; 2] = [200, 1000];

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    // A fresh reelay for each phase: a backlog left by saturation must not slow the next.
    let run = ctx.start(&[]).await?;
    warm_up(ctx, &run).await?;
    let count = ctx.pick(10_000, 200_000);
    let within = ctx.pick(Duration::from_secs(5), Duration::from_secs(60));
    let mut rows = vec![saturation(ctx, &run, count, within, "saturation").await?];
    drop(run);
    let seconds = ctx.pick(3, 20);
    for r in RATES {
        let run = ctx.start(&[]).await?;
        warm_up(ctx, &run).await?;
        rows.push(fixed_rate(ctx, &run, "pipeline", r, seconds).await?);
    }
    // Production does not get a fresh server after a burst.
    let run = ctx.start(&[]).await?;
    warm_up(ctx, &run).await?;
    let burst = ctx.pick(10_000, 50_000);
    saturation(ctx, &run, burst, within, "burst").await?;
    let mut after = fixed_rate(ctx, &run, "pipeline", 1000, seconds).await?;
    after.variant = format!("rate=1000/s after {burst}");
    rows.push(after);
    drop(run);
    for burst in [ctx.pick(1_000, 5_000), ctx.pick(10_000, 50_000)] {
        let run = ctx.start(&[]).await?;
        warm_up(ctx, &run).await?;
        rows.push(saturation(ctx, &run, burst, within, &format!("burst={burst}")).await?);
    }
    Ok(rows)
}

/// A few hundred events first, so connections and caches are warm.
pub async fn warm_up(ctx: &Ctx, run: &Running) -> anyhow::Result<()> {
    let receiver = ctx.receiver()?;
    let out = creates_closed(ctx, run, &receiver, 300, Duration::from_secs(10)).await;
    out.check("warm-up")?;
    await_all(
        &out.results,
        &receiver.recorder,
        Instant::now() + Duration::from_secs(10),
    )
    .await;
    Ok(())
}

async fn creates_closed(
    ctx: &Ctx,
    run: &Running,
    receiver: &Receiver,
    count: u64,
    within: Duration,
) -> Outcome<Created> {
    let creator = run.creator.clone();
    let hooks = receiver.hooks();
    closed_loop(count, ctx.concurrency, Instant::now() + within, move |i| {
        let (creator, url) = (creator.clone(), hooks.url(i));
        async move { creator.create(i, &url).await }
    })
    .await
}

/// Up to `count` creates, `ctx.concurrency` in flight, for at most `within`; webhooks/s is
/// delivered ÷ (last arrival − first create sent).
async fn saturation(
    ctx: &Ctx,
    run: &Running,
    count: u64,
    within: Duration,
    variant: &str,
) -> anyhow::Result<Row> {
    let receiver = ctx.receiver()?;
    progress!(
        "pipeline {variant}: up to {count} creates, {} in flight, for at most {within:?}",
        ctx.concurrency
    );
    let cpu = CpuMeter::all(run, &ctx.backend);
    let out = creates_closed(ctx, run, &receiver, count, within).await;
    out.check("pipeline saturation")?;
    let complete = await_all(
        &out.results,
        &receiver.recorder,
        Instant::now() + ctx.pick(Duration::from_secs(10), Duration::from_secs(60)),
    )
    .await;
    let d = Delivered::of(&out.results, &receiver.recorder);
    let (cpu, db_cpu) = cpu.per_1k(d.count());
    let mut row = ctx.row("pipeline", variant);
    row.events = Some(out.results.len() as u64);
    row.creates_per_s = rate(out.results.len() as u64, out.elapsed());
    row.webhooks_per_s = d.rate();
    row = row.latency(d.latency()).against(ctx.raw_requests_per_s);
    row.lost = Some(d.lost);
    row.duplicates = Some(receiver.recorder.duplicates());
    row.rss_mb = run.rss_mb();
    row.storage_mb = Some(run.setup.storage_mb());
    row.cpu_s_per_1k = cpu;
    row.db_cpu_s_per_1k = db_cpu;
    if let Some(note) = out.failure_note() {
        row = row.note(note);
    }
    if !complete {
        row = row.note("not every webhook arrived before the deadline");
    }
    Ok(row)
}

/// Creates at `per_s` for `seconds`, each request its own task; latency create → arrival.
pub async fn fixed_rate(
    ctx: &Ctx,
    run: &Running,
    scenario: &str,
    per_s: u64,
    seconds: u64,
) -> anyhow::Result<Row> {
    let receiver = ctx.receiver()?;
    progress!("{scenario}: {per_s}/s for {seconds} s");
    let creator = run.creator.clone();
    let hooks = receiver.hooks();
    let cpu = CpuMeter::all(run, &ctx.backend);
    let out = open_loop(
        per_s as f64,
        per_s * seconds,
        Instant::now() + Duration::from_secs(seconds) + Duration::from_millis(500),
        move |i| {
            let (creator, url) = (creator.clone(), hooks.url(i));
            async move { creator.create(i, &url).await }
        },
    )
    .await;
    out.check(scenario)?;
    let complete = await_all(
        &out.results,
        &receiver.recorder,
        Instant::now() + Duration::from_secs(10),
    )
    .await;
    let d = Delivered::of(&out.results, &receiver.recorder);
    let (cpu, db_cpu) = cpu.per_1k(d.count());
    let mut row = ctx.row(scenario, &format!("rate={per_s}/s"));
    row.events = Some(out.results.len() as u64);
    row.creates_per_s = rate(out.results.len() as u64, out.elapsed());
    row.webhooks_per_s = d.rate();
    row = row.latency(d.latency());
    row.lost = Some(d.lost);
    row.duplicates = Some(receiver.recorder.duplicates());
    row.rss_mb = run.rss_mb();
    row.cpu_s_per_1k = cpu;
    row.db_cpu_s_per_1k = db_cpu;
    if let Some(note) = out.failure_note() {
        row = row.note(note);
    }
    if !complete {
        row = row.note("not every webhook arrived within 10 s of the last create");
    }
    Ok(row)
}
