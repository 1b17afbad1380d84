//! The cluster's own coordination through PostgreSQL: each node's row and number
//! (`ferry_nodes`), singletons (work that runs on exactly one node at a time, such as alert
//! evaluation) held by a session advisory lock on a connection of their own, and wake-up hints
//! between nodes with `LISTEN/NOTIFY`.
//!
//! A singleton's lock lives as long as its connection: when its node dies (SIGKILL included)
//! the server ends the session and the lock is free for the next node that asks. Hints are
//! only hints: a node that misses one (its listening connection dropped) still finds the work
//! by polling.

use super::{PgError, PgStore};
use crate::clock::Millis;
use crate::store::StoreError;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;

/// The largest node number: a node's body ids are its number times 2^40 onwards, so numbers
/// past this would leave an `i64`.
const MAX_NODE_NUMBER: i64 = (1 << 22) - 1;

/// The longest node id (a host name is at most 253 bytes).
pub const MAX_NODE_ID_BYTES: usize = 255;

/// How often a singleton's connection is asked whether it is still alive.
const LEADER_CHECK: Duration = Duration::from_secs(2);

/// How long that question may take before the lock counts as lost.
const LEADER_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A node not seen for this long (a day) is forgotten when another node joins: names made of
/// a host and a process id would otherwise pile up, one per start.
pub const FORGET_NODES_AFTER_MS: Millis = 24 * 3600 * 1000;

/// A node id is 1 to [`MAX_NODE_ID_BYTES`] bytes without control characters (it is written in
/// logs and shown to people).
pub fn check_node_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.len() > MAX_NODE_ID_BYTES {
        return Err(StoreError::Postgres(PgError::Query(format!(
            "a node id of {} bytes: it must be 1 to {MAX_NODE_ID_BYTES}",
            id.len()
        ))));
    }
    if id.chars().any(char::is_control) {
        return Err(StoreError::Postgres(PgError::Query(
            "a node id must not hold control characters".into(),
        )));
    }
    Ok(())
}

/// This node, as the cluster knows it.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    /// Drawn from a sequence at each start: never the same for two starts.
    pub number: i64,
}

impl Node {
    /// The first id of the bodies this node makes: its range is `number * 2^40` onwards.
    pub fn first_body_id(&self) -> i64 {
        self.number << 40
    }
}

/// A node as listed for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub started_at: Option<Millis>,
    pub seen_at: Option<Millis>,
}

/// A singleton held by this node: its lock holds while this value lives and its connection
/// is up. Dropping it gives the lock back.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    _stop: mpsc::Sender<()>,
}

impl Leadership {
    /// Whether the lock still holds (its connection is up).
    pub fn holds(&self) -> bool {
        !*self.lost.borrow()
    }

    /// Resolves when the lock is lost (its connection broke, or the server ended it).
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }
}

fn q(e: tokio_postgres::Error) -> StoreError {
    StoreError::from(PgError::from(e))
}

impl PgStore {
    /// Registers a start of a node `id` at `now`: its row in `ferry_nodes` and a fresh number.
    /// The rows of nodes not seen for [`FORGET_NODES_AFTER_MS`] go.
    pub async fn join(&self, id: &str, now: Millis) -> Result<Node, StoreError> {
        check_node_id(id)?;
        let conn = self.conn().await?;
        conn.execute(
            "DELETE FROM ferry_nodes WHERE seen_at < $1",
            &[&now.saturating_sub(FORGET_NODES_AFTER_MS)],
        )
        .await
        .map_err(q)?;
        let row = conn
            .query_one(
                "INSERT INTO ferry_nodes (node_id, number, started_at, seen_at)
                 VALUES ($1, nextval('ferry_node_numbers'), $2, $2)
                 ON CONFLICT (node_id) DO UPDATE
                   SET number = excluded.number, started_at = excluded.started_at, seen_at = excluded.seen_at
                 RETURNING number",
                &[&id, &now],
            )
            .await
            .map_err(q)?;
        let number: i64 = row.try_get(0).map_err(q)?;
        if !(1..=MAX_NODE_NUMBER).contains(&number) {
            return Err(StoreError::Corrupt(format!(
                "node number {number} is outside 1 to {MAX_NODE_NUMBER}: reset the sequence ferry_node_numbers"
            )));
        }
        Ok(Node {
            id: id.to_string(),
            number,
        })
    }

