//! The benchmark baseline: a bare tonic bidi relay with the same proto shape
//! as game-session, tuned as anyone serious about a relay would tune it, and
//! nothing else.
//!
//! What it has:
//! - one task per session, a reader task per player that forwards into the
//!   session's inbox, and a bounded queue per player (full: the message is
//!   dropped);
//! - encode once: a relayed message is built and encoded once, and every
//!   recipient's queue gets the same refcounted `Bytes`; the Play stream's
//!   codec writes those bytes as they are;
//! - small codec buffers: each stream's encode and decode buffers start at
//!   256 bytes (tonic's default is 8 KiB each) and grow with the messages;
//! - batched draining: the session task takes up to 64 commands from its
//!   inbox per wake-up, and player ids are `Arc<str>`, never copied per
//!   recipient.
//!
//! What it deliberately lacks: validation, limits, presence, metrics and
//! policy (and auth, TLS, health, reflection and pings). What is left is the
//! cost of tonic, h2 and tokio themselves, used well, so that game-session's
//! ratios to it are not flattered by a naive baseline. Only
//! `SessionService.CreateSession` and `PlayerService.Play` (join by session
//! id, relay to everyone else or to targets) are served.
//!
//! ```sh
//! cargo run --release --example bare_relay -- --listen 127.0.0.1:50052
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use clap::Parser;
use futures_util::Stream;
use game_session::pb::session_service_server::{SessionService, SessionServiceServer};
use game_session::pb::{self, client_message, server_message};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// The bare relay's settings.
#[derive(Debug, Parser)]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:50052")]
    listen: SocketAddr,
    /// Each player's queue, in messages.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
}

/// Commands a session task takes from its inbox per wake-up: one wake-up
/// for a burst instead of one per message.
const INBOX_BATCH: usize = 64;

/// Where each stream's codec buffers start: a relay message is well under
/// it, and tonic's 8 KiB default would dominate an idle stream's memory.
const CODEC_BUFFER: usize = 256;
/// tonic's default: encoded responses are handed to HTTP/2 once this much is
/// buffered (or nothing more is ready).
const CODEC_YIELD_THRESHOLD: usize = 32 * 1024;

fn codec_buffers() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER, CODEC_YIELD_THRESHOLD)
}

/// What a player's queue holds: an encoded `ServerMessage`, shared by every
/// recipient of it.
type Outbound = Result<Bytes, Status>;

/// What a session task hears.
enum Command {
    Join { player_id: Arc<str>, out: mpsc::Sender<Outbound> },
    Relay { from: Arc<str>, relay: pb::Relay },
    Leave { player_id: Arc<str> },
}

/// The inbox of every session, by id; the lock is never held across an
/// `.await`.
#[derive(Clone, Default)]
struct Sessions {
    inboxes: Arc<Mutex<HashMap<String, mpsc::Sender<Command>>>>,
}

/// One session: a sequence and the players' queues.
async fn session(mut inbox: mpsc::Receiver<Command>) {
    let mut sequence = 0u64;
    let mut players: HashMap<Arc<str>, mpsc::Sender<Outbound>> = HashMap::new();
    let mut batch = Vec::with_capacity(INBOX_BATCH);
    while inbox.recv_many(&mut batch, INBOX_BATCH).await > 0 {
        for command in batch.drain(..) {
            match command {
                Command::Join { player_id, out } => {
                    sequence += 1;
                    let welcome = pb::Welcome {
                        session_id: String::new(),
                        player: Some(pb::PlayerInfo { player_id: player_id.to_string(), ..Default::default() }),
                        players: Vec::new(),
                        sequence,
                        mode: "relay".into(),
                        ..Default::default()
                    };
                    let _ = out.try_send(Ok(encode(server_message::Kind::Welcome(welcome))));
                    players.insert(player_id, out);
                }
                Command::Relay { from, relay } => {
                    sequence += 1;
                    let encoded = encode(server_message::Kind::Relayed(pb::Relayed {
                        sequence,
                        sender_id: from.to_string(),
                        payload: relay.payload,
                        server_time_unix_micros: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_micros() as i64),
                        droppable: relay.droppable,
                        targeted: !relay.targets.is_empty(),
                    }));
                    for (id, out) in &players {
                        let wanted = if relay.targets.is_empty() {
                            *id != from
                        } else {
                            relay.targets.iter().any(|target| target.as_str() == &**id)
                        };
                        if wanted {
                            let _ = out.try_send(Ok(encoded.clone()));
                        }
                    }
                }
                Command::Leave { player_id } => {
                    players.remove(&player_id);
                }
            }
        }
    }
}

/// Encodes a `ServerMessage` once, for all of its recipients.
fn encode(kind: server_message::Kind) -> Bytes {
    Bytes::from(pb::ServerMessage { kind: Some(kind) }.encode_to_vec())
}

