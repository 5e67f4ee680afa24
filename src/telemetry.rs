//! Logging setup: `tracing` with an `EnvFilter`. The OpenTelemetry export
//! joins here in a later issue; spans are already named and shaped for it
//! (`package.Service/Method`, `session.id`, `player.id`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` wins over `default_filter`.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}
