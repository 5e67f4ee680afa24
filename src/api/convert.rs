//! Protobuf <-> domain: validation of what clients send, and encoding of what
//! the session layer emits. The only place besides `pb` where prost types meet
//! domain types.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::ResumeKey;
use crate::config::{Config, MAX_ID_LEN};
use crate::error::Error;
use crate::pb;
use crate::session::{
    Direct, EndReason, Event, Inbound, InputMessage, NewPlayer, PlayerId, PlayerInfo, PlayerMessage, PresenceKind,
    RelayMessage, SeatProof, SessionFilter, SessionInfo, StateKind,
};

/// Longest label or metadata key, in bytes.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label or metadata value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 255;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Longest EndSession message, in bytes.
pub const MAX_END_MESSAGE_LEN: usize = 1024;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Largest session config, in bytes.
pub const MAX_CONFIG_LEN: usize = 64 * 1024;

/// The request limits the API enforces, from the [`Config`].
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_targets: usize,
    pub max_labels: usize,
    pub max_watchers: usize,
    pub max_watchers_per_connection: usize,
}

impl Limits {
    /// The limits of `config`.
    pub fn new(config: &Config) -> Self {
        Limits {
            max_payload_bytes: config.max_payload_bytes,
            max_targets: config.max_targets,
            max_labels: config.max_labels,
            max_watchers: config.max_watchers,
            max_watchers_per_connection: config.max_watchers_per_connection,
        }
    }
}

/// A session or player id: 1-64 characters of `[A-Za-z0-9._:-]`.
pub fn check_id(field: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::invalid(field, format!("longer than {MAX_ID_LEN} characters")));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
        return Err(Error::invalid(field, format!("character {c:?} not allowed; use [A-Za-z0-9._:-]")));
    }
    Ok(())
}

/// Free text a client chose (a display name, a label or metadata value, an
/// end message, a mode): any Unicode letter, digit, punctuation, symbol or
/// emoji, but no control character (C0, DEL, C1: newlines, tabs, ESC) and
/// no bidirectional override, isolate or mark. Such text is shown to other
/// players and printed by operators' tools, where a control sequence could
/// forge lines, clear a terminal or retitle it, and a bidi override could
/// make one string read as another.
pub fn check_text(field: &str, text: &str) -> Result<(), Error> {
    match text.chars().find(|&c| c.is_control() || is_bidi_control(c)) {
        Some(c) => Err(Error::invalid(
            field,
            format!("character U+{:04X} not allowed: no control or bidirectional-override characters", c as u32),
        )),
        None => Ok(()),
    }
}

/// A message for players (an end's message, a kick's reason): at most
/// [`MAX_END_MESSAGE_LEN`] bytes of text that [`check_text`] lets through.
pub fn check_message(field: &str, text: &str) -> Result<(), Error> {
    if text.len() > MAX_END_MESSAGE_LEN {
        return Err(Error::invalid(field, format!("longer than {MAX_END_MESSAGE_LEN} bytes")));
    }
    check_text(field, text)
}

/// The characters that reorder or redirect how text around them is shown:
/// embeddings and overrides (U+202A-U+202E), isolates (U+2066-U+2069) and
/// the directional marks (U+200E, U+200F, U+061C).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Labels or metadata: at most `max` entries, keys 1-63 characters of
/// `[A-Za-z0-9._/-]`, values at most 255 bytes of [`check_text`] text.
pub fn check_labels(
    field: &str,
    labels: HashMap<String, String>,
    max: usize,
) -> Result<BTreeMap<String, String>, Error> {
    if labels.len() > max {
        return Err(Error::invalid(field, format!("{} entries; at most {max} allowed", labels.len())));
    }
    for (key, value) in &labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY_LEN {
            return Err(Error::invalid(field, format!("key {key:?} must be 1-{MAX_LABEL_KEY_LEN} characters")));
        }
        if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))) {
            return Err(Error::invalid(
                format!("{field}[{key:?}]"),
                format!("character {c:?} not allowed in a key; use [A-Za-z0-9._/-]"),
            ));
        }
        if value.len() > MAX_LABEL_VALUE_LEN {
            return Err(Error::invalid(
                format!("{field}[{key:?}]"),
                format!("value of {} bytes; at most {MAX_LABEL_VALUE_LEN} allowed", value.len()),
            ));
        }
        check_text(&format!("{field}[{key:?}]"), value)?;
    }
    Ok(labels.into_iter().collect())
}

