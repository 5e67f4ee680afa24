//! The Play stream: join, welcome, relay, order, presence, leave vs
//! disconnect, join-or-create, targeted messages, pings.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Connect, Player, TestServer, WAIT, assert_status, join_mode, join_session};
use game_session::pb::{self, PresenceKind, client_message, server_message::Kind};
use tonic::Code;

/// Catches a welcome that misreports the session, the player, the players
/// already present or the sequence, and a join not announced to the others.
#[tokio::test]
async fn join_welcomes_and_announces() {
    let server = TestServer::start().await;
    let session = server.create_session(4).await;

    let mut alice = Player::join(server.addr, join_session(&session, "alice")).await;
    assert_eq!(alice.welcome.session_id, session);
    assert_eq!(alice.welcome.mode, "relay");
    assert_eq!(alice.id(), "alice");
    assert_eq!(alice.welcome.player.as_ref().map(|p| p.display_name.as_str()), Some("alice name"));
    assert!(alice.welcome.players.is_empty());
    assert_eq!(alice.welcome.sequence, 1, "alice's own join is the session's first event");

    let mut join = join_session(&session, "bob");
    join.metadata = HashMap::from([("team".to_string(), "red".to_string())]);
    let bob = Player::join(server.addr, join).await;
    assert_eq!(bob.welcome.sequence, 2);
    let present: Vec<_> = bob.welcome.players.iter().map(|p| p.player_id.as_str()).collect();
    assert_eq!(present, ["alice"]);

    let presence = alice.next_presence().await;
    assert_eq!(presence.sequence, 2);
    assert_eq!(presence.kind, PresenceKind::Joined as i32);
    let bob_info = presence.player.expect("player");
    assert_eq!(bob_info.player_id, "bob");
    assert_eq!(bob_info.metadata.get("team").map(String::as_str), Some("red"));
    server.shutdown().await;
}

/// Catches a join without a player id that gets no id, or two such joins
/// that get the same one.
#[tokio::test]
async fn server_assigns_missing_player_ids() {
    let server = TestServer::start().await;
    let session = server.create_session(4).await;
    let a = Player::join(server.addr, join_session(&session, "")).await;
    let b = Player::join(server.addr, join_session(&session, "")).await;
    assert_eq!(a.id().len(), 32);
    assert_eq!(b.id().len(), 32);
    assert_ne!(a.id(), b.id());
    server.shutdown().await;
}

/// Catches relayed messages that lose their payload, sender or server time,
/// go back to their sender, or arrive out of the session's order: three
/// players send concurrently and everyone sees one strictly increasing
/// sequence, identical for the messages they share.
#[tokio::test]
async fn relay_reaches_everyone_else_in_one_total_order() {
    let server = TestServer::start().await;
    let session = server.create_session(3).await;
    let mut players = Vec::new();
    for id in ["p0", "p1", "p2"] {
        players.push(Player::join_as(server.addr, &session, id).await);
    }
    // Drain the presence events of later joins.
    for (i, player) in players.iter_mut().enumerate() {
        for _ in i + 1..3 {
            player.next_presence().await;
        }
    }

    const EACH: usize = 50;
    let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_micros() as i64;
    for round in 0..EACH {
        for (i, player) in players.iter().enumerate() {
            player.relay(format!("p{i}-{round}").as_bytes(), &[]).await;
        }
    }

    let mut views = Vec::new();
    for (i, player) in players.iter_mut().enumerate() {
        let mut seen = Vec::new();
        for _ in 0..EACH * 2 {
            let relayed = player.next_relayed().await;
            assert_ne!(relayed.sender_id, format!("p{i}"), "a player got its own message back");
            let text = String::from_utf8(relayed.payload.to_vec()).expect("utf8");
            assert!(text.starts_with(&relayed.sender_id), "payload {text} from {}", relayed.sender_id);
            assert!(relayed.server_time_unix_micros >= before, "server time {}", relayed.server_time_unix_micros);
            assert!(!relayed.droppable);
            seen.push((relayed.sequence, text));
        }
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "sequence not strictly increasing for p{i}");
        // Each sender's own messages keep their order.
        for sender in 0..3 {
            let rounds: Vec<usize> = seen
                .iter()
                .filter_map(|(_, t)| t.strip_prefix(&format!("p{sender}-")))
                .map(|r| r.parse().expect("round"))
                .collect();
            if sender != i {
                assert_eq!(rounds, (0..EACH).collect::<Vec<_>>());
            }
        }
        views.push(seen.into_iter().collect::<HashMap<u64, String>>());
    }
    // The same sequence number means the same message for everyone.
    for (a, view_a) in views.iter().enumerate() {
        for view_b in &views[a + 1..] {
            for (seq, text) in view_a {
                if let Some(other) = view_b.get(seq) {
                    assert_eq!(text, other, "sequence {seq} names two messages");
                }
            }
        }
    }
    // Together the players saw every message exactly once per recipient:
    // 150 messages, sequences 4..=153 (1-3 were the joins).
    let all: std::collections::BTreeSet<u64> = views.iter().flat_map(|v| v.keys().copied()).collect();
    assert_eq!(all, (4..4 + 3 * EACH as u64).collect());
    server.shutdown().await;
}

