//! Change notifications for live status streams (`/v1/veo/generations/{id}/events`).
//!
//! The store is the truth; this only says "look again now", so that a stream re-reads a
//! generation the moment this process changes it instead of at its next periodic look. A lost
//! notification costs only latency: streams also re-read on a timer, which is what catches
//! changes made by other nodes on a shared database and queue positions moving.
//!
//! Only generations somebody is watching have an entry, so memory follows the streams open,
//! which are capped per account and per server here: each one holds a request slot and a
//! connection for minutes, and an unbounded number would starve the rest of the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reelay_core::{AccountId, GenerationId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The most streams one account may have open at once.
pub const MAX_STREAMS_PER_ACCOUNT: usize = 16;
/// The most streams one server process keeps open at once, well under its cap on requests in
/// flight (1024 by default) so that streams never crowd out ordinary requests.
pub const MAX_STREAMS: usize = 256;

/// Why a stream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WatchRefused {
    #[error("the account already has {0} streams open")]
    AccountLimit(usize),
    #[error("the server already has {0} streams open")]
    ServerLimit(usize),
}

/// Who is watching what; shared by the engine and every open [`Watch`].
pub(crate) struct Changes {
    state: Mutex<State>,
    per_account: usize,
    total: usize,
    /// Cancelled when the engine shuts down, so that streams end instead of holding the
    /// graceful shutdown until its deadline.
    closing: CancellationToken,
}

#[derive(Default)]
struct State {
    watched: HashMap<GenerationId, watch::Sender<()>>,
    accounts: HashMap<AccountId, usize>,
    open: usize,
}

impl Changes {
    pub(crate) fn new(per_account: usize, total: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            per_account: per_account.max(1),
            total: total.max(1),
            closing: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves counters that are still consistent enough to
        // go on with; refusing every stream afterwards would be worse.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the watchers of `id` (if any) to look again.
    pub(crate) fn changed(&self, id: GenerationId) {
        if let Some(tx) = self.lock().watched.get(&id) {
            tx.send_replace(());
        }
    }

    pub(crate) fn close(&self) {
        self.closing.cancel();
    }

    pub(crate) fn watch(
        self: &Arc<Self>,
        account: AccountId,
        id: GenerationId,
    ) -> Result<Watch, WatchRefused> {
        let mut state = self.lock();
        if state.open >= self.total {
            return Err(WatchRefused::ServerLimit(self.total));
        }
        let mine = state.accounts.entry(account).or_default();
        if *mine >= self.per_account {
            return Err(WatchRefused::AccountLimit(self.per_account));
        }
        *mine += 1;
        state.open += 1;
        let rx = state
            .watched
            .entry(id)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        Ok(Watch {
            changes: self.clone(),
            account,
            id,
            rx: Some(rx),
        })
    }
}

/// One open stream's place: counts against the limits until dropped, and wakes when the
/// generation changes in this process.
pub struct Watch {
    changes: Arc<Changes>,
    account: AccountId,
    id: GenerationId,
    /// Always `Some` until dropped; taken in `drop` so the entry can tell it has no receivers.
    rx: Option<watch::Receiver<()>>,
}

impl Watch {
    /// Returns when this process changed the generation since the last call (at once if it
    /// did in between); a burst of changes wakes it once.
    pub async fn changed(&mut self) {
        match self.rx.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The sender lives as long as any receiver; this cannot happen, but an
                    // early return would turn the caller's loop into a spin.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Cancelled when the server is shutting down.
    pub fn closing(&self) -> CancellationToken {
        self.changes.closing.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut state = self.changes.lock();
        drop(self.rx.take());
        if state
            .watched
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            state.watched.remove(&self.id);
        }
        if let Some(n) = state.accounts.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                state.accounts.remove(&self.account);
            }
        }
        state.open -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_count_open_streams_and_free_on_drop() {
        let changes = Arc::new(Changes::new(2, 3));
        let (a, b) = (AccountId::random(), AccountId::random());
        let g = GenerationId::random();
        let first = changes.watch(a, g).unwrap();
        let _second = changes.watch(a, g).unwrap();
        assert_eq!(
            changes.watch(a, g).err(),
            Some(WatchRefused::AccountLimit(2))
        );
        let _third = changes.watch(b, GenerationId::random()).unwrap();
        assert_eq!(
            changes.watch(b, g).err(),
            Some(WatchRefused::ServerLimit(3))
        );
        drop(first);
        assert!(changes.watch(a, g).is_ok());
    }

    #[tokio::test]
    async fn a_change_wakes_the_watchers_of_that_generation_only() {
        let changes = Arc::new(Changes::new(4, 4));
        let account = AccountId::random();
        let (g, other) = (GenerationId::random(), GenerationId::random());
        let mut watch = changes.watch(account, g).unwrap();
        let mut bystander = changes.watch(account, other).unwrap();
        changes.changed(g);
        changes.changed(g);
        tokio::time::timeout(std::time::Duration::from_secs(1), watch.changed())
            .await
            .expect("woken");
        let quiet =
            tokio::time::timeout(std::time::Duration::from_millis(50), bystander.changed()).await;
        assert!(
            quiet.is_err(),
            "another generation's change must not wake it"
        );
        drop(watch);
        drop(bystander);
        let state = changes.lock();
        assert!(state.watched.is_empty() && state.accounts.is_empty() && state.open == 0);
    }
}
