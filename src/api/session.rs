//! `SessionService`: what matchmakers, lobbies and admin tools call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt, stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::convert::{self, Limits, MAX_CONFIG_LEN, MAX_IDEMPOTENCY_KEY_LEN};
use crate::auth::{Auth, Call, Caller};
use crate::error::Error;
use crate::pb;
use crate::pb::session_service_server::SessionService;
use crate::session::{CreateParams, Directory, EndReason, WatchError, WatchEventKind};

/// Sessions per ListSessions page when the request does not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most sessions per ListSessions page; larger requests are capped to it.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The SessionService implementation.
#[derive(Clone)]
pub struct SessionApi<D> {
    directory: D,
    limits: Arc<Limits>,
    auth: Auth,
    watchers: Arc<Watchers>,
}

impl<D: Directory> SessionApi<D> {
    /// Serves the sessions in `directory` to the backend services `auth`
    /// admits as admins.
    pub fn new(directory: D, limits: Limits, auth: Auth) -> Self {
        let watchers = Arc::new(Watchers {
            total: Arc::new(Semaphore::new(limits.max_watchers)),
            max_total: limits.max_watchers,
            max_per_connection: limits.max_watchers_per_connection,
            per_connection: Mutex::new(HashMap::new()),
        });
        SessionApi { directory, limits: Arc::new(limits), auth, watchers }
    }
}

/// The open WatchSessions streams, capped in total and per connection.
struct Watchers {
    total: Arc<Semaphore>,
    max_total: usize,
    max_per_connection: usize,
    /// Streams open per connection (by the client's address, which names
    /// one TCP connection).
    per_connection: Mutex<HashMap<Option<SocketAddr>, usize>>,
}

impl Watchers {
    /// A slot for one more watcher from `peer`, held for as long as its
    /// stream lives.
    fn admit(self: &Arc<Self>, peer: Option<SocketAddr>) -> Result<WatcherSlot, Error> {
        let mut per_connection = self.per_connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = per_connection.entry(peer).or_default();
        if *open >= self.max_per_connection {
            return Err(Error::TooManyWatchers(format!(
                "at most {} WatchSessions streams per connection are open; close one, or watch from another connection",
                self.max_per_connection
            )));
        }
        let Ok(permit) = self.total.clone().try_acquire_owned() else {
            return Err(Error::TooManyWatchers(format!(
                "the server has its limit of {} WatchSessions streams open; retry later or watch another instance",
                self.max_total
            )));
        };
        *open += 1;
        metrics::gauge!(crate::metrics::WATCHERS).increment(1.0);
        Ok(WatcherSlot { watchers: self.clone(), peer, _permit: permit })
    }
}

/// One open watcher's place under the caps; freed when dropped.
struct WatcherSlot {
    watchers: Arc<Watchers>,
    peer: Option<SocketAddr>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut per_connection = self.watchers.per_connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(open) = per_connection.get_mut(&self.peer) {
            *open -= 1;
            if *open == 0 {
                per_connection.remove(&self.peer);
            }
        }
        metrics::gauge!(crate::metrics::WATCHERS).decrement(1.0);
    }
}

/// Writes the audit line of a state-changing call: who called, which RPC, on
/// which session (empty when none, `<invalid>` for an id that failed
/// validation), and the outcome's gRPC code.
fn audit<T>(caller: &Caller, rpc: &'static str, session_id: &str, result: &Result<T, Status>) {
    let session_id =
        if session_id.is_empty() || convert::check_id("", session_id).is_ok() { session_id } else { "<invalid>" };
    let code = match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    tracing::info!(target: "game_session::audit", caller = %caller, rpc, session.id = session_id, code = ?code, "audit: admin call");
}

