//! `reelay migrate --from sqlite://PATH --to postgres://…`: moves an installation from its
//! embedded SQLite file to PostgreSQL, for a platform that outgrew one machine.

use anyhow::{Context, bail};
use reelay_store::PgStore;

use crate::config::Database;

pub async fn copy(from: &str, to: &str) -> anyhow::Result<()> {
    let source = match database(from) {
        Database::Sqlite(path) => path,
        Database::Postgres(_) => bail!("--from takes the SQLite database: sqlite://PATH"),
    };
    if !source.exists() {
        bail!("{} does not exist", source.display());
    }
    let Database::Postgres(url) = database(to) else {
        bail!("--to takes the PostgreSQL database: postgres://user@host/database");
    };
    // The server's own lock: no copy beside a server still writing.
    let dir = source.parent().filter(|p| !p.as_os_str().is_empty());
    let _lock = crate::server::lock_dir(
        dir.unwrap_or(std::path::Path::new(".")),
        "a reelay server is still using it; stop it before copying its database",
    )?;
    let target = PgStore::connect(&url)
        .await
        .context("connecting to the PostgreSQL database (--to)")?;
    let copied = reelay_store::copy::sqlite_to_postgres(&source, &target)
        .await
        .context("copying")?;
    for (table, rows) in copied {
        println!("{table:>18}: {rows} rows");
    }
    println!(
        "copied {} into PostgreSQL. Start every node with REELAY_DATABASE_URL set to it and \
         the master key this installation used (its data directory's master.key, or \
         REELAY_MASTER_KEY), or its webhook secrets cannot be opened.",
        source.display()
    );
    Ok(())
}

fn database(url: &str) -> Database {
    crate::config::Config {
        database_url: Some(url.to_owned()),
        ..Default::default()
    }
    .database()
}
