//! `PlayerService`: the Play stream of each game client.
//!
//! The handler reads and validates the join, hands the rest of the inbound
//! stream to the session actor (which polls it itself), and answers with a
//! stream over the player's outbound queue that writes each message's
//! encoding.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, Span, info};

use super::codec::{self, Outbound};
use super::convert::{self, Limits};
use crate::auth::{Auth, Call, PlayerToken, ResumeClaim, ResumeKey};
use crate::error::Error;
use crate::pb;
use crate::pb::play_server::player_service_server::PlayerService;
use crate::session::{
    Caller, Delivery, Directory, Inbound, InboundError, InboundStream, JoinTarget, Joined, OutboundRx, ResumeRequest,
    SeatProof,
};
use crate::telemetry::Throttle;

/// The PlayerService implementation.
#[derive(Clone)]
pub struct PlayerApi<D> {
    directory: D,
    limits: Arc<Limits>,
    join_timeout: Duration,
    auth: Auth,
    /// Signs the resume tokens of welcomes, and verifies resumes.
    resume_key: Arc<ResumeKey>,
    /// Rate-limits the log line of a failed join, per reason: a client
    /// retrying a full session in a loop must not flood the log.
    failed_joins: Arc<Throttle<&'static str>>,
}

impl<D: Directory> PlayerApi<D> {
    /// Serves players of the sessions in `directory`, to the callers `auth`
    /// admits.
    pub fn new(directory: D, limits: Limits, join_timeout: Duration, auth: Auth, resume_key: ResumeKey) -> Self {
        let resume_key = Arc::new(resume_key);
        PlayerApi { directory, limits: Arc::new(limits), join_timeout, auth, resume_key, failed_joins: Arc::default() }
    }
}

/// Why a Play stream failed before its player was seated: the `reason`
/// label of [`crate::metrics::JOIN_FAILURES`] (or of
/// [`crate::metrics::RESUMES`] for a resume), or `None` for a refused
/// credential, which auth counts and logs itself.
struct JoinFailed {
    reason: Option<&'static str>,
    status: Status,
    /// The stream asked to resume, not to join.
    resume: bool,
}

impl JoinFailed {
    fn resuming(mut self) -> Self {
        self.resume = true;
        self
    }
}

impl From<Error> for JoinFailed {
    fn from(err: Error) -> Self {
        let reason = match &err {
            Error::Unauthenticated(_) | Error::PermissionDenied(_) => None,
            Error::SessionNotFound(_) => Some("session_not_found"),
            Error::SessionFull(_) => Some("session_full"),
            Error::SessionLocked(_) => Some("session_locked"),
            Error::PlayerAlreadyJoined { .. } => Some("already_joined"),
            Error::ReplayGap { .. } => Some("gap"),
            Error::RateLimited(_) => Some("rate_limited"),
            Error::NoSeat { .. } => Some("no_seat"),
            Error::ResumeSuperseded => Some("superseded"),
            Error::InvalidArgument { .. }
            | Error::FailedPrecondition { .. }
            | Error::UnknownMode { .. }
            | Error::Protocol { .. } => Some("invalid"),
            Error::JoinTimeout(_) => Some("timeout"),
            Error::Draining => Some("draining"),
            Error::SessionBusy(_) => Some("busy"),
            Error::TooManySessions(_) => Some("server_full"),
            Error::CreationLimited(_) => Some("creation_limited"),
            Error::UnknownPlayer { .. }
            | Error::IdempotencyConflict(_)
            | Error::SlowPlayer(_)
            | Error::TooManyWatchers(_)
            | Error::Kicked(_)
            | Error::TakenOver
            | Error::Internal(_) => Some("other"),
        };
        JoinFailed { reason, status: err.into(), resume: false }
    }
}

#[tonic::async_trait]
impl<D: Directory> PlayerService for PlayerApi<D> {
    type PlayStream = PlayStream;

    async fn play(&self, request: Request<Streaming<pb::ClientMessage>>) -> Result<Response<PlayStream>, Status> {
        let span = super::rpc_span!("PlayerService", "Play", &request);
        async move {
            let peer = request.remote_addr();
            self.join(request).await.map_err(|failed| {
                if let Some(reason) = failed.reason {
                    if failed.resume {
                        crate::metrics::resumed(reason);
                    } else {
                        crate::metrics::join_failed(reason);
                    }
                    if let Some(suppressed) = self.failed_joins.admit(reason) {
                        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
                        let status = failed.status.message();
                        let what = if failed.resume { "resume failed" } else { "join failed" };
                        info!(reason, peer, suppressed, status, "{what}");
                    }
                }
                failed.status
            })
        }
        .instrument(span)
        .await
    }
}

