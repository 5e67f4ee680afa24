//! Modes: the named kinds of session a server runs. A [`Mode`] makes the
//! [`SessionLogic`] of each new session from the session's config; [`Modes`]
//! holds them by name. `relay` is built in; a library user registers more
//! and passes them to [`crate::run`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::logic::SessionLogic;
use crate::error::Error;

/// A kind of session: makes the logic of each new session from the
/// session's opaque config.
pub trait Mode: Send + Sync + 'static {
    /// The logic of a new session with `config`. The error says what is wrong
    /// with the config; it is sent to the caller as INVALID_ARGUMENT on
    /// `config`, and no session is created.
    ///
    /// Called before the registry's other checks (an idempotent repeat, the
    /// drain, the session limit), which may still refuse the session and
    /// drop the logic unused: keep it cheap and free of side effects.
    fn create(&self, config: &[u8]) -> Result<Box<dyn SessionLogic>, String>;
}

/// The modes a server runs, by name. Cheap to clone.
#[derive(Clone)]
pub struct Modes {
    by_name: Arc<BTreeMap<Arc<str>, Arc<dyn Mode>>>,
}

impl Modes {
    /// A builder with no modes; most callers want [`Modes::default`].
    pub fn builder() -> ModesBuilder {
        ModesBuilder { by_name: BTreeMap::new() }
    }

    /// The registered name and mode for `name`, or INVALID_ARGUMENT listing
    /// the available ones.
    pub fn get(&self, name: &str) -> Result<(Arc<str>, Arc<dyn Mode>), Error> {
        self.by_name
            .get_key_value(name)
            .map(|(name, mode)| (name.clone(), mode.clone()))
            .ok_or_else(|| Error::UnknownMode { mode: name.to_owned(), available: self.names().join(", ") })
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(|name| &**name).collect()
    }
}

impl Default for Modes {
    /// The built-in modes: `relay`.
    fn default() -> Self {
        Modes::builder().register("relay", super::Relay).build()
    }
}

impl fmt::Debug for Modes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// Builds a [`Modes`].
pub struct ModesBuilder {
    by_name: BTreeMap<Arc<str>, Arc<dyn Mode>>,
}

impl ModesBuilder {
    /// Adds (or replaces) the mode called `name`.
    pub fn register(mut self, name: &str, mode: impl Mode) -> Self {
        self.by_name.insert(name.into(), Arc::new(mode));
        self
    }

    /// The finished registry.
    pub fn build(self) -> Modes {
        Modes { by_name: Arc::new(self.by_name) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Relay;

    /// Catches an unknown-mode error that does not list the available modes.
    #[test]
    fn unknown_mode_lists_available() {
        let modes = Modes::builder().register("relay", Relay).register("arena", Relay).build();
        let err = modes.get("chess").err();
        assert_eq!(err, Some(Error::UnknownMode { mode: "chess".into(), available: "arena, relay".into() }));
        assert_eq!(&*modes.get("relay").map(|(name, _)| name).unwrap_or_else(|_| "".into()), "relay");
    }
}
