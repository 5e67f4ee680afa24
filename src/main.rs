//! The game-session server: parse the config, set up logging and metrics,
//! bind, and run until SIGTERM or SIGINT.

use clap::Parser;
use game_session::{Config, Listeners, Modes, telemetry};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::net::TcpListener;

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
    let code = match serve(config, shutdown).await {
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

async fn serve(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<(), game_session::BoxError> {
    // The metrics endpoint comes up first and stays up through the drain;
    // it stops with the process.
    if let Some(addr) = config.metrics_listen.0 {
        let listener = bind("--metrics-listen", addr).await?;
        let handle = game_session::metrics::install()?;
        tracing::info!(address = %listener.local_addr()?, "serving metrics");
        tokio::spawn(game_session::metrics::serve(listener, handle));
    }
    let main = bind("--listen", config.listen_addr()).await?;
    let backend = match config.backend_listen {
        Some(addr) => Some(bind("--backend-listen", addr).await?),
        None => None,
    };
    let health = match config.health_listen.0 {
        Some(addr) => Some(bind("--health-listen", addr).await?),
        None => None,
    };
    game_session::run(config, Modes::default(), Listeners { main, backend, health }, shutdown).await
}

/// Binds `addr`; a failure names the flag and the address.
async fn bind(flag: &str, addr: SocketAddr) -> Result<TcpListener, game_session::BoxError> {
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} ({flag}): {e}").into())
}
