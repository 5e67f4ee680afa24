//! The cloneable address of a session. Every request to a session goes
//! through its bounded inbox to the actor, the session's single writer.
//!
//! Inbox policy: a full inbox fails the call at once with
//! [`Error::SessionBusy`] (UNAVAILABLE, retryable) rather than queueing
//! without bound or blocking the caller. Only control traffic (joins, backend
//! messages, EndSession, GetSession) uses the inbox; players' relay traffic
//! reaches the actor through their own streams, under HTTP/2 flow control.

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{EndReason, InboundStream, NewPlayer, OutboundRx, PlayerId, SessionId, SessionInfo};
use crate::error::Error;

/// A join on its way to the actor. Handed back on failure, so that
/// join-or-create can try another session with the same stream.
pub struct JoinRequest {
    pub player: NewPlayer,
    pub inbound: InboundStream,
    /// The span of the call that asked (the Play RPC), for a span link.
    pub caller: tracing::Span,
}

/// A resume on its way to the actor: a verified resume token's player and
/// seat generation, and the last sequence its client received.
pub struct ResumeRequest {
    pub player: PlayerId,
    pub generation: u64,
    pub last_sequence: u64,
    pub inbound: InboundStream,
    /// The span of the call that asked (the Play RPC), for a span link.
    pub caller: tracing::Span,
}

/// What a successful join returns: the player's queue, whose first item is
/// the welcome.
#[derive(Debug)]
pub struct Joined {
    pub session_id: SessionId,
    pub player_id: PlayerId,
    pub outbound: OutboundRx,
}

/// A failed join, with the request handed back where it could be (not when
/// the actor died with the request).
pub type JoinRejected = (Error, Option<Box<JoinRequest>>);

/// A request to the actor.
pub(super) enum Command {
    /// Seat a player.
    Join { request: Box<JoinRequest>, reply: oneshot::Sender<Result<Joined, JoinRejected>> },
    /// Resume a seat.
    Resume { request: Box<ResumeRequest>, reply: oneshot::Sender<Result<Joined, Error>> },
    /// A backend service's message for the session's logic.
    BackendMessage { payload: Bytes, targets: Vec<PlayerId>, reply: oneshot::Sender<Result<u64, Error>> },
    /// A backend's signal for the logic, answered with the logic's answer.
    Signal { payload: Bytes, reply: oneshot::Sender<Result<Bytes, Error>> },
    /// Remove (kick) a player, telling it the reason.
    Remove { player: PlayerId, reason: String, reply: oneshot::Sender<Result<(), Error>> },
    /// Lock the session to new joins, or unlock it; answered with the
    /// summary after the change.
    Lock { locked: bool, reply: oneshot::Sender<SessionInfo> },
    /// The server drains: free the held seats (nobody can resume here any
    /// more), so that a session whose seats are all held ends now.
    Drain,
    /// End the session.
    End(EndRequest),
    /// The session's summary with its players.
    Info { reply: oneshot::Sender<SessionInfo> },
}

/// Why a session is to end, what its players are told, who waits for the
/// `session_ended` event's sequence number, and the span of the call that
/// asked (for a link; none for an idle timeout or a shutdown).
pub(super) struct EndRequest {
    pub reason: EndReason,
    pub message: String,
    pub reply: Option<oneshot::Sender<u64>>,
    pub caller: tracing::Span,
}

impl EndRequest {
    /// An end that no call asked for (idle, shutdown, failure): no one waits
    /// for it, and it links to no span.
    pub(super) fn unasked(reason: EndReason, message: String) -> Self {
        EndRequest { reason, message, reply: None, caller: tracing::Span::none() }
    }
}

/// The address of one session. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SessionHandle {
    id: SessionId,
    tx: mpsc::Sender<Command>,
}

impl SessionHandle {
    pub(super) fn new(id: SessionId, tx: mpsc::Sender<Command>) -> Self {
        SessionHandle { id, tx }
    }

    /// Seats a player. The reply's queue starts with the welcome.
    pub async fn join(&self, request: JoinRequest) -> Result<Joined, JoinRejected> {
        let (reply, answer) = oneshot::channel();
        let request = Box::new(request);
        if let Err(err) = self.tx.try_send(Command::Join { request, reply }) {
            let (error, command) = match err {
                mpsc::error::TrySendError::Full(c) => (Error::SessionBusy(self.id.to_string()), c),
                mpsc::error::TrySendError::Closed(c) => (Error::SessionNotFound(self.id.to_string()), c),
            };
            let request = match command {
                Command::Join { request, .. } => Some(request),
                _ => None,
            };
            return Err((error, request));
        }
        match answer.await {
            Ok(result) => result,
            // The actor is gone and took the request with it (it hands back
            // the joins it finds queued when it ends, so only a crash gets here).
            Err(_) => Err((self.gone(), None)),
        }
    }

    /// Resumes a seat. The reply's queue starts with the `resumed` answer
    /// and the replayed events.
    pub async fn resume(&self, request: ResumeRequest) -> Result<Joined, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Resume { request: Box::new(request), reply })?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Pushes a backend payload to `targets` (empty: every player) and
    /// returns the sequence number it got.
    pub async fn send(&self, payload: Bytes, targets: Vec<PlayerId>) -> Result<u64, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::BackendMessage { payload, targets, reply })?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Hands a backend's signal to the logic; returns its answer.
    pub async fn signal(&self, payload: Bytes) -> Result<Bytes, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Signal { payload, reply })?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Removes (kicks) `player`, telling it `reason`.
    pub async fn remove_player(&self, player: PlayerId, reason: String) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Remove { player, reason, reply })?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Locks the session to new joins, or unlocks it; returns its summary.
    pub async fn lock(&self, locked: bool) -> Result<SessionInfo, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Lock { locked, reply })?;
        answer.await.map_err(|_| self.gone())
    }

    /// Ends the session; every player receives `message`. Returns the
    /// sequence number of the `session_ended` event.
    pub async fn end(&self, reason: EndReason, message: String) -> Result<u64, Error> {
        let (reply, answer) = oneshot::channel();
        let caller = tracing::Span::current();
        self.command(Command::End(EndRequest { reason, message, reply: Some(reply), caller }))?;
        answer.await.map_err(|_| self.gone())
    }

    /// Asks the session to end without waiting for it, and without failing
    /// when its inbox is full: used at shutdown, where every session must
    /// end. Returns false if the session had already ended.
    pub(super) async fn end_now(&self, reason: EndReason, message: String) -> bool {
        self.tx.send(Command::End(EndRequest::unasked(reason, message))).await.is_ok()
    }

    /// Tells the session that the server drains, waiting for room in its
    /// inbox (every session must hear it).
    pub(super) async fn drain_now(&self) {
        let _ = self.tx.send(Command::Drain).await;
    }

    /// The session's id.
    pub(super) fn id(&self) -> &SessionId {
        &self.id
    }

    /// Whether the session's actor is gone.
    pub(super) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// The session's summary with its players.
    pub async fn info(&self) -> Result<SessionInfo, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Info { reply })?;
        answer.await.map_err(|_| self.gone())
    }

    fn command(&self, command: Command) -> Result<(), Error> {
        self.tx.try_send(command).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => Error::SessionBusy(self.id.to_string()),
            mpsc::error::TrySendError::Closed(_) => self.gone(),
        })
    }

    fn gone(&self) -> Error {
        Error::SessionNotFound(self.id.to_string())
    }
}
