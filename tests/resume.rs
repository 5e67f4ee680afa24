//! Seats that survive the network, through the real server over real TCP:
//! a connection cut mid-stream is resumed without a gap or a duplicate,
//! resume tokens are refused when they should be, a gap older than the
//! buffer is refused and the held seat joined again, and a hold that runs
//! out frees the seat.

mod common;

use std::time::Duration;

use common::proxy::Proxy;
use common::{Connect, Player, TestServer, WAIT, assert_status, join_session, sequence};
use game_session::pb::{self, PresenceKind, server_message::Kind};
use tonic::Code;

/// A resume of `player`'s seat after the last sequence it received.
fn resume_of(token: &str, last: u64) -> pb::Resume {
    pb::Resume { token: token.to_owned(), last_sequence: last }
}

/// A join into `session` with a resume token.
fn join_with_token(session: &str, token: &str) -> pb::Join {
    pb::Join { resume_token: token.to_owned(), ..join_session(session, "") }
}

/// Reads `player`'s messages until `done` says it has what it waits for;
/// returns the history messages (relays, presence, backend) in order.
async fn read_until(player: &mut Player, seen: &mut Vec<Kind>, done: impl Fn(&[Kind]) -> bool) {
    while !done(seen) {
        let kind = player.next().await;
        if sequence(&kind).is_some() {
            seen.push(kind);
        }
    }
}

fn payloads(seen: &[Kind]) -> Vec<String> {
    seen.iter()
        .filter_map(|kind| match kind {
            Kind::Relayed(r) => Some(String::from_utf8_lossy(&r.payload).into_owned()),
            _ => None,
        })
        .collect()
}

