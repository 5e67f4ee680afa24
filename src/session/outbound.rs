//! Each player's outbound queue: the session actor pushes, the player's
//! response stream pops.
//!
//! The queue is a tokio unbounded channel plus one shared atomic length,
//! which the actor checks against the capacity before it pushes. That keeps
//! the bound (and the drop policy, which needs the length) while taking no
//! lock per delivery: tokio's *bounded* channel returns each permit through a
//! mutex-guarded semaphore on every receive.
//!
//! The policy itself lives in the actor (`actor.rs`, `deliver`):
//! - below half capacity, everything is queued;
//! - from half capacity on, the player is *behind*: droppable messages are
//!   dropped and counted, and the player gets a `MessagesDropped` notice when
//!   its queue has room again;
//! - a non-droppable message that finds the queue full, or a player behind for
//!   longer than the grace period, disconnects the player with
//!   RESOURCE_EXHAUSTED.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use super::{PlayerInfo, SharedEvent};
use crate::error::Error;

/// One item of a player's outbound queue. Two words, so the channel's blocks
/// stay small.
#[derive(Debug)]
pub enum Delivery {
    /// A history event shared by all its recipients (encoded once).
    Event(Arc<SharedEvent>),
    /// A message for this player alone.
    Private(Box<Private>),
    /// The last item: the stream ends with OK (`None`) or with the error.
    End(Option<Box<Error>>),
    /// The last item: the stream ends with OK, and says so on `ack` once it
    /// takes this item (a stream dropped before then drops `ack` instead).
    EndAcked(oneshot::Sender<()>),
}

/// A message for one player alone; none of these carry a sequence number
/// except the welcome, which reports the session's.
#[derive(Debug)]
pub enum Private {
    /// The answer to the join.
    Welcome(Welcome),
    /// The answer to a ping.
    Pong { client_time: i64, server_time_unix_micros: i64 },
    /// A non-fatal error about one of the player's messages.
    Error(Error),
    /// `count` droppable messages were dropped, the last with `last_sequence`.
    Dropped { count: u64, last_sequence: u64 },
}

/// The answer to a join.
#[derive(Debug)]
pub struct Welcome {
    pub session_id: Arc<str>,
    pub mode: Arc<str>,
    pub player: Arc<PlayerInfo>,
    pub players: Vec<Arc<PlayerInfo>>,
    pub sequence: u64,
}

/// The actor's end of a player's queue.
#[derive(Debug)]
pub(super) struct OutboundTx {
    tx: mpsc::UnboundedSender<Delivery>,
    /// Items pushed and not yet popped; shared with the [`OutboundRx`].
    queued: Arc<AtomicUsize>,
}

/// The response stream's end of a player's queue. Dropping it (the client
/// went away) makes the actor's next push fail, which disconnects the player.
#[derive(Debug)]
pub struct OutboundRx {
    rx: mpsc::UnboundedReceiver<Delivery>,
    queued: Arc<AtomicUsize>,
}

/// A new queue.
pub(super) fn channel() -> (OutboundTx, OutboundRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (OutboundTx { tx, queued: queued.clone() }, OutboundRx { rx, queued })
}

/// The receiving side is gone.
#[derive(Debug)]
pub(super) struct Closed;

impl OutboundTx {
    /// Items queued and not yet taken by the player's stream.
    pub(super) fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queues an item; the caller has applied the capacity policy.
    pub(super) fn push(&self, delivery: Delivery) -> Result<(), Closed> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(delivery).map_err(|_| Closed)
    }
}

impl OutboundRx {
    /// The next item, or `None` once the actor dropped its end.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = polled {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        polled
    }

    /// The next item, or `None` once the actor dropped its end.
    pub async fn recv(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Items queued and not yet taken.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}
