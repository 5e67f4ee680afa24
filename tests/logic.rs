//! Session logic from a library user's point of view: a mode registered in
//! code, made from each session's config, running behind the real server;
//! a logic that panics, which ends its session alone; and a ticking mode
//! that takes inputs and sends states.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{Player, TestServer, assert_status, join_session};
use game_session::Modes;
use game_session::error::Error;
use game_session::pb::{self, SessionEndReason, server_message::Kind};
use game_session::session::{
    EndReason, Mode, NewPlayer, PlayerId, PlayerMessage, Recipients, Relay, Room, SessionLogic, Tick, TickRate,
};
use tonic::Code;

/// A relay that panics on the payload its session's config names.
struct Fragile;

struct FragileLogic {
    trigger: Bytes,
}

impl Mode for Fragile {
    fn create(&self, config: &[u8]) -> Result<Box<dyn SessionLogic>, String> {
        if config.is_empty() {
            return Err("name the payload that breaks the session".into());
        }
        Ok(Box::new(FragileLogic { trigger: Bytes::copy_from_slice(config) }))
    }
}

impl SessionLogic for FragileLogic {
    fn on_message(&mut self, room: &mut Room, from: &PlayerId, message: PlayerMessage) {
        if let PlayerMessage::Relay(relay) = &message
            && relay.payload == self.trigger
        {
            panic!("broken on purpose");
        }
        Relay.on_message(room, from, message);
    }

    fn on_backend_message(&mut self, room: &mut Room, payload: Bytes, targets: Vec<PlayerId>) -> Result<u64, Error> {
        Relay.on_backend_message(room, payload, targets)
    }
}

async fn create(server: &TestServer, config: &[u8]) -> Result<String, tonic::Status> {
    let request = pb::CreateSessionRequest {
        mode: "fragile".into(),
        max_players: 4,
        config: Bytes::copy_from_slice(config),
        ..Default::default()
    };
    let created = server.sessions().await.create_session(request).await?.into_inner();
    Ok(created.session.map(|s| s.session_id).unwrap_or_default())
}

/// Catches a panic in one session's logic that ends other sessions (even of
/// the same mode) or the server, that ends its own players' streams without
/// a reason (a crash must not look like a normal end), or that leaves the
/// session listed; and a mode's config that does not reach its logic, or
/// whose rejection does not reach the caller.
#[tokio::test]
async fn a_panicking_logic_ends_only_its_session_with_internal_error() {
    let modes = Modes::builder().register("relay", Relay).register("fragile", Fragile).build();
    let server = TestServer::start_with_modes(common::config(), modes).await;
    assert_status(create(&server, b"").await, Code::InvalidArgument, "config: name the payload that breaks");
    let doomed = create(&server, b"boom").await.expect("create");
    let other = create(&server, b"bang").await.expect("create");

    let breaker = Player::join(server.addr, join_session(&doomed, "breaker")).await;
    let mut watcher = Player::join(server.addr, join_session(&doomed, "watcher")).await;
    let sender = Player::join(server.addr, join_session(&other, "sender")).await;
    let mut reader = Player::join(server.addr, join_session(&other, "reader")).await;

    breaker.relay(b"boom", &[]).await;
    let (seen, end) = watcher.until_end().await;
    assert!(end.is_ok(), "the stream ends with OK after its reason: {end:?}");
    match seen.as_slice() {
        [Kind::SessionEnded(ended)] => {
            assert_eq!(ended.reason, SessionEndReason::InternalError as i32);
            assert_eq!(ended.message, "the session failed on the server");
            assert_eq!(ended.sequence, 3);
        }
        other => panic!("expected session_ended alone, got {other:?}"),
    }
    // Not listed any more, but readable as ended for the retention period.
    let gone = server.sessions().await.get_session(pb::GetSessionRequest { session_id: doomed.clone() }).await;
    let end = gone.expect("get").into_inner().session.and_then(|s| s.end).expect("ended");
    assert_eq!(end.reason, SessionEndReason::InternalError as i32);

    sender.relay(b"boom", &[]).await;
    assert_eq!(reader.next_relayed().await.payload, &b"boom"[..], "the other session goes on");
    let listed = server.sessions().await.list_sessions(pb::ListSessionsRequest::default()).await.expect("list");
    let ids: Vec<_> = listed.into_inner().sessions.into_iter().map(|s| s.session_id).collect();
    assert_eq!(ids, [other]);
    server.shutdown().await;
}

