//! A terminal client for the `arena` example: joins an arena (any open one,
//! or `--session`), draws the field at every state the server sends, and
//! steers with `w` `a` `s` `d` (then Enter; `x` stops, `q` leaves). With
//! `--bot` it runs about by itself.
//!
//! ```sh
//! cargo run --release --example arena                         # the server
//! cargo run --release --example arena_client -- --name alice  # terminal 2
//! cargo run --release --example arena_client -- --name bob --bot
//! ```
//!
//! Players are letters; the one who is "it" is upper case. The match starts
//! 3 seconds after a second player comes in (at once when the arena is full)
//! and lasts a minute: whoever was "it" the least
//! wins.

use std::io::BufRead;

use clap::Parser;
use game_session::pb::{self, client_message, player_service_client::PlayerServiceClient, server_message};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
struct Args {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Your player id.
    #[arg(long)]
    name: String,
    /// Join this arena; by default, any open one (or a new one).
    #[arg(long)]
    session: Option<String>,
    /// Run about by yourself instead of reading the keyboard.
    #[arg(long)]
    bot: bool,
    /// One line per state instead of drawing the field (for logs and tests).
    #[arg(long)]
    plain: bool,
    /// Leave after this many states (0: play to the end).
    #[arg(long, default_value_t = 0)]
    states: u64,
}

const WIDTH: usize = 20;
const HEIGHT: usize = 10;
const SPEED: f32 = 5.0;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut players = PlayerServiceClient::connect(args.addr.clone()).await?;
    let (tx, rx) = mpsc::channel(64);
    let target = match args.session.clone() {
        Some(id) => pb::join::Target::SessionId(id),
        None => pb::join::Target::Mode("arena".into()),
    };
    let join = pb::Join { target: Some(target), player_id: args.name.clone(), ..Default::default() };
    tx.send(pb::ClientMessage { kind: Some(client_message::Kind::Join(join)) }).await?;
    let mut stream = players.play(ReceiverStream::new(rx)).await?.into_inner();

    // Steering: from the keyboard (a std thread: stdin blocks), or a bot.
    let (steer_tx, mut steer) = mpsc::channel::<Option<(f32, f32)>>(16);
    if args.bot {
        tokio::spawn(async move {
            let mut seed: u32 = 0x9e37_79b9 ^ std::process::id();
            loop {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let angle = (seed % 360) as f32 * std::f32::consts::PI / 180.0;
                if steer_tx.send(Some((angle.cos() * SPEED, angle.sin() * SPEED))).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(700)).await;
            }
        });
    } else {
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let velocity = match line.as_deref().map(str::trim) {
                    Ok("w") => Some((0.0, -SPEED)),
                    Ok("s") => Some((0.0, SPEED)),
                    Ok("a") => Some((-SPEED, 0.0)),
                    Ok("d") => Some((SPEED, 0.0)),
                    Ok("x") => Some((0.0, 0.0)),
                    Ok("q") | Err(_) => None,
                    Ok(_) => continue,
                };
                let leave = velocity.is_none();
                if steer_tx.blocking_send(velocity).is_err() || leave {
                    return;
                }
            }
            let _ = steer_tx.blocking_send(None);
        });
    }

    let mut sequence = 0;
    let mut states = 0;
    let mut last: Option<Value> = None;
    loop {
        tokio::select! {
            velocity = steer.recv() => match velocity.flatten() {
                Some((x, y)) => {
                    sequence += 1;
                    let mut payload = x.to_le_bytes().to_vec();
                    payload.extend_from_slice(&y.to_le_bytes());
                    let input = pb::Input { sequence, payload: payload.into() };
                    let _ = tx.send(pb::ClientMessage { kind: Some(client_message::Kind::Input(input)) }).await;
                }
                None => {
                    let _ = tx.send(pb::ClientMessage { kind: Some(client_message::Kind::Leave(pb::Leave {})) }).await;
                    println!("you left");
                    return Ok(());
                }
            },
            message = stream.message() => match message?.and_then(|m| m.kind) {
                Some(server_message::Kind::Welcome(welcome)) => {
                    println!("joined arena {} as {}", welcome.session_id, args.name);
                }
                Some(server_message::Kind::State(state)) => {
                    let Ok(value) = serde_json::from_slice::<Value>(&state.payload) else { continue };
                    if args.plain {
                        println!("{}", line(state.tick, &value));
                    } else {
                        print!("\x1b[H\x1b[2J{}", draw(&value, &args.name));
                    }
                    last = Some(value);
                    states += 1;
                    if args.states > 0 && states >= args.states {
                        let _ = tx.send(pb::ClientMessage { kind: Some(client_message::Kind::Leave(pb::Leave {})) }).await;
                        return Ok(());
                    }
                }
                Some(server_message::Kind::SessionEnded(ended)) => {
                    println!("match over: {}", ended.message);
                    if let Some(players) = last.as_ref().and_then(|v| v["players"].as_array()) {
                        let mut standings: Vec<_> = players.iter().map(|p| (p["it_ms"].as_u64().unwrap_or(0), p["id"].as_str().unwrap_or("?"))).collect();
                        standings.sort();
                        for (place, (it_ms, id)) in standings.iter().enumerate() {
                            println!("{}. {id}: \"it\" for {:.1} s", place + 1, *it_ms as f64 / 1000.0);
                        }
                    }
                    return Ok(());
                }
                Some(server_message::Kind::Error(error)) => eprintln!("error on {}: {}", error.field, error.message),
                Some(_) => {}
                None => return Ok(()),
            },
        }
    }
}

/// One line per state: the tick, the phase, who is "it", and where everyone is.
fn line(tick: u64, state: &Value) -> String {
    let players: Vec<String> = state["players"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{}({},{})", p["id"].as_str().unwrap_or("?"), p["x"], p["y"]))
        .collect();
    format!("tick {tick} {} it={} {}", state["phase"].as_str().unwrap_or("?"), state["it"], players.join(" "))
}

/// The field, with a header.
fn draw(state: &Value, me: &str) -> String {
    let mut grid = vec![vec!['.'; WIDTH]; HEIGHT];
    let it = state["it"].as_str();
    for p in state["players"].as_array().into_iter().flatten() {
        let id = p["id"].as_str().unwrap_or("?");
        let (x, y) = (p["x"].as_f64().unwrap_or(0.0) as usize, p["y"].as_f64().unwrap_or(0.0) as usize);
        let letter = id.chars().next().unwrap_or('?');
        let letter = if Some(id) == it { letter.to_ascii_uppercase() } else { letter.to_ascii_lowercase() };
        grid[y.min(HEIGHT - 1)][x.min(WIDTH - 1)] = letter;
    }
    let mut out = format!(
        "arena: {}, {} s left, \"it\": {}; you are {me} (w a s d + Enter, x stop, q leave)\n",
        state["phase"].as_str().unwrap_or("?"),
        state["left_ms"].as_u64().unwrap_or(0) / 1000,
        it.unwrap_or("nobody yet"),
    );
    for row in grid {
        out.extend(row);
        out.push('\n');
    }
    out
}
