//! A fresh PostgreSQL database for each setup, created on the server `--database-url` names
//! (`CREATE DATABASE reelay_bench_<pid>_<n>`) and dropped (`WITH (FORCE)`) when the setup is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_postgres::NoTls;

const PREFIX: &str = "reelay_bench_";

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A database of its own on the server; dropped with this value.
pub struct TempDatabase {
    /// The URL as given: the database it names is where CREATE/DROP DATABASE run.
    server_url: String,
    pub name: String,
    /// The same server, this database.
    pub url: String,
}

impl TempDatabase {
    /// `settings` (`--pg-set`) become `ALTER DATABASE … SET key = 'value'` on it.
    pub async fn create(server_url: &str, settings: &[(String, String)]) -> anyhow::Result<Self> {
        let name = format!(
            "{PREFIX}{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let client = connect(server_url).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| {
                format!(
                    "CREATE DATABASE {name} on {} (the bench needs a role allowed to create \
                     databases)",
                    redact(server_url)
                )
            })?;
        for (key, value) in settings {
            let value = value.replace('\'', "''");
            client
                .batch_execute(&format!("ALTER DATABASE {name} SET {key} = '{value}'"))
                .await
                .with_context(|| format!("ALTER DATABASE {name} SET {key}"))?;
        }
        Ok(Self {
            server_url: server_url.to_owned(),
            url: with_database(server_url, &name)?,
            name,
        })
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server_url.clone(), self.name.clone());
        // Drop may run inside the bench's runtime: a thread with a runtime of its own.
        let done = std::thread::spawn(move || -> anyhow::Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(drop_database(&server, &name))
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!(
                "warning: could not drop the bench database {}: {e:#}",
                self.name
            );
        }
    }
}

async fn drop_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    let client = connect(server_url).await?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    Ok(())
}

/// Connects to the server (clear error when it is unreachable) and drops the databases a bench
/// that no longer runs left behind (interrupted by Ctrl-C, say).
pub async fn probe(server_url: &str) -> anyhow::Result<()> {
    let client = connect(server_url).await?;
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'reelay\\_bench\\_%'",
            &[],
        )
        .await?;
    for row in rows {
        let name: String = row.get(0);
        let pid = name[PREFIX.len()..].split('_').next().unwrap_or("");
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            eprintln!("dropping {name}, left behind by an earlier bench");
            drop_database(server_url, &name).await?;
        }
    }
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let what = || format!("connecting to PostgreSQL at {}", redact(url));
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 10 s"))
            .with_context(what)?
            .with_context(what)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` with its database (the path) replaced by `database`, query string kept.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let Some(scheme_end) = url.find("://") else {
        bail!("{}: not a URL", redact(url));
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let (rest, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let authority = rest.split('/').next().unwrap_or("");
    Ok(format!("{head}{authority}/{database}{query}"))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[start..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &url[..start], &rest[..colon], &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// 32 random bytes in base64: the `REELAY_MASTER_KEY` every node of one setup shares.
pub fn master_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "x").unwrap(),
            "postgresql://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h", "x").unwrap(),
            "postgres://h/x"
        );
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
