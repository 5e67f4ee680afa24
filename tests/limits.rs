//! Connection, stream and session-creation limits against hostile clients,
//! over real TCP: the first request's deadline, the connection cap, rapid
//! reset, the header-size limit, streams that never join, running out of
//! file descriptors, join-or-create per caller, and a storm of arrivals and
//! departures. The server is the binary as a child process, so that its
//! descriptors, limits and metrics are its own. In each, honest players
//! relay alongside and get every message.

mod common;

use std::time::Duration;

use common::binary::Binary;
use common::{Player, WAIT};
use game_session::pb;
use game_session::pb::player_service_client::PlayerServiceClient;
use game_session::pb::session_service_client::SessionServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Two honest players in one session: `a` relays, `b` receives.
struct Honest {
    a: Player,
    b: Player,
    sent: u32,
}

impl Honest {
    async fn join(addr: std::net::SocketAddr, sessions: &mut SessionServiceClient<Channel>) -> Self {
        let request = pb::CreateSessionRequest { mode: "relay".into(), max_players: 2, ..Default::default() };
        let created = sessions.create_session(request).await.expect("create session").into_inner();
        let session = created.session.expect("session").session_id;
        let mut a = Player::join_as(addr, &session, "honest-a").await;
        let b = Player::join_as(addr, &session, "honest-b").await;
        let joined = a.next_presence().await;
        assert_eq!(joined.kind, pb::PresenceKind::Joined as i32, "{joined:?}");
        Honest { a, b, sent: 0 }
    }

    /// One relay from `a`, which `b` must receive, in order.
    async fn relay(&mut self) {
        self.sent += 1;
        let payload = format!("honest {}", self.sent);
        self.a.relay(payload.as_bytes(), &[]).await;
        let relayed = self.b.next_relayed().await;
        assert_eq!(relayed.payload.as_ref(), payload.as_bytes());
    }
}

/// Reads until the server closes the connection: `true` when it did within
/// `WAIT` (EOF or a reset), `false` when it still holds it.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read_to_end).await.is_ok()
}

/// A channel on a connection of its own.
async fn connect(addr: std::net::SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await
}

/// A health check on `channel`: `true` when answered.
async fn healthy(channel: &Channel) -> bool {
    let mut client = HealthClient::new(channel.clone());
    let check = client.check(HealthCheckRequest { service: String::new() });
    matches!(tokio::time::timeout(WAIT, check).await, Ok(Ok(_)))
}

/// Catches a connection that sends nothing, or only the HTTP/2 preface,
/// being held forever (or an honest player's connection being closed by the
/// same deadline).
#[tokio::test]
async fn silent_connections_and_a_lone_preface_are_closed_by_the_deadline() {
    let server = Binary::start(&["--first-request-timeout", "300ms"]).await;
    let channel = connect(server.addr).await.expect("connect");
    let mut honest = Honest::join(server.addr, &mut SessionServiceClient::new(channel)).await;

    let mut silent: Vec<TcpStream> = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let mut preface_only = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(PREFACE).await.expect("preface");
        // An empty SETTINGS frame: the rest of a client's preface.
        stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.expect("settings");
        preface_only.push(stream);
    }
    honest.relay().await;
    for stream in silent.iter_mut().chain(preface_only.iter_mut()) {
        assert!(closed_by_server(stream).await, "a connection without a request was held");
    }
    // Well past the deadline, the honest players' connections still work.
    for _ in 0..20 {
        honest.relay().await;
    }
    let timed_out = server.sample("game_session_connections_first_request_timeouts_total{listener=\"main\"}").await;
    assert_eq!(timed_out, 16.0);
}

