//! How gsctl prints: aligned tables for people, JSON lines for scripts.

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

const SESSION_COLUMNS: [&str; 7] = ["SESSION", "MODE", "PLAYERS", "OPEN", "SEQUENCE", "AGE", "LABELS"];

impl Output {
    /// CreateSession's answer.
    pub fn created(&self, response: &pb::CreateSessionResponse) -> Result {
        if self.json {
            return json(response);
        }
        let session = response.session.clone().unwrap_or_default();
        println!("{} {}", if response.created { "created" } else { "existing" }, session.session_id);
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
                .map(|p| vec![p.player_id.clone(), p.display_name.clone(), pairs(&p.metadata)])
                .collect();
            table(&["PLAYER", "NAME", "METADATA"], &rows);
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
            watch_line(["REVISION", "EVENT", "SESSION", "MODE", "PLAYERS", "LABELS"].map(str::to_owned));
        }
    }

    /// One WatchSessions message.
    pub fn watch(&self, message: &pb::WatchSessionsResponse) -> Result {
        use watch_sessions_response::Kind;
        if self.json {
            return json(message);
        }
        let row = |revision: String, event: &str, s: &pb::SessionInfo| {
            watch_line([
                revision,
                event.to_owned(),
                s.session_id.clone(),
                s.mode.clone(),
                format!("{}/{}", s.player_count, s.max_players),
                pairs(&s.labels),
            ])
        };
        match &message.kind {
            Some(Kind::Initial(session)) => row("-".into(), "EXISTING", session),
            Some(Kind::Synced(synced)) => println!("-- synced at revision {} --", synced.revision),
            Some(Kind::Event(event)) => {
                let kind = pb::SessionEventKind::try_from(event.kind).unwrap_or_default();
                let name = kind.as_str_name().trim_start_matches("SESSION_EVENT_KIND_");
                row(event.revision.to_string(), name, &event.session.clone().unwrap_or_default());
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
                let me = w.player.as_ref().map(|p| p.player_id.as_str()).unwrap_or_default();
                let others: Vec<&str> = w.players.iter().map(|p| p.player_id.as_str()).collect();
                let present = if others.is_empty() { "nobody else".to_owned() } else { others.join(", ") };
                println!("#{} joined session {} ({}) as {me}; present: {present}", w.sequence, w.session_id, w.mode);
            }
            Some(Kind::Relayed(r)) => println!(
                "#{} {} ({} ago): {}",
                r.sequence,
                r.sender_id,
                age(r.server_time_unix_micros),
                String::from_utf8_lossy(&r.payload)
            ),
            Some(Kind::Presence(p)) => {
                let kind = pb::PresenceKind::try_from(p.kind).unwrap_or_default();
                let who = p.player.as_ref().map(|p| p.player_id.as_str()).unwrap_or_default();
                let what = kind.as_str_name().trim_start_matches("PRESENCE_KIND_").to_lowercase();
                let detail = if p.detail.is_empty() { String::new() } else { format!(" ({})", p.detail) };
                println!("#{} * {who} {what}{detail}", p.sequence);
            }
            Some(Kind::Backend(b)) => println!(
                "#{} [backend] ({} ago): {}",
                b.sequence,
                age(b.server_time_unix_micros),
                String::from_utf8_lossy(&b.payload)
            ),
            Some(Kind::Pong(p)) => println!(
                "pong: round trip {}",
                fmt(Duration::from_micros((unix_micros() - p.client_time).max(0) as u64))
            ),
            Some(Kind::Error(e)) => eprintln!("error {} on {}: {}", e.code, e.field, e.message),
            Some(Kind::SessionEnded(e)) => {
                let reason = pb::SessionEndReason::try_from(e.reason).unwrap_or_default();
                println!(
                    "#{} session ended ({}): {}",
                    e.sequence,
                    reason.as_str_name().trim_start_matches("SESSION_END_REASON_"),
                    e.message
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
        s.session_id.clone(),
        s.mode.clone(),
        format!("{}/{}", s.player_count, s.max_players),
        if s.open_to_join_or_create { "yes" } else { "no" }.to_owned(),
        s.sequence.to_string(),
        age(s.created_unix_micros),
        pairs(&s.labels),
    ]
}

/// `k=v,k=v`, sorted.
fn pairs(map: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
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
fn watch_line([revision, event, session, mode, players, labels]: [String; 6]) {
    println!("{revision:<8}  {event:<8}  {session:<32}  {mode:<8}  {players:<7}  {labels}");
}

fn json(value: &impl Serialize) -> Result {
    println!("{}", serde_json::to_string(value)?);
    flush();
    Ok(())
}

fn flush() {
    let _ = std::io::stdout().flush();
}
