//! Arbitrary bytes as a message on a Play stream: decoded as the server
//! decodes it, validated as a join (the first message) and as any later
//! message, and any refusal encoded as the error reply the player would get.
//! Nothing a client sends may panic, and whatever validation lets through
//! must hold to the limits.
#![no_main]

use std::sync::LazyLock;

use game_session::api::convert::{self, Limits};
use game_session::auth::ResumeKey;
use game_session::session::{Direct, Inbound, PlayerMessage};
use game_session::{Config, pb};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

static LIMITS: LazyLock<Limits> = LazyLock::new(|| Limits::new(&Config::for_tests()));
static RESUME_KEY: LazyLock<ResumeKey> =
    LazyLock::new(|| ResumeKey::new(&[7; 32]).unwrap_or_else(|e| panic!("a 32-byte key: {e}")));

fuzz_target!(|data: &[u8]| {
    let Ok(message) = pb::ClientMessage::decode(data) else { return };
    let limits = &*LIMITS;
    match &message.kind {
        Some(pb::client_message::Kind::Join(join)) => join_checks(join.clone(), limits),
        // Whatever a client sends as a resume token is refused unless this
        // key signed it.
        Some(pb::client_message::Kind::Resume(resume)) => {
            if let Err(err) = RESUME_KEY.verify(&resume.token) {
                error_reply(err);
            }
        }
        _ => {}
    }
    match convert::inbound(message, limits) {
        Inbound::Message(PlayerMessage::Relay(relay)) => {
            assert!(relay.payload.len() <= limits.max_payload_bytes, "an oversize payload accepted");
            assert!(relay.targets.len() <= limits.max_targets, "too many targets accepted");
            for (i, target) in relay.targets.iter().enumerate() {
                assert!(convert::check_id("t", target).is_ok(), "an invalid target accepted: {target:?}");
                assert!(!relay.targets[..i].contains(target), "a duplicate target kept: {target:?}");
            }
        }
        Inbound::Invalid(err) => error_reply(err),
        // PlayerMessage is non-exhaustive: kinds added later.
        Inbound::Message(_) | Inbound::Ping { .. } | Inbound::Leave => {}
    }
});

/// What `PlayerApi::join` checks of a stream's first message.
fn join_checks(join: pb::Join, limits: &Limits) {
    let target = match &join.target {
        Some(pb::join::Target::SessionId(id)) => convert::check_id("join.session_id", id),
        Some(pb::join::Target::Mode(mode)) => convert::check_text("join.mode", mode),
        None => Ok(()),
    };
    if let Err(err) = target {
        error_reply(err);
    }
    match convert::new_player(join, limits) {
        Ok(player) => {
            assert!(player.id.is_empty() || convert::check_id("id", &player.id).is_ok(), "an invalid player id");
            assert!(convert::check_text("name", &player.display_name).is_ok(), "a control character in a name");
            assert!(player.metadata.len() <= limits.max_labels, "too much metadata accepted");
            for value in player.metadata.values() {
                assert!(convert::check_text("value", value).is_ok(), "a control character in metadata");
            }
        }
        Err(err) => error_reply(err),
    }
}

/// Encodes a refusal as the player's error reply, which quotes the field
/// and the offending text.
fn error_reply(err: game_session::error::Error) {
    let reply = convert::direct(&Direct::Error { error: err, unanswered: 0 }, &LIMITS, &RESUME_KEY).encode_to_vec();
    assert!(pb::ServerMessage::decode(reply.as_slice()).is_ok(), "an error reply that does not decode");
}
