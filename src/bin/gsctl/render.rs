//! How gsctl prints: aligned tables for people, JSON lines for scripts.
//!
//! Everything gsctl prints that a server or another player chose (payloads,
//! ids, names, labels, end messages, error texts) goes through [`printable`]
//! or, as JSON, through [`json`]'s escaping: a relayed payload must not be
//! able to forge a line, clear the screen or retitle the terminal.

use std::borrow::Cow;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use game_session::pb::{self, server_message, watch_sessions_response};
use serde::Serialize;

/// Printing, in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

type Result = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

const SESSION_COLUMNS: [&str; 8] = ["SESSION", "MODE", "PLAYERS", "OPEN", "LOCKED", "SEQUENCE", "AGE", "LABELS"];

impl Output {
    /// CreateSession's answer.
    pub fn created(&self, response: &pb::CreateSessionResponse) -> Result {
        if self.json {
            return json(response);
        }
        let session = response.session.clone().unwrap_or_default();
        println!("{} {}", if response.created { "created" } else { "existing" }, printable(&session.session_id));
        Ok(())
    }

    /// One session with its players.
    pub fn session(&self, session: &pb::SessionInfo) -> Result {
        if self.json {
            return json(session);
        }
        table(&SESSION_COLUMNS, &[session_row(session)]);
        if !session.players.is_empty() {
            println!();
            let rows: Vec<Vec<String>> = session
                .players
                .iter()
                .map(|p| {
                    let seat = session.seats.iter().find(|s| s.player_id == p.player_id);
                    let state = seat.map(|s| pb::SeatState::try_from(s.state).unwrap_or_default());
                    vec![
                        printable(&p.player_id).into_owned(),
                        printable(&p.display_name).into_owned(),
                        match (state, seat) {
                            (Some(pb::SeatState::Held), Some(seat)) => {
                                let left = (seat.held_until_unix_micros - unix_micros()).max(0) as u64;
                                format!("held ({} left)", fmt(Duration::from_micros(left)))
                            }
                            (Some(state), _) => state.as_str_name().trim_start_matches("SEAT_STATE_").to_lowercase(),
                            (None, _) => "-".into(),
                        },
                        seat.map_or("-".into(), |s| age(s.joined_unix_micros)),
                        seat.filter(|s| s.rtt_micros > 0)
                            .map_or("-".into(), |s| fmt(Duration::from_micros(s.rtt_micros as u64))),
                        seat.map_or("-".into(), |s| format!("{} ({} B)", s.queued_messages, s.queued_bytes)),
                        seat.map_or("-".into(), |s| s.dropped_messages.to_string()),
                        pairs(&p.metadata),
                    ]
                })
                .collect();
            table(&["PLAYER", "NAME", "SEAT", "JOINED", "RTT", "QUEUED", "DROPPED", "METADATA"], &rows);
        }
        if let Some(end) = &session.end {
            let reason = pb::SessionEndReason::try_from(end.reason).unwrap_or_default();
            let reason = reason.as_str_name().trim_start_matches("SESSION_END_REASON_");
            println!();
            println!("ended ({reason}, {} ago): {}", age(end.ended_unix_micros), printable(&end.message));
            if !end.result.is_empty() {
                println!("result: {}", printable(&String::from_utf8_lossy(&end.result)));
            }
        }
        Ok(())
    }

    /// A list of sessions.
    pub fn sessions(&self, sessions: &[pb::SessionInfo]) -> Result {
        if self.json {
            return json(&pb::ListSessionsResponse { sessions: sessions.to_vec(), next_page_token: String::new() });
        }
        table(&SESSION_COLUMNS, &sessions.iter().map(session_row).collect::<Vec<_>>());
        Ok(())
    }

    /// An answer with nothing to show but that it was done: `what`.
    pub fn done(&self, what: &str, response: &impl Serialize) -> Result {
        if self.json {
            return json(response);
        }
        println!("{}", printable(what));
        Ok(())
    }

    /// An answer that is a sequence number.
    pub fn sequence(&self, verb: &str, response: &impl Serialize, sequence: u64) -> Result {
        if self.json {
            return json(response);
        }
        println!("{verb} at sequence {sequence}");
        Ok(())
    }

    /// The header of the watch table.
    pub fn watch_header(&self) {
        if !self.json {
            watch_line(["REVISION", "TIME", "EVENT", "SESSION", "MODE", "PLAYERS", "END", "LABELS"].map(str::to_owned));
        }
    }

