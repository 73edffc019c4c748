//! Answers a node read from the store a moment ago, reused while they are fresh: for lookups on
//! a hot path (an API key per request, an account's signing secrets per webhook) whose answer
//! may be a little stale by contract. Bounded: past its capacity it drops what is stale, and
//! if nothing is, everything, so no input grows it further.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Recent<K, V> {
    read: Mutex<HashMap<K, (Instant, V)>>,
    fresh_for: Duration,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> Recent<K, V> {
    pub fn new(fresh_for: Duration, capacity: usize) -> Self {
        Self {
            read: Mutex::default(),
            fresh_for,
            capacity,
        }
    }

    /// What was read for `key` less than `fresh_for` ago.
    pub fn get(&self, key: &K) -> Option<V> {
        self.read()
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.fresh_for)
            .map(|(_, value)| value.clone())
    }

    /// Keeps `value`, read from the store at `asked` (taken before the store was asked, so the
    /// answer is no older than that).
    pub fn insert(&self, key: K, value: V, asked: Instant) {
        let mut read = self.read();
        if read.len() >= self.capacity {
            read.retain(|_, (at, _)| at.elapsed() < self.fresh_for);
            if read.len() >= self.capacity {
                read.clear();
            }
        }
        read.insert(key, (asked, value));
    }

    pub fn remove(&self, key: &K) {
        self.read().remove(key);
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> MutexGuard<'_, HashMap<K, (Instant, V)>> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_answers_are_not_given_and_a_full_map_drops_the_stale_first() {
        let recent = Recent::new(Duration::from_secs(60), 2);
        let long_ago = Instant::now() - Duration::from_secs(120);
        recent.insert("old", 1, long_ago);
        recent.insert("new", 2, Instant::now());
        assert_eq!(recent.get(&"old"), None, "read two minutes ago");
        assert_eq!(recent.get(&"new"), Some(2));
        recent.insert("newer", 3, Instant::now());
        assert_eq!(recent.len(), 2, "the stale one made room");
        assert_eq!(
            (recent.get(&"new"), recent.get(&"newer")),
            (Some(2), Some(3))
        );
        recent.insert("newest", 4, Instant::now());
        assert_eq!(
            recent.len(),
            1,
            "nothing stale: all dropped, never past capacity"
        );
    }
}
