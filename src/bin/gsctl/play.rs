//! `gsctl play`: an interactive player. Stdin lines go out, arrivals are
//! printed, and a dropped connection is resumed without a gap.
//!
//! The player keeps its seat's resume token and the last sequence it
//! received. When its stream fails the way a network fails (a reset, a
//! broken or silent connection, or the server shedding it for reading too
//! slowly), it says so on stderr, connects again and sends a `resume`: the
//! server replays what it missed, and it goes on. A resume refused with
//! OUT_OF_RANGE (the missed messages are gone) becomes a join with the
//! resume token, which takes the held seat back with a fresh welcome.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use game_session::pb::player_service_client::PlayerServiceClient;
use game_session::pb::{self, client_message, server_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

use super::{Bearer, Failure, render};

/// How long a dropped connection is retried before giving up: the server's
/// default seat hold.
const RESUME_FOR: Duration = Duration::from_secs(30);
/// The first pause between attempts, doubled up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// HTTP/2 pings, so that a connection gone silent is noticed within about
/// this twice over rather than never.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// The seat being played, as far as a resume needs it.
#[derive(Debug, Default)]
struct Seat {
    player: String,
    session: String,
    /// The latest resume token; empty if the session holds no seats.
    token: String,
    /// The last sequence received that every earlier one of this player's
    /// has been received with.
    last: u64,
    /// After a `resumed`: its sequence, and the replayed messages still to
    /// come before `last` may move up to it.
    resumed_at: u64,
    replay_left: u64,
}

impl Seat {
    /// Notes what `message` says about the seat.
    fn saw(&mut self, message: &pb::ServerMessage) {
        use server_message::Kind;
        let sequence = match &message.kind {
            Some(Kind::Welcome(w)) => {
                *self = Seat {
                    player: w.player.as_ref().map(|p| p.player_id.clone()).unwrap_or_default(),
                    session: w.session_id.clone(),
                    token: w.resume_token.clone(),
                    last: w.sequence,
                    ..Seat::default()
                };
                return;
            }
            Some(Kind::Resumed(r)) => {
                self.token = r.resume_token.clone();
                self.resumed_at = r.sequence;
                self.replay_left = r.replayed;
                if r.replayed == 0 {
                    self.last = self.last.max(r.sequence);
                }
                return;
            }
            Some(Kind::Relayed(r)) => r.sequence,
            Some(Kind::Presence(p)) => p.sequence,
            Some(Kind::Backend(b)) => b.sequence,
            Some(Kind::SessionEnded(e)) => e.sequence,
            _ => return,
        };
        self.last = self.last.max(sequence);
        if self.replay_left > 0 {
            self.replay_left -= 1;
            if self.replay_left == 0 {
                self.last = self.last.max(self.resumed_at);
            }
        }
    }
}

/// Whether a stream that failed with `status` is worth resuming: a broken
/// or reset connection, or the server shedding a slow reader (its seat is
/// held). Not a refusal, a kick, a takeover by another device, or a
/// protocol error.
fn resumable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::ResourceExhausted
    )
}

/// Plays until the session or the stream ends. A session that ends, or a
/// stream the server ends with OK, exits 0.
pub async fn play(
    endpoint: Endpoint,
    bearer: Bearer,
    join: pb::Join,
    out: render::Output,
) -> Result<std::process::ExitCode, Failure> {
    let endpoint = endpoint.http2_keep_alive_interval(KEEPALIVE).keep_alive_timeout(KEEPALIVE);
    let (tx, mut typed) = mpsc::channel(64);
    // The round trip of the last ping, told to the server with the next one
    // (operators see it in GetSession).
    let rtt = Arc::new(AtomicI64::new(0));
    read_stdin(tx, rtt.clone());
    let mut seat = Seat::default();
    let mut first = client_message::Kind::Join(join.clone());
    let mut retrying_since: Option<tokio::time::Instant> = None;
    let mut pause = RETRY_MIN;
    loop {
        let failed = match stream(&endpoint, &bearer, first.clone(), &mut typed, &mut seat, &rtt, out).await {
            Ok(()) => return Ok(std::process::ExitCode::SUCCESS),
            Err(Stop::Failed(failure)) => return Err(failure),
            Err(Stop::Status { status, seated }) => {
                if seated {
                    retrying_since = None;
                    pause = RETRY_MIN;
                }
                status
            }
        };
        let can_resume = !seat.token.is_empty() && retrying_since.is_none_or(|since| since.elapsed() <= RESUME_FOR);
        first = match failed.code() {
            // The missed messages are gone, but the seat is held: take it
            // back with a fresh welcome.
            Code::OutOfRange if can_resume => {
                eprintln!("({}; joining the held seat again)", failed.message());
                // The player's name and metadata as it first joined.
                let target = pb::join::Target::SessionId(seat.session.clone());
                client_message::Kind::Join(pb::Join {
                    target: Some(target),
                    player_id: seat.player.clone(),
                    resume_token: seat.token.clone(),
                    ..join.clone()
                })
            }
            _ if can_resume && resumable(&failed) => {
                if retrying_since.is_none() {
                    eprintln!(
                        "(connection lost: {}; resuming as {} after #{})",
                        failed.message(),
                        seat.player,
                        seat.last
                    );
                    retrying_since = Some(tokio::time::Instant::now());
                } else {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                client_message::Kind::Resume(pb::Resume { token: seat.token.clone(), last_sequence: seat.last })
            }
            _ => return Err(failed.into()),
        };
    }
}

/// Why one stream stopped.
enum Stop {
    /// It failed with `status`; `seated`: after its welcome or `resumed`.
    Status { status: Status, seated: bool },
    /// Printing failed.
    Failed(Failure),
}

/// One Play stream on a new connection, opening with `first`: forwards
/// typed messages and prints arrivals until the session or the stream ends.
async fn stream(
    endpoint: &Endpoint,
    bearer: &Bearer,
    first: client_message::Kind,
    typed: &mut mpsc::Receiver<pb::ClientMessage>,
    seat: &mut Seat,
    rtt: &AtomicI64,
    out: render::Output,
) -> Result<(), Stop> {
    let failed = |status: Status| Stop::Status { status, seated: false };
    let channel = endpoint.connect().await.map_err(|e| failed(Status::unavailable(e.to_string())))?;
    let mut client = PlayerServiceClient::with_interceptor(channel, bearer.clone());
    let (tx, rx) = mpsc::channel(64);
    let _ = tx.send(pb::ClientMessage { kind: Some(first) }).await;
    // The stream is long-lived: no per-call timeout.
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.set_timeout(Duration::from_secs(365 * 24 * 3600));
    let mut inbound = client.play(request).await.map_err(failed)?.into_inner();
    let mut tx = Some(tx);
    loop {
        tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => return Ok(()),
                    Err(status) => return Err(Stop::Status { status, seated: true }),
                };
                seat.saw(&message);
                out.play(&message).map_err(Stop::Failed)?;
                match &message.kind {
                    Some(server_message::Kind::Pong(pong)) => {
                        rtt.store((render::unix_micros() - pong.client_time).max(1), Ordering::Relaxed);
                    }
                    Some(server_message::Kind::SessionEnded(_)) => return Ok(()),
                    _ => {}
                }
            }
            // A line typed, or the end of input (a half-close: a leave).
            line = typed.recv(), if tx.is_some() => match line {
                Some(line) => {
                    if let Some(sender) = &tx {
                        // A stream that failed reports it on its inbound side.
                        let _ = sender.send(line).await;
                    }
                }
                None => tx = None,
            },
        }
    }
}