impl<D: Directory> PlayerApi<D> {
    /// Reads, validates and performs a Play stream's join.
    async fn join(&self, request: Request<Streaming<pb::ClientMessage>>) -> Result<Response<PlayStream>, JoinFailed> {
        // The token is checked before anything is read from the stream.
        let call = Call::of(&request);
        let (token, peer) = (self.auth.player(&call).await?, call.peer);
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(self.join_timeout, inbound.message()).await {
            Err(_) => return Err(Error::JoinTimeout(self.join_timeout).into()),
            Ok(Err(status)) => {
                // As in `inbound_error`: a transport error is a stream that
                // broke, anything else the decoder's refusal.
                let broke = std::error::Error::source(&status).is_some();
                let reason = Some(if broke { "closed" } else { "invalid" });
                return Err(JoinFailed { reason, status, resume: false });
            }
            Ok(Ok(None)) => {
                let err = Error::precondition("join", "the stream closed before its join");
                return Err(JoinFailed { reason: Some("closed"), status: err.into(), resume: false });
            }
            Ok(Ok(Some(message))) => message,
        };
        let join = match first.kind {
            Some(pb::client_message::Kind::Join(join)) => join,
            Some(pb::client_message::Kind::Resume(resume)) => {
                let result = self.resume(resume, token.as_ref(), peer, inbound).await;
                if result.is_ok() {
                    crate::metrics::resumed("ok");
                }
                return result.map_err(JoinFailed::resuming);
            }
            Some(_) | None => {
                let err = Error::precondition("join", "the first message on a Play stream must be a join or a resume");
                return Err(err.into());
            }
        };
        // A resume token names the seat, and so the session.
        let claim = match join.resume_token.as_str() {
            "" => None,
            token => {
                Some(self.resume_key.verify(token).map_err(|err| JoinFailed { resume: false, ..invalid_token(err) })?)
            }
        };
        let target = match (join.target.clone(), &claim) {
            (Some(pb::join::Target::SessionId(id)), Some(claim)) if id != claim.session => {
                let err = Error::invalid("join.session_id", "not the session of join.resume_token");
                return Err(err.into());
            }
            (Some(pb::join::Target::Mode(_)), Some(_)) => {
                return Err(Error::invalid("join.mode", "a join with a resume_token names its session").into());
            }
            (_, Some(claim)) => JoinTarget::Session(claim.session.clone()),
            (Some(pb::join::Target::SessionId(id)), None) => {
                convert::check_id("join.session_id", &id)?;
                JoinTarget::Session(id)
            }
            (Some(pb::join::Target::Mode(mode)), None) if !mode.is_empty() => {
                convert::check_text("join.mode", &mode)?;
                JoinTarget::Mode(mode)
            }
            (Some(pb::join::Target::Mode(_)) | None, None) => {
                return Err(Error::invalid("join.target", "set session_id or mode").into());
            }
        };
        let mut player = convert::new_player(join, &self.limits)?;
        if let Some(claim) = &claim {
            if !player.id.is_empty() && player.id != claim.player {
                return Err(Error::invalid("join.player_id", "not the player of join.resume_token").into());
            }
            player.id = claim.player.clone();
        }
        let caller = match &token {
            Some(token) => Caller::Subject(token.sub.clone()),
            None => Caller::Connection(peer),
        };
        if let Some(token) = &token {
            player.id = self.admit(token, &player.id, &target, peer).await?;
            // The token proves the caller is this player: a seat it holds
            // is its own to take over (a reconnect need not wait for
            // keepalive to free it).
            player.proof = SeatProof::Subject;
        }
        if let Some(claim) = &claim {
            // Only the seat's current token takes it back.
            player.proof = SeatProof::Generation(claim.generation);
        }
        let messages = Box::pin(PlayerMessages { inner: inbound, limits: self.limits.clone() });
        let joined = self.directory.join(target, player, caller, messages).await?;
        Ok(self.play_stream(joined))
    }

