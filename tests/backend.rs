//! SessionService: create (idempotent), get, list (filters, pages), watch,
//! send-to-session, end, and the separate backend address.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{Player, TestServer, WAIT, assert_status};
use game_session::pb::{self, SessionEndReason, SessionEventKind, server_message::Kind, watch_sessions_response};
use tonic::Code;
use tonic::transport::Endpoint;

fn create(mode: &str, labels: &[(&str, &str)]) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        mode: mode.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

/// Catches a CreateSession that ignores its parameters, and a GetSession
/// that does not list the players present.
#[tokio::test]
async fn create_then_get_with_players() {
    let server = TestServer::start().await;
    let mut api = server.sessions().await;
    let created = api
        .create_session(pb::CreateSessionRequest {
            mode: "relay".into(),
            max_players: 3,
            labels: HashMap::from([("region".into(), "eu".into())]),
            config: b"opaque".to_vec().into(),
            open_to_join_or_create: true,
            ..pb::CreateSessionRequest::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert!(created.created);
    let session = created.session.expect("session");
    assert_eq!((session.mode.as_str(), session.max_players, session.player_count), ("relay", 3, 0));
    assert!(session.open_to_join_or_create);
    assert_eq!(session.labels.get("region").map(String::as_str), Some("eu"));

    let _a = Player::join_as(server.addr, &session.session_id, "a").await;
    let _b = Player::join_as(server.addr, &session.session_id, "b").await;
    let got = server.session_info(&session.session_id).await;
    assert_eq!(got.player_count, 2);
    assert_eq!(got.sequence, 2);
    let ids: Vec<_> = got.players.iter().map(|p| p.player_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);

    // Defaults: max_players 0 takes the server default (8).
    let default = api.create_session(create("relay", &[])).await.expect("create").into_inner();
    assert_eq!(default.session.map(|s| s.max_players), Some(8));
    server.shutdown().await;
}

/// Catches a retried CreateSession that creates a twin, and a reused key
/// with different parameters that silently returns the wrong session.
#[tokio::test]
async fn create_is_idempotent_by_key() {
    let server = TestServer::start().await;
    let mut api = server.sessions().await;
    let mut request = create("relay", &[("match", "42")]);
    request.idempotency_key = "matchmaker-ticket-42".into();

    let first = api.create_session(request.clone()).await.expect("first").into_inner();
    let retry = api.create_session(request.clone()).await.expect("retry").into_inner();
    assert!(first.created);
    assert!(!retry.created);
    assert_eq!(first.session.map(|s| s.session_id), retry.session.map(|s| s.session_id));
    let listed = api.list_sessions(pb::ListSessionsRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.sessions.len(), 1, "a retry created a twin");

    request.max_players = 4;
    assert_status(api.create_session(request).await, Code::AlreadyExists, "idempotency_key");
    server.shutdown().await;
}

/// Catches list filters that do not filter (mode, every label, open seats),
/// and pagination that repeats or skips sessions.
#[tokio::test]
async fn list_filters_and_pages() {
    let server = TestServer::start().await;
    let mut api = server.sessions().await;
    let mut ids = HashMap::new();
    for (name, labels) in [
        ("eu-ranked", vec![("region", "eu"), ("queue", "ranked")]),
        ("eu-casual", vec![("region", "eu"), ("queue", "casual")]),
        ("us-ranked", vec![("region", "us"), ("queue", "ranked")]),
    ] {
        let mut request = create("relay", &labels);
        request.max_players = 1;
        let session = api.create_session(request).await.expect("create").into_inner().session.expect("session");
        ids.insert(name, session.session_id);
    }
    // Fill one session so that it has no open seat.
    let _p = Player::join_as(server.addr, &ids["eu-casual"], "p").await;

    let list = |filter: pb::SessionFilter| {
        let mut api = api.clone();
        async move {
            let response = api
                .list_sessions(pb::ListSessionsRequest { filter: Some(filter), ..Default::default() })
                .await
                .expect("list")
                .into_inner();
            response.sessions.into_iter().map(|s| s.session_id).collect::<BTreeSet<_>>()
        }
    };
    let set = |names: &[&str]| names.iter().map(|n| ids[n].clone()).collect::<BTreeSet<_>>();

    assert_eq!(list(pb::SessionFilter::default()).await, set(&["eu-ranked", "eu-casual", "us-ranked"]));
    let eu = pb::SessionFilter { labels: HashMap::from([("region".into(), "eu".into())]), ..Default::default() };
    assert_eq!(list(eu.clone()).await, set(&["eu-ranked", "eu-casual"]));
    let eu_ranked = pb::SessionFilter {
        labels: HashMap::from([("region".into(), "eu".into()), ("queue".into(), "ranked".into())]),
        ..Default::default()
    };
    assert_eq!(list(eu_ranked).await, set(&["eu-ranked"]));
    assert_eq!(list(pb::SessionFilter { has_open_seats: true, ..eu }).await, set(&["eu-ranked"]));
    assert_eq!(list(pb::SessionFilter { mode: "other".into(), ..Default::default() }).await, set(&[]));
    assert_eq!(list(pb::SessionFilter { mode: "relay".into(), ..Default::default() }).await.len(), 3);

    // Pages of 2 over 3 sessions: 2 + 1, in id order, no repeats.
    let first = api.list_sessions(pb::ListSessionsRequest { page_size: 2, ..Default::default() }).await;
    let first = first.expect("page 1").into_inner();
    assert_eq!(first.sessions.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = api
        .list_sessions(pb::ListSessionsRequest { page_size: 2, page_token: first.next_page_token, filter: None })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(second.sessions.len(), 1);
    assert!(second.next_page_token.is_empty(), "the last page has no token");
    let mut paged: Vec<_> = first.sessions.iter().chain(&second.sessions).map(|s| s.session_id.clone()).collect();
    let sorted = {
        let mut v = paged.clone();
        v.sort();
        v
    };
    assert_eq!(paged, sorted, "pages are in id order");
    paged.dedup();
    assert_eq!(paged.len(), 3);
    server.shutdown().await;
}

/// Catches pagination that skips or repeats a session, and page tokens that
/// are not opaque positions: every session is seen exactly once over pages
/// of 4, each token looks nothing like a session id, and a token from one
/// server is accepted by another (a replica) and resumes by position.
#[tokio::test]
async fn paging_visits_every_session_once() {
    const SESSIONS: usize = 23;
    let server = TestServer::start().await;
    let mut api = server.sessions().await;
    let mut created = BTreeSet::new();
    for _ in 0..SESSIONS {
        let session = api.create_session(create("relay", &[])).await.expect("create").into_inner().session;
        created.insert(session.expect("session").session_id);
    }
    let mut seen = Vec::new();
    let mut tokens = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListSessionsRequest { page_size: 4, page_token, filter: None };
        let page = api.list_sessions(request).await.expect("page").into_inner();
        seen.extend(page.sessions.into_iter().map(|s| s.session_id));
        if page.next_page_token.is_empty() {
            break;
        }
        tokens.push(page.next_page_token.clone());
        page_token = page.next_page_token;
    }
    assert_eq!(tokens.len(), SESSIONS.div_ceil(4) - 1, "one token between each pair of pages");
    assert_eq!(seen.len(), SESSIONS, "no session twice: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), created, "every session once");
    for (token, last) in tokens.iter().zip(seen.chunks(4)) {
        assert!(!token.contains(last[3].as_str()), "the token {token:?} is opaque, not the id {:?}", last[3]);
    }

    // Another server decodes the token and resumes after its position: it
    // holds one session, listed only if its id sorts after the token's.
    let replica = TestServer::start().await;
    let mut other = replica.sessions().await;
    let theirs = other.create_session(create("relay", &[])).await.expect("create").into_inner().session;
    let theirs = theirs.expect("session").session_id;
    let request = pb::ListSessionsRequest { page_size: 4, page_token: tokens[0].clone(), filter: None };
    let page = other.list_sessions(request).await.expect("a replica accepts the token").into_inner();
    let expected = if theirs > seen[3] { vec![theirs] } else { vec![] };
    assert_eq!(page.sessions.into_iter().map(|s| s.session_id).collect::<Vec<_>>(), expected);
    replica.shutdown().await;
    server.shutdown().await;
}

/// Catches a page token accepted although the server never wrote it (which
/// would silently skip or repeat sessions): made-up text, a bare session id,
/// every cut of a real token, and every single-bit change of it get
/// INVALID_ARGUMENT naming page_token.
#[tokio::test]
async fn made_up_cut_or_corrupted_page_tokens_are_refused() {
    let server = TestServer::start().await;
    let mut api = server.sessions().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let session = api.create_session(create("relay", &[])).await.expect("create").into_inner().session;
        ids.push(session.expect("session").session_id);
    }
    ids.sort();
    let first = api.list_sessions(pb::ListSessionsRequest { page_size: 1, ..Default::default() }).await;
    let token = first.expect("page 1").into_inner().next_page_token;
    assert!(!token.is_empty());

    let mut bad: Vec<String> = vec!["?".into(), "AAAA".into(), "AQ".into(), ids[0].clone(), "not a token".into()];
    bad.extend((1..token.len()).map(|n| token[..n].to_owned()));
    bad.push(format!("{token}A"));
    for (i, _) in token.char_indices() {
        // Bits 0-6 only: flipping bit 7 of an ASCII byte is not UTF-8, so
        // no gRPC string could carry it.
        for bit in 0..7 {
            let mut bytes = token.clone().into_bytes();
            bytes[i] ^= 1 << bit;
            bad.push(String::from_utf8(bytes).expect("ASCII stays UTF-8"));
        }
    }
    for page_token in bad {
        let request = pb::ListSessionsRequest { page_size: 1, page_token: page_token.clone(), filter: None };
        let result = api.list_sessions(request).await.map(|r| r.into_inner().sessions.len());
        match result {
            Err(status) => {
                assert_eq!(status.code(), Code::InvalidArgument, "{page_token:?}: {status:?}");
                assert!(status.message().starts_with("page_token:"), "{page_token:?}: {status:?}");
            }
            Ok(n) => panic!("token {page_token:?} (from {token:?}) was accepted, listing {n}"),
        }
    }

    // The real token still resumes right after the first session.
    let request = pb::ListSessionsRequest { page_size: 5, page_token: token, filter: None };
    let rest = api.list_sessions(request).await.expect("page 2").into_inner().sessions;
    assert_eq!(rest.into_iter().map(|s| s.session_id).collect::<Vec<_>>(), ids[1..]);
    server.shutdown().await;
}

/// Catches a watch without its initial listing or synced marker, events
/// that are missing, out of order or unfiltered, and a session leaving the
/// filter without the watcher being told.
#[tokio::test]
async fn watch_sends_listing_synced_then_events() {
    let server = TestServer::start().await;
    let mut api = server.sessions().await;
    let existing =
        api.create_session(create("relay", &[("region", "eu")])).await.expect("create").into_inner().session.unwrap();
    let _other = api.create_session(create("relay", &[("region", "us")])).await.expect("create");

    let filter = pb::SessionFilter { labels: HashMap::from([("region".into(), "eu".into())]), ..Default::default() };
    let mut watch =
        api.watch_sessions(pb::WatchSessionsRequest { filter: Some(filter) }).await.expect("watch").into_inner();
    let mut next = async || {
        tokio::time::timeout(WAIT, watch.message()).await.expect("in time").expect("ok").expect("open").kind.unwrap()
    };
    use watch_sessions_response::Kind as W;
    match next().await {
        W::Initial(s) => assert_eq!(s.session_id, existing.session_id),
        other => panic!("expected the initial session, got {other:?}"),
    }
    let synced_revision = match next().await {
        W::Synced(s) => s.revision,
        other => panic!("expected synced, got {other:?}"),
    };

    // An unmatching session makes no event; a matching one does.
    api.create_session(create("relay", &[("region", "us")])).await.expect("create");
    let mut request = create("relay", &[("region", "eu")]);
    request.max_players = 1;
    let new = api.create_session(request).await.expect("create").into_inner().session.unwrap();
    let mut revisions = vec![synced_revision];
    let mut expect_event = async |kind: SessionEventKind, id: &str, players: u32| {
        let event = match next().await {
            W::Event(event) => event,
            other => panic!("expected an event, got {other:?}"),
        };
        assert_eq!(event.kind, kind as i32, "{event:?}");
        let session = event.session.expect("session");
        assert_eq!((session.session_id.as_str(), session.player_count), (id, players));
        event.revision
    };
    revisions.push(expect_event(SessionEventKind::Created, &new.session_id, 0).await);
    let mut player = Player::join_as(server.addr, &new.session_id, "p").await;
    revisions.push(expect_event(SessionEventKind::Updated, &new.session_id, 1).await);
    player.leave().await;
    player.expect_ended_ok().await;
    revisions.push(expect_event(SessionEventKind::Updated, &new.session_id, 0).await);
    api.end_session(pb::EndSessionRequest { session_id: new.session_id.clone(), message: "bye".into() })
        .await
        .expect("end");
    revisions.push(expect_event(SessionEventKind::Ended, &new.session_id, 0).await);
    // The unmatching session's creation is skipped, so revisions may jump,
    // but they only grow.
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "revisions {revisions:?}");
    server.shutdown().await;
}

/// Catches a watch filtered on open seats that never hears that a session
/// filled up (it matched before the change, not after).
#[tokio::test]
async fn watch_reports_sessions_leaving_the_filter() {
    let server = TestServer::start().await;
    let mut api = server.sessions().await;
    let mut request = create("relay", &[]);
    request.max_players = 1;
    let session = api.create_session(request).await.expect("create").into_inner().session.unwrap();
    let filter = pb::SessionFilter { has_open_seats: true, ..Default::default() };
    let mut watch = api.watch_sessions(pb::WatchSessionsRequest { filter: Some(filter) }).await.expect("watch");
    let watch = watch.get_mut();
    assert!(matches!(watch.message().await.unwrap().unwrap().kind, Some(watch_sessions_response::Kind::Initial(_))));
    assert!(matches!(watch.message().await.unwrap().unwrap().kind, Some(watch_sessions_response::Kind::Synced(_))));
    let _p = Player::join_as(server.addr, &session.session_id, "p").await;
    let event = match tokio::time::timeout(WAIT, watch.message()).await.unwrap().unwrap().unwrap().kind {
        Some(watch_sessions_response::Kind::Event(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    };
    assert_eq!(event.kind, SessionEventKind::Updated as i32);
    assert_eq!(event.session.map(|s| s.player_count), Some(1), "the now-full session is reported");
    server.shutdown().await;
}

/// Catches a watcher that falls behind and is silently served a stream with
/// holes: its stream must end with ABORTED, telling it to watch again.
#[tokio::test]
async fn a_watcher_that_falls_behind_is_told_to_watch_again() {
    let mut config = common::config();
    config.watch_buffer = 2;
    let server = TestServer::start_with(config).await;
    // A tiny HTTP/2 window: the watcher stops taking events almost at once.
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(256)
        .initial_connection_window_size(256)
        .connect()
        .await
        .unwrap();
    let mut watcher = pb::session_service_client::SessionServiceClient::new(channel);
    let mut watch = watcher.watch_sessions(pb::WatchSessionsRequest::default()).await.expect("watch").into_inner();

    let mut api = server.sessions().await;
    for _ in 0..200 {
        api.create_session(create("relay", &[("pad", &"x".repeat(200))])).await.expect("create");
    }
    let mut events = 0;
    let end = loop {
        match tokio::time::timeout(WAIT, watch.message()).await.expect("in time") {
            Ok(Some(_)) => events += 1,
            Ok(None) => panic!("the watch ended without a status after {events} messages"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Aborted, "{end:?}");
    assert!(end.message().contains("watch"), "{end:?}");
    assert!(events < 200, "the watcher got all {events} events, so it never fell behind");
    server.shutdown().await;
}

/// Catches backend messages that skip the session's order, reach players
/// not listed, or report a sequence other than the one players see.
#[tokio::test]
async fn send_to_session_is_ordered_with_relays() {
    let server = TestServer::start().await;
    let session = server.create_session(3).await;
    let mut a = Player::join_as(server.addr, &session, "a").await;
    let mut b = Player::join_as(server.addr, &session, "b").await;
    a.next_presence().await;
    let mut api = server.sessions().await;

    b.relay(b"from b", &[]).await;
    a.next_relayed().await; // seq 3: relays and backend messages share the order
    let all = api
        .send_to_session(pb::SendToSessionRequest {
            session_id: session.clone(),
            payload: b"tournament starts".to_vec().into(),
            player_ids: vec![],
        })
        .await
        .expect("send")
        .into_inner();
    assert_eq!(all.sequence, 4);
    let only_b = api
        .send_to_session(pb::SendToSessionRequest {
            session_id: session.clone(),
            payload: b"warning".to_vec().into(),
            player_ids: vec!["b".into()],
        })
        .await
        .expect("send")
        .into_inner();
    assert_eq!(only_b.sequence, 5);
    a.relay(b"from a", &[]).await; // seq 6

    for (player, expected) in [(&mut a, vec![4]), (&mut b, vec![4, 5, 6])] {
        let mut seen = Vec::new();
        for _ in 0..expected.len() {
            match player.next().await {
                Kind::Backend(m) => {
                    seen.push(m.sequence);
                    let want: (&[u8], bool) =
                        if m.sequence == 4 { (b"tournament starts", false) } else { (b"warning", true) };
                    assert_eq!((&m.payload[..], m.targeted), want);
                }
                Kind::Relayed(m) => seen.push(m.sequence),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, expected);
    }
    // ListSessions reports the session's current sequence too.
    let listed = api.list_sessions(pb::ListSessionsRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.sessions.iter().map(|s| s.sequence).collect::<Vec<_>>(), [6]);
    assert_status(
        api.send_to_session(pb::SendToSessionRequest {
            session_id: session.clone(),
            payload: b"x".to_vec().into(),
            player_ids: vec!["nobody".into()],
        })
        .await,
        Code::InvalidArgument,
        "player_ids[0]",
    );
    server.shutdown().await;
}

/// Catches an EndSession whose reason players never receive, whose stream
/// does not end, or after which the session lingers.
#[tokio::test]
async fn end_session_tells_every_player() {
    let server = TestServer::start().await;
    let session = server.create_session(2).await;
    let mut a = Player::join_as(server.addr, &session, "a").await;
    let mut b = Player::join_as(server.addr, &session, "b").await;
    a.next_presence().await;
    let mut api = server.sessions().await;
    let ended = api
        .end_session(pb::EndSessionRequest { session_id: session.clone(), message: "match over: red wins".into() })
        .await
        .expect("end")
        .into_inner();
    assert_eq!(ended.sequence, 3);
    for player in [&mut a, &mut b] {
        let (seen, end) = player.until_end().await;
        assert!(end.is_ok(), "{end:?}");
        match seen.as_slice() {
            [Kind::SessionEnded(e)] => {
                assert_eq!(e.sequence, 3);
                assert_eq!(e.reason, SessionEndReason::EndedByBackend as i32);
                assert_eq!(e.message, "match over: red wins");
            }
            other => panic!("expected only session_ended, got {other:?}"),
        }
    }
    // Readable as ended (for --ended-session-retention), not listed, and
    // not to be ended twice.
    let ended = api.get_session(pb::GetSessionRequest { session_id: session.clone() }).await.expect("get");
    let end = ended.into_inner().session.and_then(|s| s.end).expect("its end");
    assert_eq!(
        (end.reason, end.message.as_str(), end.result.is_empty()),
        (SessionEndReason::EndedByBackend as i32, "match over: red wins", true)
    );
    let listed = api.list_sessions(pb::ListSessionsRequest::default()).await.expect("list").into_inner();
    assert!(listed.sessions.is_empty(), "{listed:?}");
    assert_status(
        api.end_session(pb::EndSessionRequest { session_id: session, message: String::new() }).await,
        Code::NotFound,
        "not found",
    );
    server.shutdown().await;
}

/// Catches a backend address that is not separate: with one configured,
/// SessionService is served there and not on the player address.
#[tokio::test]
async fn backend_api_can_have_its_own_address() {
    let mut config = common::config();
    config.backend_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::start_with(config).await;
    let backend = server.backend_addr.expect("backend address");
    assert_ne!(backend, server.addr);
    let session = server.create_session(2).await; // through the backend address
    let _p = Player::join_as(server.addr, &session, "p").await;

    let channel = server.channel().await;
    let mut on_player_port = pb::session_service_client::SessionServiceClient::new(channel);
    assert_status(on_player_port.list_sessions(pb::ListSessionsRequest::default()).await, Code::Unimplemented, "");
    server.shutdown().await;
}

/// Catches a small payload limit that also shrinks what CreateSession may
/// carry: its 64 KiB of config stay allowed.
#[tokio::test]
async fn a_full_size_config_fits_whatever_the_payload_limit() {
    let mut config = common::config();
    config.max_payload_bytes = 1024;
    let server = TestServer::start_with(config).await;
    let mut request = create("relay", &[]);
    request.config = vec![7; 64 * 1024].into();
    let created = server.sessions().await.create_session(request).await;
    assert!(created.is_ok(), "{created:?}");
    server.shutdown().await;
}

/// Catches WatchSessions streams that are not capped, per connection or in
/// total (each pins memory in the server), and a cap whose slots are not
/// given back when a watcher goes away.
#[tokio::test]
async fn watchers_are_capped_per_connection_and_in_total() {
    let mut config = common::config();
    config.max_watchers = 3;
    config.max_watchers_per_connection = 2;
    let server = TestServer::start_with(config).await;
    let watch = |mut api: pb::session_service_client::SessionServiceClient<_>| async move {
        api.watch_sessions(pb::WatchSessionsRequest::default()).await.map(tonic::Response::into_inner)
    };
    let first = server.sessions().await;
    let (a, b) = (watch(first.clone()).await.expect("1st"), watch(first.clone()).await.expect("2nd"));
    assert_status(watch(first.clone()).await, Code::ResourceExhausted, "per connection");
    let c = watch(server.sessions().await).await.expect("3rd, on another connection");
    assert_status(watch(server.sessions().await).await, Code::ResourceExhausted, "limit of 3");

    // A watcher that goes away gives its slot back (the server notices the
    // reset stream; poll until it has).
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    let d = loop {
        match watch(server.sessions().await).await {
            Ok(d) => break d,
            Err(status) if tokio::time::Instant::now() < deadline => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(status) => panic!("the slot was never given back: {status:?}"),
        }
    };
    drop((b, c, d));
    server.shutdown().await;
}

/// Catches a watch whose initial listing and events do not meet exactly at
/// its `synced` revision while sessions change under it (a session listed
/// and then created again, or changed and missed): replaying the events
/// after the listing gives exactly what ListSessions says once the churn
/// stops, and the revisions strictly increase.
#[tokio::test]
async fn a_watch_replayed_equals_the_registry_under_churn() {
    let mut config = common::config();
    config.watch_buffer = 4096;
    let server = TestServer::start_with(config).await;
    let mut api = server.sessions().await;
    for _ in 0..50 {
        api.create_session(create("relay", &[])).await.expect("create");
    }
    // Churn: create and end sessions while the watch starts and lists.
    let churn = {
        let mut api = server.sessions().await;
        tokio::spawn(async move {
            for n in 0..100 {
                let id = api.create_session(create("relay", &[])).await.expect("create").into_inner().session;
                if n % 2 == 0 {
                    let end =
                        pb::EndSessionRequest { session_id: id.expect("session").session_id, message: String::new() };
                    api.end_session(end).await.expect("end");
                }
            }
        })
    };
    let mut watch = api.watch_sessions(pb::WatchSessionsRequest::default()).await.expect("watch").into_inner();
    let mut next = async || {
        let message = tokio::time::timeout(WAIT, watch.message()).await.expect("in time").expect("ok").expect("open");
        message.kind.expect("kind")
    };
    use watch_sessions_response::Kind as W;
    let mut live = BTreeSet::new();
    let mut revision = loop {
        match next().await {
            W::Initial(session) => assert!(live.insert(session.session_id), "a session listed twice"),
            W::Synced(synced) => break synced.revision,
            other => panic!("an event before synced: {other:?}"),
        }
    };
    churn.await.expect("churn");
    let listed: BTreeSet<String> = {
        let request = pb::ListSessionsRequest { page_size: 1000, ..Default::default() };
        api.list_sessions(request)
            .await
            .expect("list")
            .into_inner()
            .sessions
            .into_iter()
            .map(|s| s.session_id)
            .collect()
    };
    // Replay until the watch agrees with the registry (each event moves it
    // one step; every step's revision is the next one).
    let deadline = tokio::time::Instant::now() + WAIT;
    while live != listed {
        assert!(tokio::time::Instant::now() < deadline, "the replay never matched the registry");
        let W::Event(event) = next().await else { panic!("expected an event") };
        assert_eq!(event.revision, revision + 1, "revisions step by one");
        revision = event.revision;
        let id = event.session.expect("session").session_id;
        match SessionEventKind::try_from(event.kind) {
            Ok(SessionEventKind::Created) => assert!(live.insert(id), "created twice"),
            Ok(SessionEventKind::Ended) => assert!(live.remove(&id), "ended but never seen"),
            Ok(SessionEventKind::Updated) => assert!(live.contains(&id), "updated but never seen"),
            other => panic!("unexpected event kind {other:?}"),
        }
    }
    assert_eq!(live.len(), 100);
    server.shutdown().await;
}
