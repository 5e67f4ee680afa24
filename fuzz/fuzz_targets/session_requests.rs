//! Arbitrary bytes as a SessionService request: the first byte picks
//! CreateSession, ListSessions, EndSession or SendToSession, the rest is
//! decoded as that request and validated as `SessionApi` validates it.
//! Nothing a backend client sends may panic; a page token the server did
//! not write is refused, and one it wrote resumes where it said.
#![no_main]

use std::sync::LazyLock;

use game_session::api::convert::{self, Limits, MAX_CONFIG_LEN, MAX_IDEMPOTENCY_KEY_LEN};
use game_session::{Config, pb};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

static LIMITS: LazyLock<Limits> = LazyLock::new(|| Limits::new(&Config::for_tests()));

fuzz_target!(|data: &[u8]| {
    let Some((&which, data)) = data.split_first() else { return };
    let limits = &*LIMITS;
    match which % 4 {
        0 => {
            let Ok(request) = pb::CreateSessionRequest::decode(data) else { return };
            let _ = convert::check_labels("labels", request.labels, limits.max_labels);
            let _ = request.config.len() > MAX_CONFIG_LEN;
            if request.idempotency_key.len() <= MAX_IDEMPOTENCY_KEY_LEN {
                let _ = convert::check_text("idempotency_key", &request.idempotency_key);
            }
            let _ = convert::check_text("mode", &request.mode);
        }
        1 => {
            let Ok(request) = pb::ListSessionsRequest::decode(data) else { return };
            let _ = convert::filter(request.filter, limits);
            if let Ok(id) = convert::page_token_position(&request.page_token) {
                assert!(convert::check_id("id", &id).is_ok(), "a page token resumes after an invalid id");
                assert_eq!(convert::page_token(&id), request.page_token, "two tokens for one position");
            }
            // The token the server would write after any valid id.
            if convert::check_id("id", &request.page_token).is_ok() {
                let token = convert::page_token(&request.page_token);
                assert_eq!(convert::page_token_position(&token).ok(), Some(request.page_token));
            }
        }
        2 => {
            let Ok(request) = pb::EndSessionRequest::decode(data) else { return };
            let _ = convert::check_id("session_id", &request.session_id);
            let _ = convert::check_text("message", &request.message);
        }
        _ => {
            let Ok(request) = pb::SendToSessionRequest::decode(data) else { return };
            let _ = convert::check_id("session_id", &request.session_id);
            let _ = convert::check_payload("payload", &request.payload, limits);
            let _ = convert::check_targets("player_ids", request.player_ids, limits);
        }
    }
});
