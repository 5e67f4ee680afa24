//! What one player may send: a token bucket on messages and one on bytes,
//! the notice a player gets when it goes over, the flood that removes it,
//! and the coalescing of the error replies it causes.
//!
//! Each bucket is kept as the instant it would be full again (GCRA): taking
//! `n` units moves that instant `n` units' worth of time later, and is
//! refused if it would then lie more than the burst's worth ahead of now.
//! A check is a few additions and comparisons on [`Instant`]s, with no
//! allocation and no lock; the session's actor owns the state.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

/// How long a player must stay under its limits for a run of drops to end;
/// also the least time between two notices (or error replies past the
/// burst) to one player.
pub(super) const NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// Error replies a player gets at once before they are held to one per
/// [`NOTICE_INTERVAL`]: enough for a client's honest mistakes to be
/// answered one by one, few enough that a flood of bad messages cannot fill
/// its own queue with answers.
pub(super) const ERROR_REPLY_BURST: u64 = 10;

/// A player's rate limits (see `--player-message-rate` and the settings
/// after it). A rate of 0 turns its bucket off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Messages a second a player may send, on average.
    pub messages_per_second: u64,
    /// Messages a player may send at once, above the average.
    pub message_burst: u64,
    /// Bytes (payloads and target ids) a second a player may send.
    pub bytes_per_second: u64,
    /// Bytes a player may send at once.
    pub byte_burst: u64,
    /// How long a player may stay over its limits before it is removed.
    pub flood_grace: Duration,
}

impl RateLimits {
    /// No limit at all.
    pub const OFF: RateLimits = RateLimits {
        messages_per_second: 0,
        message_burst: 0,
        bytes_per_second: 0,
        byte_burst: 0,
        flood_grace: Duration::from_secs(5),
    };
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    /// What one unit costs, in picoseconds; 0 when the bucket is off.
    unit_ps: u64,
    /// How far ahead of now `full_at` may lie: the burst's worth.
    burst: Duration,
    /// When the bucket is full again; in the past means full.
    full_at: Instant,
}

impl Bucket {
    pub(super) fn new(per_second: u64, burst: u64, now: Instant) -> Self {
        let unit_ps = 1_000_000_000_000u64.checked_div(per_second).unwrap_or(0);
        let burst = Duration::from_nanos(burst.saturating_mul(unit_ps) / 1000);
        Bucket { unit_ps, burst, full_at: now }
    }

    /// Where `full_at` goes if `units` are taken now, or `None` if they do
    /// not fit.
    pub(super) fn try_take(&self, now: Instant, units: u64) -> Option<Instant> {
        if self.unit_ps == 0 {
            return Some(self.full_at);
        }
        let full_at = self.full_at.max(now) + Duration::from_nanos(units.saturating_mul(self.unit_ps) / 1000);
        (full_at.saturating_duration_since(now) <= self.burst).then_some(full_at)
    }

    /// Takes `units` now if they fit; otherwise says how long until they
    /// would.
    pub(super) fn take(&mut self, now: Instant, units: u64) -> Result<(), Duration> {
        match self.try_take(now, units) {
            Some(full_at) => {
                self.full_at = full_at;
                Ok(())
            }
            None => {
                let cost = Duration::from_nanos(units.saturating_mul(self.unit_ps) / 1000);
                Err((self.full_at.max(now) + cost).saturating_duration_since(now).saturating_sub(self.burst))
            }
        }
    }

    /// Whether the bucket is full, so that a new one would do as well.
    pub(super) fn is_full(&self, now: Instant) -> bool {
        self.full_at <= now
    }
}

/// Which limit a message went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Over {
    Messages,
    Bytes,
}

/// What to do with one message from a player.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Within the limits: handle it.
    Pass,
    /// Over: drop it, and, when `notice` says so, tell the player.
    Drop { notice: Option<Error> },
    /// Over for longer than the flood grace: remove the player with this.
    Flood(Error),
}

/// One player's standing under its rate limits.
#[derive(Debug)]
pub(super) struct PlayerRate {
    messages: Bucket,
    bytes: Bucket,
    /// Messages dropped since the player was last told.
    dropped: u64,
    /// When the current run of drops began; `None` while under the limits.
    over_since: Option<Instant>,
    /// The last drop: a run ends after [`NOTICE_INTERVAL`] without one.
    last_drop: Instant,
    /// When the player was last told of drops.
    last_notice: Option<Instant>,
}