/// A ticking mode for the tests: 50 Hz; each tick adds up every player's
/// input bytes, sends the total as a full state to who needs one and as a
/// delta to the rest; `phase` goes lobby → playing at the first input and
/// → over when the total reaches the config's target, which ends the
/// session. Joins whose player id starts with `banned` are refused.
struct Sum;

struct SumLogic {
    target: u64,
    total: u64,
}

impl Mode for Sum {
    fn create(&self, config: &[u8]) -> Result<Box<dyn SessionLogic>, String> {
        let target = std::str::from_utf8(config).ok().and_then(|c| c.parse().ok()).ok_or("config: a target sum")?;
        Ok(Box::new(SumLogic { target, total: 0 }))
    }
}

fn phase(phase: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("phase".to_owned(), phase.to_owned())])
}

impl SessionLogic for SumLogic {
    fn init(&mut self, room: &mut Room) -> Option<TickRate> {
        room.set_labels(phase("lobby"));
        TickRate::hz(50).ok()
    }

    fn on_join_attempt(&mut self, _room: &Room, player: &NewPlayer) -> Result<(), Error> {
        if player.id.starts_with("banned") {
            return Err(Error::precondition("join", "banned players may not join this match"));
        }
        Ok(())
    }

    fn on_tick(&mut self, tick: &mut Tick) {
        let before = self.total;
        self.total += tick.inputs().iter().flat_map(|input| input.payload.iter()).map(|b| u64::from(*b)).sum::<u64>();
        if before == 0 && self.total > 0 {
            tick.set_labels(phase("playing"));
        }
        let state = Bytes::from(self.total.to_string());
        let fresh = tick.needs_full_state().to_vec();
        let rest = tick.players().iter().filter(|p| !fresh.contains(p)).cloned().collect();
        tick.state(state.clone(), Recipients::Only(fresh));
        tick.delta(state, Recipients::Only(rest));
        if self.total >= self.target {
            tick.set_labels(phase("over"));
            tick.end("target reached");
        }
    }

    fn on_message(&mut self, room: &mut Room, from: &PlayerId, _message: PlayerMessage) {
        room.send_error(from, Error::invalid("relay", "this mode takes inputs"));
    }

    fn on_backend_message(&mut self, _room: &mut Room, _payload: Bytes, _targets: Vec<PlayerId>) -> Result<u64, Error> {
        Err(Error::invalid("payload", "this mode takes no backend messages"))
    }

    /// `add:N` adds N to the total; answers with the new total.
    fn on_signal(&mut self, _room: &mut Room, payload: Bytes) -> Result<Bytes, Error> {
        let add = std::str::from_utf8(&payload).ok().and_then(|p| p.strip_prefix("add:")?.parse::<u64>().ok());
        let add = add.ok_or_else(|| Error::invalid("payload", "expected add:N"))?;
        self.total += add;
        Ok(Bytes::from(self.total.to_string()))
    }

    fn on_end(&mut self, _room: &mut Room, _reason: EndReason) -> Option<Bytes> {
        Some(Bytes::from(format!("total {}", self.total)))
    }
}

/// The next `State` a player gets, skipping presence and the like.
async fn next_state(player: &mut Player) -> pb::State {
    loop {
        match player.next().await {
            Kind::State(state) => return state,
            Kind::SessionEnded(ended) => panic!("the session ended first: {ended:?}"),
            _ => {}
        }
    }
}

