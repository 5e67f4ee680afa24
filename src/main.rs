//! The game-session server: parse the config, set up logging and metrics,
//! bind, and run until SIGTERM or SIGINT.

use clap::Parser;
use game_session::{Config, Modes, telemetry};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = telemetry::init(&config.log, config.log_format);
    if let Err(err) = config.validate() {
        tracing::error!(error = %err, "invalid configuration");
        return std::process::ExitCode::from(2);
    }
    // The process exits within drain period + shutdown grace of the signal
    // (the pod's grace period is sized on it), so the spans still queued at
    // the end are flushed within what is left of that budget.
    let (budget, grace) = (config.drain_period.saturating_add(config.shutdown_grace), config.shutdown_grace);
    let signalled = Arc::new(OnceLock::new());
    let shutdown = {
        let signalled = Arc::clone(&signalled);
        async move {
            game_session::shutdown_signal().await;
            let _ = signalled.set(Instant::now());
        }
    };
    let code = match game_session::serve(config, Modes::default(), shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            std::process::ExitCode::FAILURE
        }
    };
    let flush_within = match signalled.get() {
        Some(at) => budget.saturating_sub(at.elapsed()),
        None => grace,
    };
    telemetry.shutdown(flush_within).await;
    code
}
