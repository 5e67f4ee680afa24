//! `Config::for_tests` and the environment. Alone in its file (its own
//! process), since it changes the process's environment.

use game_session::Config;

/// Catches test configs that pick up `GAME_SESSION_*` variables from the
/// environment of whoever runs the tests, contrary to `for_tests`'s doc.
#[test]
fn for_tests_ignores_the_environment() {
    // SAFETY: this process runs this one test, on this one thread, and
    // nothing else reads the environment meanwhile.
    unsafe {
        std::env::set_var("GAME_SESSION_MAX_SESSIONS", "7");
        std::env::set_var("GAME_SESSION_WATCH_BUFFER", "3");
    }
    let config = Config::for_tests();
    assert_eq!((config.max_sessions, config.watch_buffer), (10_000, 1024));
}