/// The version byte that starts every page token; a token of another
/// version is refused, so that the encoding can change later.
const PAGE_TOKEN_VERSION: u8 = 1;
/// Mixed into a page token's checksum, so that a token of some other API
/// (or of a later encoding) does not pass for ours by accident.
const PAGE_TOKEN_DOMAIN: &[u8] = b"game-session ListSessions page token";

/// The ListSessions page token that resumes after the session `last_id`:
/// base64url (no padding) of the version byte, the id, and a 4-byte
/// checksum of both. It encodes a position, not a pointer into this
/// process, so any replica can decode it later; the checksum is unkeyed
/// (nothing in it is secret) and only tells a made-up, cut or corrupted
/// token from one the server wrote.
pub fn page_token(last_id: &str) -> String {
    use base64::Engine as _;
    let mut bytes = Vec::with_capacity(1 + last_id.len() + 4);
    bytes.push(PAGE_TOKEN_VERSION);
    bytes.extend_from_slice(last_id.as_bytes());
    let sum = page_token_checksum(&bytes);
    bytes.extend_from_slice(&sum);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The session id a [`page_token`] resumes after; `INVALID_ARGUMENT` on
/// `page_token` for anything the server did not write.
pub fn page_token_position(token: &str) -> Result<String, Error> {
    use base64::Engine as _;
    let invalid = || Error::invalid("page_token", "not a token from a previous ListSessions response");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    // Version, at least one id byte, checksum.
    if bytes.len() < 1 + 1 + 4 {
        return Err(invalid());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 4);
    if body[0] != PAGE_TOKEN_VERSION || page_token_checksum(body) != sum {
        return Err(invalid());
    }
    let id = std::str::from_utf8(&body[1..]).map_err(|_| invalid())?;
    check_id("page_token", id).map_err(|_| invalid())?;
    Ok(id.to_owned())
}

/// The low 32 bits of FNV-1a over the domain and `body`. Each step of
/// FNV-1a is a bijection on those bits, so any change to one byte of the
/// body always changes the checksum.
fn page_token_checksum(body: &[u8]) -> [u8; 4] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in PAGE_TOKEN_DOMAIN.iter().chain(body) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash as u32).to_be_bytes()
}

/// A payload within the size limit.
pub fn check_payload(field: &str, payload: &Bytes, limits: &Limits) -> Result<(), Error> {
    if payload.len() > limits.max_payload_bytes {
        return Err(Error::invalid(
            field,
            format!("{} bytes exceeds the limit of {} bytes", payload.len(), limits.max_payload_bytes),
        ));
    }
    Ok(())
}

/// Target ids: each valid, at most `max_targets`, duplicates removed.
pub fn check_targets(field: &str, targets: Vec<String>, limits: &Limits) -> Result<Vec<PlayerId>, Error> {
    if targets.len() > limits.max_targets {
        return Err(Error::invalid(
            field,
            format!("{} targets; at most {} allowed", targets.len(), limits.max_targets),
        ));
    }
    let mut ids: Vec<PlayerId> = Vec::with_capacity(targets.len());
    for (i, target) in targets.into_iter().enumerate() {
        check_id(&format!("{field}[{i}]"), &target)?;
        if !ids.iter().any(|id| **id == *target) {
            ids.push(target.into());
        }
    }
    Ok(ids)
}

/// A join's player fields.
pub fn new_player(join: pb::Join, limits: &Limits) -> Result<NewPlayer, Error> {
    if !join.player_id.is_empty() {
        check_id("join.player_id", &join.player_id)?;
    }
    if join.display_name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(Error::invalid("join.display_name", format!("longer than {MAX_DISPLAY_NAME_CHARS} characters")));
    }
    check_text("join.display_name", &join.display_name)?;
    let metadata = check_labels("join.metadata", join.metadata, limits.max_labels)?;
    Ok(NewPlayer { id: join.player_id, display_name: join.display_name, metadata, proof: SeatProof::None })
}

