//! Per-seat controls for live ops, through the real server: removing
//! (kicking) one player with a reason, and locking a session to new joins.

mod common;

use common::{Player, TestServer, WAIT, assert_status, join_mode, join_session};
use game_session::pb::{self, PresenceKind, server_message::Kind};
use tonic::Code;

/// A relay session open to join-or-create, with `max_players` seats.
async fn create_open(server: &TestServer, max_players: u32) -> String {
    let request = pb::CreateSessionRequest {
        mode: "relay".into(),
        max_players,
        open_to_join_or_create: true,
        ..Default::default()
    };
    let created = server.sessions().await.create_session(request).await.expect("create").into_inner();
    created.session.expect("session").session_id
}

/// Catches a kick that does not reach the kicked player with its reason
/// (and a status a client will not retry blindly), that the others do not
/// see, that shows them the operator's words, or that disturbs the players
/// who stay; and a kick of nobody, or in no session, that does not say so.
#[tokio::test]
async fn an_operator_removes_one_player_and_tells_it_why() {
    let server = TestServer::start().await;
    let session = server.create_session(3).await;
    let mut a = Player::join(server.addr, join_session(&session, "a")).await;
    let mut b = Player::join(server.addr, join_session(&session, "b")).await;
    let mut c = Player::join(server.addr, join_session(&session, "c")).await;
    let joined = async |player: &mut Player| player.next_presence().await.player.map(|p| p.player_id);
    assert_eq!((joined(&mut a).await, joined(&mut a).await), (Some("b".into()), Some("c".into())));
    assert_eq!(joined(&mut b).await.as_deref(), Some("c"));
    let mut api = server.sessions().await;
    let kick = |player: &str, reason: &str| pb::RemovePlayerRequest {
        session_id: session.clone(),
        player_id: player.into(),
        reason: reason.into(),
    };
    api.remove_player(kick("b", "cheating in round 3")).await.expect("remove");

    let (_, end) = tokio::time::timeout(WAIT, b.until_end()).await.expect("b's stream ends");
    assert_status(end, Code::PermissionDenied, "removed from the session by an operator: cheating in round 3");
    for player in [&mut a, &mut c] {
        let removed = player.next_presence().await;
        assert_eq!(removed.kind, PresenceKind::Removed as i32);
        assert_eq!(removed.player.map(|p| p.player_id).as_deref(), Some("b"));
        assert_eq!(removed.detail, "removed by an operator", "the others do not see the operator's words");
    }
    a.relay(b"still here", &[]).await;
    assert_eq!(c.next_relayed().await.payload, &b"still here"[..]);
    assert_eq!(server.session_info(&session).await.player_count, 2);

    assert_status(
        api.remove_player(kick("b", "again")).await,
        Code::InvalidArgument,
        "player \"b\" is not in the session",
    );
    let elsewhere = pb::RemovePlayerRequest { session_id: "nope".into(), ..kick("a", "") };
    assert_status(api.remove_player(elsewhere).await, Code::NotFound, "session \"nope\" not found");
    assert_status(
        api.remove_player(kick("a", "bad\u{1b}[2J")).await,
        Code::InvalidArgument,
        "reason: character U+001B",
    );
    assert_eq!(server.session_info(&session).await.player_count, 2, "refused kicks removed nobody");
    server.shutdown().await;
}