impl PlayerRate {
    pub(super) fn new(limits: &RateLimits, now: Instant) -> Self {
        PlayerRate {
            messages: Bucket::new(limits.messages_per_second, limits.message_burst, now),
            bytes: Bucket::new(limits.bytes_per_second, limits.byte_burst, now),
            dropped: 0,
            over_since: None,
            last_drop: now,
            last_notice: None,
        }
    }

    /// Charges one message of `bytes` bytes sent at `now`.
    pub(super) fn charge(&mut self, limits: &RateLimits, now: Instant, bytes: u64) -> Verdict {
        let over = match (self.messages.try_take(now, 1), self.bytes.try_take(now, bytes)) {
            (Some(messages), Some(bytes)) => {
                self.messages.full_at = messages;
                self.bytes.full_at = bytes;
                return Verdict::Pass;
            }
            (None, _) => Over::Messages,
            (Some(_), None) => Over::Bytes,
        };
        self.dropped += 1;
        let run_goes_on = now.duration_since(self.last_drop) < NOTICE_INTERVAL;
        let since = match self.over_since {
            Some(since) if run_goes_on => since,
            _ => now,
        };
        self.over_since = Some(since);
        self.last_drop = now;
        if now.duration_since(since) >= limits.flood_grace {
            return Verdict::Flood(Error::RateLimited(format!(
                "sending faster than {} for {:?}: removed",
                limit_text(limits, over),
                limits.flood_grace
            )));
        }
        if self.last_notice.is_some_and(|last| now.duration_since(last) < NOTICE_INTERVAL) {
            return Verdict::Drop { notice: None };
        }
        self.last_notice = Some(now);
        let dropped = std::mem::take(&mut self.dropped);
        Verdict::Drop {
            notice: Some(Error::RateLimited(format!(
                "sending faster than {}: {dropped} message(s) dropped; slow down or be removed after {:?}",
                limit_text(limits, over),
                limits.flood_grace
            ))),
        }
    }
}

/// A limit as players read it.
fn limit_text(limits: &RateLimits, over: Over) -> String {
    match over {
        Over::Messages => format!("{} messages/s (burst {})", limits.messages_per_second, limits.message_burst),
        Over::Bytes => format!("{} bytes/s (burst {})", limits.bytes_per_second, limits.byte_burst),
    }
}

/// The error replies one player gets: [`ERROR_REPLY_BURST`] at once, then
/// one per [`NOTICE_INTERVAL`]; those not sent are counted, and the next
/// reply says how many.
#[derive(Debug)]
pub(super) struct ErrorReplies {
    allowance: Bucket,
    /// Error replies not sent since the last one that was.
    unanswered: u64,
}

impl ErrorReplies {
    pub(super) fn new(now: Instant) -> Self {
        ErrorReplies { allowance: Bucket::new(1, ERROR_REPLY_BURST, now), unanswered: 0 }
    }

