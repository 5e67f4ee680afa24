//! The real binary's telemetry: its Prometheus endpoint and its JSON logs.
//! The metrics recorder and the log subscriber are process-wide, so these
//! tests start `game-session` itself, play a scripted session against it,
//! scrape `/metrics` over HTTP and read its log lines.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;

use common::{Player, WAIT};
use game_session::pb::session_service_client::SessionServiceClient;
use game_session::pb::{self, server_message};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tonic::Code;

/// The binary, serving players and metrics on ports of its choosing.
struct Binary {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    /// Its log lines after the two "serving" ones.
    log: mpsc::UnboundedReceiver<String>,
}

impl Binary {
    async fn start(extra: &[&str]) -> Binary {
        let mut command = Command::new(env!("CARGO_BIN_EXE_game-session"));
        // Only the flags here count, whatever the developer's shell has set.
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("GAME_SESSION_")) {
            command.env_remove(name);
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--drain-period", "100ms"])
            .args(extra)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut addr, mut metrics) = (None, None);
        while addr.is_none() || metrics.is_none() {
            let line = tokio::time::timeout(WAIT, lines.next_line()).await.expect("log in time").expect("read");
            let line = line.expect("the server exited before serving");
            let address = || -> SocketAddr {
                let text = match serde_json::from_str::<Value>(&line) {
                    Ok(json) => json["address"].as_str().expect("an address field").to_owned(),
                    Err(_) => line.split("address=").nth(1).expect("an address").to_owned(),
                };
                text.split_whitespace().next().expect("address").parse().expect("a socket address")
            };
            if line.contains("serving metrics") {
                metrics = Some(address());
            } else if line.contains("serving players") {
                addr = Some(address());
            }
        }
        // Keep reading the log, so that the server never blocks on it.
        let (tx, log) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Binary { child, addr: addr.expect("addr"), metrics: metrics.expect("metrics"), log }
    }

    async fn sessions(&self) -> SessionServiceClient<tonic::transport::Channel> {
        SessionServiceClient::connect(format!("http://{}", self.addr)).await.expect("connect")
    }

    /// GETs `path` from the metrics port: (status line, headers, body).
    async fn get(&self, path: &str) -> (String, String, String) {
        let mut stream = TcpStream::connect(self.metrics).await.expect("connect to metrics");
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        tokio::time::timeout(WAIT, stream.read_to_string(&mut response)).await.expect("in time").expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a header and a body");
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status.to_owned(), headers.to_lowercase(), body.to_owned())
    }

    /// Every sample of a scrape, by `name{labels}`.
    async fn scrape(&self) -> HashMap<String, f64> {
        let (status, headers, body) = self.get("/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
        assert!(body.contains("# TYPE game_session_rpc_duration_seconds histogram"), "buckets, not a summary");
        body.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }
}

const RELAY: &str = "{mode=\"relay\"}";

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
    let missing = sessions.get_session(pb::GetSessionRequest { session_id }).await.expect_err("ended");
    assert_eq!(missing.code(), Code::NotFound);

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
        (format!("game_session_messages_delivered_total{RELAY}"), 3.0),
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
/// left up: a player whose connection breaks counts as `disconnected`, the
/// empty session then ends as `idle`, and both gauges come back to zero.
#[tokio::test]
async fn a_broken_connection_and_an_idle_end_are_counted_by_reason() {
    let mut server = Binary::start(&["--idle-timeout", "200ms"]).await;
    let mut sessions = server.sessions().await;
    let request = pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() };
    let session_id =
        sessions.create_session(request).await.expect("create").into_inner().session.expect("s").session_id;
    let alice = Player::join_as(server.addr, &session_id, "alice").await;
    alice.break_connection();

    let wanted = [
        ("game_session_player_departures_total{mode=\"relay\",reason=\"disconnected\"}", 1.0),
        ("game_session_sessions_ended_total{mode=\"relay\",reason=\"idle\"}", 1.0),
        ("game_session_players_connected{mode=\"relay\"}", 0.0),
        ("game_session_sessions_active{mode=\"relay\"}", 0.0),
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let samples = server.scrape().await;
        let now: Vec<_> = wanted.iter().map(|(series, _)| samples.get(*series).copied()).collect();
        if now.iter().zip(&wanted).all(|(got, (_, want))| *got == Some(*want)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:?} in {samples:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = server.child.kill().await;
}

/// Catches JSON logs that do not parse, or that lose the session and player
/// ids: with `--log-format json` every line is a JSON object with a level
/// and a message, and a player's join is logged with both ids.
#[tokio::test]
async fn json_logs_parse_and_carry_the_ids() {
    let mut server = Binary::start(&["--log-format", "json"]).await;
    let mut sessions = server.sessions().await;
    let request = pb::CreateSessionRequest { mode: "relay".into(), ..Default::default() };
    let session_id =
        sessions.create_session(request).await.expect("create").into_inner().session.expect("s").session_id;
    let mut alice = Player::join_as(server.addr, &session_id, "alice").await;
    alice.leave().await;
    alice.expect_ended_ok().await;

    let deadline = tokio::time::Instant::now() + WAIT;
    let mut joined = None;
    while joined.is_none() {
        let line = tokio::time::timeout_at(deadline, server.log.recv()).await.expect("a join line").expect("log");
        let json: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(json["level"].is_string() && json["timestamp"].is_string(), "{line}");
        if json["message"] == "player joined" {
            joined = Some(json);
        }
    }
    let joined = joined.expect("joined");
    assert_eq!(joined["span"]["session.id"], Value::String(session_id), "{joined}");
    assert_eq!(joined["span"]["player.id"], "alice", "{joined}");
    assert_eq!(joined["span"]["name"], "player.join", "{joined}");
    let _ = server.child.kill().await;
}
