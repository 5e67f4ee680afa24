//! Bad input: each case gets its exact status or non-fatal error, and
//! disturbs no other player.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Connect, Player, TestServer, assert_status, join_mode, join_session};
use game_session::pb::player_service_client::PlayerServiceClient;
use game_session::pb::{self, PresenceKind, client_message};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Asserts that `join` is refused with `code` naming `needle`.
async fn refused(server: &TestServer, join: pb::Join, code: Code, needle: &str) {
    assert_status(Player::try_join(server.addr, join, Connect::default()).await.map(|p| p.welcome), code, needle);
}

/// Catches joins to a missing or full session, duplicate player ids, and
/// malformed join fields that get a wrong or vague status.
#[tokio::test]
async fn bad_joins_get_exact_statuses() {
    let server = TestServer::start().await;
    let session = server.create_session(2).await;
    let _a = Player::join_as(server.addr, &session, "a").await;

    refused(&server, join_session("no-such-session", "x"), Code::NotFound, "no-such-session").await;
    refused(&server, join_session(&session, "a"), Code::AlreadyExists, "\"a\" already holds a seat").await;
    refused(&server, join_session(&session, "bad id!"), Code::InvalidArgument, "join.player_id").await;
    refused(&server, join_session(&session, &"x".repeat(65)), Code::InvalidArgument, "join.player_id").await;
    refused(&server, join_session("bad/session", "x"), Code::InvalidArgument, "join.session_id").await;
    refused(&server, join_mode("chess", "x"), Code::InvalidArgument, "available modes: relay").await;
    let mut no_target = join_session(&session, "x");
    no_target.target = None;
    refused(&server, no_target, Code::InvalidArgument, "join.target").await;
    let mut long_name = join_session(&session, "x");
    long_name.display_name = "n".repeat(65);
    refused(&server, long_name, Code::InvalidArgument, "join.display_name").await;
    let mut big_metadata = join_session(&session, "x");
    big_metadata.metadata = (0..17).map(|i| (format!("k{i}"), String::new())).collect();
    refused(&server, big_metadata, Code::InvalidArgument, "join.metadata").await;

    let _b = Player::join_as(server.addr, &session, "b").await;
    refused(&server, join_session(&session, "c"), Code::ResourceExhausted, "full").await;
    server.shutdown().await;
}

/// Catches a stream whose first message is not a join being accepted, or
/// refused with the wrong status.
#[tokio::test]
async fn relay_before_join_is_a_failed_precondition() {
    let server = TestServer::start().await;
    let relay = pb::ClientMessage {
        kind: Some(client_message::Kind::Relay(pb::Relay { payload: b"hi".to_vec().into(), ..Default::default() })),
    };
    let result = common::open(server.addr, relay, Connect::default()).await.map(|_| ());
    assert_status(result, Code::FailedPrecondition, "first message on a Play stream must be a join");
    server.shutdown().await;
}

/// Catches a client that opens a Play stream and never joins holding it
/// open forever.
#[tokio::test]
async fn a_stream_that_never_joins_times_out() {
    let mut config = common::config();
    config.join_timeout = Duration::from_millis(200);
    let server = TestServer::start_with(config).await;
    let (_tx, rx) = tokio::sync::mpsc::channel::<pb::ClientMessage>(1);
    let mut client = PlayerServiceClient::new(server.channel().await);
    let result = tokio::time::timeout(common::WAIT, client.play(ReceiverStream::new(rx))).await.expect("in time");
    assert_status(result.map(|_| ()), Code::DeadlineExceeded, "no join message within");
    server.shutdown().await;
}

