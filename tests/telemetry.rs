//! The real binary's telemetry: its Prometheus endpoint and its JSON logs.
//! The metrics recorder and the log subscriber are process-wide, so these
//! tests start `game-session` itself, play a scripted session against it,
//! scrape `/metrics` over HTTP and read its log lines.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::binary::Binary;
use common::{Player, WAIT};
use game_session::pb::{self, server_message};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, span};
use prost::Message as _;
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::Code;

const RELAY: &str = "{mode=\"relay\"}";

/// Catches byte accounting that misses what waits for a player, or that
/// never gives back what the player finally read: 30 relays of 60 KiB to a
/// player who does not read show as held relay bytes (beyond what HTTP/2
/// has already taken), and once it has read them all, nothing is held.
#[tokio::test]
async fn queued_event_bytes_count_what_waits_and_go_back_to_zero() {
    const PAYLOAD: usize = 60 * 1024;
    let server = Binary::start(&[]).await;
    let mut sessions = server.sessions().await;
    // No replay buffer: it would keep the events (counted here) for 30 s.
    let request = pb::CreateSessionRequest {
        mode: "relay".into(),
        max_players: 2,
        replay_buffer: Some(false),
        ..Default::default()
    };
    let session_id =
        sessions.create_session(request).await.expect("create").into_inner().session.expect("s").session_id;
    let mut alice = Player::join_as(server.addr, &session_id, "alice").await;
    // A small HTTP/2 window, so that what bob does not read waits in the
    // server rather than in his client's buffers.
    let connect = common::Connect { window: Some(16 * 1024), ..Default::default() };
    let mut bob = Player::try_join(server.addr, common::join_session(&session_id, "bob"), connect).await.expect("bob");
    assert!(matches!(alice.next().await, server_message::Kind::Presence(_)), "alice sees bob join");
    for n in 0..30u8 {
        alice.relay(&[n; PAYLOAD], &[]).await;
    }
    let held = |samples: &HashMap<String, f64>, kind: &str| {
        samples.get(&format!("game_session_queued_event_bytes{{kind=\"{kind}\"}}")).copied().unwrap_or(-1.0)
    };
    // Bob reads nothing yet: most of the 1.8 MB waits in his queue.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let relay = held(&server.scrape().await, "relay");
        if relay > 1_000_000.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "held relay bytes never showed: {relay}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for n in 0..30u8 {
        assert_eq!(bob.next_relayed().await.payload.as_ref(), &[n; PAYLOAD][..]);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let samples = server.scrape().await;
        if (held(&samples, "relay"), held(&samples, "presence")) == (0.0, 0.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "bytes still held after bob read everything: {samples:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Catches counters that miss or double-count: after a scripted session
/// (create, two joins, three relays, a leave, an end, and a failed call),
/// every session, player, message and RPC metric has exactly the value the
/// script implies, and process metrics are there.
#[tokio::test]
async fn metrics_count_a_scripted_session_exactly() {
    let mut server = Binary::start(&[]).await;
    let mut sessions = server.sessions().await;
    let request = pb::CreateSessionRequest { mode: "relay".into(), max_players: 4, ..Default::default() };
    let created = sessions.create_session(request).await.expect("create").into_inner();
    let session_id = created.session.expect("session").session_id;

    let mut alice = Player::join_as(server.addr, &session_id, "alice").await;
    let mut bob = Player::join_as(server.addr, &session_id, "bob").await;
    assert!(matches!(alice.next().await, server_message::Kind::Presence(_)), "alice sees bob join");
    for n in 0..3u8 {
        alice.relay(&[n], &[]).await;
    }
    for n in 0..3u8 {
        assert_eq!(bob.next_relayed().await.payload.as_ref(), [n]);
    }
    bob.leave().await;
    bob.expect_ended_ok().await;
    let _ = alice.next_presence().await;
    let end = pb::EndSessionRequest { session_id: session_id.clone(), message: "over".into() };
    sessions.end_session(end).await.expect("end");
    let (_, ended) = alice.until_end().await;
    assert!(ended.is_ok(), "{ended:?}");
    let ended = sessions.get_session(pb::GetSessionRequest { session_id }).await.expect("an ended session");
    assert!(ended.into_inner().session.is_some_and(|s| s.end.is_some()));
    let missing = pb::GetSessionRequest { session_id: "no-such-session".into() };
    assert_eq!(sessions.get_session(missing).await.expect_err("never existed").code(), Code::NotFound);

    // The actor's last updates land just after the players see the end.
    let mut samples = server.scrape().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while samples.get(&format!("game_session_sessions_active{RELAY}")) != Some(&0.0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        samples = server.scrape().await;
    }
    let value = |series: &str| samples.get(series).copied().unwrap_or_else(|| panic!("no {series} in {samples:?}"));
    let expected = [
        (format!("game_session_sessions_created_total{RELAY}"), 1.0),
        (format!("game_session_sessions_active{RELAY}"), 0.0),
        ("game_session_sessions_ended_total{mode=\"relay\",reason=\"ended_by_backend\"}".to_owned(), 1.0),
        (format!("game_session_player_joins_total{RELAY}"), 2.0),
        (format!("game_session_players_connected{RELAY}"), 0.0),
        ("game_session_player_departures_total{mode=\"relay\",reason=\"left\"}".to_owned(), 1.0),
        ("game_session_player_departures_total{mode=\"relay\",reason=\"session_ended\"}".to_owned(), 1.0),
        (format!("game_session_messages_received_total{RELAY}"), 3.0),
        (format!("game_session_messages_queued_total{RELAY}"), 3.0),
        (format!("game_session_messages_dropped_total{RELAY}"), 0.0),
        ("game_session_rpc_duration_seconds_count{method=\"CreateSession\",code=\"OK\"}".to_owned(), 1.0),
        ("game_session_rpc_duration_seconds_count{method=\"EndSession\",code=\"OK\"}".to_owned(), 1.0),
        ("game_session_rpc_duration_seconds_count{method=\"GetSession\",code=\"NOT_FOUND\"}".to_owned(), 1.0),
    ];
    for (series, want) in &expected {
        assert_eq!(value(series), *want, "{series}");
    }
    // Histograms have buckets (not a summary), ending in +Inf.
    assert_eq!(
        value("game_session_rpc_duration_seconds_bucket{method=\"CreateSession\",code=\"OK\",le=\"+Inf\"}"),
        1.0
    );
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") > 0.0);
    let (status, _, _) = server.get("/").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let _ = server.child.kill().await;
}

/// Catches departures and ends counted under the wrong reason, or gauges
/// left up: a player whose connection breaks is held, then counts as
/// `hold_expired` when its hold runs out, the empty session then ends as
/// `idle`, and the gauges come back to zero.
#[tokio::test]
async fn a_broken_connection_and_an_idle_end_are_counted_by_reason() {
    let mut server = Binary::start(&["--idle-timeout", "200ms", "--seat-hold", "200ms"]).await;
    let session_id = server.create_session().await;
    let alice = Player::join_as(server.addr, &session_id, "alice").await;
    alice.break_connection();

    let wanted = [
        ("game_session_player_departures_total{mode=\"relay\",reason=\"hold_expired\"}", 1.0),
        ("game_session_seats_held{mode=\"relay\"}", 0.0),
        ("game_session_sessions_ended_total{mode=\"relay\",reason=\"idle\"}", 1.0),
        ("game_session_players_connected{mode=\"relay\"}", 0.0),
        ("game_session_sessions_active{mode=\"relay\"}", 0.0),
    ];
    settled(&server, &wanted).await;
    let _ = server.child.kill().await;
}

/// Catches JSON logs that do not parse, or that lose the session and player
/// ids: with `--log-format json` every line is a JSON object with a level
/// and a message, and a player's join is logged with both ids.
#[tokio::test]
async fn json_logs_parse_and_carry_the_ids() {
    let mut server = Binary::start(&["--log-format", "json"]).await;
    let session_id = server.create_session().await;
    let mut alice = Player::join_as(server.addr, &session_id, "alice").await;
    alice.leave().await;
    alice.expect_ended_ok().await;

    let joined = server.json_line("player joined").await;
    assert_eq!(joined["span"]["session.id"], Value::String(session_id), "{joined}");
    assert_eq!(joined["span"]["player.id"], "alice", "{joined}");
    assert_eq!(joined["span"]["name"], "player.join", "{joined}");
    let _ = server.child.kill().await;
}

/// An OTLP/gRPC trace receiver: every export request, as it arrives.
struct Receiver {
    addr: SocketAddr,
    /// `https` when it serves TLS.
    scheme: &'static str,
    requests: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    /// Every span received so far, with its resource.
    spans: Vec<(Span, Resource)>,
}

struct Collect(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collect {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::start_with(None).await
    }

    /// An OTLP/gRPC receiver, over TLS with `leaf` when given.
    async fn start_with(leaf: Option<&common::certs::Leaf>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, requests) = mpsc::unbounded_channel();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let mut server = tonic::transport::Server::builder();
        if let Some(leaf) = leaf {
            let identity = tonic::transport::Identity::from_pem(&leaf.cert_pem, &leaf.key_pem);
            server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)).expect("tls");
        }
        tokio::spawn(server.add_service(TraceServiceServer::new(Collect(tx))).serve_with_incoming(incoming));
        Receiver { addr, scheme: if leaf.is_some() { "https" } else { "http" }, requests, spans: Vec::new() }
    }

    /// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
    async fn start_http() -> Receiver {
        Receiver::start_http_with(None).await
    }

    /// An OTLP/HTTP receiver, over TLS with `leaf` when given.
    async fn start_http_with(leaf: Option<&common::certs::Leaf>) -> Receiver {
        let acceptor = leaf.map(common::certs::Leaf::acceptor);
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        assert_eq!(request.uri().path(), "/v1/traces");
                        let body = request.into_body().collect().await.expect("body").to_bytes();
                        let _ = tx.send(ExportTraceServiceRequest::decode(body).expect("an OTLP export request"));
                        let reply = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                        let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(reply)));
                        response
                            .headers_mut()
                            .insert("content-type", hyper::header::HeaderValue::from_static("application/x-protobuf"));
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                        }
                        None => {
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Receiver { addr, scheme, requests, spans: Vec::new() }
    }

    /// Waits for the span named `name`; returns it with its resource.
    async fn span(&mut self, name: &str) -> (Span, Resource) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(found) = self.spans.iter().find(|(span, _)| span.name == name) {
                return found.clone();
            }
            let request = tokio::time::timeout_at(deadline, self.requests.recv())
                .await
                .unwrap_or_else(|_| panic!("no span {name} in time; got {:?}", self.names()))
                .expect("receiver open");
            for resource_spans in request.resource_spans {
                let resource = resource_spans.resource.clone().unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    self.spans.extend(scope.spans.into_iter().map(|span| (span, resource.clone())));
                }
            }
        }
    }

    fn names(&self) -> Vec<&str> {
        self.spans.iter().map(|(span, _)| span.name.as_str()).collect()
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<any_value::Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
}

