//! Connections: HTTP/2 keepalive turns a dead peer into a disconnect within
//! a bounded time, and a broken stream's error text stays between the server
//! and that stream.

mod common;

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{Player, TestServer, WAIT, join_session};
use game_session::pb::{self, PresenceKind, client_message};
use prost::Message;
use tokio::net::TcpStream;

/// Catches a peer that vanished without closing its connection (no FIN, no
/// reset, no answer to pings) holding its seat forever: the server's
/// keepalive must end it as a disconnect within interval + timeout.
#[tokio::test]
async fn a_silent_peer_is_disconnected_by_keepalive() {
    let mut config = common::config();
    config.keepalive_interval = Duration::from_millis(200);
    config.keepalive_timeout = Duration::from_millis(200);
    let server = TestServer::start_with(config).await;
    let session = server.create_session(2).await;
    let mut watcher = Player::join_as(server.addr, &session, "watcher").await;

    // A raw HTTP/2 client whose connection we can freeze: once frozen, it
    // reads nothing and answers no ping, but its socket stays open.
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let frozen = Arc::new(AtomicBool::new(false));
    let freeze = frozen.clone();
    let mut connection = Box::pin(connection);
    let driver = tokio::spawn(async move {
        poll_fn(|cx| if freeze.load(Ordering::SeqCst) { Poll::Pending } else { connection.as_mut().poll(cx) }).await
    });

    let (response, _body) = raw_join(&mut client, server.addr, &session, "silent").await;
    let mut response_body = response.into_body();
    let welcome = tokio::time::timeout(WAIT, response_body.data()).await.expect("welcome in time");
    assert!(welcome.is_some_and(|data| data.is_ok()), "no welcome");
    assert_eq!(watcher.next_presence().await.kind, PresenceKind::Joined as i32);

    frozen.store(true, Ordering::SeqCst);
    let frozen_at = Instant::now();
    let gone = watcher.next_presence().await;
    // Its seat is held for a resume.
    assert_eq!(gone.kind, PresenceKind::Held as i32, "{gone:?}");
    assert_eq!(gone.player.map(|p| p.player_id).as_deref(), Some("silent"));
    assert_eq!(gone.detail, "connection lost");
    assert!(frozen_at.elapsed() < Duration::from_secs(5), "took {:?}", frozen_at.elapsed());
    driver.abort();
    server.shutdown().await;
}

/// Catches the decoder's text ("failed to decode Protobuf message...")
/// reaching the other players when a client sends bytes that are not
/// protobuf, or a string field that is not UTF-8: the sender's stream ends
/// with the decoder's status, and the others hear only that it was removed
/// for a "protocol error".
#[tokio::test]
async fn undecodable_bytes_reach_others_as_fixed_words() {
    // A length-prefixed frame whose body is no protobuf message: field 15
    // with the reserved wire type 7.
    let mut garbage = BytesMut::new();
    garbage.put_u8(0);
    garbage.put_u32(3);
    garbage.put_slice(&[0x7f, 0xff, 0xff]);
    // A relay whose one target id is the byte 0xFF: valid protobuf, but a
    // `string` that is not UTF-8.
    let relay = pb::ClientMessage {
        kind: Some(client_message::Kind::Relay(pb::Relay { targets: vec!["Z".into()], ..Default::default() })),
    };
    let mut not_utf8 = BytesMut::from(&grpc_frame(&relay)[..]);
    let at = not_utf8.iter().rposition(|&b| b == b'Z').expect("the target's byte");
    not_utf8[at] = 0xff;

    let server = TestServer::start().await;
    for (name, frame, words) in [("garbled", garbage.freeze(), "decode"), ("not-utf8", not_utf8.freeze(), "UTF-8")] {
        let session = server.create_session(2).await;
        let mut watcher = Player::join_as(server.addr, &session, "watcher").await;

        let tcp = TcpStream::connect(server.addr).await.expect("connect");
        let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let driver = tokio::spawn(connection);
        let (response, mut body) = raw_join(&mut client, server.addr, &session, name).await;
        assert_eq!(watcher.next_presence().await.kind, PresenceKind::Joined as i32);
        body.send_data(frame, false).expect("send the bad frame");

        let mut response_body = response.into_body();
        while let Some(data) = tokio::time::timeout(WAIT, response_body.data()).await.expect("data in time") {
            data.expect("a data frame");
        }
        let trailers = tokio::time::timeout(WAIT, response_body.trailers()).await.expect("trailers in time");
        let trailers = trailers.expect("trailers").expect("a trailer block");
        let message = trailers.get("grpc-message").map(|v| v.to_str().unwrap_or_default().to_owned());
        assert!(
            message.as_deref().is_some_and(|m| m.contains(words)),
            "{name}: the sender gets the decoder's words: {trailers:?}"
        );

        let gone = watcher.next_presence().await;
        assert_eq!(gone.kind, PresenceKind::Removed as i32, "{gone:?}");
        assert_eq!(gone.player.map(|p| p.player_id).as_deref(), Some(name));
        assert_eq!(gone.detail, "protocol error");
        // The session goes on for the others.
        let mut other = Player::join_as(server.addr, &session, "other").await;
        watcher.next_presence().await;
        watcher.relay(b"still here", &[]).await;
        assert_eq!(other.next_relayed().await.payload, &b"still here"[..]);
        driver.abort();
    }
    server.shutdown().await;
}

/// One gRPC length-prefixed message.
fn grpc_frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(encoded.len() as u32);
    frame.put_slice(&encoded);
    frame.freeze()
}

/// Opens a Play stream by hand on an h2 `client` and joins `session` as
/// `player`: the response (its headers checked) and the request body, open.
async fn raw_join(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    session: &str,
    player: &str,
) -> (http::Response<h2::RecvStream>, h2::SendStream<bytes::Bytes>) {
    let request = http::Request::post(format!("http://{addr}/gamesession.v1.PlayerService/Play"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("send request");
    let join = pb::ClientMessage { kind: Some(client_message::Kind::Join(join_session(session, player))) };
    body.send_data(grpc_frame(&join), false).expect("send join");
    let response = tokio::time::timeout(WAIT, response).await.expect("headers in time").expect("response");
    assert_eq!(response.status(), 200);
    (response, body)
}