/// Catches in-session mistakes that end the stream, change the session, or
/// reach other players: each gets a non-fatal error with the exact code and
/// field, consumes no sequence number, and the player carries on.
#[tokio::test]
async fn mistakes_in_session_get_non_fatal_errors() {
    let mut config = common::config();
    config.max_payload_bytes = 1024;
    config.max_targets = 2;
    let server = TestServer::start_with(config).await;
    let session = server.create_session(3).await;
    let mut bystander = Player::join_as(server.addr, &session, "bystander").await;
    let mut mistaken = Player::join_as(server.addr, &session, "mistaken").await;
    bystander.next_presence().await;

    let cases: Vec<(client_message::Kind, Code, &str)> = vec![
        (
            client_message::Kind::Join(join_session(&session, "again")),
            Code::FailedPrecondition,
            "join: this stream has already joined",
        ),
        (relay(vec![0; 1025], &[]), Code::InvalidArgument, "relay.payload: 1025 bytes exceeds the limit of 1024"),
        (relay(b"x".to_vec(), &["bystander", "ghost"]), Code::InvalidArgument, "relay.targets[1]"),
        (relay(b"x".to_vec(), &["bad id"]), Code::InvalidArgument, "relay.targets[0]"),
        (relay(b"x".to_vec(), &["a", "b", "c"]), Code::InvalidArgument, "3 targets; at most 2"),
    ];
    for (kind, code, needle) in cases {
        mistaken.send(kind).await;
        let error = mistaken.next_error().await;
        assert_eq!(error.code, code as i32, "{error:?}");
        assert!(error.message.contains(needle), "{:?} lacks {needle:?}", error.message);
        assert!(!error.field.is_empty(), "the error names its field: {error:?}");
    }
    // An empty message.
    mistaken.send_raw(pb::ClientMessage { kind: None }).await;
    let error = mistaken.next_error().await;
    assert_eq!((error.code, error.field.as_str()), (Code::InvalidArgument as i32, "kind"));

    // Nothing reached the bystander and no sequence was used: the next
    // message is the session's fourth event (joins were 1 and 2).
    mistaken.relay(&[7; 1024], &[]).await;
    let relayed = bystander.next_relayed().await;
    assert_eq!((relayed.sequence, relayed.sender_id.as_str(), relayed.payload.len()), (3, "mistaken", 1024));
    server.shutdown().await;
}

/// Catches a frame over the decode limit that takes down more than its own
/// stream, or whose decoder text reaches the others: the sender's stream
/// ends with tonic's status, the others are told it was removed for a
/// "protocol error" (those words only) and go on relaying.
#[tokio::test]
async fn an_oversize_frame_ends_only_its_stream() {
    let mut config = common::config();
    config.max_payload_bytes = 1024;
    let server = TestServer::start_with(config).await;
    let session = server.create_session(3).await;
    let mut a = Player::join_as(server.addr, &session, "a").await;
    let mut b = Player::join_as(server.addr, &session, "b").await;
    let mut big = Player::join_as(server.addr, &session, "big").await;
    a.next_presence().await;
    a.next_presence().await;
    b.next_presence().await;

    big.relay(&vec![1; 64 * 1024], &[]).await;
    let (_, end) = big.until_end().await;
    let status = end.expect_err("the oversize sender's stream fails");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    for player in [&mut a, &mut b] {
        let removed = player.next_presence().await;
        assert_eq!(removed.kind, PresenceKind::Removed as i32);
        assert_eq!(removed.player.map(|p| p.player_id).as_deref(), Some("big"));
        assert_eq!(removed.detail, "protocol error");
    }
    a.relay(b"still here", &[]).await;
    assert_eq!(&b.next_relayed().await.payload[..], b"still here");
    server.shutdown().await;
}