/// An id as lowercase hex, as in a `traceparent`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string(value: &str) -> Option<any_value::Value> {
    Some(any_value::Value::StringValue(value.to_owned()))
}

/// Catches a trace that does not continue the caller's, or a span without
/// the RPC conventions: with only the endpoint and the service name set, a
/// ListSessions call made with a `traceparent` reaches an OTLP/gRPC receiver
/// as a SERVER span in the caller's trace, child of the caller's span, with
/// the RPC attributes and the resource's service name, version and instance.
#[tokio::test]
async fn a_call_in_a_callers_trace_is_exported_over_otlp_grpc() {
    let receiver = Receiver::start().await;
    a_call_in_a_callers_trace_is_exported(receiver, &[]).await;
}

/// The same over OTLP/HTTP with protobuf bodies.
#[tokio::test]
async fn a_call_in_a_callers_trace_is_exported_over_otlp_http() {
    let receiver = Receiver::start_http().await;
    a_call_in_a_callers_trace_is_exported(receiver, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).await;
}

/// Only the endpoint and the service name are set (and a short batch
/// delay, so that the test need not wait the default 5 s).
/// Catches OTLP export that cannot reach a collector over TLS: the same,
/// to an `https://` OTLP/gRPC receiver whose CA is given in
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`.
#[tokio::test]
async fn a_call_in_a_callers_trace_is_exported_over_otlp_grpc_with_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = common::certs::Ca::new("collector CA");
    let ca_file = common::certs::write(dir.path(), "ca.pem", &ca.pem());
    let receiver = Receiver::start_with(Some(&ca.server())).await;
    let ca_file = ca_file.to_str().expect("utf-8 path");
    a_call_in_a_callers_trace_is_exported(receiver, &[("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file)]).await;
}

/// The same over OTLP/HTTP with TLS.
#[tokio::test]
async fn a_call_in_a_callers_trace_is_exported_over_otlp_http_with_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = common::certs::Ca::new("collector CA");
    let ca_file = common::certs::write(dir.path(), "ca.pem", &ca.pem());
    let receiver = Receiver::start_http_with(Some(&ca.server())).await;
    let ca_file = ca_file.to_str().expect("utf-8 path");
    let env = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"), ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca_file)];
    a_call_in_a_callers_trace_is_exported(receiver, &env).await;
}

async fn a_call_in_a_callers_trace_is_exported(mut receiver: Receiver, more: &[(&str, &str)]) {
    let endpoint = format!("{}://{}", receiver.scheme, receiver.addr);
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "game-session-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    env.extend_from_slice(more);
    // Quiet logs must not quiet the traces: the RPC and session spans are
    // logged at WARN and above only (the startup lines stay, to find the
    // ports), and are still exported.
    let quiet = "info,game_session::api=warn,game_session::session=warn";
    let mut server = Binary::start_with_env(&["--log", quiet], &env).await;
    let mut sessions = server.sessions().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(pb::ListSessionsRequest::default());
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    sessions.list_sessions(request).await.expect("list");

    let (span, resource) = receiver.span("gamesession.v1.SessionService/ListSessions").await;
    assert_eq!(hex(&span.trace_id), trace_id, "the caller's trace");
    assert_eq!(hex(&span.parent_span_id), caller_span, "a child of the caller's span");
    assert_eq!(span.kind, span::SpanKind::Server as i32);
    assert_eq!(attribute(&span.attributes, "rpc.system"), string("grpc"));
    assert_eq!(attribute(&span.attributes, "rpc.service"), string("gamesession.v1.SessionService"));
    assert_eq!(attribute(&span.attributes, "rpc.method"), string("ListSessions"));
    assert_eq!(attribute(&span.attributes, "rpc.grpc.status_code"), Some(any_value::Value::IntValue(0)));
    assert_eq!(attribute(&span.attributes, "server.address"), string("127.0.0.1"));
    assert_eq!(
        attribute(&span.attributes, "server.port"),
        Some(any_value::Value::IntValue(i64::from(server.addr.port())))
    );
    assert_eq!(attribute(&resource.attributes, "service.name"), string("game-session-test"));
    assert_eq!(attribute(&resource.attributes, "service.version"), string(env!("CARGO_PKG_VERSION")));
    assert!(attribute(&resource.attributes, "service.instance.id").is_some());
    let _ = server.child.kill().await;
}

/// Catches a service that a dead collector slows or holds up, or whose lost
/// spans go uncounted: with the endpoint pointing at a port nobody listens
/// on, calls still succeed, every span is counted as dropped, and on SIGTERM
/// the server still exits 0 within its drain period and grace.
#[tokio::test]
async fn a_collector_that_is_down_neither_blocks_calls_nor_the_exit() {
    let nobody = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let endpoint = format!("http://{nobody}");
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let mut server = Binary::start_with_env(&["--shutdown-grace", "1s"], &env).await;
    let mut sessions = server.sessions().await;
    for _ in 0..20 {
        let call = sessions.list_sessions(pb::ListSessionsRequest::default());
        tokio::time::timeout(std::time::Duration::from_secs(1), call).await.expect("not held up").expect("list");
    }
    // The failed exports' spans are counted as dropped: 20 calls, 20 spans.
    let dropped = "game_session_trace_spans_dropped_total";
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.scrape().await.get(dropped).copied().unwrap_or(0.0) < 20.0 {
        assert!(tokio::time::Instant::now() < deadline, "no dropped spans counted");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(server.scrape().await.get(dropped).copied(), Some(20.0));
    let pid = server.child.id().expect("running");
    let stopping = tokio::time::Instant::now();
    // SAFETY: sends SIGTERM to the child this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = tokio::time::timeout(WAIT, server.child.wait()).await.expect("exits in time").expect("wait");
    assert!(status.success(), "{status}");
    // 100 ms of drain and at most 1 s of span flushing, with room to spare.
    assert!(stopping.elapsed() < std::time::Duration::from_secs(4), "{:?}", stopping.elapsed());
}

/// Catches a span flush that comes on top of the shutdown grace, which would
/// let the kubelet kill a pod the chart gave drain + grace: with a collector
/// that accepts connections and never answers, and a player that stops
/// reading so that its connection holds the whole grace, the server still
/// exits 0 within drain period + shutdown grace.
#[tokio::test]
async fn a_hanging_collector_does_not_stretch_the_exit_past_drain_and_grace() {
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", collector.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = collector.accept().await {
            held.push(stream);
        }
    });
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let mut server = Binary::start_with_env(&["--drain-period", "500ms", "--shutdown-grace", "3s"], &env).await;
    let sender = Player::join(server.addr, common::join_mode("relay", "sender")).await;
    let session = sender.welcome.session_id.clone();
    let connect = common::Connect { window: Some(1024), ..common::Connect::default() };
    let stalled =
        Player::try_join(server.addr, common::join_session(&session, "stalled"), connect).await.expect("join");
    // More than the stalled player's 1 KiB window: its stream cannot finish.
    for _ in 0..16 {
        sender.relay(&[7; 1024], &[]).await;
    }
    let pid = server.child.id().expect("running");
    let stopping = tokio::time::Instant::now();
    // SAFETY: sends SIGTERM to the child this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let status = tokio::time::timeout(WAIT, server.child.wait()).await.expect("exits in time").expect("wait");
    let took = stopping.elapsed();
    assert!(status.success(), "{status}");
    // 0.5 s of drain and 3 s of grace; a flush after the grace would take
    // another 3 s.
    assert!(took < std::time::Duration::from_millis(5000), "exit took {took:?}");
    drop((sender, stalled));
}

/// Catches log lines that cannot be tied to their trace: with traces
/// exported and JSON logs, a line logged while serving a call made in a
/// caller's trace carries that trace's id and the call's span id.
#[tokio::test]
async fn json_log_lines_carry_the_trace_id() {
    let receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.addr);
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let mut server = Binary::start_with_env(&["--log-format", "json"], &env).await;
    let mut sessions = server.sessions().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() });
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    sessions.create_session(request).await.expect("create");

    let created = server.json_line("session created").await;
    let rpc = created["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "gamesession.v1.SessionService/CreateSession"))
        .unwrap_or_else(|| panic!("the RPC's span in scope: {created}"));
    assert_eq!(rpc["trace_id"], trace_id, "{created}");
    let span_id = rpc["span_id"].as_str().unwrap_or_else(|| panic!("a span id: {created}"));
    assert!(span_id.len() == 16 && span_id != "00f067aa0ba902b7", "the call's own span: {created}");
    let _ = server.child.kill().await;
}

/// Catches lifecycle spans that cannot be found from the call that caused
/// them: a join is a short span of its own, linked to the Play call (which
/// continues the caller's trace), with the session and player ids; the leave
/// is another, linked to the join.
#[tokio::test]
async fn a_join_and_a_leave_are_spans_linked_to_their_play_call() {
    use game_session::pb::player_service_client::PlayerServiceClient;
    let mut receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.addr);
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    let mut server = Binary::start_with_env(&["--log-format", "json"], &env).await;
    let session_id = server.create_session().await;

    let (tx, rx) = mpsc::channel(4);
    let join = pb::Join {
        target: Some(pb::join::Target::SessionId(session_id.clone())),
        player_id: "alice".into(),
        ..Default::default()
    };
    tx.send(pb::ClientMessage { kind: Some(pb::client_message::Kind::Join(join)) }).await.expect("send");
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace_id}-b7ad6b7169203331-01");
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    let mut client = PlayerServiceClient::connect(format!("http://{}", server.addr)).await.expect("connect");
    let mut stream = client.play(request).await.expect("play").into_inner();
    assert!(matches!(stream.message().await.expect("ok").and_then(|m| m.kind), Some(server_message::Kind::Welcome(_))));
    tx.send(pb::ClientMessage { kind: Some(pb::client_message::Kind::Leave(pb::Leave {})) }).await.expect("send");
    while stream.message().await.expect("ends OK").is_some() {}

    let (play, _) = receiver.span("gamesession.v1.PlayerService/Play").await;
    assert_eq!(hex(&play.trace_id), trace_id, "Play continues the caller's trace");
    let (joined, _) = receiver.span("player.join").await;
    assert_eq!(attribute(&joined.attributes, "session.id"), string(&session_id));
    assert_eq!(attribute(&joined.attributes, "player.id"), string("alice"));
    assert_eq!(joined.links.len(), 1, "{joined:?}");
    assert_eq!((hex(&joined.links[0].trace_id), &joined.links[0].span_id), (trace_id.to_owned(), &play.span_id));
    assert_ne!(joined.trace_id, play.trace_id, "a short trace of its own, not hours inside the caller's");
    let (left, _) = receiver.span("player.leave").await;
    assert_eq!(left.links.len(), 1, "{left:?}");
    assert_eq!((&left.links[0].trace_id, &left.links[0].span_id), (&joined.trace_id, &joined.span_id));
    // The join's log line leads to the join's own span.
    let line = server.json_line("player joined").await;
    assert_eq!(line["span"]["trace_id"], Value::String(hex(&joined.trace_id)), "{line}");
    assert_eq!(line["span"]["span_id"], Value::String(hex(&joined.span_id)), "{line}");
    let _ = server.child.kill().await;
}

/// Catches refusals that are not counted by reason, logged once each
/// instead of rate-limited, or logged with the token or the secret in them,
/// and state-changing admin calls without an audit line naming the caller,
/// the RPC and the session.
#[tokio::test]
async fn auth_refusals_are_counted_and_logged_without_secrets_and_admin_calls_audited() {
    use common::jwt::{self, SECRET, claims, hs256, with};
    use common::{Connect, assert_status, bearer, join_session};

    let mut server =
        Binary::start_with_env(&["--log-format", "json"], &[("GAME_SESSION_JWT_HS256_SECRET", SECRET)]).await;
    let admin = jwt::admin("ops");
    let mut sessions = server.sessions().await;
    let create = pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() };
    let session_id = sessions
        .create_session(bearer(create, &admin))
        .await
        .expect("create")
        .into_inner()
        .session
        .expect("a session")
        .session_id;

    let expired = hs256(&with(claims("eve"), serde_json::json!({ "exp": jwt::now() - 600 })));
    let alice = hs256(&claims("alice"));
    let tokens = [expired.clone(), alice.clone(), admin.clone()];
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let refused = Player::try_join(server.addr, join_session(&session_id, ""), Connect::default()).await;
        assert_status(refused, Code::Unauthenticated, "missing");
    }
    let burst = started.elapsed();
    let refused = Player::try_join(server.addr, join_session(&session_id, ""), Connect::token(&expired)).await;
    assert_status(refused, Code::Unauthenticated, "expired");
    let refused = Player::try_join(server.addr, join_session(&session_id, "bob"), Connect::token(&alice)).await;
    assert_status(refused, Code::PermissionDenied, "another player");
    assert_status(
        sessions.list_sessions(bearer(pb::ListSessionsRequest::default(), &alice)).await,
        Code::PermissionDenied,
        "admin",
    );
    let send =
        pb::SendToSessionRequest { session_id: session_id.clone(), payload: b"hi".to_vec().into(), player_ids: vec![] };
    sessions.send_to_session(bearer(send, &admin)).await.expect("send");
    let signal = pb::SignalSessionRequest { session_id: session_id.clone(), payload: b"ping".to_vec().into() };
    assert_status(sessions.signal_session(bearer(signal.clone(), &alice)).await, Code::PermissionDenied, "admin");
    // A relay session takes no signals: refused, and audited as such.
    assert_status(sessions.signal_session(bearer(signal, &admin)).await, Code::FailedPrecondition, "signals");
    let lock = pb::LockSessionRequest { session_id: session_id.clone(), locked: true };
    sessions.lock_session(bearer(lock, &admin)).await.expect("lock");
    let kick =
        pb::RemovePlayerRequest { session_id: session_id.clone(), player_id: "nobody".into(), reason: "x".into() };
    assert_status(sessions.remove_player(bearer(kick, &admin)).await, Code::InvalidArgument, "not in the session");
    let end = pb::EndSessionRequest { session_id: session_id.clone(), message: "over".into() };
    sessions.end_session(bearer(end, &admin)).await.expect("end");
    let missing = pb::EndSessionRequest { session_id: "no-such-session".into(), message: String::new() };
    assert_status(sessions.end_session(bearer(missing, &admin)).await, Code::NotFound, "not found");

    let samples = server.scrape().await;
    for (labels, count) in [
        ("api=\"play\",reason=\"missing\"", 10.0),
        ("api=\"play\",reason=\"expired\"", 1.0),
        ("api=\"play\",reason=\"impersonation\"", 1.0),
        ("api=\"session\",reason=\"not_admin\"", 2.0),
    ] {
        let series = format!("game_session_auth_rejections_total{{{labels}}}");
        assert_eq!(samples.get(&series), Some(&count), "{series} in {samples:?}");
    }

    // Audit lines, in call order; everything logged on the way is kept.
    let mut lines = Vec::new();
    let mut audits = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while audits.len() < 7 {
        let line =
            tokio::time::timeout_at(deadline, server.log.recv()).await.expect("audit lines in time").expect("log");
        let json: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if json["message"] == "audit: admin call" {
            audits.push((
                json["caller"].as_str().unwrap_or_default().to_owned(),
                json["rpc"].as_str().unwrap_or_default().to_owned(),
                json["session.id"].as_str().unwrap_or_default().to_owned(),
                json["code"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        lines.push(json);
    }
    let audit = |rpc: &str, session: &str, code: &str| {
        ("jwt:ops".to_owned(), rpc.to_owned(), session.to_owned(), code.to_owned())
    };
    assert_eq!(
        audits,
        [
            audit("CreateSession", &session_id, "Ok"),
            audit("SendToSession", &session_id, "Ok"),
            audit("SignalSession", &session_id, "FailedPrecondition"),
            audit("LockSession", &session_id, "Ok"),
            audit("RemovePlayer", &session_id, "InvalidArgument"),
            audit("EndSession", &session_id, "Ok"),
            audit("EndSession", "no-such-session", "NotFound"),
        ]
    );
    let refusals: Vec<&Value> = lines.iter().filter(|l| l["message"] == "credential refused").collect();
    let missing: Vec<&&Value> = refusals.iter().filter(|l| l["reason"] == "missing").collect();
    assert_eq!(missing[0]["suppressed"], 0, "{missing:?}");
    if burst < std::time::Duration::from_millis(900) {
        assert_eq!(missing.len(), 1, "ten refusals within a second log one line: {missing:?}");
    }
    for reason in ["expired", "impersonation"] {
        assert_eq!(refusals.iter().filter(|l| l["reason"] == reason).count(), 1, "{reason}: {refusals:?}");
    }
    // Two not_admin refusals: one line, or two if a second apart.
    let not_admin = refusals.iter().filter(|l| l["reason"] == "not_admin").count();
    assert!((1..=2).contains(&not_admin), "{refusals:?}");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    for secret in tokens.iter().map(String::as_str).chain([SECRET]) {
        assert!(!text.iter().any(|line| line.contains(secret)), "a log line holds a credential");
    }
    let _ = server.child.kill().await;
}

/// Catches failed joins that go uncounted, are counted under the wrong
/// reason, or flood the log: after two joins to a missing session, one to a
/// full one, one taking a seated id, three malformed ones and one that never
/// joins, each reason has exactly its count, and the two quick
/// `session_not_found` failures make one log line, not two.
#[tokio::test]
async fn failed_joins_are_counted_by_reason() {
    use common::{Connect, join_mode, join_session};
    let mut server = Binary::start(&["--join-timeout", "200ms"]).await;
    let mut api = server.sessions().await;
    let mut ids = Vec::new();
    for max_players in [1, 4] {
        let request = pb::CreateSessionRequest { mode: "relay".into(), max_players, ..Default::default() };
        let created = api.create_session(request).await.expect("create").into_inner();
        ids.push(created.session.expect("a session").session_id);
    }
    let (full, roomy) = (ids[0].clone(), ids[1].clone());
    let _alice = Player::join_as(server.addr, &full, "alice").await;
    let _bob = Player::join_as(server.addr, &roomy, "bob").await;

    let mut bad_name = join_session(&roomy, "carol");
    bad_name.display_name = "\u{1b}[2J".into();
    let failing = [
        (join_session("no-such-session", "x"), Code::NotFound),
        (join_session("no-such-session", "y"), Code::NotFound),
        (join_session(&full, "carol"), Code::ResourceExhausted),
        (join_session(&roomy, "bob"), Code::AlreadyExists),
        (join_session(&roomy, "bad id"), Code::InvalidArgument),
        (bad_name, Code::InvalidArgument),
        (join_mode("", "carol"), Code::InvalidArgument),
    ];
    for (join, code) in failing {
        let result = Player::try_join(server.addr, join, Connect::default()).await.map(|p| p.welcome);
        assert_eq!(result.expect_err("the join fails").code(), code);
    }
    let (_tx, rx) = mpsc::channel::<pb::ClientMessage>(1);
    let mut players = pb::player_service_client::PlayerServiceClient::connect(format!("http://{}", server.addr))
        .await
        .expect("connect");
    let silent = players.play(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    assert_eq!(silent.map(|_| ()).expect_err("no join in time").code(), Code::DeadlineExceeded);

    let wanted = [
        ("session_not_found", 2.0),
        ("session_full", 1.0),
        ("already_joined", 1.0),
        ("invalid", 3.0),
        ("timeout", 1.0),
    ];
    let samples = server.scrape().await;
    let failures: HashMap<&str, f64> = samples
        .iter()
        .filter_map(|(series, value)| {
            let reason = series.strip_prefix("game_session_join_failures_total{reason=\"")?.strip_suffix("\"}")?;
            Some((wanted.iter().find(|(r, _)| *r == reason).map_or("unexpected", |(r, _)| *r), *value))
        })
        .collect();
    assert_eq!(failures, HashMap::from(wanted), "{samples:?}");

    // The log: one line for the two quick session_not_found failures.
    let mut lines = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(std::time::Duration::from_millis(500), server.log.recv()).await {
        lines.push(line);
    }
    let not_found: Vec<_> =
        lines.iter().filter(|l| l.contains("join failed") && l.contains("session_not_found")).collect();
    assert_eq!(not_found.len(), 1, "{lines:#?}");
    assert!(not_found[0].contains("suppressed=0"), "{}", not_found[0]);
    let _ = server.child.kill().await;
}

/// Catches resume metrics that do not count: a resume that replays, one
/// refused as superseded and one with a forged token, the seat held
/// meanwhile, the takeover, the messages replayed, and the replay buffer's
/// size.
#[tokio::test]
async fn resumes_are_counted_by_result() {
    let mut server = Binary::start(&[]).await;
    let session_id = server.create_session().await;
    let alice = Player::join_as(server.addr, &session_id, "alice").await;
    let bob = Player::join_as(server.addr, &session_id, "bob").await;
    let (token, last) = (alice.welcome.resume_token.clone(), alice.welcome.sequence + 1);
    alice.break_connection();
    let held = ("game_session_seats_held{mode=\"relay\"}", 1.0);
    settled(&server, &[held]).await;
    bob.relay(b"while away", &[]).await;
    let resume = pb::Resume { token: token.clone(), last_sequence: last };
    let (mut alice, resumed) =
        Player::try_resume(server.addr, resume.clone(), Default::default()).await.expect("resume");
    assert_eq!(resumed.replayed, 1);
    assert_eq!(alice.next_relayed().await.payload.as_ref(), b"while away");
    let refused = Player::try_resume(server.addr, resume, Default::default()).await;
    assert_eq!(refused.map(|_| ()).expect_err("superseded").code(), tonic::Code::PermissionDenied);
    let forged = pb::Resume { token: format!("x{token}"), last_sequence: last };
    let refused = Player::try_resume(server.addr, forged, Default::default()).await;
    assert_eq!(refused.map(|_| ()).expect_err("forged").code(), tonic::Code::Unauthenticated);
    settled(
        &server,
        &[
            ("game_session_resumes_total{result=\"ok\"}", 1.0),
            ("game_session_resumes_total{result=\"superseded\"}", 1.0),
            ("game_session_resumes_total{result=\"invalid_token\"}", 1.0),
            ("game_session_seats_held{mode=\"relay\"}", 0.0),
            ("game_session_seat_takeovers_total{mode=\"relay\",via=\"resume\"}", 1.0),
            ("game_session_messages_replayed_total{mode=\"relay\"}", 1.0),
            // alice's and bob's joins, alice's hold, bob's relay, her return.
            ("game_session_replay_buffer_messages", 5.0),
        ],
    )
    .await;
    let _ = server.child.kill().await;
}

/// Polls the server's metrics until every `(series, value)` holds, within
/// [`WAIT`].
async fn settled(server: &Binary, want: &[(&str, f64)]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let samples = server.scrape().await;
        let now: Vec<_> = want.iter().map(|(series, _)| samples.get(*series).copied()).collect();
        if now.iter().zip(want).all(|(got, (_, want))| *got == Some(*want)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:?} in {samples:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
