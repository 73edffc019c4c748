//! The dispatcher's picture of its destinations: free slots, the due deliveries it has heard
//! of, and which destinations may have more waiting in storage.
//!
//! New events are heard of directly from whoever wrote them, so a busy storage is never scanned
//! to find them; a destination whose deliveries outgrow what is kept here is marked
//! backlogged and refilled from storage, one index range at a time, as its slots free up;
//! each refill of a backlog resumes where the one before ended.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reelay_store::{DueAt, DueRef};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

/// Due deliveries kept in memory per destination; beyond this, storage is the list.
const HINTS_PER_DESTINATION: usize = 1024;
/// Destinations tracked before idle ones are forgotten.
const FORGET_IDLE_ABOVE: usize = 4096;
/// How long refills of a backlog resume where the last ended before one reads from the start
/// again, for what a resumed refill cannot see.
const REREAD_FROM_START_EVERY: Duration = Duration::from_secs(1);

pub struct Board {
    per_destination: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    destinations: HashMap<String, Destination>,
    /// Destinations that may have something to do: heard of, refilled or freed since last look.
    ready: HashSet<String>,
}

struct Destination {
    slots: Arc<Semaphore>,
    hints: VecDeque<String>,
    /// Storage may hold due deliveries for it beyond `hints`.
    backlog: bool,
    /// Where the next refill starts, unless it is time to read from the start again.
    refill_from: Option<Resume>,
    /// Attempts in flight longer than the dispatcher's "slow" mark.
    slow: usize,
}

/// What to send next: deliveries to lease, and destinations to refill from storage.
#[derive(Debug, Default)]
pub struct Pick {
    pub due: Vec<DueRef>,
    pub refill: Vec<Refill>,
}

/// The due time of the last delivery a refill found: what came due earlier was found then, and
/// is leased or done. Not quite all of it: a delivery written with an earlier due time but
/// committed after that refill, or one a lease left out that was heard of rather than refilled,
/// is found when a refill reads from the start again, `REREAD_FROM_START_EVERY` after the last
/// that did.
#[derive(Debug, Clone, Copy)]
struct Resume {
    from: OffsetDateTime,
    /// When the refill that read from the start ran.
    since: Instant,
}

/// A destination to refill from storage: its free slots, and where its last refill ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Refill {
    pub destination: String,
    pub free: usize,
    pub from: Option<OffsetDateTime>,
}

impl Board {
    pub fn new(per_destination: usize) -> Self {
        Self {
            per_destination: per_destination.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State, usize) -> T) -> T {
        f(
            &mut self.state.lock().expect("dispatcher board"),
            self.per_destination,
        )
    }

    /// Records deliveries known to be due.
    pub fn hear(&self, due: impl IntoIterator<Item = DueRef>) {
        self.with(|s, per| {
            for d in due {
                let dest = s.entry(&d.destination, per);
                if dest.hints.len() < HINTS_PER_DESTINATION {
                    dest.hints.push_back(d.event_id);
                } else {
                    dest.backlog = true;
                }
                s.ready.insert(d.destination);
            }
        })
    }

    /// Says storage holds more due deliveries for `destination` than were heard of.
    pub fn backlogged(&self, destination: &str) {
        self.with(|s, per| {
            s.entry(destination, per).backlog = true;
            s.ready.insert(destination.to_owned());
        })
    }