    /// One WatchSessions message.
    pub fn watch(&self, message: &pb::WatchSessionsResponse) -> Result {
        use watch_sessions_response::Kind;
        if self.json {
            return json(message);
        }
        let row = |revision: String, time: String, event: &str, s: &pb::SessionInfo| {
            // An ended session's reason, lower case (`completed`).
            let end = s.end.as_ref().map_or_else(
                || "-".to_owned(),
                |end| {
                    let reason = pb::SessionEndReason::try_from(end.reason).unwrap_or_default();
                    reason.as_str_name().trim_start_matches("SESSION_END_REASON_").to_lowercase()
                },
            );
            watch_line([
                revision,
                time,
                event.to_owned(),
                printable(&s.session_id).into_owned(),
                printable(&s.mode).into_owned(),
                format!("{}/{}", s.player_count, s.max_players),
                end,
                pairs(&s.labels),
            ])
        };
        match &message.kind {
            Some(Kind::Initial(session)) => row("-".into(), "-".into(), "EXISTING", session),
            Some(Kind::Synced(synced)) => println!("-- synced at revision {} --", synced.revision),
            Some(Kind::Event(event)) => {
                let kind = pb::SessionEventKind::try_from(event.kind).unwrap_or_default();
                let name = kind.as_str_name().trim_start_matches("SESSION_EVENT_KIND_");
                let session = event.session.clone().unwrap_or_default();
                row(event.revision.to_string(), timestamp(event.unix_micros), name, &session);
            }
            None => {}
        }
        flush();
        Ok(())
    }

    /// One message of a Play stream.
    pub fn play(&self, message: &pb::ServerMessage) -> Result {
        use server_message::Kind;
        if self.json {
            return json(message);
        }
        match &message.kind {
            Some(Kind::Welcome(w)) => {
                let me = printable(w.player.as_ref().map(|p| p.player_id.as_str()).unwrap_or_default());
                let others: Vec<Cow<'_, str>> = w.players.iter().map(|p| printable(&p.player_id)).collect();
                let present = if others.is_empty() { "nobody else".to_owned() } else { others.join(", ") };
                let (session, mode) = (printable(&w.session_id), printable(&w.mode));
                println!("#{} joined session {session} ({mode}) as {me}; present: {present}", w.sequence);
            }
            Some(Kind::Resumed(r)) => {
                let me = printable(r.player.as_ref().map(|p| p.player_id.as_str()).unwrap_or_default());
                println!(
                    "#{} resumed session {} as {me} after #{}: {} missed message(s) follow",
                    r.sequence,
                    printable(&r.session_id),
                    r.last_sequence,
                    r.replayed
                );
            }
            Some(Kind::Relayed(r)) => println!(
                "#{} {}{} ({} ago): {}",
                r.sequence,
                printable(&r.sender_id),
                audience(r.targeted),
                age(r.server_time_unix_micros),
                printable(&String::from_utf8_lossy(&r.payload))
            ),
            Some(Kind::Presence(p)) => {
                let kind = pb::PresenceKind::try_from(p.kind).unwrap_or_default();
                let who = printable(p.player.as_ref().map(|p| p.player_id.as_str()).unwrap_or_default());
                let what = kind.as_str_name().trim_start_matches("PRESENCE_KIND_").to_lowercase();
                let detail = if p.detail.is_empty() { String::new() } else { format!(" ({})", printable(&p.detail)) };
                println!("#{} * {who} {what}{detail}", p.sequence);
            }
            Some(Kind::Backend(b)) => println!(
                "#{} [backend]{} ({} ago): {}",
                b.sequence,
                audience(b.targeted),
                age(b.server_time_unix_micros),
                printable(&String::from_utf8_lossy(&b.payload))
            ),
            Some(Kind::State(s)) => println!(
                "tick {} {} ({} bytes, inputs to #{}{}): {}",
                s.tick,
                if s.full { "state" } else { "delta" },
                s.payload.len(),
                s.last_input_sequence,
                if s.deltas_dropped > 0 {
                    format!(", {} deltas dropped before it", s.deltas_dropped)
                } else {
                    String::new()
                },
                printable(&String::from_utf8_lossy(&s.payload))
            ),
            Some(Kind::TickMessage(m)) => println!(
                "tick {} message (inputs to #{}): {}",
                m.tick,
                m.last_input_sequence,
                printable(&String::from_utf8_lossy(&m.payload))
            ),
            Some(Kind::Pong(p)) => println!(
                "pong: round trip {}",
                fmt(Duration::from_micros((unix_micros() - p.client_time).max(0) as u64))
            ),
            Some(Kind::Error(e)) => eprintln!("error {} on {}: {}", e.code, printable(&e.field), printable(&e.message)),
            Some(Kind::SessionEnded(e)) => {
                let reason = pb::SessionEndReason::try_from(e.reason).unwrap_or_default();
                println!(
                    "#{} session ended ({}): {}",
                    e.sequence,
                    reason.as_str_name().trim_start_matches("SESSION_END_REASON_"),
                    printable(&e.message)
                );
            }
            Some(Kind::Dropped(d)) => {
                println!("({} droppable messages dropped, the last #{})", d.count, d.last_sequence)
            }
            None => {}
        }
        flush();
        Ok(())
    }
}