    /// Records that node `id` is alive at `now`.
    pub async fn heartbeat(&self, id: &str, now: Millis) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "UPDATE ferry_nodes SET seen_at = $2 WHERE node_id = $1",
            &[&id, &now],
        )
        .await
        .map_err(q)?;
        Ok(())
    }

    /// The nodes that have started, the most recently seen first.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, StoreError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT node_id, started_at, seen_at FROM ferry_nodes ORDER BY seen_at DESC NULLS LAST, node_id",
                &[],
            )
            .await
            .map_err(q)?;
        rows.iter()
            .map(|r| {
                Ok(NodeView {
                    id: r.try_get(0).map_err(q)?,
                    started_at: r.try_get(1).map_err(q)?,
                    seen_at: r.try_get(2).map_err(q)?,
                })
            })
            .collect()
    }

    /// A connection of its own, outside the pool, its driver task spawned; the task's end
    /// (the connection closed or broken) is told on the watch.
    async fn own_connection(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            watch::Receiver<bool>,
            mpsc::UnboundedReceiver<String>,
        ),
        StoreError,
    > {
        let (client, mut connection) =
            self.config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| PgError::Connect {
                    target: super::describe_target(&self.config),
                    reason: super::describe(&e),
                })?;
        let (closed_tx, closed) = watch::channel(false);
        let (hints_tx, hints) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = std::future::poll_fn(|cx| connection.poll_message(cx)) => message,
                    // Nobody listens any more (the receiver was dropped): the connection goes.
                    () = hints_tx.closed() => break,
                };
                match message {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        // Nobody listens any more: the connection goes.
                        if hints_tx.send(n.channel().to_string()).is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            let _ = closed_tx.send(true);
        });
        Ok((client, closed, hints))
    }

    /// Takes the singleton `name` for this node if no other node holds it: `None` when one
    /// does. The lock is a session advisory lock on a connection of its own, per schema, so
    /// two clusters in two schemas of one database do not share singletons.
    pub async fn try_lead(&self, name: &str) -> Result<Option<Leadership>, StoreError> {
        // `hints` lives with the lock's task: its connection ends when the receiver goes.
        let (client, mut closed, hints) = self.own_connection().await?;
        let took: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('ferry.singleton.' || current_schema() || '.' || $1))",
                &[&name],
            )
            .await
            .map_err(q)?
            .try_get(0)
            .map_err(q)?;
        if !took {
            return Ok(None);
        }
        let (lost_tx, lost) = watch::channel(false);
        let (stop, mut stopped) = mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let _hints = hints;
            loop {
                tokio::select! {
                    _ = stopped.recv() => break,
                    _ = closed.changed() => break,
                    () = tokio::time::sleep(LEADER_CHECK) => {
                        // A check that does not answer in time counts as a lost lock: the
                        // server may have ended the session behind a silent network, and
                        // another node may lead already.
                        let check = tokio::time::timeout(LEADER_CHECK_TIMEOUT, client.simple_query("SELECT 1"));
                        if !matches!(check.await, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            let _ = lost_tx.send(true);
            // Dropping the client closes the session, which frees the lock.
            drop(client);
        });
        Ok(Some(Leadership { lost, _stop: stop }))
    }

    /// Listens on `channels` over a connection of its own: each notification's channel name
    /// arrives on the answer, which closes when the connection is lost (listen again then;
    /// what was sent meanwhile must be found by polling).
    pub async fn listen(
        &self,
        channels: &[&str],
    ) -> Result<mpsc::UnboundedReceiver<String>, StoreError> {
        let (client, closed, hints) = self.own_connection().await?;
        for channel in channels {
            let quoted = format!("\"{}\"", channel.replace('"', "\"\""));
            client
                .batch_execute(&format!("LISTEN {quoted}"))
                .await
                .map_err(q)?;
        }
        // The client must live as long as the connection: it goes with the driver's task.
        tokio::spawn(async move {
            let mut closed = closed;
            let _ = closed.wait_for(|c| *c).await;
            drop(client);
        });
        Ok(hints)
    }

    /// Sends a hint on `channel` (delivered after the sending transaction commits; this one
    /// is its own).
    pub async fn notify(&self, channel: &str) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute("SELECT pg_notify($1, '')", &[&channel])
            .await
            .map_err(q)?;
        Ok(())
    }
}