    /// Says which destinations a lease of `asked` took deliveries of, one entry per delivery.
    /// What it left out was taken by another node or held back by the destination's
    /// cluster-wide limit: either way storage has it, so the destination is refilled from
    /// there as its slots free up, rather than at the next scan.
    pub fn leased<'a>(&self, asked: &[DueRef], leased: impl IntoIterator<Item = &'a str>) {
        let mut short: HashMap<&str, isize> = HashMap::new();
        for d in asked {
            *short.entry(&d.destination).or_default() += 1;
        }
        for destination in leased {
            *short.entry(destination).or_default() -= 1;
        }
        for (destination, left_out) in short {
            if left_out > 0 {
                self.backlogged(destination);
            }
        }
    }

    /// Says what `refill`, asking for `asked` deliveries, found: fewer means storage had no
    /// more; as many means it may have, and the next refill starts from the last one found.
    pub fn refilled(&self, refill: &Refill, asked: usize, found: &[DueAt]) {
        self.with(|s, per| {
            let dest = s.entry(&refill.destination, per);
            if found.len() < asked {
                dest.backlog = false;
                dest.refill_from = None;
            } else {
                if let Some(last) = found.last() {
                    let since = match (refill.from, dest.refill_from) {
                        (Some(_), Some(resumed)) => resumed.since,
                        _ => Instant::now(), // this one read from the start
                    };
                    dest.refill_from = Some(Resume {
                        from: last.due_at,
                        since,
                    });
                }
                s.ready.insert(refill.destination.clone());
            }
        })
    }

    /// An attempt to `destination` has been in flight for long: until it ends, the destination
    /// counts as slow and may not use the reserved slots.
    pub fn slow_started(&self, destination: &str) {
        self.with(|s, per| s.entry(destination, per).slow += 1)
    }

    pub fn slow_ended(&self, destination: &str) {
        self.with(|s, _| {
            if let Some(dest) = s.destinations.get_mut(destination) {
                dest.slow = dest.slow.saturating_sub(1);
            }
        })
    }

    /// A slot of `destination` came free.
    pub fn freed(&self, destination: &str) {
        self.with(|s, _| {
            s.ready.insert(destination.to_owned());
        })
    }

    /// Requests open from this process to each destination of `due`: its slots in use.
    pub fn sending(&self, due: &[DueRef]) -> HashMap<String, usize> {
        self.with(|s, per| {
            let mut open = HashMap::new();
            for d in due {
                if !open.contains_key(&d.destination) {
                    let free = s.entry(&d.destination, per).slots.available_permits();
                    open.insert(d.destination.clone(), per.saturating_sub(free));
                }
            }
            open
        })
    }

    pub fn slots(&self, destination: &str) -> Arc<Semaphore> {
        self.with(|s, per| s.entry(destination, per).slots.clone())
    }

    /// Destinations with no free slot, for scans to skip.
    pub fn saturated(&self) -> Vec<String> {
        self.with(|s, _| {
            s.destinations
                .iter()
                .filter(|(_, d)| d.slots.available_permits() == 0)
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    /// Takes up to `budget` deliveries from ready destinations, no more from each than its
    /// free slots. While fewer than `reserve` global slots would be left, only destinations
    /// without slow attempts in flight get more: dead endpoints pile up hanging attempts, and
    /// must not take the last slots from the live ones.
    pub fn pick(&self, budget: usize, global_free: usize, reserve: usize) -> Pick {
        self.with(|s, per| {
            let mut pick = Pick::default();
            let budget = budget.min(global_free);
            let ready: Vec<String> = s.ready.iter().cloned().collect();
            for key in ready {
                if pick.due.len() >= budget {
                    break;
                }
                let Some(dest) = s.destinations.get_mut(&key) else {
                    s.ready.remove(&key);
                    continue;
                };
                let mut free = dest.slots.available_permits();
                let left = global_free - pick.due.len();
                if dest.slow > 0 {
                    free = free.min(left.saturating_sub(reserve));
                }
                let take = free.min(dest.hints.len()).min(budget - pick.due.len());
                pick.due
                    .extend(dest.hints.drain(..take).map(|event_id| DueRef {
                        event_id,
                        destination: key.clone(),
                    }));
                let free_after = free - take;
                let refilling = free_after > 0 && dest.hints.is_empty() && dest.backlog;
                if refilling {
                    pick.refill.push(Refill {
                        destination: key.clone(),
                        free: free_after,
                        from: dest.resume().map(|r| r.from),
                    });
                }
                let waiting = !dest.hints.is_empty() || dest.backlog;
                if free_after == 0 || !waiting || refilling {
                    // Held back by the reserve alone, it also comes back when a slot frees.
                    // Comes back when a slot frees, work is heard of, or after its refill.
                    s.ready.remove(&key);
                }
                if !waiting && free_after == per && s.destinations.len() > FORGET_IDLE_ABOVE {
                    s.destinations.remove(&key);
                }
            }
            pick
        })
    }
}

impl Destination {
    /// Where the next refill starts, if it does not read from the start.
    fn resume(&self) -> Option<Resume> {
        self.refill_from
            .filter(|r| r.since.elapsed() < REREAD_FROM_START_EVERY)
    }
}

impl State {
    fn entry(&mut self, key: &str, per_destination: usize) -> &mut Destination {
        self.destinations
            .entry(key.to_owned())
            .or_insert_with(|| Destination {
                slots: Arc::new(Semaphore::new(per_destination)),
                hints: VecDeque::new(),
                backlog: false,
                refill_from: None,
                slow: 0,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deliveries a refill found, due at seconds 1..=n of the epoch.
    fn found(n: i64) -> Vec<DueAt> {
        (1..=n)
            .map(|i| DueAt {
                event_id: format!("s-{i}"),
                due_at: OffsetDateTime::from_unix_timestamp(i).unwrap(),
            })
            .collect()
    }

    fn refill(destination: &str, free: usize, from_secs: Option<i64>) -> Refill {
        Refill {
            destination: destination.into(),
            free,
            from: from_secs.map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap()),
        }
    }

    fn due(dest: &str, n: usize) -> Vec<DueRef> {
        (0..n)
            .map(|i| DueRef {
                event_id: format!("{dest}-{i}"),
                destination: dest.to_owned(),
            })
            .collect()
    }

    fn ids(pick: &Pick) -> Vec<&str> {
        pick.due.iter().map(|d| d.event_id.as_str()).collect()
    }

    #[test]
    fn picks_no_more_than_each_destination_has_free() {
        let board = Board::new(2);
        board.hear(due("a", 5));
        board.hear(due("b", 1));
        let pick = board.pick(100, 1000, 0);
        assert_eq!(pick.due.len(), 3);
        assert_eq!(pick.due.iter().filter(|d| d.destination == "a").count(), 2);
        assert!(pick.refill.is_empty());
    }

    #[test]
    fn a_backlogged_destination_is_refilled_once_its_hints_run_out() {
        let board = Board::new(4);
        board.hear(due("a", 1));
        board.backlogged("a");
        let pick = board.pick(100, 1000, 0);
        assert_eq!(ids(&pick), ["a-0"]);
        assert_eq!(pick.refill, [refill("a", 3, None)]);
        board.refilled(&refill("a", 3, None), 3, &found(2));
        assert!(board.pick(100, 1000, 0).refill.is_empty());
    }

    #[test]
    fn a_refill_resumes_where_the_last_ended_until_storage_runs_dry() {
        let board = Board::new(4);
        board.backlogged("a");
        assert_eq!(board.pick(100, 1000, 0).refill, [refill("a", 4, None)]);
        // It found all it asked for: there may be more, from the last one's due time on.
        board.refilled(&refill("a", 4, None), 4, &found(4));
        assert_eq!(board.pick(100, 1000, 0).refill, [refill("a", 4, Some(4))]);
        board.refilled(&refill("a", 4, Some(4)), 4, &found(1));
        assert!(board.pick(100, 1000, 0).refill.is_empty());
        // A later backlog starts from the beginning again.
        board.backlogged("a");
        assert_eq!(board.pick(100, 1000, 0).refill, [refill("a", 4, None)]);
    }

    #[test]
    fn what_a_lease_left_out_is_refilled_from_storage() {
        let board = Board::new(4);
        board.hear(due("a", 3));
        board.hear(due("b", 1));
        let pick = board.pick(100, 1000, 0);
        assert_eq!(pick.due.len(), 4);
        // Another node took a-1 and a-2 (or the cluster-wide limit held them back).
        board.leased(&pick.due, ["a", "b"]);
        assert_eq!(board.pick(100, 1000, 0).refill, [refill("a", 4, None)]);
    }

    #[test]
    fn a_saturated_destination_waits_for_a_freed_slot() {
        let board = Board::new(1);
        board.hear(due("a", 3));
        let first = board.pick(100, 1000, 0);
        assert_eq!(first.due.len(), 1);
        let permit = board.slots("a").try_acquire_owned().unwrap();
        assert_eq!(board.saturated(), ["a"]);
        assert!(board.pick(100, 1000, 0).due.is_empty());
        drop(permit);
        board.freed("a");
        assert_eq!(board.pick(100, 1000, 0).due.len(), 1);
    }

    #[test]
    fn busy_destinations_leave_the_reserve_to_fast_ones() {
        let board = Board::new(64);
        board.hear(due("slow", 50));
        let held: Vec<_> = (0..20)
            .map(|_| board.slots("slow").try_acquire_owned().unwrap())
            .collect();
        board.slow_started("slow");
        board.hear(due("fast", 3));
        // 30 global slots free, 25 reserved: the slow one gets 5 at most, the fast all 3.
        let pick = board.pick(100, 30, 25);
        let slow = pick.due.iter().filter(|d| d.destination == "slow").count();
        let fast = pick.due.iter().filter(|d| d.destination == "fast").count();
        assert_eq!(fast, 3);
        assert!(slow <= 5, "{slow}");
        drop(held);
    }

    #[test]
    fn hints_beyond_the_cap_become_a_backlog() {
        let board = Board::new(1);
        board.hear(due("a", HINTS_PER_DESTINATION + 5));
        let _permit = board.slots("a").try_acquire_owned().unwrap();
        assert!(board.with(|s, _| s.destinations["a"].backlog));
    }
}
