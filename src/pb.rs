//! The generated protobuf types and gRPC stubs of `proto/gamesession/v1`.
//!
//! Clients (tests, tools, other Rust services) use the generated clients here.
//! The server serves `SessionService` from the generated server and
//! `PlayerService` from [`play_server`], a hand-declared twin whose responses
//! are pre-encoded (see `api::codec`).

#![allow(missing_docs)]

tonic::include_proto!("gamesession.v1");
// serde for every message, in the canonical proto3 JSON mapping.
include!(concat!(env!("OUT_DIR"), "/gamesession.v1.serde.rs"));

/// The encoded descriptor set of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gamesession_descriptor.bin"));

/// `PlayerService` with pre-encoded responses (built by `build.rs` with
/// tonic-build's `manual` module).
#[allow(clippy::default_constructed_unit_structs)]
pub mod play_server {
    include!(concat!(env!("OUT_DIR"), "/gamesession.v1.PlayerService.rs"));
}
