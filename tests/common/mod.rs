//! The test harness: the real server on `127.0.0.1:0`, and real tonic
//! clients over TCP.

#![allow(dead_code)]

pub mod binary;
pub mod certs;
pub mod jwt;
pub mod proxy;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use game_session::pb::player_service_client::PlayerServiceClient;
use game_session::pb::session_service_client::SessionServiceClient;
use game_session::pb::{self, client_message, server_message};
use game_session::{BoxError, Config, Listeners, Modes};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};

/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process.
pub struct TestServer {
    /// Where players (and, without a backend address, backend calls) go.
    pub addr: SocketAddr,
    /// The separate SessionService address, when configured.
    pub backend_addr: Option<SocketAddr>,
    /// The plain-text health address, when configured.
    pub health_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), BoxError>>>,
}

impl TestServer {
    /// A server with the test defaults ([`config`]).
    pub async fn start() -> Self {
        Self::start_with(config()).await
    }

    /// A server with `config` (its listen addresses are ignored: the server
    /// binds `127.0.0.1:0`, and more such ports if `backend_listen` or
    /// `health_listen` is set).
    pub async fn start_with(config: Config) -> Self {
        Self::start_with_modes(config, Modes::default()).await
    }

    /// A server with `config` running `modes` (see [`TestServer::start_with`]).
    pub async fn start_with_modes(config: Config, modes: Modes) -> Self {
        let main = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = main.local_addr().expect("addr");
        let backend = match config.backend_listen {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind backend")),
            None => None,
        };
        let backend_addr = backend.as_ref().map(|l| l.local_addr().expect("addr"));
        let health = match config.health_listen.0 {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind health")),
            None => None,
        };
        let health_addr = health.as_ref().map(|l| l.local_addr().expect("addr"));
        let (shutdown, signal) = oneshot::channel::<()>();
        let listeners = Listeners { main, backend, health };
        let task = tokio::spawn(game_session::run(config, modes, listeners, async {
            let _ = signal.await;
        }));
        TestServer { addr, backend_addr, health_addr, shutdown: Some(shutdown), task: Some(task) }
    }

    /// A channel to the main address.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await.expect("connect")
    }

    /// A SessionService client (on the backend address if there is one).
    pub async fn sessions(&self) -> SessionServiceClient<Channel> {
        let addr = self.backend_addr.unwrap_or(self.addr);
        let channel = Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
        SessionServiceClient::new(channel)
    }

    /// Creates a relay session and returns its id.
    pub async fn create_session(&self, max_players: u32) -> String {
        let response = self
            .sessions()
            .await
            .create_session(pb::CreateSessionRequest { mode: "relay".into(), max_players, ..Default::default() })
            .await
            .expect("create session");
        response.into_inner().session.expect("session").session_id
    }

    /// GetSession's answer for a session that must exist.
    pub async fn session_info(&self, session_id: &str) -> pb::SessionInfo {
        let response = self.sessions().await.get_session(pb::GetSessionRequest { session_id: session_id.into() }).await;
        response.expect("get session").into_inner().session.expect("session")
    }

    /// GetSession's answer, asked with an admin `token`, for a session that
    /// must exist.
    pub async fn session_info_with(&self, session_id: &str, token: &str) -> pb::SessionInfo {
        let request = bearer(pb::GetSessionRequest { session_id: session_id.into() }, token);
        let response = self.sessions().await.get_session(request).await;
        response.expect("get session").into_inner().session.expect("session")
    }

    /// Starts the shutdown sequence and returns the server's task result.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), BoxError>> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.take().expect("server task")
    }

    /// Shuts down and waits for `run` to return.
    pub async fn shutdown(mut self) {
        let task = self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("shutdown in time")
            .expect("server task")
            .expect("run returned Ok");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A test config with small, test-friendly durations.
pub fn config() -> Config {
    let mut config = Config::for_tests();
    config.drain_period = Duration::from_millis(200);
    config.shutdown_grace = Duration::from_secs(5);
    config
}

/// How a test player connects.
#[derive(Clone, Debug, Default)]
pub struct Connect {
    /// The HTTP/2 stream and connection windows this client advertises
    /// (`None`: tonic's default). Small windows make a non-reading client
    /// back up into the server's queue quickly.
    pub window: Option<u32>,
    /// A bearer token sent as `authorization` on the Play call.
    pub token: Option<String>,
    /// TLS settings; `None` for plain text.
    pub tls: Option<ClientTlsConfig>,
}

impl Connect {
    /// Plain text, with `token`.
    pub fn token(token: &str) -> Self {
        Connect { token: Some(token.to_owned()), ..Connect::default() }
    }
}

/// `message` as a request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("a header value"));
    request
}

