//! Compiles `proto/` with protox (pure Rust, no system `protoc`), generates
//! the prost messages and tonic clients/servers, and writes the descriptor set
//! that server reflection serves.
//!
//! `PlayerService.Play` gets a second, hand-declared server (tonic-build's
//! `manual` module) whose response type is an already-encoded message: the
//! fan-out encodes a message once and every recipient's stream writes the
//! same bytes (see `src/api/codec.rs`).

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true).open_files([
        "gamesession/v1/common.proto",
        "gamesession/v1/player.proto",
        "gamesession/v1/session.proto",
    ])?;
    // Source info keeps the proto comments, so `grpcurl describe` shows them.
    let descriptor_set = compiler.encode_file_descriptor_set();
    fs::write(out_dir.join("gamesession_descriptor.bin"), &descriptor_set)?;
    // Canonical proto3 JSON (serde) for the messages, as grpcurl prints them.
    pbjson_build::Builder::new().register_descriptors(&descriptor_set)?.build(&[".gamesession.v1"])?;
    let fds = compiler.file_descriptor_set();

    tonic_prost_build::configure()
        // Payloads are `bytes::Bytes`, so one inbound payload is shared by all
        // of its recipients instead of copied.
        .bytes(".")
        .compile_fds(fds)?;

    let play = tonic_build::manual::Service::builder()
        .name("PlayerService")
        .package("gamesession.v1")
        .comment("The player-facing API, served with pre-encoded responses.")
        .method(
            tonic_build::manual::Method::builder()
                .name("play")
                .route_name("Play")
                .comment("One bidirectional stream per player connection.")
                .input_type("crate::pb::ClientMessage")
                .output_type("crate::api::codec::Outbound")
                .codec_path("crate::api::codec::PlayCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    tonic_build::manual::Builder::new().build_client(false).compile(&[play]);
    Ok(())
}
