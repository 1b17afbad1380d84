//! The live tail: each event accepted, announced to whoever watches (the console's live tail,
//! over Server-Sent Events) after its commit. With nobody watching, announcing costs one
//! atomic read; a watcher too slow to keep up skips what it missed and is told how many. The
//! watchers are few by rule ([`MAX_WATCHERS`] in all, [`MAX_PER_KEY`] per session): each holds
//! a connection for as long as it watches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Watchers at once, in all.
pub const MAX_WATCHERS: usize = 64;
/// Watchers at once of one key (a console session).
pub const MAX_PER_KEY: usize = 4;

/// Announcements a watcher may fall behind by before it skips.
const BACKLOG: usize = 256;

/// An accepted event, as the tail shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Accepted {
    pub id: String,
    pub source: String,
    pub event_type: String,
    /// RFC 3339.
    pub received_at: String,
    /// Deliveries it started at once.
    pub deliveries: usize,
}

/// The sending side, shared by every ingest request.
#[derive(Debug, Clone)]
pub struct Tail {
    sender: broadcast::Sender<Accepted>,
    /// Set when the server stops: watchers end, so that no open stream holds the stop up.
    closed: Arc<tokio::sync::watch::Sender<bool>>,
    /// Watchers by key.
    watching: Arc<Mutex<HashMap<String, usize>>>,
}

/// One watcher: what it receives, and its place among the watchers (given back on drop).
pub struct Watcher {
    pub events: broadcast::Receiver<Accepted>,
    pub closed: tokio::sync::watch::Receiver<bool>,
    _place: Place,
}

struct Place {
    watching: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut watching = self.watching.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = watching.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                watching.remove(&self.key);
            }
        }
    }
}

impl Default for Tail {
    fn default() -> Tail {
        Tail {
            sender: broadcast::channel(BACKLOG).0,
            closed: Arc::new(tokio::sync::watch::channel(false).0),
            watching: Arc::default(),
        }
    }
}

impl Tail {
    /// Announces the event `make` describes, made only when someone watches.
    pub fn announce(&self, make: impl FnOnce() -> Accepted) {
        if self.sender.receiver_count() > 0 {
            // No watcher left between the count and the send: nothing to do.
            let _ = self.sender.send(make());
        }
    }

    /// A new watcher for `key`, which sees the events accepted from now on; `None` when
    /// [`MAX_WATCHERS`] watch, or [`MAX_PER_KEY`] of this key.
    pub fn watch(&self, key: &str) -> Option<Watcher> {
        let mut watching = self.watching.lock().unwrap_or_else(|e| e.into_inner());
        let all: usize = watching.values().sum();
        let mine = watching.get(key).copied().unwrap_or(0);
        if all >= MAX_WATCHERS || mine >= MAX_PER_KEY {
            return None;
        }
        watching.insert(key.to_string(), mine + 1);
        Some(Watcher {
            events: self.sender.subscribe(),
            closed: self.closed.subscribe(),
            _place: Place {
                watching: self.watching.clone(),
                key: key.to_string(),
            },
        })
    }

    /// Ends every watcher (the server is stopping).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_are_capped_per_key_and_in_all_and_give_their_place_back() {
        let tail = Tail::default();
        let mine: Vec<Watcher> = (0..MAX_PER_KEY).filter_map(|_| tail.watch("a")).collect();
        assert_eq!(mine.len(), MAX_PER_KEY);
        assert!(tail.watch("a").is_none());
        drop(mine);
        assert!(tail.watch("a").is_some());
        let many: Vec<Watcher> = (0..MAX_WATCHERS)
            .filter_map(|i| tail.watch(&format!("k{}", i / MAX_PER_KEY)))
            .collect();
        assert_eq!(many.len(), MAX_WATCHERS);
        assert!(tail.watch("another").is_none());
    }
}
