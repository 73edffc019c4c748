//! `isolation`: one healthy destination at a fixed rate, alone and then beside 50 and 1,000
//! destinations that accept connections and never answer; the healthy p99 with them ÷ without.

use std::time::{Duration, Instant};

use super::{Ctx, Delivered, await_all};
use crate::load::{Created, open_loop};
use crate::progress;
use crate::receiver::{BlackHoles, Receiver, hook_url};
use crate::report::Row;

/// Events per second to the healthy destination.
const HEALTHY_PER_S: u64 = 50;
/// Events per second in all when dead destinations are present (the rest go to them).
const TOTAL_PER_S: u64 = 200;
const DEAD: [usize; 2] = [50, 1000];

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let seconds = ctx.pick(3, 30);
    let baseline = variant(ctx, 0, seconds).await?;
    let mut rows = vec![baseline.clone()];
    for dead in DEAD {
        let mut row = variant(ctx, dead, seconds).await?;
        if let (Some(with), Some(without)) = (row.p99_ms, baseline.p99_ms) {
            row.p99_ratio = Some(with / without);
        }
        rows.push(row);
    }
    Ok(rows)
}

async fn variant(ctx: &Ctx, dead: usize, seconds: u64) -> anyhow::Result<Row> {
    let run = ctx
        .start(&[
            ("REELAY_WEBHOOK_REQUEST_TIMEOUT", "30s".into()),
            // Dead destinations' timeouts would log a warning each.
            ("RUST_LOG", "error".into()),
        ])
        .await?;
    super::pipeline::warm_up(ctx, &run).await?;
    let holes = BlackHoles::start(dead, 8_000)?;
    let healthy = Receiver::start(0)?;
    let (per_s, every) = if dead == 0 {
        (HEALTHY_PER_S, 1)
    } else {
        (TOTAL_PER_S, TOTAL_PER_S / HEALTHY_PER_S)
    };
    progress!(
        "isolation: {HEALTHY_PER_S}/s healthy{} for {seconds} s",
        if dead == 0 {
            String::new()
        } else {
            format!(
                " + {}/s to {dead} destinations that never answer",
                per_s - HEALTHY_PER_S
            )
        }
    );
    let creator = run.creator.clone();
    let healthy_port = healthy.addr.port();
    let dead_ports = holes.ports.clone();
    let out = open_loop(
        per_s as f64,
        per_s * seconds,
        Instant::now() + Duration::from_secs(seconds) + Duration::from_millis(500),
        move |i| {
            let creator = creator.clone();
            let target = if i % every == 0 {
                None
            } else {
                // The k-th event for the dead goes to dead destination k (round robin).
                let k = i - i / every - 1;
                Some(dead_ports[k as usize % dead_ports.len()])
            };
            async move {
                let port = target.unwrap_or(healthy_port);
                let created = creator.create(i, &hook_url(port, i)).await?;
                Ok((target.is_none(), created))
            }
        },
    )
    .await;
    out.check("isolation")?;
    let failures = out.failure_note();
    let created: Vec<Created> = out
        .results
        .into_iter()
        .filter_map(|(is_healthy, c)| is_healthy.then_some(c))
        .collect();
    let complete = await_all(
        &created,
        &healthy.recorder,
        Instant::now() + Duration::from_secs(10),
    )
    .await;
    let d = Delivered::of(&created, &healthy.recorder);
    let mut row = ctx.row("isolation", &format!("dead={dead}"));
    row.events = Some(created.len() as u64);
    row = row.latency(d.latency());
    row.lost = Some(d.lost);
    row.duplicates = Some(healthy.recorder.duplicates());
    row.rss_mb = run.reelay.rss_mb();
    if dead > 0 {
        row = row.note(format!(
            "{} connections held open by the dead destinations",
            holes.held()
        ));
    }
    if let Some(note) = failures {
        row = row.note(note);
    }
    if !complete {
        row = row.note("not every healthy webhook arrived within 10 s of the last create");
    }
    drop(run);
    drop(holes);
    Ok(row)
}