/// The stream type of WatchSessions.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchSessionsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<D: Directory> SessionService for SessionApi<D> {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let span = super::rpc_span!("SessionService", "CreateSession", &request);
        super::rpc("CreateSession", span, async move {
            let caller = self.auth.admin(&Call::of(&request)).await?;
            let result = self.create(request.into_inner()).await;
            let id = result.as_ref().ok().and_then(|r| r.get_ref().session.as_ref()).map(|s| s.session_id.as_str());
            audit(&caller, "CreateSession", id.unwrap_or(""), &result);
            result
        })
        .await
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let span = super::rpc_span!("SessionService", "GetSession", &request);
        super::rpc("GetSession", span, async move {
            self.auth.admin(&Call::of(&request)).await?;
            let id = request.into_inner().session_id;
            tracing::Span::current().record("session.id", id.as_str());
            convert::check_id("session_id", &id)?;
            let info = self.directory.get(&id).await?;
            Ok(Response::new(pb::GetSessionResponse { session: Some(convert::session(&info)) }))
        })
        .await
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let span = super::rpc_span!("SessionService", "ListSessions", &request);
        super::rpc("ListSessions", span, async move {
            self.auth.admin(&Call::of(&request)).await?;
            let request = request.into_inner();
            let filter = convert::filter(request.filter, &self.limits)?;
            let page_size = match request.page_size as usize {
                0 => DEFAULT_PAGE_SIZE,
                n => n.min(MAX_PAGE_SIZE),
            };
            let after = match request.page_token.as_str() {
                "" => None,
                token => Some(convert::page_token_position(token)?),
            };
            let (page, more) = self.directory.list(&filter, after.as_deref(), page_size).await?;
            let next_page_token = match page.last() {
                Some(last) if more => convert::page_token(&last.id),
                _ => String::new(),
            };
            Ok(Response::new(pb::ListSessionsResponse {
                sessions: page.iter().map(convert::session).collect(),
                next_page_token,
            }))
        })
        .await
    }

    type WatchSessionsStream = WatchStream;

    async fn watch_sessions(
        &self,
        request: Request<pb::WatchSessionsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let span = super::rpc_span!("SessionService", "WatchSessions", &request);
        async move {
            use pb::watch_sessions_response::Kind;
            let call = Call::of(&request);
            self.auth.admin(&call).await?;
            let peer = call.peer;
            let filter = convert::filter(request.into_inner().filter, &self.limits)?;
            let slot = self.watchers.admit(peer)?;
            let watch = self.directory.watch(filter).await?;
            // Each summary is encoded as the client reads (HTTP/2 flow
            // control paces it): no copy of the listing per watcher.
            let initial = watch
                .initial
                .map(|info| Ok(pb::WatchSessionsResponse { kind: Some(Kind::Initial(convert::session(&info))) }))
                .chain(stream::once(std::future::ready(Ok(pb::WatchSessionsResponse {
                    kind: Some(Kind::Synced(pb::Synced { revision: watch.revision })),
                }))));
            let live = watch.events.map(|event| match event {
                Ok(event) => {
                    let kind = match event.kind {
                        WatchEventKind::Created => pb::SessionEventKind::Created,
                        WatchEventKind::Updated => pb::SessionEventKind::Updated,
                        WatchEventKind::Ended => pb::SessionEventKind::Ended,
                    };
                    Ok(pb::WatchSessionsResponse {
                        kind: Some(Kind::Event(pb::SessionEvent {
                            revision: event.revision,
                            kind: kind as i32,
                            session: Some(convert::session(&event.session)),
                            unix_micros: event.at_unix_micros,
                        })),
                    })
                }
                Err(WatchError::Lagged(missed)) => Err(Status::aborted(format!(
                    "this watch fell {missed} events behind and was ended; call WatchSessions again"
                ))),
                Err(WatchError::Closing) => {
                    Err(Status::unavailable("the server is shutting down; watch another instance"))
                }
            });
            // The slot goes with the stream.
            let stream: WatchStream = Box::pin(initial.chain(live).map(move |message| {
                let _slot = &slot;
                message
            }));
            Ok(Response::new(stream))
        }
        .instrument(span)
        .await
    }

    async fn end_session(
        &self,
        request: Request<pb::EndSessionRequest>,
    ) -> Result<Response<pb::EndSessionResponse>, Status> {
        let span = super::rpc_span!("SessionService", "EndSession", &request);
        self.admin_on_session(
            "EndSession",
            span,
            request,
            |r| &r.session_id,
            async |request| {
                convert::check_message("message", &request.message)?;
                let sequence =
                    self.directory.end(&request.session_id, EndReason::EndedByBackend, request.message).await?;
                Ok(pb::EndSessionResponse { sequence })
            },
        )
        .await
    }

    async fn send_to_session(
        &self,
        request: Request<pb::SendToSessionRequest>,
    ) -> Result<Response<pb::SendToSessionResponse>, Status> {
        let span = super::rpc_span!("SessionService", "SendToSession", &request);
        self.admin_on_session(
            "SendToSession",
            span,
            request,
            |r| &r.session_id,
            async |request| {
                convert::check_payload("payload", &request.payload, &self.limits)?;
                let targets = convert::check_targets("player_ids", request.player_ids, &self.limits)?;
                let sequence = self.directory.send(&request.session_id, request.payload, targets).await?;
                Ok(pb::SendToSessionResponse { sequence })
            },
        )
        .await
    }

    async fn signal_session(
        &self,
        request: Request<pb::SignalSessionRequest>,
    ) -> Result<Response<pb::SignalSessionResponse>, Status> {
        let span = super::rpc_span!("SessionService", "SignalSession", &request);
        self.admin_on_session(
            "SignalSession",
            span,
            request,
            |r| &r.session_id,
            async |request| {
                convert::check_payload("payload", &request.payload, &self.limits)?;
                let payload = bytes::Bytes::copy_from_slice(&request.payload);
                let answer = self.directory.signal(&request.session_id, payload).await?;
                Ok(pb::SignalSessionResponse { payload: answer })
            },
        )
        .await
    }

    async fn remove_player(
        &self,
        request: Request<pb::RemovePlayerRequest>,
    ) -> Result<Response<pb::RemovePlayerResponse>, Status> {
        let span = super::rpc_span!("SessionService", "RemovePlayer", &request);
        self.admin_on_session(
            "RemovePlayer",
            span,
            request,
            |r| &r.session_id,
            async |request| {
                convert::check_id("player_id", &request.player_id)?;
                convert::check_message("reason", &request.reason)?;
                let player = request.player_id.as_str().into();
                self.directory.remove_player(&request.session_id, player, request.reason).await?;
                Ok(pb::RemovePlayerResponse {})
            },
        )
        .await
    }

    async fn lock_session(
        &self,
        request: Request<pb::LockSessionRequest>,
    ) -> Result<Response<pb::LockSessionResponse>, Status> {
        let span = super::rpc_span!("SessionService", "LockSession", &request);
        self.admin_on_session(
            "LockSession",
            span,
            request,
            |r| &r.session_id,
            async |request| {
                let session = self.directory.lock(&request.session_id, request.locked).await?;
                Ok(pb::LockSessionResponse { session: Some(convert::session(&session)) })
            },
        )
        .await
    }
}