/// One Play stream on its own TCP connection.
pub struct Player {
    pub welcome: pb::Welcome,
    tx: Option<mpsc::Sender<pb::ClientMessage>>,
    rx: Streaming<pb::ServerMessage>,
    /// The raw socket, to break the connection.
    fd: i32,
}

impl std::fmt::Debug for Player {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Player({:?})", self.welcome.player.as_ref().map(|p| p.player_id.as_str()))
    }
}

/// A join by session id.
pub fn join_session(session_id: &str, player_id: &str) -> pb::Join {
    pb::Join {
        target: Some(pb::join::Target::SessionId(session_id.into())),
        player_id: player_id.into(),
        display_name: format!("{player_id} name"),
        ..pb::Join::default()
    }
}

/// A join-or-create by mode.
pub fn join_mode(mode: &str, player_id: &str) -> pb::Join {
    pb::Join { target: Some(pb::join::Target::Mode(mode.into())), player_id: player_id.into(), ..pb::Join::default() }
}

/// Opens a Play stream on its own connection and sends `first`.
pub async fn open(
    addr: SocketAddr,
    first: pb::ClientMessage,
    connect: Connect,
) -> Result<(mpsc::Sender<pb::ClientMessage>, Streaming<pb::ServerMessage>, i32), Status> {
    let (fd_tx, fd_rx) = std::sync::mpsc::channel();
    let scheme = if connect.tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).expect("uri");
    if let Some(tls) = connect.tls.clone() {
        endpoint = endpoint.tls_config(tls).expect("tls config");
    }
    if let Some(window) = connect.window {
        endpoint = endpoint.initial_stream_window_size(window).initial_connection_window_size(window);
    }
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let fd_tx = fd_tx.clone();
            async move {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let _ = fd_tx.send(stream.as_raw_fd());
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .expect("connect");
    let fd = fd_rx.recv().expect("fd");
    let (tx, rx) = mpsc::channel(1024);
    tx.send(first).await.expect("queue first message");
    let request = match &connect.token {
        Some(token) => bearer(ReceiverStream::new(rx), token),
        None => tonic::Request::new(ReceiverStream::new(rx)),
    };
    let response = PlayerServiceClient::new(channel).play(request).await?;
    Ok((tx, response.into_inner(), fd))
}

impl Player {
    /// Joins with `join`; panics unless welcomed.
    pub async fn join(addr: SocketAddr, join: pb::Join) -> Player {
        Self::try_join(addr, join, Connect::default()).await.expect("join")
    }

    /// Joins session `session_id` as `player_id`.
    pub async fn join_as(addr: SocketAddr, session_id: &str, player_id: &str) -> Player {
        Self::join(addr, join_session(session_id, player_id)).await
    }

