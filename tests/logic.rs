//! Session logic from a library user's point of view: a mode registered in
//! code, made from each session's config, running behind the real server;
//! and a logic that panics, which ends its session alone.

mod common;

use bytes::Bytes;
use common::{Player, TestServer, assert_status, join_session};
use game_session::Modes;
use game_session::error::Error;
use game_session::pb::{self, SessionEndReason, server_message::Kind};
use game_session::session::{Mode, PlayerId, PlayerMessage, Relay, Room, SessionLogic};
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
    let gone = server.sessions().await.get_session(pb::GetSessionRequest { session_id: doomed.clone() }).await;
    assert_status(gone, Code::NotFound, &doomed);

    sender.relay(b"boom", &[]).await;
    assert_eq!(reader.next_relayed().await.payload, &b"boom"[..], "the other session goes on");
    let listed = server.sessions().await.list_sessions(pb::ListSessionsRequest::default()).await.expect("list");
    let ids: Vec<_> = listed.into_inner().sessions.into_iter().map(|s| s.session_id).collect();
    assert_eq!(ids, [other]);
    server.shutdown().await;
}