/// Catches a ticking mode behind the real server whose inputs do not reach
/// the tick in order and from the right player, whose states do not say
/// the last input processed, whose first state is a delta, whose labels do
/// not show in ListSessions and WatchSessions, whose join rejection does
/// not reach the client, or whose end does not read as completed.
#[tokio::test]
async fn a_ticking_mode_takes_inputs_and_sends_states() {
    let modes = Modes::builder().register("relay", Relay).register("sum", Sum).build();
    let server = TestServer::start_with_modes(common::config(), modes).await;
    let mut api = server.sessions().await;
    let request = pb::CreateSessionRequest { mode: "sum".into(), config: Bytes::from("20"), ..Default::default() };
    let session = api.create_session(request).await.expect("create").into_inner().session.expect("session");
    assert_eq!(session.labels.get("phase").map(String::as_str), Some("lobby"));
    let session = session.session_id;
    let mut watch = api.watch_sessions(pb::WatchSessionsRequest::default()).await.expect("watch").into_inner();

    let refused = Player::try_join(server.addr, join_session(&session, "banned-1"), Default::default()).await;
    assert_status(refused.map(|p| p.welcome), Code::FailedPrecondition, "banned players may not join this match");
    let mut a = Player::join(server.addr, join_session(&session, "a")).await;
    let b = Player::join(server.addr, join_session(&session, "b")).await;
    let first = next_state(&mut a).await;
    assert!(first.full, "the first state is a full one: {first:?}");
    assert_eq!(first.last_input_sequence, 0);

    // a sends 1, 2, 3 (sequences 1-3); b sends 4 (sequence 10). Each
    // state's total must be what its last input sequences account for.
    for (sequence, value) in [(1, 1u8), (2, 2), (3, 3)] {
        let input = pb::Input { sequence, payload: vec![value].into() };
        a.send(pb::client_message::Kind::Input(input)).await;
    }
    let input = pb::Input { sequence: 10, payload: vec![4].into() };
    b.send(pb::client_message::Kind::Input(input)).await;
    let a_sums = [0, 1, 3, 6];
    loop {
        let state = next_state(&mut a).await;
        assert!(!state.full, "a got a full state it did not need: {state:?}");
        let total: u64 = String::from_utf8_lossy(&state.payload).parse().expect("a number");
        // a's own part of the total is exactly what its last input says.
        let own = a_sums[state.last_input_sequence as usize];
        assert!(total == own || total == own + 4, "total {total} with a's inputs to #{}", state.last_input_sequence);
        if total == 10 {
            assert_eq!(state.last_input_sequence, 3);
            break;
        }
    }
    let listed = api.list_sessions(pb::ListSessionsRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.sessions[0].labels.get("phase").map(String::as_str), Some("playing"));

    // Ten more from b reach the target: the logic ends the session.
    let input = pb::Input { sequence: 11, payload: vec![10].into() };
    b.send(pb::client_message::Kind::Input(input)).await;
    let (seen, end) = a.until_end().await;
    assert!(end.is_ok(), "{end:?}");
    match seen.last() {
        Some(Kind::SessionEnded(ended)) => {
            assert_eq!((ended.reason, ended.message.as_str()), (SessionEndReason::Completed as i32, "target reached"));
        }
        other => panic!("expected the session's end, got {other:?}"),
    }
    // The watch saw the phases go by.
    let mut phases = Vec::new();
    while phases.last().map(String::as_str) != Some("over") {
        let message = tokio::time::timeout(common::WAIT, watch.message()).await.expect("in time").expect("watch");
        let session = match message.and_then(|m| m.kind) {
            Some(pb::watch_sessions_response::Kind::Initial(session)) => Some(session),
            Some(pb::watch_sessions_response::Kind::Event(event)) => event.session,
            _ => None,
        };
        if let Some(phase) = session.and_then(|s| s.labels.get("phase").cloned())
            && phases.last() != Some(&phase)
        {
            phases.push(phase);
        }
    }
    assert_eq!(phases, ["lobby", "playing", "over"]);
    drop(b);
    server.shutdown().await;
}