    /// Joins with `join`, returning the stream's status if refused.
    pub async fn try_join(addr: SocketAddr, join: pb::Join, connect: Connect) -> Result<Player, Status> {
        let first = pb::ClientMessage { kind: Some(client_message::Kind::Join(join)) };
        let (tx, mut rx, fd) = open(addr, first, connect).await?;
        let first = tokio::time::timeout(WAIT, rx.message()).await.expect("welcome in time")?;
        match first.and_then(|m| m.kind) {
            Some(server_message::Kind::Welcome(welcome)) => Ok(Player { welcome, tx: Some(tx), rx, fd }),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Resumes a seat with `resume` on a new connection, returning the
    /// `resumed` answer, or the stream's status if refused. The player's
    /// `welcome` is made from the answer (session, player, resume token).
    pub async fn try_resume(
        addr: SocketAddr,
        resume: pb::Resume,
        connect: Connect,
    ) -> Result<(Player, pb::Resumed), Status> {
        let first = pb::ClientMessage { kind: Some(client_message::Kind::Resume(resume)) };
        let (tx, mut rx, fd) = open(addr, first, connect).await?;
        let first = tokio::time::timeout(WAIT, rx.message()).await.expect("an answer in time")?;
        match first.and_then(|m| m.kind) {
            Some(server_message::Kind::Resumed(resumed)) => {
                let welcome = pb::Welcome {
                    session_id: resumed.session_id.clone(),
                    player: resumed.player.clone(),
                    sequence: resumed.sequence,
                    resume_token: resumed.resume_token.clone(),
                    ..pb::Welcome::default()
                };
                Ok((Player { welcome, tx: Some(tx), rx, fd }, resumed))
            }
            other => panic!("expected `resumed`, got {other:?}"),
        }
    }

    /// This player's id.
    pub fn id(&self) -> &str {
        &self.welcome.player.as_ref().expect("player").player_id
    }

    /// Sends one message.
    pub async fn send(&self, kind: client_message::Kind) {
        self.tx.as_ref().expect("not half-closed").send(pb::ClientMessage { kind: Some(kind) }).await.expect("send");
    }

    /// Sends one message as given (even an empty one).
    pub async fn send_raw(&self, message: pb::ClientMessage) {
        self.tx.as_ref().expect("not half-closed").send(message).await.expect("send");
    }

    /// Relays `payload` to `targets` (empty: everyone else).
    pub async fn relay(&self, payload: &[u8], targets: &[&str]) {
        self.relay_with(payload, targets, false).await;
    }

    /// Relays with the droppable flag.
    pub async fn relay_with(&self, payload: &[u8], targets: &[&str], droppable: bool) {
        self.send(client_message::Kind::Relay(pb::Relay {
            payload: payload.to_vec().into(),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            droppable,
        }))
        .await;
    }

    /// Sends a leave message.
    pub async fn leave(&self) {
        self.send(client_message::Kind::Leave(pb::Leave {})).await;
    }

    /// Half-closes the request stream cleanly (a leave).
    pub fn half_close(&mut self) {
        self.tx = None;
    }

    /// Resets the stream (RST_STREAM, as a client that gives up on it),
    /// leaving the connection open: a disconnect. The response is dropped
    /// before the request, so that the request never ends cleanly first
    /// (which would be a leave).
    pub fn reset_stream(self) {
        let Player { tx, rx, .. } = self;
        drop(rx);
        drop(tx);
    }

    /// Breaks the TCP connection under the client (a disconnect).
    pub fn break_connection(&self) {
        // SAFETY: shutdown(2) on a socket this player's connection owns and
        // has not closed; it only changes the socket's state.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }

    /// The next message; panics on the end of the stream, an error, or
    /// nothing within [`WAIT`].
    pub async fn next(&mut self) -> server_message::Kind {
        match tokio::time::timeout(WAIT, self.rx.message()).await.expect("a message in time") {
            Ok(Some(pb::ServerMessage { kind: Some(kind) })) => kind,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next relayed message; panics on anything else.
    pub async fn next_relayed(&mut self) -> pb::Relayed {
        match self.next().await {
            server_message::Kind::Relayed(relayed) => relayed,
            other => panic!("expected a relayed message, got {other:?}"),
        }
    }

    /// The next presence event; panics on anything else.
    pub async fn next_presence(&mut self) -> pb::Presence {
        match self.next().await {
            server_message::Kind::Presence(presence) => presence,
            other => panic!("expected a presence event, got {other:?}"),
        }
    }

    /// The next non-fatal error; panics on anything else.
    pub async fn next_error(&mut self) -> pb::Error {
        match self.next().await {
            server_message::Kind::Error(error) => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Reads until the stream ends: `Ok(messages)` on OK, or the status.
    pub async fn until_end(&mut self) -> (Vec<server_message::Kind>, Result<(), Status>) {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.rx.message()).await.expect("the stream ends in time") {
                Ok(Some(message)) => seen.extend(message.kind),
                Ok(None) => return (seen, Ok(())),
                Err(status) => return (seen, Err(status)),
            }
        }
    }

    /// Asserts that the stream ends with OK right away.
    pub async fn expect_ended_ok(&mut self) {
        let (seen, end) = self.until_end().await;
        assert!(seen.is_empty(), "unexpected messages before the end: {seen:?}");
        assert!(end.is_ok(), "expected OK, got {end:?}");
    }
}

/// Seats "alice", then "bob", in `session_id`, and breaks alice's
/// connection; returns both (alice's welcome still holds her resume token)
/// once bob has seen her seat held.
pub async fn alice_held(addr: SocketAddr, session_id: &str) -> (Player, Player) {
    let alice = Player::join_as(addr, session_id, "alice").await;
    let mut bob = Player::join_as(addr, session_id, "bob").await;
    alice.break_connection();
    let held = bob.next_presence().await;
    assert_eq!(held.kind, pb::PresenceKind::Held as i32, "{held:?}");
    (alice, bob)
}

/// Asserts that `result` failed with `code` and a message containing `needle`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) {
    match result {
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "status: {status:?}");
            assert!(status.message().contains(needle), "message {:?} lacks {needle:?}", status.message());
        }
    }
}

/// The sequence number of a history message (relay, presence, backend,
/// session-ended); `None` for the others.
pub fn sequence(kind: &server_message::Kind) -> Option<u64> {
    use server_message::Kind;
    match kind {
        Kind::Relayed(m) => Some(m.sequence),
        Kind::Presence(m) => Some(m.sequence),
        Kind::Backend(m) => Some(m.sequence),
        Kind::SessionEnded(m) => Some(m.sequence),
        _ => None,
    }
}
