//! The live tail: each event accepted, announced to whoever watches (the console's live tail,
//! over Server-Sent Events) after its commit. With nobody watching, announcing costs one
//! atomic read; a watcher too slow to keep up skips what it missed and is told how many.

use tokio::sync::broadcast;

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
    closed: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Tail {
    fn default() -> Tail {
        Tail {
            sender: broadcast::channel(BACKLOG).0,
            closed: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
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

    /// A new watcher, which sees the events accepted from now on.
    pub fn watch(
        &self,
    ) -> (
        broadcast::Receiver<Accepted>,
        tokio::sync::watch::Receiver<bool>,
    ) {
        (self.sender.subscribe(), self.closed.subscribe())
    }

    /// Ends every watcher (the server is stopping).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}