/// Catches a backend signal that does not reach the logic or whose answer
/// does not come back, a mode without signals that does not say so, and a
/// result that is not readable after the end (GetSession, the ENDED watch
/// event) or is kept past the retention period.
#[tokio::test]
async fn signals_reach_the_logic_and_the_result_outlives_the_session() {
    let modes = Modes::builder().register("relay", Relay).register("sum", Sum).build();
    let mut config = common::config();
    config.ended_session_retention = std::time::Duration::from_millis(500);
    let server = TestServer::start_with_modes(config, modes).await;
    let mut api = server.sessions().await;
    let request = pb::CreateSessionRequest { mode: "sum".into(), config: Bytes::from("100"), ..Default::default() };
    let session = api.create_session(request).await.expect("create").into_inner().session.expect("session").session_id;
    let relay = server.create_session(2).await;
    let mut watch = api.watch_sessions(pb::WatchSessionsRequest::default()).await.expect("watch").into_inner();
    let mut player = Player::join(server.addr, join_session(&session, "a")).await;

    let signal = |id: &str, payload: &'static str| pb::SignalSessionRequest {
        session_id: id.to_owned(),
        payload: Bytes::from_static(payload.as_bytes()),
    };
    let answer = api.signal_session(signal(&session, "add:5")).await.expect("signal").into_inner();
    assert_eq!(answer.payload, &b"5"[..]);
    assert_status(api.signal_session(signal(&session, "sub:1")).await, Code::InvalidArgument, "expected add:N");
    assert_status(api.signal_session(signal(&relay, "add:1")).await, Code::FailedPrecondition, "takes no signals");
    assert_status(api.signal_session(signal("nope", "add:1")).await, Code::NotFound, "nope");

    // 95 more reach the target: the next tick ends the session.
    let answer = api.signal_session(signal(&session, "add:95")).await.expect("signal").into_inner();
    assert_eq!(answer.payload, &b"100"[..]);
    let (_, end) = player.until_end().await;
    assert!(end.is_ok(), "{end:?}");
    let ended = api.get_session(pb::GetSessionRequest { session_id: session.clone() }).await.expect("get");
    let end = ended.into_inner().session.and_then(|s| s.end).expect("an ended session's end");
    assert_eq!(
        (end.reason, end.message.as_str(), &end.result[..]),
        (SessionEndReason::Completed as i32, "target reached", &b"total 100"[..])
    );
    let mut seen = None;
    while seen.is_none() {
        let message = tokio::time::timeout(common::WAIT, watch.message()).await.expect("in time").expect("watch");
        if let Some(pb::watch_sessions_response::Kind::Event(event)) = message.and_then(|m| m.kind)
            && event.kind == pb::SessionEventKind::Ended as i32
        {
            seen = event.session.and_then(|s| s.end);
        }
    }
    assert_eq!(seen.map(|end| end.result), Some(Bytes::from_static(b"total 100")));

    // Past the retention period, the session is not found.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        match api.get_session(pb::GetSessionRequest { session_id: session.clone() }).await {
            Err(status) if status.code() == Code::NotFound => break,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "kept past its retention"),
            Err(status) => panic!("{status:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

/// Catches a welcome that does not tell a client what it may do, or tells
/// it the defaults instead of what the server was started with: the
/// session's seats, the size and rate limits, and (in a ticking session
/// only) the tick rate and the inputs a tick takes.
#[tokio::test]
async fn the_welcome_tells_the_seats_and_the_limits() {
    let modes = Modes::builder().register("relay", Relay).register("sum", Sum).build();
    let mut config = common::config();
    config.max_payload_bytes = 1000;
    config.max_targets = 3;
    config.player_message_rate = 50;
    config.player_message_burst = 60;
    config.player_byte_rate = 20_000;
    config.player_byte_burst = 30_000;
    config.flood_grace = std::time::Duration::from_millis(2500);
    config.max_inputs_per_tick = 5;
    let server = TestServer::start_with_modes(config, modes).await;
    let mut api = server.sessions().await;
    let mut create = async |mode: &str, max_players: u32| {
        let request = pb::CreateSessionRequest {
            mode: mode.into(),
            max_players,
            config: Bytes::from("1000"),
            ..Default::default()
        };
        api.create_session(request).await.expect("create").into_inner().session.expect("session").session_id
    };
    let (relay, ticking) = (create("relay", 3).await, create("sum", 2).await);
    let limits = |tick_hz: u32, max_inputs_per_tick: u32| pb::ClientLimits {
        max_payload_bytes: 1000,
        max_targets: 3,
        messages_per_second: 50,
        message_burst: 60,
        bytes_per_second: 20_000,
        byte_burst: 30_000,
        flood_grace_millis: 2500,
        tick_hz,
        max_inputs_per_tick,
    };
    let player = Player::join(server.addr, join_session(&relay, "r")).await;
    assert_eq!((player.welcome.max_players, player.welcome.limits), (3, Some(limits(0, 0))));
    let player = Player::join(server.addr, join_session(&ticking, "t")).await;
    assert_eq!((player.welcome.max_players, player.welcome.limits), (2, Some(limits(50, 5))));
}

/// Catches a resumed player in a ticking session that gets a delta on a
/// state it may have missed: after the `resumed` answer, its first state is
/// a full one, and deltas follow.
#[tokio::test]
async fn a_resumed_player_gets_a_full_state_before_any_delta() {
    let modes = Modes::builder().register("sum", Sum).build();
    let server = TestServer::start_with_modes(common::config(), modes).await;
    let mut api = server.sessions().await;
    let request = pb::CreateSessionRequest { mode: "sum".into(), config: Bytes::from("1000"), ..Default::default() };
    let session = api.create_session(request).await.expect("create").into_inner().session.expect("s").session_id;
    let mut a = Player::join(server.addr, join_session(&session, "a")).await;
    assert!(next_state(&mut a).await.full);
    assert!(!next_state(&mut a).await.full, "then deltas");
    a.break_connection();
    // A few ticks go by while a is away.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resume = pb::Resume { token: a.welcome.resume_token.clone(), last_sequence: a.welcome.sequence };
    let (mut a, resumed) = Player::try_resume(server.addr, resume, Default::default()).await.expect("resume");
    assert_eq!(resumed.replayed, 0);
    let first = next_state(&mut a).await;
    assert!(first.full, "a resumed player's first state is full: {first:?}");
    assert!(!next_state(&mut a).await.full, "then deltas");
    server.shutdown().await;
}
