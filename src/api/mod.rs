//! The gRPC edge: decode, validate, call the session layer, encode. Besides
//! `pb`, the only place prost types appear.

pub mod codec;
pub mod convert;
pub mod player;
pub mod session;

pub use player::PlayerApi;
pub use session::SessionApi;