/// Catches malformed CreateSession requests that are accepted or get a
/// vague status: unknown mode (listing the available ones), labels, sizes.
#[tokio::test]
async fn bad_create_requests_name_the_field() {
    let mut config = common::config();
    config.max_sessions = 2;
    let server = TestServer::start_with(config).await;
    let mut api = server.sessions().await;
    let base = || pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() };
    let labels =
        |pairs: Vec<(String, String)>| pb::CreateSessionRequest { labels: pairs.into_iter().collect(), ..base() };

    let cases: Vec<(pb::CreateSessionRequest, &str)> = vec![
        (pb::CreateSessionRequest { mode: "chess".into(), ..base() }, "unknown mode \"chess\"; available modes: relay"),
        (pb::CreateSessionRequest { mode: String::new(), ..base() }, "available modes: relay"),
        (pb::CreateSessionRequest { max_players: 257, ..base() }, "max_players: 257 exceeds the limit of 256"),
        (labels(vec![("bad key".into(), "v".into())]), "labels[\"bad key\"]"),
        (labels(vec![(String::new(), "v".into())]), "labels: key \"\" must be"),
        (labels(vec![("k".into(), "v".repeat(256))]), "value of 256 bytes"),
        (labels((0..17).map(|i| (format!("k{i}"), String::new())).collect()), "17 entries; at most 16"),
        (pb::CreateSessionRequest { config: vec![0; 64 * 1024 + 1].into(), ..base() }, "config:"),
        (pb::CreateSessionRequest { idempotency_key: "k".repeat(129), ..base() }, "idempotency_key"),
    ];
    for (request, needle) in cases {
        assert_status(api.create_session(request).await, Code::InvalidArgument, needle);
    }
    api.create_session(base()).await.expect("first");
    api.create_session(base()).await.expect("second");
    assert_status(api.create_session(base()).await, Code::ResourceExhausted, "limit of 2 sessions");

    // Other calls name their fields too.
    assert_status(
        api.get_session(pb::GetSessionRequest { session_id: "no such".into() }).await,
        Code::InvalidArgument,
        "session_id",
    );
    assert_status(
        api.list_sessions(pb::ListSessionsRequest { page_token: "?".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_status(
        api.send_to_session(pb::SendToSessionRequest {
            session_id: "missing".into(),
            payload: Default::default(),
            player_ids: vec![],
        })
        .await,
        Code::NotFound,
        "missing",
    );
    let mut filter_labels = HashMap::new();
    filter_labels.insert("bad key".to_string(), "v".to_string());
    assert_status(
        api.list_sessions(pb::ListSessionsRequest {
            filter: Some(pb::SessionFilter { labels: filter_labels, ..Default::default() }),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "filter.labels",
    );
    server.shutdown().await;
}

fn relay(payload: Vec<u8>, targets: &[&str]) -> client_message::Kind {
    client_message::Kind::Relay(pb::Relay {
        payload: payload.into(),
        targets: targets.iter().map(|t| t.to_string()).collect(),
        droppable: false,
    })
}

/// The strings a test sends in every client-chosen field: a control
/// character, an escape sequence, and each kind of bidirectional control.
const HOSTILE: [&str; 6] = ["a\nb", "\u{1b}]0;evil\u{7}", "tab\there", "\u{202E}evil", "x\u{2066}y", "\u{200F}"];

/// Catches a control or bidirectional-override character accepted in any
/// client-chosen string of a join (where it would reach the other players),
/// or refused without naming its field.
#[tokio::test]
async fn control_and_bidi_characters_in_a_join_are_refused() {
    let server = TestServer::start().await;
    let session = server.create_session(4).await;
    for bad in HOSTILE {
        let mut name = join_session(&session, "x");
        name.display_name = bad.into();
        refused(&server, name, Code::InvalidArgument, "join.display_name").await;
        let mut value = join_session(&session, "x");
        value.metadata.insert("k".into(), bad.into());
        refused(&server, value, Code::InvalidArgument, "join.metadata[\"k\"]").await;
        let mut key = join_session(&session, "x");
        key.metadata.insert(bad.into(), "v".into());
        refused(&server, key, Code::InvalidArgument, "join.metadata").await;
        refused(&server, join_session(&session, bad), Code::InvalidArgument, "join.player_id").await;
        refused(&server, join_session(bad, "x"), Code::InvalidArgument, "join.session_id").await;
        refused(&server, join_mode(bad, "x"), Code::InvalidArgument, "join.mode").await;
    }
    assert_eq!(server.session_info(&session).await.player_count, 0, "nobody got in");
    server.shutdown().await;
}

/// Catches a control or bidirectional-override character accepted in any
/// client-chosen string of the backend API, or refused without naming its
/// field.
#[tokio::test]
async fn control_and_bidi_characters_in_backend_calls_are_refused() {
    let server = TestServer::start().await;
    let session = server.create_session(2).await;
    let mut api = server.sessions().await;
    let base = || pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() };
    for bad in HOSTILE {
        let one = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        let cases: Vec<(pb::CreateSessionRequest, &str)> = vec![
            (pb::CreateSessionRequest { labels: one("k", bad), ..base() }, "labels[\"k\"]"),
            (pb::CreateSessionRequest { labels: one(bad, "v"), ..base() }, "labels"),
            (pb::CreateSessionRequest { mode: bad.into(), ..base() }, "mode"),
            (pb::CreateSessionRequest { idempotency_key: bad.into(), ..base() }, "idempotency_key"),
        ];
        for (request, field) in cases {
            assert_status(api.create_session(request).await, Code::InvalidArgument, field);
        }
        let end = pb::EndSessionRequest { session_id: session.clone(), message: bad.into() };
        assert_status(api.end_session(end).await, Code::InvalidArgument, "message");
        let filter = |filter: pb::SessionFilter| pb::ListSessionsRequest { filter: Some(filter), ..Default::default() };
        let by_label = filter(pb::SessionFilter { labels: one("k", bad), ..Default::default() });
        assert_status(api.list_sessions(by_label).await, Code::InvalidArgument, "filter.labels[\"k\"]");
        let by_mode = filter(pb::SessionFilter { mode: bad.into(), ..Default::default() });
        assert_status(api.list_sessions(by_mode).await, Code::InvalidArgument, "filter.mode");
    }
    let listed = api.list_sessions(pb::ListSessionsRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.sessions.len(), 1, "nothing was created, and the session was not ended");
    server.shutdown().await;
}

/// Catches the character check refusing honest text: emoji, non-Latin
/// letters, punctuation and symbols pass through joins, labels and end
/// messages unchanged.
#[tokio::test]
async fn emoji_and_non_latin_letters_are_accepted() {
    let server = TestServer::start().await;
    let mut api = server.sessions().await;
    let text = "Zoë 🎮 игрок 玩家 ضيف ✓ «¡hola!» 👩‍👩‍👧";
    let created = api
        .create_session(pb::CreateSessionRequest {
            mode: "relay".into(),
            labels: HashMap::from([("title".to_owned(), text.to_owned())]),
            ..Default::default()
        })
        .await
        .expect("labels with emoji")
        .into_inner()
        .session
        .expect("session");
    assert_eq!(created.labels.get("title").map(String::as_str), Some(text));
    let mut join = join_session(&created.session_id, "p");
    join.display_name = "玩家 🎮 Zoë".into();
    join.metadata.insert("motto".into(), text.into());
    let mut player = Player::join(server.addr, join).await;
    let me = player.welcome.player.clone().expect("player");
    assert_eq!((me.display_name.as_str(), me.metadata.get("motto").map(String::as_str)), ("玩家 🎮 Zoë", Some(text)));
    let end = pb::EndSessionRequest { session_id: created.session_id.clone(), message: text.into() };
    api.end_session(end).await.expect("an end message with emoji");
    let (seen, _) = player.until_end().await;
    let ended = seen.iter().find_map(|kind| match kind {
        pb::server_message::Kind::SessionEnded(ended) => Some(ended.message.as_str()),
        _ => None,
    });
    assert_eq!(ended, Some(text));
    server.shutdown().await;
}