/// The Play stream's codec: responses are already encoded, requests are
/// decoded by prost, and both buffers start small.
#[derive(Debug, Default, Clone)]
struct PlayCodec;

impl Codec for PlayCodec {
    type Encode = Bytes;
    type Decode = pb::ClientMessage;
    type Encoder = PreEncoded;
    type Decoder = <ProstCodec<pb::ServerMessage, pb::ClientMessage> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<pb::ServerMessage, pb::ClientMessage>::raw_decoder(codec_buffers())
    }
}

/// Writes an encoded message as it is.
#[derive(Debug, Default, Clone)]
struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        codec_buffers()
    }
}

/// `PlayerService`, by hand: the generated server fixes the codec, and this
/// one's responses are pre-encoded.
#[derive(Clone)]
struct PlayerServer {
    sessions: Sessions,
    queue: usize,
}

impl NamedService for PlayerServer {
    const NAME: &'static str = "gamesession.v1.PlayerService";
}

impl<B> Service<http::Request<B>> for PlayerServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != "/gamesession.v1.PlayerService/Play" {
            return Box::pin(async { Ok(Status::unimplemented("not in the baseline").into_http()) });
        }
        let play = Play(self.clone());
        Box::pin(async move { Ok(Grpc::new(PlayCodec).streaming(play, request).await) })
    }
}

/// One Play call.
struct Play(PlayerServer);

impl StreamingService<pb::ClientMessage> for Play {
    type Response = Bytes;
    type ResponseStream = ReceiverStream<Outbound>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::ClientMessage>>) -> Self::Future {
        let PlayerServer { sessions, queue } = self.0.clone();
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let Some(pb::ClientMessage { kind: Some(client_message::Kind::Join(join)) }) = inbound.message().await?
            else {
                return Err(Status::failed_precondition("join first"));
            };
            let Some(pb::join::Target::SessionId(session_id)) = join.target else {
                return Err(Status::invalid_argument("join by session id"));
            };
            let inbox = sessions.inboxes.lock().map_err(|_| Status::internal("poisoned"))?.get(&session_id).cloned();
            let inbox = inbox.ok_or_else(|| Status::not_found("no such session"))?;
            let (out, outbound) = mpsc::channel(queue);
            let player_id: Arc<str> = join.player_id.into();
            inbox
                .send(Command::Join { player_id: player_id.clone(), out })
                .await
                .map_err(|_| Status::not_found("session gone"))?;
            // The textbook shape: a reader task per player feeding the session.
            tokio::spawn(async move {
                while let Ok(Some(message)) = inbound.message().await {
                    if let Some(client_message::Kind::Relay(relay)) = message.kind
                        && inbox.send(Command::Relay { from: player_id.clone(), relay }).await.is_err()
                    {
                        return;
                    }
                }
                let _ = inbox.send(Command::Leave { player_id }).await;
            });
            Ok(Response::new(ReceiverStream::new(outbound)))
        })
    }
}

/// `SessionService`: only CreateSession.
struct Backend {
    sessions: Sessions,
}

#[tonic::async_trait]
impl SessionService for Backend {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(session(rx));
        self.sessions.inboxes.lock().map_err(|_| Status::internal("poisoned"))?.insert(id.clone(), tx);
        let session = pb::SessionInfo {
            session_id: id,
            mode: request.into_inner().mode,
            max_players: u32::MAX,
            ..Default::default()
        };
        Ok(Response::new(pb::CreateSessionResponse { session: Some(session), created: true }))
    }

    async fn get_session(&self, _: Request<pb::GetSessionRequest>) -> Result<Response<pb::GetSessionResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }

    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }

    type WatchSessionsStream = Pin<Box<dyn Stream<Item = Result<pb::WatchSessionsResponse, Status>> + Send>>;

    async fn watch_sessions(
        &self,
        _: Request<pb::WatchSessionsRequest>,
    ) -> Result<Response<Self::WatchSessionsStream>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }

    async fn end_session(&self, _: Request<pb::EndSessionRequest>) -> Result<Response<pb::EndSessionResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }

    async fn send_to_session(
        &self,
        _: Request<pb::SendToSessionRequest>,
    ) -> Result<Response<pb::SendToSessionResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }

    async fn signal_session(
        &self,
        _: Request<pb::SignalSessionRequest>,
    ) -> Result<Response<pb::SignalSessionResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }

    async fn remove_player(
        &self,
        _: Request<pb::RemovePlayerRequest>,
    ) -> Result<Response<pb::RemovePlayerResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }

    async fn lock_session(
        &self,
        _: Request<pb::LockSessionRequest>,
    ) -> Result<Response<pb::LockSessionResponse>, Status> {
        Err(Status::unimplemented("not in the baseline"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let sessions = Sessions::default();
    let player = PlayerServer { sessions: sessions.clone(), queue: args.queue };
    let backend = SessionServiceServer::new(Backend { sessions });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tonic::transport::Server::builder()
        .add_service(player)
        .add_service(backend)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