/// Catches targets that are ignored (delivery to everyone), targeted
/// messages missing their target or not marked as targeted, and sequence
/// numbers that are not shared: a player sees a gap exactly where a message
/// went only to others.
#[tokio::test]
async fn targeted_messages_leave_gaps_for_others() {
    let server = TestServer::start().await;
    let session = server.create_session(3).await;
    let a = Player::join_as(server.addr, &session, "a").await;
    let mut b = Player::join_as(server.addr, &session, "b").await;
    let mut c = Player::join_as(server.addr, &session, "c").await;
    b.next_presence().await; // c joined

    a.relay(b"to everyone", &[]).await; // seq 4
    a.relay(b"to c only", &["c"]).await; // seq 5
    a.relay(b"to b and c", &["b", "c"]).await; // seq 6
    a.relay(b"to a itself", &["a"]).await; // seq 7
    a.relay(b"after", &[]).await; // seq 8

    let seen_b: Vec<(u64, Vec<u8>, bool)> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let r = b.next_relayed().await;
            v.push((r.sequence, r.payload.to_vec(), r.targeted));
        }
        v
    };
    assert_eq!(
        seen_b,
        vec![(4, b"to everyone".to_vec(), false), (6, b"to b and c".to_vec(), true), (8, b"after".to_vec(), false)]
    );
    let mut seen_c = Vec::new();
    for _ in 0..4 {
        let r = c.next_relayed().await;
        seen_c.push((r.sequence, r.targeted));
    }
    assert_eq!(seen_c, [(4, false), (5, true), (6, true), (8, false)]);
    server.shutdown().await;
}

/// Catches a sender that gets its own self-targeted message without the
/// session's sequence, and pings answered wrongly or given a sequence.
#[tokio::test]
async fn self_target_and_ping() {
    let server = TestServer::start().await;
    let session = server.create_session(2).await;
    let mut a = Player::join_as(server.addr, &session, "a").await;
    a.relay(b"note to self", &["a"]).await;
    let relayed = a.next_relayed().await;
    assert_eq!((relayed.sequence, relayed.sender_id.as_str()), (2, "a"));

    let now = || SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_micros() as i64;
    let before = now();
    a.send(client_message::Kind::Ping(pb::Ping { client_time: 1234, rtt_micros: 0 })).await;
    match a.next().await {
        Kind::Pong(pong) => {
            assert_eq!(pong.client_time, 1234);
            assert!((before..=now()).contains(&pong.server_time_unix_micros), "{pong:?}");
        }
        other => panic!("expected a pong, got {other:?}"),
    }
    server.shutdown().await;
}

