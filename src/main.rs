//! The game-session server: parse the config, set up logging and metrics,
//! bind, and run until SIGTERM or SIGINT.

use clap::Parser;
use game_session::{Config, Listeners, Modes, telemetry};
use std::net::SocketAddr;

use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = telemetry::init(&config.log, config.log_format);
    if let Err(err) = config.validate() {
        tracing::error!(error = %err, "invalid configuration");
        return std::process::ExitCode::from(2);
    }
    // The spans still queued at the end are flushed within the grace period.
    let flush_within = config.shutdown_grace;
    let code = match serve(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            std::process::ExitCode::FAILURE
        }
    };
    telemetry.shutdown(flush_within).await;
    code
}

async fn serve(config: Config) -> Result<(), game_session::BoxError> {
    // The metrics endpoint comes up first and stays up through the drain;
    // it stops with the process.
    if let Some(addr) = config.metrics_listen.0 {
        let listener = bind("--metrics-listen", addr).await?;
        let handle = game_session::metrics::install()?;
        tracing::info!(address = %listener.local_addr()?, "serving metrics");
        tokio::spawn(game_session::metrics::serve(listener, handle));
    }
    let main = bind("--listen", config.listen).await?;
    let backend = match config.backend_listen {
        Some(addr) => Some(bind("--backend-listen", addr).await?),
        None => None,
    };
    game_session::run(config, Modes::default(), Listeners { main, backend }, game_session::shutdown_signal()).await
}

/// Binds `addr`; a failure names the flag and the address.
async fn bind(flag: &str, addr: SocketAddr) -> Result<TcpListener, game_session::BoxError> {
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} ({flag}): {e}").into())
}