/// Catches connections beyond `--max-connections` being served (or
/// queued) instead of closed at once, and a cap that does not free a slot
/// when a connection closes.
#[tokio::test]
async fn the_connection_cap_refuses_the_excess_and_recovers() {
    let server = Binary::start(&["--max-connections", "4"]).await;
    // Three connections: the backend's and the two players'.
    let backend = connect(server.addr).await.expect("connect");
    let mut honest = Honest::join(server.addr, &mut SessionServiceClient::new(backend.clone())).await;
    let fourth = connect(server.addr).await.expect("connect");
    assert!(healthy(&fourth).await, "the fourth connection is within the cap");

    for _ in 0..5 {
        let refused = match connect(server.addr).await {
            Ok(channel) => !healthy(&channel).await,
            Err(_) => true,
        };
        assert!(refused, "a connection over the cap was served");
        let mut raw = TcpStream::connect(server.addr).await.expect("connect");
        assert!(closed_by_server(&mut raw).await, "a connection over the cap was held");
        honest.relay().await;
    }

    drop(fourth);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(channel) = connect(server.addr).await
            && healthy(&channel).await
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no connection served after one closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    honest.relay().await;
    assert!(healthy(&backend).await);
    // Ten refused above (five tonic channels, five raw connections), and
    // however many tries the recovery loop took while the fourth closed.
    let refused = server.sample("game_session_connections_refused_total{listener=\"main\",reason=\"limit\"}").await;
    assert!(refused >= 10.0, "{refused} connections refused");
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    frame.push(kind);
    frame.push(flags);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Catches the HTTP/2 rapid-reset attack (CVE-2023-44487) being served:
/// a client that opens and resets streams faster than they are taken up
/// must get GOAWAY with ENHANCE_YOUR_CALM, while honest players go on.
#[tokio::test]
async fn a_rapid_reset_client_gets_goaway_and_honest_players_go_on() {
    let server = Binary::start(&[]).await;
    let channel = connect(server.addr).await.expect("connect");
    let mut honest = Honest::join(server.addr, &mut SessionServiceClient::new(channel)).await;

    let mut attack = PREFACE.to_vec();
    attack.extend(frame(0x4, 0, 0, &[]));
    // HPACK, static table: :method POST, :scheme http, :path /.
    let headers = [0x83, 0x86, 0x84];
    // A hundred pairs: past the limit of 20, and small enough to arrive
    // and be read whole, so that the server's close does not turn into a
    // reset that discards its GOAWAY before this client reads it.
    for i in 0..100u32 {
        let stream = 2 * i + 1;
        attack.extend(frame(0x1, 0x4, stream, &headers));
        attack.extend(frame(0x3, 0, stream, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // The server may close before it has read it all.
    let _ = stream.write_all(&attack).await;

    let mut received = Vec::new();
    let mut goaway = None;
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    assert!(tokio::time::timeout(WAIT, read).await.is_ok(), "the attacker's connection stayed open");
    let mut at = 0;
    while at + 9 <= received.len() {
        let length = u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]]) as usize;
        let kind = received[at + 3];
        let payload = &received[(at + 9).min(received.len())..(at + 9 + length).min(received.len())];
        if kind == 0x7 && payload.len() >= 8 {
            goaway = Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
        }
        at += 9 + length;
    }
    assert_eq!(goaway, Some(0xb), "expected GOAWAY with ENHANCE_YOUR_CALM");
    for _ in 0..10 {
        honest.relay().await;
    }
}

/// Catches Play streams that never send their join being held past the
/// join timeout (or leaving anything in the registry), a thousand at once.
#[tokio::test]
async fn a_thousand_streams_that_never_join_all_end_at_the_join_timeout() {
    let server = Binary::start(&["--join-timeout", "500ms"]).await;
    let backend = connect(server.addr).await.expect("connect");
    let mut sessions = SessionServiceClient::new(backend);
    let mut honest = Honest::join(server.addr, &mut sessions).await;

    let channels = [connect(server.addr).await.expect("connect"), connect(server.addr).await.expect("connect")];
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let channel = channels[i % 2].clone();
        streams.spawn(async move {
            // Held open and never sent on: the stream never joins.
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::ClientMessage>(1);
            let call = async {
                let mut inbound = PlayerServiceClient::new(channel).play(ReceiverStream::new(rx)).await?.into_inner();
                loop {
                    if inbound.message().await?.is_none() {
                        return Ok(());
                    }
                }
            };
            let outcome: Result<(), tonic::Status> = tokio::time::timeout(WAIT * 3, call).await.expect("ended");
            drop(tx);
            outcome.err().map(|status| status.code())
        });
    }
    let mut deadline_exceeded = 0;
    while let Some(outcome) = streams.join_next().await {
        if outcome.expect("stream task") == Some(Code::DeadlineExceeded) {
            deadline_exceeded += 1;
        }
        if deadline_exceeded % 100 == 0 {
            honest.relay().await;
        }
    }
    assert_eq!(deadline_exceeded, 1000);
    let listed = sessions.list_sessions(pb::ListSessionsRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.sessions.len(), 1, "only the honest session is left");
    honest.relay().await;
    assert_eq!(server.sample("game_session_join_failures_total{reason=\"timeout\"}").await, 1000.0);
}