/// Catches a leave message, a clean half-close and a broken connection that
/// are reported alike, or that do not free the seat: each is its own
/// presence kind, and the seat can be taken again.
#[tokio::test]
async fn leave_half_close_and_disconnect_are_told_apart() {
    let server = TestServer::start().await;
    let session = server.create_session(4).await;
    let mut host = Player::join_as(server.addr, &session, "host").await;

    let mut leaver = Player::join_as(server.addr, &session, "leaver").await;
    assert_eq!(host.next_presence().await.kind, PresenceKind::Joined as i32);
    leaver.leave().await;
    leaver.expect_ended_ok().await;
    let left = host.next_presence().await;
    assert_eq!((left.kind, left.player.map(|p| p.player_id)), (PresenceKind::Left as i32, Some("leaver".into())));

    let mut closer = Player::join_as(server.addr, &session, "closer").await;
    host.next_presence().await;
    closer.half_close();
    closer.expect_ended_ok().await;
    let left = host.next_presence().await;
    assert_eq!((left.kind, left.player.map(|p| p.player_id)), (PresenceKind::Left as i32, Some("closer".into())));

    let dropper = Player::join_as(server.addr, &session, "dropper").await;
    host.next_presence().await;
    dropper.break_connection();
    let gone = host.next_presence().await;
    // A drop holds the seat for a resume.
    assert_eq!(gone.kind, PresenceKind::Held as i32, "{gone:?}");
    assert_eq!(gone.player.map(|p| p.player_id).as_deref(), Some("dropper"));
    assert_eq!(gone.detail, "connection lost", "a disconnect says why, in fixed words");

    // The seats left were freed: the same ids can join again. The held one
    // cannot be taken by naming it.
    let taken = Player::try_join(server.addr, join_session(&session, "dropper"), Connect::default()).await;
    assert_status(taken.map(|_| ()), Code::AlreadyExists, "already holds a seat");
    let mut back = Vec::new();
    for id in ["leaver", "closer"] {
        back.push(Player::join_as(server.addr, &session, id).await);
    }
    let session = server.session_info(&session).await;
    assert_eq!(session.player_count, 4);
    server.shutdown().await;
}

/// Catches join-or-create that places players in sessions not open to it,
/// that opens a new session while an open one has a free seat, or that
/// fails instead of creating one when all are full.
#[tokio::test]
async fn join_or_create_skips_closed_sessions_and_fills_open_ones() {
    let mut config = common::config();
    config.default_max_players = 2;
    let server = TestServer::start_with(config).await;
    let closed = server.create_session(8).await;

    let first = Player::join(server.addr, join_mode("relay", "m1")).await;
    assert_ne!(first.welcome.session_id, closed, "placed in a session not open to join-or-create");
    let second = Player::join(server.addr, join_mode("relay", "m2")).await;
    assert_eq!(second.welcome.session_id, first.welcome.session_id, "did not fill the open session");
    let third = Player::join(server.addr, join_mode("relay", "m3")).await;
    assert_ne!(third.welcome.session_id, first.welcome.session_id, "overfilled a full session");
    assert_ne!(third.welcome.session_id, closed);

    // A session created open to join-or-create is used too.
    let response = server
        .sessions()
        .await
        .create_session(pb::CreateSessionRequest {
            mode: "relay".into(),
            max_players: 5,
            open_to_join_or_create: true,
            ..Default::default()
        })
        .await
        .expect("create");
    let open = response.into_inner().session.expect("session").session_id;
    // `third`'s session has one free seat and one player; `open` has none:
    // the fuller one is preferred.
    let fourth = Player::join(server.addr, join_mode("relay", "m4")).await;
    assert_eq!(fourth.welcome.session_id, third.welcome.session_id);
    let fifth = Player::join(server.addr, join_mode("relay", "m5")).await;
    assert_eq!(fifth.welcome.session_id, open);

    let closed_info = server.session_info(&closed).await;
    assert_eq!(closed_info.player_count, 0);
    server.shutdown().await;
}

/// Catches an idle timeout that never fires, or that ends sessions with
/// players in them.
#[tokio::test]
async fn empty_sessions_end_after_the_idle_timeout() {
    let mut config = common::config();
    config.idle_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let occupied = server.create_session(2).await;
    let empty = server.create_session(2).await;
    let _player = Player::join_as(server.addr, &occupied, "stays").await;

    let mut sessions = server.sessions().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let result = sessions.get_session(pb::GetSessionRequest { session_id: empty.clone() }).await;
        let end = result.expect("get").into_inner().session.and_then(|s| s.end);
        if let Some(end) = end {
            assert_eq!(end.reason, pb::SessionEndReason::Idle as i32);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the empty session never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let occupied = sessions.get_session(pb::GetSessionRequest { session_id: occupied }).await;
    assert_eq!(occupied.expect("occupied session still runs").into_inner().session.map(|s| s.player_count), Some(1));
    server.shutdown().await;
}
