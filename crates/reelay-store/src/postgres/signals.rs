//! Wake-ups across nodes: a node that queues work sends `NOTIFY reelay_work` (a burst
//! coalesced into one every [`COALESCE`]), and every node keeps one connection of its own
//! `LISTEN`ing, reconnecting after [`RECONNECT`] when it drops. Polling remains the fallback,
//! so a lost notification delays work by at most a poll interval; nothing is lost.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use super::PgStore;
use crate::WakeFn;

const CHANNEL: &str = "reelay_work";
/// The longest a node waits to pass a burst of new work on as one notification.
const COALESCE: Duration = Duration::from_millis(20);
/// How long a node waits before listening again after its connection dropped.
const RECONNECT: Duration = Duration::from_secs(1);

/// The announcing side: a task started on first use that sends one `NOTIFY` per burst, with
/// this process's `origin` as its payload. The process woke itself already: its listener
/// skips its own notifications, each of which would otherwise cost it a claim that finds
/// nothing.
pub(super) struct Announcer {
    pending: OnceLock<Arc<Notify>>,
    origin: String,
}

impl Default for Announcer {
    fn default() -> Self {
        Self {
            pending: OnceLock::new(),
            origin: uuid::Uuid::new_v4().to_string(),
        }
    }
}

impl PgStore {
    pub(super) fn announce(&self) {
        let pending = self.announcer.pending.get_or_init(|| {
            let pending = Arc::new(Notify::new());
            tokio::spawn(announce_bursts(self.clone(), pending.clone()));
            pending
        });
        pending.notify_one();
    }

    pub(super) fn watch(&self, wake: WakeFn) {
        let origin = self.announcer.origin.clone();
        tokio::spawn(listen(self.config.clone(), origin, wake));
    }
}

async fn announce_bursts(store: PgStore, pending: Arc<Notify>) {
    loop {
        pending.notified().await;
        tokio::time::sleep(COALESCE).await;
        let origin = &store.announcer.origin;
        let sent = match store.conn().await {
            Ok(c) => c
                .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, origin])
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = sent {
            tracing::debug!(%error, "announcing work to the other nodes failed; they will poll");
        }
    }
}

async fn listen(config: tokio_postgres::Config, origin: String, wake: WakeFn) {
    loop {
        match listen_once(&config, &origin, &wake).await {
            Ok(()) => tracing::warn!("the connection listening for other nodes' work closed"),
            Err(error) => {
                tracing::warn!(%error, "listening for other nodes' work failed; polling meanwhile")
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Listens on one connection until it drops.
async fn listen_once(
    config: &tokio_postgres::Config,
    origin: &str,
    wake: &WakeFn,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    // Notifications fold into one pending wake-up however many arrive, so nothing queues.
    let arrived = Arc::new(Notify::new());
    // The connection delivers notifications only while it is polled, which also carries
    // the client's own LISTEN below.
    let mut driver = tokio::spawn({
        let arrived = arrived.clone();
        let origin = origin.to_owned();
        async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(n) = message
                    && n.payload() != origin
                {
                    arrived.notify_one();
                }
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Work may have been announced while this node was not listening.
    wake();
    loop {
        tokio::select! {
            _ = arrived.notified() => wake(),
            _ = &mut driver => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::GenerationStore;
    use crate::postgres::{TestDatabase, Wakes};

    /// A store watching for work, and what it hears.
    async fn watching(url: &str) -> (PgStore, Wakes) {
        let store = PgStore::connect(url).await.unwrap();
        let wakes = Wakes::of(&store);
        (store, wakes)
    }

    /// Work one node announces wakes the others, not itself: it woke itself already.
    #[tokio::test]
    async fn an_announcement_wakes_the_other_nodes_only() {
        let db = TestDatabase::create().await;
        let (a, mut a_wakes) = watching(db.url()).await;
        let (_b, mut b_wakes) = watching(db.url()).await;
        // Each wakes once as it starts listening, for work announced before.
        assert!(a_wakes.within(Duration::from_secs(10)).await);
        assert!(b_wakes.within(Duration::from_secs(10)).await);

        a.announce_work();
        assert!(
            b_wakes.within(Duration::from_secs(10)).await,
            "the other node was not woken"
        );
        assert!(
            !a_wakes.within(Duration::from_millis(500)).await,
            "the announcing node woke itself"
        );
    }
}
