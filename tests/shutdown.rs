//! Graceful shutdown: readiness off (liveness on), no new sessions or
//! joins, a drain period, sessions ended with a reason, queues flushed, and
//! a clean exit, in process and for the real binary on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::binary::Binary;
use common::{Connect, Player, TestServer, WAIT, assert_status, join_session};
use game_session::pb::{self, SessionEndReason, server_message::Kind};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response};

async fn health(channel: &Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: service.into() })
        .await
        .expect("health check");
    health_check_response::ServingStatus::try_from(response.into_inner().status).expect("known status")
}

/// Catches a drain that keeps readiness on, turns liveness off, still takes
/// new sessions or joins, cuts running sessions short, ends them without
/// telling players why, loses queued messages, or overruns its deadline.
#[tokio::test]
async fn shutdown_drains_then_ends_sessions_with_a_reason() {
    let mut config = common::config();
    config.drain_period = Duration::from_millis(800);
    config.shutdown_grace = Duration::from_secs(5);
    let mut server = TestServer::start_with(config).await;
    let channel = server.channel().await;
    for service in ["", "liveness", "gamesession.v1.PlayerService", "gamesession.v1.SessionService"] {
        assert_eq!(health(&channel, service).await, ServingStatus::Serving, "{service:?} before shutdown");
    }
    let session = server.create_session(2).await;
    let sender = Player::join_as(server.addr, &session, "sender").await;
    let mut receiver = Player::join_as(server.addr, &session, "receiver").await;
    let mut api = server.sessions().await;
    let mut watch = api.watch_sessions(pb::WatchSessionsRequest::default()).await.expect("watch").into_inner();

    let started = Instant::now();
    let run = server.begin_shutdown();
    let deadline = Instant::now() + WAIT;
    while health(&channel, "").await != ServingStatus::NotServing {
        assert!(Instant::now() < deadline, "readiness never turned off");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(health(&channel, "liveness").await, ServingStatus::Serving, "liveness must stay on while draining");
    assert_eq!(health(&channel, "gamesession.v1.PlayerService").await, ServingStatus::NotServing);
    assert_status(
        api.create_session(pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() }).await,
        Code::Unavailable,
        "shutting down",
    );
    assert_status(
        Player::try_join(server.addr, join_session(&session, "late"), Connect::default()).await.map(|p| p.welcome),
        Code::Unavailable,
        "shutting down",
    );

    // The running session goes on during the drain, and what is sent before
    // the end is delivered before the end.
    for i in 0..100u32 {
        sender.relay(&i.to_be_bytes(), &[]).await;
    }
    let (seen, end) = receiver.until_end().await;
    assert!(end.is_ok(), "{end:?}");
    let relays: Vec<u32> = seen
        .iter()
        .filter_map(|k| match k {
            Kind::Relayed(m) => Some(u32::from_be_bytes(m.payload[..].try_into().expect("4 bytes"))),
            _ => None,
        })
        .collect();
    assert_eq!(relays, (0..100).collect::<Vec<_>>(), "queued messages were lost");
    match seen.last() {
        Some(Kind::SessionEnded(ended)) => {
            assert_eq!(ended.reason, SessionEndReason::ServerShutdown as i32);
            assert_eq!(ended.message, "server shutting down");
            assert_eq!(ended.sequence, 103, "two joins, 100 relays, then the end");
        }
        other => panic!("expected session_ended last, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(800), "the session was cut before the drain period");

    // A watcher sees the session end, then its stream ends telling it to go
    // elsewhere.
    let mut ended_event = false;
    let end = loop {
        match tokio::time::timeout(WAIT, watch.message()).await.expect("in time") {
            Ok(Some(pb::WatchSessionsResponse { kind: Some(pb::watch_sessions_response::Kind::Event(event)) })) => {
                ended_event |= event.kind == pb::SessionEventKind::Ended as i32;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watch ended without a status"),
            Err(status) => break status,
        }
    };
    assert!(ended_event, "the watcher never saw the session end");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");

    tokio::time::timeout(Duration::from_secs(7), run)
        .await
        .expect("run returns within drain + grace")
        .expect("task")
        .expect("Ok");
}

/// Catches a server that waits out its whole drain period although no game
/// is left: sessions empty at the start of the drain end at once (nobody can
/// join them any more), and so does a session when its last player leaves
/// or when a backend ends it.
#[tokio::test]
async fn shutdown_finishes_early_once_no_game_is_left() {
    let mut config = common::config();
    config.drain_period = Duration::from_secs(60);
    let mut server = TestServer::start_with(config).await;
    let _empty = server.create_session(2).await;
    let emptied = server.create_session(2).await;
    let ended = server.create_session(2).await;
    let mut leaver = Player::join_as(server.addr, &emptied, "leaver").await;
    let _stayer = Player::join_as(server.addr, &ended, "stayer").await;
    let mut api = server.sessions().await;

    let started = Instant::now();
    let run = server.begin_shutdown();
    let mut running = vec![emptied.clone(), ended.clone()];
    running.sort();
    // The empty session ends when the drain begins; poll for it rather than
    // guess how long that takes on a loaded machine.
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = api.list_sessions(pb::ListSessionsRequest::default()).await.expect("list").into_inner().sessions;
        let mut ids: Vec<_> = listed.into_iter().map(|s| s.session_id).collect();
        ids.sort();
        if ids == running {
            break;
        }
        assert!(Instant::now() < deadline, "the empty session did not end when the drain began: {ids:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    leaver.leave().await;
    leaver.expect_ended_ok().await;
    api.end_session(pb::EndSessionRequest { session_id: ended, message: "done".into() }).await.expect("end");
    tokio::time::timeout(Duration::from_secs(10), run).await.expect("returns early").expect("task").expect("Ok");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Catches the real binary not serving, not reporting health, or not
/// exiting 0 after the shutdown sequence on SIGTERM.
#[tokio::test]
async fn the_binary_exits_zero_on_sigterm() {
    let args = ["--drain-period", "300ms", "--shutdown-grace", "2s"];
    let mut server = Binary::start(&args).await;
    let addr = server.addr;
    let channel = server.channel().await;
    assert_eq!(health(&channel, "").await, ServingStatus::Serving);
    let session = {
        let mut api = pb::session_service_client::SessionServiceClient::new(channel.clone());
        let created = api.create_session(pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() });
        created.await.expect("create").into_inner().session.expect("session").session_id
    };
    let mut player = Player::join(addr, join_session(&session, "p")).await;

    let pid = server.child.id().expect("pid") as i32;
    // SAFETY: sends SIGTERM to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let (seen, end) = player.until_end().await;
    assert!(end.is_ok(), "{end:?}");
    assert!(matches!(seen.last(), Some(Kind::SessionEnded(e)) if e.reason == SessionEndReason::ServerShutdown as i32));
    let status = tokio::time::timeout(WAIT, server.child.wait()).await.expect("exits in time").expect("wait");
    let mut log = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(1), server.log.recv()).await {
        log.push(line);
    }
    assert_eq!(status.code(), Some(0), "log: {log:#?}");
    let log = log.join("\n");
    for step in ["received SIGTERM", "shutting down: draining", "session ended", "shut down"] {
        assert!(log.contains(step), "the log lacks {step:?}:\n{log}");
    }
}