    /// Whether to send an error reply now; if so, with how many went
    /// unanswered before it.
    pub(super) fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.allowance.try_take(now, 1) {
            Some(full_at) => {
                self.allowance.full_at = full_at;
                Some(std::mem::take(&mut self.unanswered))
            }
            None => {
                self.unanswered += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RateLimits = RateLimits {
        messages_per_second: 10,
        message_burst: 20,
        bytes_per_second: 1000,
        byte_burst: 2000,
        flood_grace: Duration::from_secs(3),
    };

    /// Catches a bucket that refuses its burst, lets more than its burst
    /// through at once, or does not refill at its rate.
    #[test]
    fn a_bucket_takes_its_burst_then_its_rate() {
        let now = Instant::now();
        let mut rate = PlayerRate::new(&LIMITS, now);
        for i in 0..20 {
            assert_eq!(rate.charge(&LIMITS, now, 1), Verdict::Pass, "message {i} of the burst");
        }
        assert!(matches!(rate.charge(&LIMITS, now, 1), Verdict::Drop { notice: Some(_) }));
        // A tenth of a second earns one message, not two.
        let later = now + Duration::from_millis(100);
        assert_eq!(rate.charge(&LIMITS, later, 1), Verdict::Pass);
        assert!(matches!(rate.charge(&LIMITS, later, 1), Verdict::Drop { notice: None }));
    }

    /// Catches a byte limit that is not enforced apart from the message
    /// limit, or a refused message that still uses up message tokens.
    #[test]
    fn bytes_are_limited_apart_from_messages() {
        let now = Instant::now();
        let mut rate = PlayerRate::new(&LIMITS, now);
        assert_eq!(rate.charge(&LIMITS, now, 1500), Verdict::Pass);
        match rate.charge(&LIMITS, now, 1000) {
            Verdict::Drop { notice: Some(Error::RateLimited(text)) } => {
                assert!(text.starts_with("sending faster than 1000 bytes/s (burst 2000): 1 message(s)"), "{text}")
            }
            other => panic!("expected a drop with a notice, got {other:?}"),
        }
        // The refused message took no message token: 19 more fit.
        for _ in 0..19 {
            assert_eq!(rate.charge(&LIMITS, now, 1), Verdict::Pass);
        }
    }

    /// Catches a notice per dropped message, a notice that loses the count
    /// of drops, or a flood that is never (or too soon) called one.
    #[test]
    fn drops_are_told_once_a_second_and_a_flood_is_removed_after_its_grace() {
        let start = Instant::now();
        let mut rate = PlayerRate::new(&LIMITS, start);
        let mut notices = Vec::new();
        let mut flood_at = None;
        // 100 messages a second, ten times the rate.
        for tick in 0..1000u64 {
            let now = start + Duration::from_millis(tick * 10);
            match rate.charge(&LIMITS, now, 1) {
                Verdict::Pass | Verdict::Drop { notice: None } => {}
                Verdict::Drop { notice: Some(Error::RateLimited(text)) } => notices.push((now - start, text)),
                Verdict::Flood(err) => {
                    flood_at = Some((now - start, err));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let (at, err) = flood_at.unwrap_or_else(|| panic!("the flood was never called one"));
        // The first drop comes once the burst of 20 is spent (~0.22 s).
        assert!(at >= Duration::from_secs(3) && at < Duration::from_millis(3300), "removed at {at:?}");
        assert_eq!(err, Error::RateLimited("sending faster than 10 messages/s (burst 20) for 3s: removed".into()));
        assert_eq!(notices.len(), 3, "one notice a second: {notices:?}");
        // The second tells of a second's drops: about 90 of 100 messages.
        let count: u64 = notices[1].1.split(": ").nth(1).and_then(|t| t.split(' ').next()?.parse().ok()).unwrap_or(0);
        assert!((85..=95).contains(&count), "{:?}", notices[1]);
    }

    /// Catches a run of drops that never ends: a player that slows down
    /// below its limit after a burst starts its flood grace afresh.
    #[test]
    fn a_player_that_slows_down_is_not_a_flood() {
        let start = Instant::now();
        let mut rate = PlayerRate::new(&LIMITS, start);
        for round in 0..10u64 {
            // A burst of 30 every 3 s: 10 over, then quiet long enough to
            // refill.
            let now = start + Duration::from_secs(round * 3);
            for _ in 0..30 {
                assert!(!matches!(rate.charge(&LIMITS, now, 1), Verdict::Flood(_)), "round {round}");
            }
        }
    }

    /// Catches error replies that are not coalesced past their burst, or a
    /// count of unanswered ones that is lost.
    #[test]
    fn error_replies_are_coalesced_with_a_count() {
        let now = Instant::now();
        let mut replies = ErrorReplies::new(now);
        for _ in 0..ERROR_REPLY_BURST {
            assert_eq!(replies.admit(now), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(replies.admit(now), None);
        }
        assert_eq!(replies.admit(now + NOTICE_INTERVAL), Some(5));
        assert_eq!(replies.admit(now + NOTICE_INTERVAL), None);
    }

    /// Catches an "off" bucket that limits anything.
    #[test]
    fn off_limits_nothing() {
        let now = Instant::now();
        let mut rate = PlayerRate::new(&RateLimits::OFF, now);
        for _ in 0..100_000 {
            assert_eq!(rate.charge(&RateLimits::OFF, now, 1 << 20), Verdict::Pass);
        }
    }
}
