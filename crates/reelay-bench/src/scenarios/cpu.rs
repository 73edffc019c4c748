//! `cpu`: CPU seconds (user + system) of reelay (and, on PostgreSQL, of the database server)
//! per 1,000 delivered webhooks, at a steady 1,000 events/s. Every other scenario that
//! delivers webhooks reports the same column for its own load.

use super::Ctx;
use crate::report::Row;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let run = ctx.start(&[]).await?;
    super::pipeline::warm_up(ctx, &run).await?;
    let row = super::pipeline::fixed_rate(ctx, &run, "cpu", 1000, ctx.pick(3, 30)).await?;
    Ok(vec![row])
}