fn session_row(s: &pb::SessionInfo) -> Vec<String> {
    vec![
        printable(&s.session_id).into_owned(),
        printable(&s.mode).into_owned(),
        format!("{}/{}", s.player_count, s.max_players),
        if s.open_to_join_or_create { "yes" } else { "no" }.to_owned(),
        if s.locked { "yes" } else { "no" }.to_owned(),
        s.sequence.to_string(),
        age(s.created_unix_micros),
        pairs(&s.labels),
    ]
}

/// `k=v,k=v`, sorted.
fn pairs(map: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = map.iter().map(|(k, v)| format!("{}={}", printable(k), printable(v))).collect();
    pairs.sort();
    pairs.join(",")
}

/// The wall clock in microseconds since the Unix epoch.
pub fn unix_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// How long ago a server timestamp was (as this machine's clock sees it).
fn age(unix_micros_then: i64) -> String {
    fmt(Duration::from_micros((unix_micros() - unix_micros_then).max(0) as u64))
}

fn fmt(d: Duration) -> String {
    match d.as_micros() {
        us if us < 1_000 => format!("{us}µs"),
        us if us < 1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.1}s", d.as_secs_f64()),
    }
}

fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let pad = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    println!("{}", pad(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>()));
    for row in rows {
        println!("{}", pad(row));
    }
}

/// A row of the watch view: fixed widths, since rows come one at a time.
fn watch_line([revision, time, event, session, mode, players, end, labels]: [String; 8]) {
    println!("{revision:<8}  {time:<24}  {event:<8}  {session:<32}  {mode:<8}  {players:<7}  {end:<16}  {labels}");
}

/// A time in microseconds since the Unix epoch, as RFC 3339 UTC to the
/// millisecond.
fn timestamp(unix_micros: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_micros(unix_micros.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// One JSON line. serde_json escapes C0 controls but writes DEL, C1
/// controls and bidirectional overrides raw; those can only stand inside a
/// JSON string, where `\uXXXX` means the same, so they are escaped too.
fn json(value: &impl Serialize) -> Result {
    let text = serde_json::to_string(value)?;
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if unprintable(c) {
            line.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            line.push(c);
        }
    }
    println!("{line}");
    flush();
    Ok(())
}

/// `text` with every character a terminal would act on rather than show
/// written as an escape: `\n`, `\r` and `\t`, and `\u{1b}` style for the
/// rest. Emoji, accents and other scripts pass unchanged. Backslashes are
/// left alone, so a sender can spell an escape but never make one.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unprintable) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unprintable(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// What `play` shows after a message's sender when the sender named its
/// recipients, so that a message for some players only does not read as
/// one everybody saw.
fn audience(targeted: bool) -> &'static str {
    if targeted { ", to some players only" } else { "" }
}

/// Control characters (C0, DEL, C1: ESC starts ANSI and OSC sequences),
/// the bidirectional overrides, isolates and marks (they make text read
/// other than it is), and the line and paragraph separators (some
/// terminals and viewers break lines on them).
fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{2028}' | '\u{2029}'
        )
}

fn flush() {
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a control sequence printed raw (a forged line, a cleared
    /// screen, a new terminal title) or honest text altered.
    #[test]
    fn printable_escapes_what_a_terminal_would_act_on() {
        let cases = [
            ("plain text", "plain text"),
            ("Zoë 🎮 игрок 玩家 👩‍👩‍👧", "Zoë 🎮 игрок 玩家 👩‍👩‍👧"),
            ("a\nsession ended: reconnect", "a\\nsession ended: reconnect"),
            ("\r\t", "\\r\\t"),
            ("\u{1b}[2J\u{1b}]0;evil\u{7}", "\\u{1b}[2J\\u{1b}]0;evil\\u{7}"),
            ("\u{9b}31m\u{7f}", "\\u{9b}31m\\u{7f}"),
            ("\u{202e}gnp.exe", "\\u{202e}gnp.exe"),
            ("x\u{2066}y\u{2069}\u{200f}\u{2028}", "x\\u{2066}y\\u{2069}\\u{200f}\\u{2028}"),
            ("a\\u{1b}b", "a\\u{1b}b"),
        ];
        for (raw, shown) in cases {
            assert_eq!(printable(raw), shown, "{raw:?}");
        }
        assert!(matches!(printable("no escapes"), Cow::Borrowed(_)), "nothing copied when nothing changes");
    }
}