/// Catches a resume that loses what was sent while the connection was
/// down, repeats what the player had, or gives it another player's
/// targeted messages: alice's connection is reset mid-stream while bob
/// relays to everyone and carol relays to alice and to bob alone; alice
/// resumes on a new connection and ends up with exactly bob's relays and
/// carol's relays to her, each once, in the session's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_stream_resumes_without_a_gap_or_a_duplicate() {
    const ROUNDS: usize = 40;
    let server = TestServer::start().await;
    let session = server.create_session(3).await;
    let proxy = Proxy::start(server.addr).await;
    let mut alice =
        Player::try_join(proxy.addr, join_session(&session, "alice"), Connect::default()).await.expect("alice");
    let bob = Player::join_as(server.addr, &session, "bob").await;
    let carol = Player::join_as(server.addr, &session, "carol").await;
    let token = alice.welcome.resume_token.clone();
    assert!(!token.is_empty(), "a welcome carries a resume token");

    let sending = async {
        for n in 0..ROUNDS {
            bob.relay(format!("bob {n}").as_bytes(), &[]).await;
            carol.relay(format!("carol to alice {n}").as_bytes(), &["alice"]).await;
            carol.relay(format!("carol to bob {n}").as_bytes(), &["bob"]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let mut before = Vec::new();
    let receiving = async {
        // Until a quarter is in, then the connection goes.
        read_until(&mut alice, &mut before, |seen| payloads(seen).len() >= ROUNDS / 2).await;
        proxy.reset();
    };
    tokio::join!(sending, receiving);
    let last = before.iter().filter_map(sequence).max().expect("alice saw something");

    let (mut alice, resumed) =
        Player::try_resume(server.addr, resume_of(&token, last), Connect::default()).await.expect("resume");
    assert_eq!(resumed.last_sequence, last);
    assert!(resumed.replayed > 0, "the cut came mid-stream: something was missed");
    assert_ne!(resumed.resume_token, token, "a resume issues a new token");
    let mut after = Vec::new();
    read_until(&mut alice, &mut after, |seen| payloads(&before).len() + payloads(seen).len() >= 2 * ROUNDS).await;

    // Bob's and carol's connections interleave as they will; each one's
    // relays arrive whole and in order, and carol's to bob not at all.
    let mut got = payloads(&before);
    got.extend(payloads(&after));
    let from = |prefix: &str| got.iter().filter(|p| p.starts_with(prefix)).cloned().collect::<Vec<_>>();
    let numbered = |prefix: &str| (0..ROUNDS).map(|n| format!("{prefix} {n}")).collect::<Vec<_>>();
    assert_eq!(from("bob "), numbered("bob"), "each of bob's relays, once, in order");
    assert_eq!(from("carol to alice"), numbered("carol to alice"), "each of carol's to alice, once, in order");
    assert_eq!(got.len(), 2 * ROUNDS, "nothing else (none of carol's to bob): {got:?}");
    let sequences: Vec<u64> = before.iter().chain(&after).filter_map(sequence).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "out of order or repeated: {sequences:?}");
    // The replayed part ends before the resume's own sequence; live ones follow it.
    let replayed = &after[..resumed.replayed as usize];
    assert!(replayed.iter().filter_map(sequence).all(|s| s > last && s < resumed.sequence));
    assert!(after[resumed.replayed as usize..].iter().filter_map(sequence).all(|s| s > resumed.sequence));
    // Nothing of alice's own comings and goings was replayed to her.
    assert!(
        after
            .iter()
            .all(|k| !matches!(k, Kind::Presence(p) if p.player.as_ref().is_some_and(|p| p.player_id == "alice")))
    );
    server.shutdown().await;
}

/// Catches a resume or a join that a token should not allow: forged,
/// another session's or player's, a previous generation's (after a
/// resume), and the token of a seat whose hold ran out (the others saw it
/// leave) or that was kicked. And a seat taken over by a resume: the old
/// stream ends with ABORTED.
#[tokio::test]
async fn tokens_that_do_not_hold_the_seat_are_refused() {
    let mut config = common::config();
    config.seat_hold = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let session = server.create_session(4).await;
    let other = server.create_session(4).await;
    let mut alice = Player::join_as(server.addr, &session, "alice").await;
    let mut bob = Player::join_as(server.addr, &session, "bob").await;
    let elsewhere = Player::join_as(server.addr, &other, "alice").await;
    let token = alice.welcome.resume_token.clone();
    let last = alice.welcome.sequence;

    // Forged: the claim changed, or the signature.
    let (claim, tag) = token.split_once('.').expect("claim.tag");
    let mut altered = tag.to_owned().into_bytes();
    altered[0] = if altered[0] == b'A' { b'B' } else { b'A' };
    let forged = format!("{claim}.{}", String::from_utf8(altered).expect("ascii"));
    let refused = Player::try_resume(server.addr, resume_of(&forged, last), Connect::default()).await;
    assert_status(refused.map(|_| ()), Code::Unauthenticated, "not a resume token this service issued");
    // Another session's token does not join this session, nor another
    // player's token this player.
    let foreign = join_with_token(&session, &elsewhere.welcome.resume_token);
    let refused = Player::try_join(server.addr, foreign, Connect::default()).await;
    assert_status(refused.map(|_| ()), Code::InvalidArgument, "not the session of join.resume_token");
    let as_bob = pb::Join { player_id: "bob".into(), ..join_with_token(&session, &token) };
    let refused = Player::try_join(server.addr, as_bob, Connect::default()).await;
    assert_status(refused.map(|_| ()), Code::InvalidArgument, "not the player of join.resume_token");

    // A resume while the old stream is live takes the seat over; the token
    // it used is spent.
    let (alice2, resumed) =
        Player::try_resume(server.addr, resume_of(&token, last + 1), Connect::default()).await.expect("resume");
    let (_, end) = alice.until_end().await;
    assert_status(end, Code::Aborted, "taken over");
    let bob_saw = bob.next_presence().await;
    assert_eq!((bob_saw.kind, bob_saw.sequence), (PresenceKind::Reconnected as i32, resumed.sequence));
    let refused = Player::try_resume(server.addr, resume_of(&token, last + 1), Connect::default()).await;
    assert_status(refused.map(|_| ()), Code::PermissionDenied, "superseded");

    // The hold runs out: the others see alice leave, and her token is gone.
    alice2.break_connection();
    let held = bob.next_presence().await;
    assert_eq!((held.kind, held.detail.as_str()), (PresenceKind::Held as i32, "connection lost"));
    let left = bob.next_presence().await;
    assert_eq!((left.kind, left.detail.as_str()), (PresenceKind::Left as i32, "did not come back"));
    let refused =
        Player::try_resume(server.addr, resume_of(&resumed.resume_token, resumed.sequence), Connect::default()).await;
    assert_status(refused.map(|_| ()), Code::NotFound, "holds no seat");

    // A kick revokes the seat's token.
    let carol = Player::join_as(server.addr, &session, "carol").await;
    let mut sessions = server.sessions().await;
    let kick =
        pb::RemovePlayerRequest { session_id: session.clone(), player_id: "carol".into(), reason: "cheating".into() };
    sessions.remove_player(kick).await.expect("kick");
    let refused = Player::try_resume(
        server.addr,
        resume_of(&carol.welcome.resume_token, carol.welcome.sequence),
        Connect::default(),
    )
    .await;
    assert_status(refused.map(|_| ()), Code::NotFound, "holds no seat");
    server.shutdown().await;
}

/// Catches a resume that papers over a gap the buffer cannot fill, a
/// refused resume that frees the held seat, and a held seat its token
/// cannot join again; and a server that names a held seat's id free: with
/// auth off, a join naming it is ALREADY_EXISTS.
#[tokio::test]
async fn a_gap_older_than_the_buffer_is_refused_and_the_held_seat_joined_again() {
    let mut config = common::config();
    config.replay_buffer_messages = 4;
    let server = TestServer::start_with(config).await;
    let session = server.create_session(3).await;
    let (alice, mut bob) = common::alice_held(server.addr, &session).await;
    let (token, last) = (alice.welcome.resume_token.clone(), alice.welcome.sequence + 1);
    let named = Player::try_join(server.addr, join_session(&session, "alice"), Connect::default()).await;
    assert_status(named.map(|_| ()), Code::AlreadyExists, "already holds a seat");
    for n in 0..6u8 {
        bob.relay(&[n], &[]).await;
    }
    // Relays are ordered with joins: once carol is in, they are all in.
    let mut carol = Player::join_as(server.addr, &session, "carol").await;
    assert_eq!(bob.next_presence().await.kind, PresenceKind::Joined as i32);

    let refused = Player::try_resume(server.addr, resume_of(&token, last), Connect::default()).await;
    assert_status(refused.map(|_| ()), Code::OutOfRange, "no longer all buffered");
    let back =
        Player::try_join(server.addr, join_with_token(&session, &token), Connect::default()).await.expect("rejoin");
    let mut present: Vec<_> = back.welcome.players.iter().map(|p| p.player_id.as_str()).collect();
    present.sort_unstable();
    assert_eq!(present, ["bob", "carol"], "a fresh welcome with the players present");
    assert_ne!(back.welcome.resume_token, token);
    let reconnected = carol.next_presence().await;
    assert_eq!((reconnected.kind, reconnected.sequence), (PresenceKind::Reconnected as i32, back.welcome.sequence));
    let info = server.session_info(&session).await;
    assert_eq!(info.player_count, 3);
    assert!(info.seats.iter().all(|s| s.state == pb::SeatState::Live as i32), "{:?}", info.seats);
    server.shutdown().await;
}

/// Catches a session created without a replay buffer that keeps one (a
/// resume that missed something must be refused), or that refuses a
/// resume that missed nothing; and a held seat not shown as held.
#[tokio::test]
async fn a_session_without_a_replay_buffer_resumes_only_a_player_that_missed_nothing() {
    let server = TestServer::start().await;
    let mut sessions = server.sessions().await;
    let request = pb::CreateSessionRequest {
        mode: "relay".into(),
        max_players: 3,
        replay_buffer: Some(false),
        ..Default::default()
    };
    let session = sessions.create_session(request).await.expect("create").into_inner().session.expect("s").session_id;
    let (alice, bob) = common::alice_held(server.addr, &session).await;
    let token = alice.welcome.resume_token.clone();
    let info = server.session_info(&session).await;
    let seat = info.seats.iter().find(|s| s.player_id == "alice").expect("alice's seat");
    assert_eq!(seat.state, pb::SeatState::Held as i32);
    assert!(seat.held_until_unix_micros > 0);
    // Had she missed bob's join, it could not be replayed.
    let refused = Player::try_resume(server.addr, resume_of(&token, alice.welcome.sequence), Connect::default()).await;
    assert_status(refused.map(|_| ()), Code::OutOfRange, "no longer all buffered");
    // She had it (and her own hold's presence is not hers): nothing is
    // missing, and the resume needs no buffer.
    let last = alice.welcome.sequence + 1;
    let (mut alice, resumed) =
        Player::try_resume(server.addr, resume_of(&token, last), Connect::default()).await.expect("resume");
    assert_eq!(resumed.replayed, 0);
    bob.relay(b"hi", &[]).await;
    assert_eq!(alice.next_relayed().await.sequence, resumed.sequence + 1);
    tokio::time::timeout(WAIT, server.shutdown()).await.expect("shutdown in time");
}
