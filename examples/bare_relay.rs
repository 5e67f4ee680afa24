//! The benchmark baseline: a bare tonic bidi relay with the same proto shape
//! as game-session, and nothing else.
//!
//! One task per session, a reader task per player that forwards into the
//! session's inbox, and a bounded queue per player (full: the message is
//! dropped). No validation, no limits, no presence, no metrics, no policy:
//! what is left is the cost of tonic, h2 and tokio themselves. Only
//! `SessionService.CreateSession` and `PlayerService.Play` (join by session
//! id, relay to everyone else or to targets) are served.
//!
//! ```sh
//! cargo run --release --example bare_relay -- --listen 127.0.0.1:50052
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::Stream;
use game_session::pb::player_service_server::{PlayerService, PlayerServiceServer};
use game_session::pb::session_service_server::{SessionService, SessionServiceServer};
use game_session::pb::{self, client_message, server_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

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

/// What a session task hears.
enum Command {
    Join { player_id: String, out: mpsc::Sender<Result<pb::ServerMessage, Status>> },
    Relay { from: String, relay: pb::Relay },
    Leave { player_id: String },
}

#[derive(Clone, Default)]
struct Sessions {
    inboxes: Arc<Mutex<HashMap<String, mpsc::Sender<Command>>>>,
}

/// One session: a sequence and the players' queues.
async fn session(mut inbox: mpsc::Receiver<Command>) {
    let mut sequence = 0u64;
    let mut players: HashMap<String, mpsc::Sender<Result<pb::ServerMessage, Status>>> = HashMap::new();
    while let Some(command) = inbox.recv().await {
        match command {
            Command::Join { player_id, out } => {
                sequence += 1;
                let welcome = pb::Welcome {
                    session_id: String::new(),
                    player: Some(pb::PlayerInfo { player_id: player_id.clone(), ..Default::default() }),
                    players: Vec::new(),
                    sequence,
                    mode: "relay".into(),
                };
                let _ = out.try_send(Ok(pb::ServerMessage { kind: Some(server_message::Kind::Welcome(welcome)) }));
                players.insert(player_id, out);
            }
            Command::Relay { from, relay } => {
                sequence += 1;
                let message = pb::ServerMessage {
                    kind: Some(server_message::Kind::Relayed(pb::Relayed {
                        sequence,
                        sender_id: from.clone(),
                        payload: relay.payload,
                        server_time_unix_micros: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_micros() as i64),
                        droppable: relay.droppable,
                    })),
                };
                for (id, out) in &players {
                    let wanted = if relay.targets.is_empty() { *id != from } else { relay.targets.contains(id) };
                    if wanted {
                        let _ = out.try_send(Ok(message.clone()));
                    }
                }
            }
            Command::Leave { player_id } => {
                players.remove(&player_id);
            }
        }
    }
}

struct Bare {
    sessions: Sessions,
    queue: usize,
}

type PlayStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl PlayerService for Bare {
    type PlayStream = PlayStream;

    async fn play(&self, request: Request<Streaming<pb::ClientMessage>>) -> Result<Response<PlayStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(pb::ClientMessage { kind: Some(client_message::Kind::Join(join)) }) = inbound.message().await? else {
            return Err(Status::failed_precondition("join first"));
        };
        let Some(pb::join::Target::SessionId(session_id)) = join.target else {
            return Err(Status::invalid_argument("join by session id"));
        };
        let inbox = self.sessions.inboxes.lock().map_err(|_| Status::internal("poisoned"))?.get(&session_id).cloned();
        let inbox = inbox.ok_or_else(|| Status::not_found("no such session"))?;
        let (out, queue) = mpsc::channel(self.queue);
        let player_id = join.player_id;
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
        Ok(Response::new(Box::pin(ReceiverStream::new(queue))))
    }
}

#[tonic::async_trait]
impl SessionService for Bare {
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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let sessions = Sessions::default();
    let player = PlayerServiceServer::new(Bare { sessions: sessions.clone(), queue: args.queue });
    let backend = SessionServiceServer::new(Bare { sessions, queue: args.queue });
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
