//! An authoritative game on game-session: the `arena` mode (see `logic.rs`)
//! registered beside `relay`, served by the same `game_session::serve` the
//! binary uses, with every server flag (`--help`).
//!
//! ```sh
//! cargo run --release --example arena                        # the server
//! cargo run --release --example arena_client -- --name alice # a player
//! cargo run --release --example arena_client -- --name bob   # another
//! ```

mod logic;

use clap::Parser;
use game_session::session::Relay;
use game_session::{Config, Modes, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = telemetry::init(&config.log, config.log_format);
    let modes = Modes::builder().register("relay", Relay).register("arena", logic::Arena).build();
    let served = game_session::serve(config, modes, game_session::shutdown_signal()).await;
    telemetry.shutdown(std::time::Duration::from_secs(2)).await;
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