/// Catches a lock that does not refuse joins by id, that join-or-create
/// still fills, that filters and listings do not show, that removes the
/// players already in, or an unlock that does not let joins in again.
#[tokio::test]
async fn a_locked_session_takes_no_joins_and_keeps_its_players() {
    let server = TestServer::start().await;
    let session = create_open(&server, 4).await;
    let mut a = Player::join(server.addr, join_session(&session, "a")).await;
    let mut api = server.sessions().await;
    let mut watch = api.watch_sessions(pb::WatchSessionsRequest::default()).await.expect("watch").into_inner();
    while !matches!(
        watch.message().await.expect("watch").and_then(|m| m.kind),
        Some(pb::watch_sessions_response::Kind::Synced(_))
    ) {}

    let lock = |locked: bool| pb::LockSessionRequest { session_id: session.clone(), locked };
    let locked = api.lock_session(lock(true)).await.expect("lock").into_inner().session.expect("session");
    assert!(locked.locked);
    let event = watch.message().await.expect("watch").and_then(|m| m.kind);
    let Some(pb::watch_sessions_response::Kind::Event(event)) = event else { panic!("an event: {event:?}") };
    assert_eq!((event.kind, event.session.map(|s| s.locked)), (pb::SessionEventKind::Updated as i32, Some(true)));

    let refused = Player::try_join(server.addr, join_session(&session, "late"), Default::default()).await;
    assert_status(refused.map(|p| p.welcome), Code::FailedPrecondition, "is locked to new joins");
    let elsewhere = Player::join(server.addr, join_mode("relay", "matched")).await;
    assert_ne!(elsewhere.welcome.session_id, session, "join-or-create placed a player in a locked session");
    let ids = |filter: pb::SessionFilter| {
        let mut api = api.clone();
        async move {
            let request = pb::ListSessionsRequest { filter: Some(filter), ..Default::default() };
            let sessions = api.list_sessions(request).await.expect("list").into_inner().sessions;
            sessions.into_iter().map(|s| s.session_id).collect::<Vec<_>>()
        }
    };
    let other = elsewhere.welcome.session_id.clone();
    assert_eq!(ids(pb::SessionFilter { has_open_seats: true, ..Default::default() }).await, [other.as_str()]);
    assert_eq!(ids(pb::SessionFilter { locked: Some(true), ..Default::default() }).await, [session.as_str()]);
    assert_eq!(ids(pb::SessionFilter { locked: Some(false), ..Default::default() }).await, [other.as_str()]);
    assert!(server.session_info(&session).await.locked);

    // An unlock lets joins in again; the player in stayed all along.
    api.lock_session(lock(false)).await.expect("unlock");
    let mut late = Player::join(server.addr, join_session(&session, "late")).await;
    assert!(matches!(a.next().await, Kind::Presence(p) if p.player.as_ref().is_some_and(|p| p.player_id == "late")));
    a.relay(b"welcome", &[]).await;
    assert_eq!(late.next_relayed().await.payload, &b"welcome"[..]);
    server.shutdown().await;
}

/// The seat of `player` in GetSession's answer for `session`.
async fn seat(server: &TestServer, session: &str, player: &str) -> pb::SeatStatus {
    let info = server.session_info(session).await;
    info.seats.into_iter().find(|s| s.player_id == player).unwrap_or_else(|| panic!("no seat of {player}"))
}

/// Catches a per-player view that does not show what an operator needs to
/// tell a healthy seat from a struggling one: the seat's state, when it was
/// taken, the round trip its client reports, what waits in its queue, and
/// how many messages were dropped for it (exactly what the player is told
/// once it reads again).
#[tokio::test]
async fn get_session_shows_each_seats_state_queue_and_drops() {
    let mut config = common::config();
    config.outbound_queue = 32;
    // Long enough to read GetSession while behind; the sweep that tells a
    // caught-up player of its drops runs every quarter of it.
    config.slow_player_grace = std::time::Duration::from_secs(8);
    config.player_byte_rate = 0;
    let server = TestServer::start_with(config).await;
    let session = server.create_session(2).await;
    let before = game_session::session::unix_micros();
    let sender = Player::join(server.addr, join_session(&session, "sender")).await;
    let window = common::Connect { window: Some(1024), ..Default::default() };
    let mut stalled = Player::try_join(server.addr, join_session(&session, "stalled"), window).await.expect("join");

    sender.send(pb::client_message::Kind::Ping(pb::Ping { client_time: 1, rtt_micros: 4321 })).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let sender_seat = loop {
        let seat = seat(&server, &session, "sender").await;
        if seat.rtt_micros != 0 || tokio::time::Instant::now() > deadline {
            break seat;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!((sender_seat.state, sender_seat.rtt_micros), (pb::SeatState::Live as i32, 4321));
    assert!((before..=game_session::session::unix_micros()).contains(&sender_seat.joined_unix_micros));
    assert_eq!((sender_seat.queued_messages, sender_seat.dropped_messages), (0, 0));

    const TOTAL: usize = 100;
    for i in 0..TOTAL {
        sender.relay_with(&[i as u8; 32 * 1024], &[], true).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut stalled_seat = seat(&server, &session, "stalled").await;
    while stalled_seat.queued_messages as usize + stalled_seat.dropped_messages as usize > TOTAL
        || stalled_seat.dropped_messages == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "no drops shown: {stalled_seat:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        stalled_seat = seat(&server, &session, "stalled").await;
    }
    // The sender is done: what the stalled seat shows is final.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let stalled_seat = seat(&server, &session, "stalled").await;
    assert!((1..=32).contains(&stalled_seat.queued_messages), "{stalled_seat:?}");
    assert!(stalled_seat.queued_bytes >= 32 * 1024 * u64::from(stalled_seat.queued_messages), "{stalled_seat:?}");
    let (mut relayed, mut told) = (0, 0);
    while relayed + told < TOTAL {
        match stalled.next().await {
            Kind::Relayed(_) => relayed += 1,
            Kind::Dropped(notice) => told += notice.count as usize,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(told as u64, stalled_seat.dropped_messages, "the view and the player's notice disagree");
    assert_eq!(seat(&server, &session, "stalled").await.queued_messages, 0, "the queue, read, shows empty");
    server.shutdown().await;
}