/// One message of a joined player's stream. A malformed one becomes
/// [`Inbound::Invalid`]: a non-fatal error for the player alone.
pub fn inbound(message: pb::ClientMessage, limits: &Limits) -> Inbound {
    use pb::client_message::Kind;
    match message.kind {
        Some(Kind::Relay(relay)) => match relay_message(relay, limits) {
            Ok(relay) => Inbound::Message(PlayerMessage::Relay(relay)),
            Err(err) => Inbound::Invalid(err),
        },
        Some(Kind::Input(input)) => match check_payload("input.payload", &input.payload, limits) {
            // Copied out of the decode buffer, as a relay's payload is.
            Ok(()) => Inbound::Message(PlayerMessage::Input(InputMessage {
                sequence: input.sequence,
                payload: Bytes::copy_from_slice(&input.payload),
            })),
            Err(err) => Inbound::Invalid(err),
        },
        Some(Kind::Ping(ping)) => Inbound::Ping { client_time: ping.client_time, rtt_micros: ping.rtt_micros },
        Some(Kind::Leave(_)) => Inbound::Leave,
        Some(Kind::Join(_)) => Inbound::Invalid(Error::precondition("join", "this stream has already joined")),
        Some(Kind::Resume(_)) => Inbound::Invalid(Error::precondition("resume", "this stream has already joined")),
        None => Inbound::Invalid(Error::invalid("kind", "empty message: set one of relay, input, ping or leave")),
    }
}

fn relay_message(relay: pb::Relay, limits: &Limits) -> Result<RelayMessage, Error> {
    check_payload("relay.payload", &relay.payload, limits)?;
    let targets = check_targets("relay.targets", relay.targets, limits)?;
    // Decoded, the payload is a slice of the stream's decode buffer, which
    // is as large as the largest message the stream has had: queued for a
    // slow player, it would pin all of that. Its own copy pins its size.
    let payload = Bytes::copy_from_slice(&relay.payload);
    Ok(RelayMessage { payload, targets, droppable: relay.droppable })
}

/// A ListSessions / WatchSessions filter.
pub fn filter(filter: Option<pb::SessionFilter>, limits: &Limits) -> Result<SessionFilter, Error> {
    let Some(filter) = filter else { return Ok(SessionFilter::default()) };
    check_text("filter.mode", &filter.mode)?;
    Ok(SessionFilter {
        mode: (!filter.mode.is_empty()).then_some(filter.mode),
        labels: check_labels("filter.labels", filter.labels, limits.max_labels)?,
        has_open_seats: filter.has_open_seats,
        locked: filter.locked,
    })
}