/// CPU time (user + system, in clock ticks) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces), from field 3.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// Catches an accept loop that spins a core, silently, while the process is
/// out of file descriptors, and one that does not serve again once they
/// are freed. The server runs as a child process with a lowered limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_backs_off_logs_and_recovers() {
    let args = ["--first-request-timeout", "60s", "--log-format", "text"];
    let mut server = Binary::start_with(&args, &[], |command| {
        // SAFETY: setrlimit is async-signal-safe, and touches only the child.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
    .await;
    let (addr, pid) = (server.addr, server.child.id().expect("pid"));
    let backend = connect(addr).await.expect("connect");
    // Kept open to the end: one of the connections the gauge must show.
    let mut sessions = SessionServiceClient::new(backend);
    let mut honest = Honest::join(addr, &mut sessions).await;

    // More connections than the server has descriptors left.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(TcpStream::connect(addr).await.expect("connect (the kernel's backlog)"));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, server.log.recv()).await {
            Ok(Some(line)) if line.contains("accept failed") => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no log line for the failed accepts"),
        }
    }
    let before = cpu_ticks(pid);
    for _ in 0..20 {
        honest.relay().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let used = cpu_ticks(pid) - before;
    // Spinning would use about one tick per 10 ms, all 2 s of them (200).
    assert!(used < 50, "the server used {used} ticks of CPU in 2 s while out of descriptors");

    drop(flood);
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        if let Ok(channel) = connect(addr).await
            && healthy(&channel).await
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not serving new connections after descriptors freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    honest.relay().await;

    // The failed accepts are counted, and the gauge comes back to the
    // honest connections alone (the backend's and the two players').
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let samples = server.scrape().await;
        let errors = samples.get("game_session_accept_errors_total{listener=\"main\"}");
        let open = samples.get("game_session_connections_open{listener=\"main\"}");
        if errors.is_some_and(|errors| *errors >= 1.0) && open == Some(&3.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "accept errors {errors:?}, connections open {open:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Catches `--max-header-list-size` not reaching the HTTP/2 settings: a
/// header block over it must be refused, one under it served.
#[tokio::test]
async fn a_header_block_over_the_limit_is_refused() {
    let server = Binary::start(&["--max-header-list-size", "4096"]).await;
    let channel = connect(server.addr).await.expect("connect");
    let mut honest = Honest::join(server.addr, &mut SessionServiceClient::new(channel.clone())).await;

    let check = |padding: usize| {
        let mut client = HealthClient::new(channel.clone());
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        let value = "a".repeat(padding).parse().expect("metadata value");
        request.metadata_mut().insert("x-padding", value);
        async move { tokio::time::timeout(WAIT, client.check(request)).await.expect("an answer in time") }
    };
    assert!(check(8 * 1024).await.is_err(), "an 8 KiB header block was served over a 4 KiB limit");
    assert!(check(1024).await.is_ok(), "a 1 KiB header block was refused");
    honest.relay().await;
}

/// Opens a Play stream on `channel` (so several can share one connection)
/// with `join`, and waits for its welcome; the sender keeps it open.
async fn play_on(
    channel: &Channel,
    join: pb::Join,
    token: Option<&str>,
) -> Result<(tokio::sync::mpsc::Sender<pb::ClientMessage>, tonic::Streaming<pb::ServerMessage>), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let join = pb::ClientMessage { kind: Some(pb::client_message::Kind::Join(join)) };
    tx.send(join).await.expect("queue the join");
    let request = match token {
        Some(token) => common::bearer(ReceiverStream::new(rx), token),
        None => tonic::Request::new(ReceiverStream::new(rx)),
    };
    let mut stream = PlayerServiceClient::new(channel.clone()).play(request).await?.into_inner();
    let first = tokio::time::timeout(WAIT, stream.message()).await.expect("an answer in time")?;
    match first.and_then(|m| m.kind) {
        Some(pb::server_message::Kind::Welcome(_)) => Ok((tx, stream)),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// Catches join-or-create that lets one client start sessions without limit
/// (each one memory and a task on the server), and a limit charged to the
/// wrong client. With auth off the caller is the connection: two streams
/// on one connection fill its cap of two, a third is refused naming the
/// limit, another connection is unaffected, and the cap frees when one of
/// the sessions ends. Every session has one seat, so that each
/// join-or-create starts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_or_create_is_capped_per_connection() {
    let args = ["--default-max-players", "1", "--max-sessions-per-caller", "2", "--idle-timeout", "100ms"];
    let server = Binary::start(&args).await;
    let (greedy, other) = (server.channel().await, server.channel().await);
    let join = |id: &str| common::join_mode("relay", id);
    let (first, _) = play_on(&greedy, join("g1"), None).await.expect("the first session");
    let _second = play_on(&greedy, join("g2"), None).await.expect("the second session");
    let refused = play_on(&greedy, join("g3"), None).await.map(|_| ());
    common::assert_status(
        refused,
        Code::ResourceExhausted,
        "already has 2 running that it started (--max-sessions-per-caller)",
    );
    let _honest = play_on(&other, join("h1"), None).await.expect("another connection is not charged");

    // g1 leaves; its session ends when idle, and the connection may start
    // another.
    first.send(pb::ClientMessage { kind: Some(pb::client_message::Kind::Leave(pb::Leave {})) }).await.expect("leave");
    let mut refusals = 1.0;
    let deadline = tokio::time::Instant::now() + WAIT;
    let _third = loop {
        match play_on(&greedy, join("g3"), None).await {
            Ok(player) => break player,
            Err(status) if status.code() == Code::ResourceExhausted => refusals += 1.0,
            Err(status) => panic!("{status:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the ended session still counts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(server.sample("game_session_join_failures_total{reason=\"creation_limited\"}").await, refusals);
}

/// Catches a per-caller limit that a token's holder evades by opening more
/// connections: with auth on, the caller is the token's `sub`, whichever
/// connection it comes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_or_create_is_capped_per_token_subject() {
    let args = ["--default-max-players", "1", "--max-sessions-per-caller", "1"];
    let server = Binary::start_with_env(&args, &[("GAME_SESSION_JWT_HS256_SECRET", common::jwt::SECRET)]).await;
    let (alice, bob) =
        (common::jwt::hs256(&common::jwt::claims("alice")), common::jwt::hs256(&common::jwt::claims("bob")));
    let join = common::join_mode("relay", "");
    let _seated = play_on(&server.channel().await, join.clone(), Some(&alice)).await.expect("alice's session");
    let refused = play_on(&server.channel().await, join.clone(), Some(&alice)).await.map(|_| ());
    common::assert_status(refused, Code::ResourceExhausted, "player \"alice\" already has 1 running");
    let _bob = play_on(&server.channel().await, join, Some(&bob)).await.expect("bob is not charged for alice");
}

/// Polls the binary's metrics until every `(series, value)` in `want`
/// holds; panics with the last scrape if they do not within [`WAIT`].
async fn settles_to(server: &Binary, want: &[(&str, f64)]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let samples = server.scrape().await;
        let off: Vec<_> = want
            .iter()
            .filter(|(series, value)| samples.get(*series).copied().unwrap_or(0.0) != *value)
            .map(|(series, value)| format!("{series}: {:?}, want {value}", samples.get(*series)))
            .collect();
        if off.is_empty() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never settled: {off:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Catches what a storm of arrivals and departures leaks: a session, a
/// seat, a connection or a count left behind. 1,000 clients, each on its
/// own connection, join-or-create at once; then a third leave, a third
/// reset their stream, and a third lose their connection. Afterwards only
/// the honest session is left, with its two players, who relayed through
/// it all and got every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_a_thousand_clients_leaves_nothing_behind() {
    const CLIENTS: usize = 1000;
    // A socket per client here, and one per client in the server: both
    // processes need more than the usual soft limit of 1,024 descriptors.
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit on this process, with a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max.min(8192).max(limit.rlim_cur);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(limit.rlim_cur >= 4096, "open-files limit {} is too low for this test", limit.rlim_cur);
    // Seats held for a second: a third of the storm holds its seat for a
    // while, and must still leave nothing behind.
    let server = Binary::start(&["--idle-timeout", "100ms", "--seat-hold", "1s"]).await;
    let mut api = server.sessions().await;
    let mut honest = Honest::join(server.addr, &mut api).await;

    let joining: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = server.addr;
            tokio::spawn(
                async move { Player::try_join(addr, common::join_mode("relay", ""), Default::default()).await },
            )
        })
        .collect();
    let mut players = Vec::new();
    for (n, join) in joining.into_iter().enumerate() {
        let player = join.await.expect("join task").unwrap_or_else(|status| panic!("client {n}: {status:?}"));
        players.push(player);
        if n % 100 == 0 {
            honest.relay().await;
        }
    }
    let joins = (CLIENTS + 2) as f64;
    settles_to(&server, &[("game_session_player_joins_total{mode=\"relay\"}", joins)]).await;
    // At least a session per eight seats: join-or-create filled them.
    let listed = api.list_sessions(pb::ListSessionsRequest { page_size: 1000, ..Default::default() }).await;
    let listed = listed.expect("list").into_inner().sessions;
    assert!(listed.len() > CLIENTS / 8, "{} sessions for {CLIENTS} players", listed.len());
    assert_eq!(listed.iter().map(|s| s.player_count).sum::<u32>(), CLIENTS as u32 + 2);

    let mut leavers = Vec::new();
    let mut broken = Vec::new();
    for (n, player) in players.into_iter().enumerate() {
        match n % 3 {
            0 => {
                player.leave().await;
                leavers.push(player);
            }
            1 => player.reset_stream(),
            _ => {
                player.break_connection();
                broken.push(player);
            }
        }
        if n % 100 == 0 {
            honest.relay().await;
        }
    }
    // A leaver's stream ends with OK once its leave is handled (a client
    // that reset its stream at once could lose the leave in flight).
    let ends = leavers.iter_mut().map(|player| async move {
        let (_, end) = player.until_end().await;
        end
    });
    for end in futures_util::future::join_all(ends).await {
        assert!(end.is_ok(), "{end:?}");
    }
    let leaving = leavers.len() as f64;
    drop(leavers); // and their connections
    settles_to(
        &server,
        &[
            ("game_session_sessions_active{mode=\"relay\"}", 1.0),
            ("game_session_players_connected{mode=\"relay\"}", 2.0),
            ("game_session_player_departures_total{mode=\"relay\",reason=\"left\"}", leaving),
            // Reset and broken streams held their seats until the hold ran out.
            ("game_session_player_departures_total{mode=\"relay\",reason=\"hold_expired\"}", CLIENTS as f64 - leaving),
            ("game_session_seats_held{mode=\"relay\"}", 0.0),
            // The honest players' two connections, and this test's API one.
            ("game_session_connections_open{listener=\"main\"}", 3.0),
        ],
    )
    .await;
    let listed = api.list_sessions(pb::ListSessionsRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.sessions.len(), 1, "{listed:?}");
    honest.relay().await;
}