    /// Verifies and performs a Play stream's resume.
    async fn resume(
        &self,
        resume: pb::Resume,
        token: Option<&PlayerToken>,
        peer: Option<std::net::SocketAddr>,
        inbound: Streaming<pb::ClientMessage>,
    ) -> Result<Response<PlayStream>, JoinFailed> {
        let claim: ResumeClaim = self.resume_key.verify(&resume.token).map_err(invalid_token)?;
        let target = JoinTarget::Session(claim.session.clone());
        if let Some(token) = token {
            // With auth on, the bearer token must be the seat's player's
            // (and allow its session): a resume token alone, leaked, does
            // not take a seat.
            self.admit(token, &claim.player, &target, peer).await?;
        }
        let inbound: InboundStream = Box::pin(PlayerMessages { inner: inbound, limits: self.limits.clone() });
        let request = ResumeRequest {
            player: claim.player.into(),
            generation: claim.generation,
            last_sequence: resume.last_sequence,
            inbound,
            caller: Span::current(),
        };
        let joined = self.directory.resume(&claim.session, request).await?;
        Ok(self.play_stream(joined))
    }

    /// The player id `token` may play as `requested` in `target` (see
    /// [`Auth::admit`]).
    async fn admit(
        &self,
        token: &PlayerToken,
        requested: &str,
        target: &JoinTarget,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<String, Error> {
        // Looked up first (the directory may be remote), and used only if
        // the token limits its modes.
        let mode = match target {
            JoinTarget::Session(id) if token.modes.is_some() => Some(self.directory.mode_of(id).await),
            _ => None,
        };
        // Not looked up means not wanted; were it wanted, the session is as
        // good as not found.
        let mode_of = |id: &str| mode.unwrap_or_else(|| Err(Error::SessionNotFound(id.to_owned())));
        self.auth.admit(token, requested, target, mode_of, peer)
    }

    /// The response stream of a seated player.
    fn play_stream(&self, joined: Joined) -> Response<PlayStream> {
        let span = Span::current();
        span.record("session.id", &*joined.session_id);
        span.record("player.id", &*joined.player_id);
        Response::new(PlayStream {
            outbound: joined.outbound,
            limits: self.limits.clone(),
            resume_key: self.resume_key.clone(),
            done: false,
        })
    }
}

/// A resume token this service did not sign (forged, cut or altered, or
/// signed under another key).
fn invalid_token(err: Error) -> JoinFailed {
    JoinFailed { reason: Some("invalid_token"), status: err.into(), resume: true }
}

/// A joined player's inbound stream, decoded and validated, for the actor.
struct PlayerMessages {
    inner: Streaming<pb::ClientMessage>,
    limits: Arc<Limits>,
}

impl Stream for PlayerMessages {
    type Item = Result<Inbound, InboundError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Pin::new(&mut this.inner).poll_next(cx).map(|item| {
            item.map(|result| match result {
                Ok(message) => Ok(convert::inbound(message, &this.limits)),
                Err(status) => Err(inbound_error(status)),
            })
        })
    }
}

/// Tells a broken connection (the status has a transport error as its
/// source) from a client that broke the protocol (tonic's decoder made the
/// status itself, e.g. for a frame over the size limit).
fn inbound_error(status: Status) -> InboundError {
    if std::error::Error::source(&status).is_some() {
        InboundError::Transport(format!("{}: {}", status.code(), status.message()))
    } else {
        let fault = super::status::protocol_fault(status.code());
        InboundError::Protocol(Error::Protocol { fault, message: status.message().to_owned() })
    }
}

/// The server half of a Play stream: the player's outbound queue, encoded.
pub struct PlayStream {
    outbound: OutboundRx,
    /// Told in the welcome.
    limits: Arc<Limits>,
    /// Signs the welcome's resume token.
    resume_key: Arc<ResumeKey>,
    done: bool,
}

impl Stream for PlayStream {
    type Item = Result<Outbound, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let delivery = match self.outbound.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(delivery) => delivery,
        };
        Poll::Ready(match delivery {
            Some(Delivery::Event(event)) => {
                Some(Ok(Outbound(event.encoded(|event| codec::encode(&convert::event(event)).0))))
            }
            Some(Delivery::Direct(message)) => {
                Some(Ok(codec::encode(&convert::direct(&message, &self.limits, &self.resume_key))))
            }
            Some(Delivery::End(error)) => {
                self.done = true;
                error.map(|err| Err(Status::from(*err)))
            }
            Some(Delivery::EndAcked(ack)) => {
                self.done = true;
                // The session may have ended meanwhile; nobody to tell then.
                let _ = ack.send(());
                None
            }
            // The seat was freed without a last word (a disconnect).
            None => {
                self.done = true;
                None
            }
        })
    }
}