impl<D: Directory> SessionApi<D> {
    /// A state-changing call on one session, in its span `span`: the admin
    /// check, the session id (recorded on the span, then checked), `call`,
    /// and the audit line with the outcome.
    async fn admin_on_session<T: Send, R>(
        &self,
        rpc: &'static str,
        span: tracing::Span,
        request: Request<T>,
        session_id: fn(&T) -> &String,
        call: impl AsyncFnOnce(T) -> Result<R, Status>,
    ) -> Result<Response<R>, Status> {
        super::rpc(rpc, span, async move {
            let caller = self.auth.admin(&Call::of(&request)).await?;
            let request = request.into_inner();
            let id = session_id(&request).clone();
            let result = async {
                tracing::Span::current().record("session.id", id.as_str());
                convert::check_id("session_id", &id)?;
                call(request).await.map(Response::new)
            }
            .await;
            audit(&caller, rpc, &id, &result);
            result
        })
        .await
    }

    async fn create(&self, request: pb::CreateSessionRequest) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let labels = convert::check_labels("labels", request.labels, self.limits.max_labels)?;
        if request.config.len() > MAX_CONFIG_LEN {
            return Err(Error::invalid(
                "config",
                format!("{} bytes; at most {MAX_CONFIG_LEN} allowed", request.config.len()),
            )
            .into());
        }
        let key = match request.idempotency_key {
            key if key.is_empty() => None,
            key if key.len() > MAX_IDEMPOTENCY_KEY_LEN => {
                return Err(
                    Error::invalid("idempotency_key", format!("longer than {MAX_IDEMPOTENCY_KEY_LEN} bytes")).into()
                );
            }
            key => {
                convert::check_text("idempotency_key", &key)?;
                Some(key)
            }
        };
        convert::check_text("mode", &request.mode)?;
        tracing::Span::current().record("session.mode", request.mode.as_str());
        if let Some(millis) = request.seat_hold_millis
            && Duration::from_millis(millis.into()) > crate::config::MAX_SEAT_HOLD
        {
            return Err(Error::invalid("seat_hold_millis", format!("{millis} ms; at most an hour")).into());
        }
        let params = CreateParams {
            mode: request.mode,
            max_players: request.max_players,
            labels,
            config: request.config,
            open_to_join_or_create: request.open_to_join_or_create,
            seat_hold: request.seat_hold_millis.map(|millis| Duration::from_millis(millis.into())),
            replay: request.replay_buffer,
        };
        let created = self.directory.create(params, key).await?;
        tracing::Span::current().record("session.id", &*created.session.id);
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(convert::session(&created.session)),
            created: created.created,
        }))
    }
}
