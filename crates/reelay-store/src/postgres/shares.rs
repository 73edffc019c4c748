//! What this process knows of its nodes' shares of destinations' limits (migration 0006 has
//! the rule): a lease of a destination whose share, sized a moment ago, covers what the node
//! asks for is made without the destination's advisory lock, so nodes sending to one
//! destination do not take turns on it. The database has the last word (a lease without the
//! lock checks the share it reads there); this only picks which leases try.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::DestinationShare;

/// How long a share is used without the lock before the node sizes it again, under the lock.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// A share is sized to at most this many times what its node wants (its open requests and
/// what it asks for), so a node that needs less than an even split leaves the rest to others,
/// and a lease that asks a little more than the last one still fits.
pub(super) const HEADROOM: usize = 2;

/// How long after it was sized a share counts, as SQL: for the other nodes, and for its owner's
/// leases without the lock (checked in the database). Longer than [`RENEW_EVERY`], so a share
/// in use never lapses; short, so a node that stopped sending or died frees its share soon.
pub(super) const FRESH_FOR: &str = "interval '3 seconds'";

/// A share not sized again for this long is dropped from the table (its destination is no
/// longer sent to), so the table holds rows only for destinations in use.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// A share as the lease that sized or used it read it back.
pub(super) struct Sized {
    pub destination: String,
    pub share: usize,
    pub wants: usize,
    /// Sized in this lease (under the lock), not only used.
    pub renewed: bool,
}

#[derive(Clone, Copy)]
struct Held {
    share: usize,
    wants: usize,
    renewed: Instant,
}

#[derive(Default)]
struct State {
    /// By (owner, destination).
    held: HashMap<(String, String), Held>,
    /// Shares dropped from `held`, for the owner's next lease to delete.
    forgotten: Vec<(String, String)>,
    swept: Option<Instant>,
}

#[derive(Default)]
pub(super) struct Shares(Mutex<State>);

impl Shares {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The destinations of `sending` that `owner` may lease without the lock, each with how
    /// many more attempts its share has room for (a lease asking for more takes the lock).
    pub fn candidates(
        &self,
        owner: &str,
        sending: &HashMap<String, usize>,
    ) -> (Vec<String>, Vec<i64>) {
        let mut state = self.state();
        state.sweep();
        sending
            .iter()
            .filter_map(|(destination, open)| {
                let held = state.held.get(&(owner.to_owned(), destination.clone()))?;
                let room = held.share.checked_sub(*open)?;
                (held.renewed.elapsed() < RENEW_EVERY)
                    .then(|| (destination.clone(), i64::try_from(room).unwrap_or(i64::MAX)))
            })
            .unzip()
    }

    /// The destinations whose shares `owner` no longer uses, to delete now.
    pub fn forgotten(&self, owner: &str) -> Vec<String> {
        let mut state = self.state();
        let (mine, others) = std::mem::take(&mut state.forgotten)
            .into_iter()
            .partition(|(o, _)| o == owner);
        state.forgotten = others;
        mine.into_iter()
            .map(|(_, destination)| destination)
            .collect()
    }

    /// After a committed lease by `owner` that asked for deliveries to `asked`: what it sized
    /// or used (a destination asked for and not read back holds no fresh share).
    pub fn leased<'a>(
        &self,
        owner: &str,
        asked: impl IntoIterator<Item = &'a String>,
        read: Vec<Sized>,
    ) {
        let now = Instant::now();
        let mut state = self.state();
        let before: HashMap<&String, Held> = asked
            .into_iter()
            .filter_map(|d| Some((d, state.held.remove(&(owner.to_owned(), d.clone()))?)))
            .collect();
        for s in read {
            let renewed = match before.get(&s.destination) {
                _ if s.renewed => now,
                Some(held) => held.renewed,
                None => continue, // used, but sized by a lease this process did not see
            };
            let held = Held {
                share: s.share,
                wants: s.wants,
                renewed,
            };
            state.held.insert((owner.to_owned(), s.destination), held);
        }
    }

    /// What [`crate::DeliveryStore::destination_share`] answers: a share smaller than what
    /// its node wanted when it was sized, while it is used without the lock.
    pub fn share(&self, owner: &str, destination: &str) -> Option<DestinationShare> {
        let state = self.state();
        let held = state
            .held
            .get(&(owner.to_owned(), destination.to_owned()))?;
        (held.share < HEADROOM * held.wants && held.renewed.elapsed() < RENEW_EVERY).then(|| {
            DestinationShare {
                most: held.share,
                until: held.renewed + RENEW_EVERY,
            }
        })
    }

    /// `owner` stopped: it holds no share.
    pub fn forget_owner(&self, owner: &str) {
        let mut state = self.state();
        state.held.retain(|(o, _), _| o != owner);
        state.forgotten.retain(|(o, _)| o != owner);
    }
}

impl State {
    /// At most once per [`RENEW_EVERY`]: drops the shares unused for [`FORGET_AFTER`].
    fn sweep(&mut self) {
        if self.swept.is_some_and(|at| at.elapsed() < RENEW_EVERY) {
            return;
        }
        self.swept = Some(Instant::now());
        let forgotten = &mut self.forgotten;
        self.held.retain(|key, held| {
            let keep = held.renewed.elapsed() < FORGET_AFTER;
            if !keep {
                forgotten.push(key.clone());
            }
            keep
        });
    }
}