/// Sends each stdin line as a message, from a thread of its own; the end of
/// input (or `/leave`) half-closes the stream, a leave.
///
/// Not tokio's stdin: it reads on a thread of tokio's blocking pool, which
/// the runtime waits for on exit, so gsctl would outlive its session until
/// the next line was typed, and swallow that line. A std thread dies with
/// the process.
fn read_stdin(tx: mpsc::Sender<pb::ClientMessage>, rtt: Arc<AtomicI64>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            let kind = match parse_input(&line, rtt.load(Ordering::Relaxed)) {
                Ok(Some(kind)) => kind,
                Ok(None) => continue,
                Err(err) => {
                    eprintln!("{err}");
                    continue;
                }
            };
            let leave = matches!(kind, client_message::Kind::Leave(_));
            if tx.blocking_send(pb::ClientMessage { kind: Some(kind) }).is_err() || leave {
                return;
            }
        }
    });
}

/// One stdin line as a client message; `None` for a blank line. A ping
/// carries `rtt_micros`, the last ping's round trip.
fn parse_input(line: &str, rtt_micros: i64) -> Result<Option<client_message::Kind>, String> {
    let Some(command) = line.strip_prefix('/') else {
        if line.is_empty() {
            return Ok(None);
        }
        return Ok(Some(relay(line, Vec::new())));
    };
    let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
    match name {
        "ping" => Ok(Some(client_message::Kind::Ping(pb::Ping { client_time: render::unix_micros(), rtt_micros }))),
        "leave" => Ok(Some(client_message::Kind::Leave(pb::Leave {}))),
        "to" => {
            let (targets, text) = rest.split_once(' ').ok_or("usage: /to ID[,ID...] TEXT")?;
            Ok(Some(relay(text, targets.split(',').map(str::to_owned).collect())))
        }
        other => Err(format!("unknown command /{other}; use /ping, /leave or /to ID[,ID...] TEXT")),
    }
}

fn relay(text: &str, targets: Vec<String>) -> client_message::Kind {
    client_message::Kind::Relay(pb::Relay { payload: text.as_bytes().to_vec().into(), targets, droppable: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relayed(sequence: u64) -> pb::ServerMessage {
        pb::ServerMessage {
            kind: Some(server_message::Kind::Relayed(pb::Relayed { sequence, ..pb::Relayed::default() })),
        }
    }

    /// Catches a resume point that skips replayed messages not yet received
    /// (a second drop mid-replay would lose them): `last` moves past the
    /// resume's own sequence only once the whole replay is in.
    #[test]
    fn the_resume_point_passes_a_replay_only_once_it_is_all_in() {
        let mut seat = Seat { token: "t".into(), last: 4, ..Seat::default() };
        let resumed = pb::Resumed { last_sequence: 4, replayed: 2, sequence: 9, ..pb::Resumed::default() };
        seat.saw(&pb::ServerMessage { kind: Some(server_message::Kind::Resumed(resumed)) });
        assert_eq!(seat.last, 4);
        seat.saw(&relayed(6));
        assert_eq!(seat.last, 6, "the first replayed message");
        seat.saw(&relayed(8));
        assert_eq!(seat.last, 9, "the replay is in: up to the resume");
        seat.saw(&relayed(12));
        assert_eq!(seat.last, 12);
    }
}
