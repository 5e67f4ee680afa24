//! Typed errors of the service. Their one mapping to gRPC status codes is
//! at the API edge (`api::status`); nothing here knows about gRPC.
//!
//! Messages name the field at fault. Internal details are logged where they
//! happen and never sent to clients.

/// Any error, boxed: for setup and I/O paths that only report.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in a request, as the session layer sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field of the request is malformed or out of bounds.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// No such session (it never existed, or it has ended).
    #[error("session_id: session {0:?} not found")]
    SessionNotFound(String),
    /// A join named a player id that holds no seat.
    #[error("{field}: player {player:?} is not in the session")]
    UnknownPlayer { field: String, player: String },
    /// The session is locked to new joins (LockSession).
    #[error("session_id: session {0:?} is locked to new joins")]
    SessionLocked(String),
    /// The session has no free seat.
    #[error("session {0:?} is full")]
    SessionFull(String),
    /// The player id already holds a seat in the session.
    #[error("player_id: player {player:?} already holds a seat in session {session:?}")]
    PlayerAlreadyJoined { session: String, player: String },
    /// The message is valid but not allowed now (e.g. a second join).
    #[error("{field}: {reason}")]
    FailedPrecondition { field: String, reason: String },
    /// The mode named is not registered.
    #[error("mode: unknown mode {mode:?}; available modes: {available}")]
    UnknownMode { mode: String, available: String },
    /// The server runs as many sessions as it may.
    #[error("the server is at its limit of {0} sessions")]
    TooManySessions(usize),
    /// As many WatchSessions streams are open as may be (the text says
    /// which limit).
    #[error("{0}")]
    TooManyWatchers(String),
    /// A join-or-create would start a session its caller may not (the text
    /// says which limit).
    #[error("{0}")]
    CreationLimited(String),
    /// The session's command inbox is full; retry shortly.
    #[error("session {0:?} is busy (its inbox is full); retry")]
    SessionBusy(String),
    /// The server is draining for shutdown and takes no new sessions or joins.
    #[error("the server is shutting down; connect to another instance")]
    Draining,
    /// An idempotency key was reused with a different request.
    #[error("idempotency_key: already used by a different request (session {0:?})")]
    IdempotencyConflict(String),
    /// The player could not keep up with its stream and was disconnected.
    #[error("{0}")]
    SlowPlayer(String),
    /// A player sent faster than its rate limits: a non-fatal notice that
    /// messages were dropped, or, for a flood, why the player was removed.
    #[error("{0}")]
    RateLimited(String),
    /// The client broke the gRPC protocol on its stream (e.g. a frame over
    /// the decode limit).
    #[error("{message}")]
    Protocol { fault: ProtocolFault, message: String },
    /// No credential, or one that does not verify.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential that does not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// An operator removed the player (RemovePlayer), for this reason.
    #[error("removed from the session by an operator: {0}")]
    Kicked(String),
    /// A newer stream of the same player took the seat over.
    #[error("this seat was taken over by a newer stream of the same player")]
    TakenOver,
    /// A resume (or a join with a resume token) for a player that holds no
    /// seat in the session any more.
    #[error(
        "resume.token: player {player:?} holds no seat in session {session:?} (it left, was removed, or its seat's \
         hold ran out); join as a new player"
    )]
    NoSeat { session: String, player: String },
    /// A resume token older than the seat's latest.
    #[error("resume.token: superseded; a later resume or join of this player took the seat with a newer token")]
    ResumeSuperseded,
    /// A resume whose missed messages are no longer all buffered.
    #[error(
        "resume.last_sequence: the messages after {last} are no longer all buffered (a resume may start at {floor} \
         or later); the seat is held: join with Join.resume_token for a fresh welcome"
    )]
    ReplayGap { last: u64, floor: u64 },
    /// The client did not send its join in time.
    #[error("no join message within {0:?}")]
    JoinTimeout(std::time::Duration),
    /// The server failed: a session's logic panicked while the call waited
    /// on it. The details are in the server's log, not here.
    #[error("{0}")]
    Internal(String),
}

/// How a client broke the gRPC protocol, as the stream's decoder saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolFault {
    /// A message over the decode limit (OUT_OF_RANGE).
    TooLarge,
    /// A compressed message that decompresses past the decode limit
    /// (RESOURCE_EXHAUSTED).
    DecompressedTooLarge,
    /// A compression the server does not accept (UNIMPLEMENTED).
    Unsupported,
    /// A frame or message that does not decode (INTERNAL, as gRPC's own
    /// implementations answer).
    Malformed,
}

impl Error {
    /// Shorthand for [`Error::FailedPrecondition`].
    pub fn precondition(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::FailedPrecondition { field: field.into(), reason: reason.into() }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    /// The field at fault, where there is one.
    pub fn field(&self) -> &str {
        match self {
            Error::InvalidArgument { field, .. }
            | Error::UnknownPlayer { field, .. }
            | Error::FailedPrecondition { field, .. } => field,
            Error::SessionNotFound(_) => "session_id",
            Error::PlayerAlreadyJoined { .. } => "player_id",
            Error::NoSeat { .. } | Error::ResumeSuperseded => "resume.token",
            Error::ReplayGap { .. } => "resume.last_sequence",
            Error::UnknownMode { .. } => "mode",
            Error::IdempotencyConflict(_) => "idempotency_key",
            _ => "",
        }
    }
}