/// A player, for the wire.
pub fn player(player: &PlayerInfo) -> pb::PlayerInfo {
    pb::PlayerInfo {
        player_id: player.id.to_string(),
        display_name: player.display_name.clone(),
        metadata: player.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

fn players(players: &[Arc<PlayerInfo>]) -> Vec<pb::PlayerInfo> {
    players.iter().map(|p| player(p)).collect()
}

/// A session, for the wire.
pub fn session(session: &SessionInfo) -> pb::SessionInfo {
    pb::SessionInfo {
        session_id: session.id.to_string(),
        mode: session.mode.to_string(),
        max_players: session.max_players,
        player_count: session.player_count,
        labels: session.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        open_to_join_or_create: session.open_to_join_or_create,
        locked: session.locked,
        created_unix_micros: session.created_unix_micros,
        sequence: session.sequence,
        players: players(&session.players),
        seats: session
            .seats
            .iter()
            .map(|seat| pb::SeatStatus {
                player_id: seat.player.to_string(),
                state: if seat.held_until_unix_micros.is_some() { pb::SeatState::Held } else { pb::SeatState::Live }
                    as i32,
                held_until_unix_micros: seat.held_until_unix_micros.unwrap_or(0),
                joined_unix_micros: seat.joined_unix_micros,
                rtt_micros: seat.rtt_micros,
                queued_messages: u32::try_from(seat.queued_messages).unwrap_or(u32::MAX),
                queued_bytes: seat.queued_bytes as u64,
                dropped_messages: seat.dropped,
            })
            .collect(),
        end: session.end.as_ref().map(|end| pb::SessionEnd {
            reason: end_reason(end.reason) as i32,
            message: end.message.clone(),
            result: end.result.clone().unwrap_or_default(),
            ended_unix_micros: end.ended_unix_micros,
        }),
    }
}

/// An end reason, for the wire.
pub fn end_reason(reason: EndReason) -> pb::SessionEndReason {
    match reason {
        EndReason::EndedByBackend => pb::SessionEndReason::EndedByBackend,
        EndReason::Idle => pb::SessionEndReason::Idle,
        EndReason::ServerShutdown => pb::SessionEndReason::ServerShutdown,
        EndReason::InternalError => pb::SessionEndReason::InternalError,
        EndReason::Completed => pb::SessionEndReason::Completed,
    }
}

/// A history event, for the wire.
pub fn event(event: &Event) -> pb::ServerMessage {
    use pb::server_message::Kind;
    let kind = match event {
        Event::Relayed { sequence, sender, payload, server_time_unix_micros, droppable, targeted } => {
            Kind::Relayed(pb::Relayed {
                sequence: *sequence,
                sender_id: String::from(&**sender),
                payload: payload.clone(),
                server_time_unix_micros: *server_time_unix_micros,
                droppable: *droppable,
                targeted: *targeted,
            })
        }
        Event::Presence { sequence, player: who, kind, detail } => Kind::Presence(pb::Presence {
            sequence: *sequence,
            player: Some(player(who)),
            kind: match kind {
                PresenceKind::Joined => pb::PresenceKind::Joined,
                PresenceKind::Left => pb::PresenceKind::Left,
                PresenceKind::Disconnected => pb::PresenceKind::Disconnected,
                PresenceKind::Removed => pb::PresenceKind::Removed,
                PresenceKind::Reconnected => pb::PresenceKind::Reconnected,
                PresenceKind::Held => pb::PresenceKind::Held,
            } as i32,
            detail: (*detail).to_owned(),
        }),
        Event::Backend { sequence, payload, server_time_unix_micros, targeted } => Kind::Backend(pb::BackendMessage {
            sequence: *sequence,
            payload: payload.clone(),
            server_time_unix_micros: *server_time_unix_micros,
            targeted: *targeted,
        }),
        Event::Ended { sequence, reason, message } => Kind::SessionEnded(pb::SessionEnded {
            sequence: *sequence,
            reason: end_reason(*reason) as i32,
            message: message.clone(),
        }),
    };
    pb::ServerMessage { kind: Some(kind) }
}

/// A message for one player, for the wire; a welcome tells the edge's
/// `limits` along with the session's, and a welcome or a `resumed` carries
/// a resume token signed with `resume`.
pub fn direct(message: &Direct, limits: &Limits, resume: &ResumeKey) -> pb::ServerMessage {
    use pb::server_message::Kind;
    let kind = match message {
        Direct::Resumed(resumed) => Kind::Resumed(pb::Resumed {
            session_id: resumed.session_id.to_string(),
            player: Some(player(&resumed.player)),
            last_sequence: resumed.last_sequence,
            replayed: resumed.replayed,
            sequence: resumed.sequence,
            resume_token: resume.sign(&resumed.session_id, &resumed.player.id, resumed.resume_generation),
        }),
        Direct::Welcome(welcome) => Kind::Welcome(pb::Welcome {
            session_id: welcome.session_id.to_string(),
            player: Some(player(&welcome.player)),
            players: players(&welcome.players),
            sequence: welcome.sequence,
            mode: welcome.mode.to_string(),
            max_players: welcome.max_players,
            limits: Some(pb::ClientLimits {
                max_payload_bytes: u32::try_from(limits.max_payload_bytes).unwrap_or(u32::MAX),
                max_targets: u32::try_from(limits.max_targets).unwrap_or(u32::MAX),
                messages_per_second: welcome.rates.messages_per_second,
                message_burst: welcome.rates.message_burst,
                bytes_per_second: welcome.rates.bytes_per_second,
                byte_burst: welcome.rates.byte_burst,
                flood_grace_millis: u64::try_from(welcome.rates.flood_grace.as_millis()).unwrap_or(u64::MAX),
                tick_hz: welcome.tick_rate.map_or(0, |rate| rate.get()),
                max_inputs_per_tick: u32::try_from(welcome.max_inputs_per_tick).unwrap_or(u32::MAX),
            }),
            resume_token: welcome
                .resume_generation
                .map(|generation| resume.sign(&welcome.session_id, &welcome.player.id, generation))
                .unwrap_or_default(),
        }),
        Direct::Pong { client_time, server_time_unix_micros } => {
            Kind::Pong(pb::Pong { client_time: *client_time, server_time_unix_micros: *server_time_unix_micros })
        }
        Direct::Error { error, unanswered } => Kind::Error(pb::Error {
            code: super::status::code(error) as i32,
            message: match unanswered {
                0 => error.to_string(),
                n => format!("{error} ({n} more refused message(s) were not answered)"),
            },
            field: error.field().to_owned(),
        }),
        Direct::Dropped { count, last_sequence } => {
            Kind::Dropped(pb::MessagesDropped { count: *count, last_sequence: *last_sequence })
        }
        Direct::State(state) if state.kind == StateKind::Message => Kind::TickMessage(pb::TickMessage {
            tick: state.tick,
            payload: state.payload.clone(),
            last_input_sequence: state.last_input_sequence,
        }),
        Direct::State(state) => Kind::State(pb::State {
            tick: state.tick,
            payload: state.payload.clone(),
            full: state.kind == StateKind::Full,
            last_input_sequence: state.last_input_sequence,
            deltas_dropped: state.deltas_dropped,
        }),
    };
    pb::ServerMessage { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a control or bidirectional character let through, or honest
    /// text (emoji, other scripts, joiners) refused.
    #[test]
    fn check_text_refuses_controls_and_bidi_only() {
        for ok in ["", "Zoë", "игрок 玩家 ضيف", "🎮 👩\u{200D}👩\u{200D}👧", "«¡hola!» ✓ ~$%"] {
            assert_eq!(check_text("f", ok), Ok(()), "{ok:?}");
        }
        for (bad, code) in [
            ("a\nb", 0x0A),
            ("\t", 0x09),
            ("\u{1b}[2J", 0x1B),
            ("\u{7f}", 0x7F),
            ("\u{9b}", 0x9B),
            ("\u{202A}", 0x202A),
            ("\u{202E}", 0x202E),
            ("\u{2066}", 0x2066),
            ("\u{2069}", 0x2069),
            ("\u{200E}", 0x200E),
            ("\u{200F}", 0x200F),
            ("\u{061C}", 0x061C),
        ] {
            let reason = format!("character U+{code:04X} not allowed: no control or bidirectional-override characters");
            assert_eq!(check_text("f", bad), Err(Error::invalid("f", reason)), "{bad:?}");
        }
    }

    /// Catches a page token that does not round-trip, or a tampered one
    /// (another version, a cut, a changed id, a changed checksum) accepted.
    #[test]
    fn page_tokens_round_trip_and_refuse_tampering() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = page_token("0123abcd");
        assert_eq!(page_token_position(&token), Ok("0123abcd".to_owned()));
        let bytes = b64.decode(&token).unwrap_or_default();
        let invalid = Err(Error::invalid("page_token", "not a token from a previous ListSessions response"));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut changed = bytes.clone();
                changed[i] ^= 1 << bit;
                assert_eq!(page_token_position(&b64.encode(&changed)), invalid, "byte {i} bit {bit}");
            }
            assert_eq!(page_token_position(&b64.encode(&bytes[..i])), invalid, "cut to {i} bytes");
        }
        let mut bad_id = vec![PAGE_TOKEN_VERSION];
        bad_id.extend_from_slice(b"bad id");
        let sum = page_token_checksum(&bad_id);
        bad_id.extend_from_slice(&sum);
        assert_eq!(page_token_position(&b64.encode(&bad_id)), invalid, "a checksummed token with no valid id");
    }
}
