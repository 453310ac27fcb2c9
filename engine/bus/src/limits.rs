//! What the bus carries and how much of it the embedded broker takes from agents: the
//! largest message, the longest agent id, and [`BusLimits`] (`bus_limits` in
//! `director.yml`) with the token bucket that enforces each agent account's publish rate.
//! The broker, the client, the account policy and the errors that name these limits share
//! them.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The largest message the bus carries (nats-server's default `max_payload`, and the cap
/// BOSH's agent puts on its answers).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The longest agent id accepted (ids are subject tokens and user names).
pub(crate) const MAX_AGENT_ID: usize = 128;

/// `bus_limits`: what the embedded broker allows its agents. The director's own user (the
/// one allowed everything) is exempt from the connection cap and the publish rate, so a
/// misbehaving agent can be disconnected but never the director. The defaults are far above
/// what a normal agent does (a heartbeat every few seconds, answers of up to 1 MiB); tests
/// lower them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusLimits {
    /// Agent connections at once; one more is answered `-ERR 'maximum connections
    /// exceeded'` and closed, as nats-server does.
    pub max_connections: usize,
    /// Subscriptions one connection may hold (`-ERR 'Maximum Subscriptions Exceeded'`).
    pub max_subscriptions: usize,
    /// Bytes queued for one client before it counts as a slow consumer and is dropped.
    pub max_pending_bytes: usize,
    /// How fast each agent account may publish, all its connections together.
    pub publish_rate: PublishRate,
}

impl Default for BusLimits {
    fn default() -> BusLimits {
        BusLimits {
            max_connections: 4096,
            max_subscriptions: 1024,
            max_pending_bytes: 64 * 1024 * 1024,
            publish_rate: PublishRate::default(),
        }
    }
}

/// `bus_limits.publish_rate`: a token bucket per agent account, one for messages and one
/// for payload bytes. A publish takes one message and its payload's bytes; the buckets
/// refill at the per-second rates up to their bursts. An account that has used up its burst
/// (it kept publishing faster than the rate for a while) is disconnected with `-ERR
/// 'Maximum Publish Rate Exceeded'`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishRate {
    /// Messages per second, sustained.
    pub messages_per_second: u32,
    /// Messages at once above the sustained rate.
    pub messages_burst: u32,
    /// Payload bytes per second, sustained.
    pub bytes_per_second: u64,
    /// Payload bytes at once above the sustained rate; at least the largest message.
    pub bytes_burst: u64,
}

impl Default for PublishRate {
    fn default() -> PublishRate {
        PublishRate {
            messages_per_second: 100,
            messages_burst: 1000,
            bytes_per_second: 8 * 1024 * 1024,
            bytes_burst: 32 * 1024 * 1024,
        }
    }
}

impl BusLimits {
    /// Why these limits cannot work with messages of up to `max_payload` bytes, if they
    /// cannot: a zero would refuse every agent, a byte burst below the largest message would
    /// refuse an agent's largest answer forever.
    pub fn check(&self, max_payload: usize) -> Result<(), LimitsError> {
        let rate = &self.publish_rate;
        let zero = [
            ("max_connections", self.max_connections == 0),
            ("max_subscriptions", self.max_subscriptions == 0),
            ("max_pending_bytes", self.max_pending_bytes == 0),
            (
                "publish_rate.messages_per_second",
                rate.messages_per_second == 0,
            ),
            ("publish_rate.messages_burst", rate.messages_burst == 0),
            ("publish_rate.bytes_per_second", rate.bytes_per_second == 0),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, is_zero)| *is_zero) {
            return Err(LimitsError::Zero { name });
        }
        let largest = u64::try_from(max_payload).unwrap_or(u64::MAX);
        if rate.bytes_burst < largest {
            return Err(LimitsError::BurstBelowMessage {
                burst: rate.bytes_burst,
                largest,
            });
        }
        if self.max_pending_bytes < max_payload {
            return Err(LimitsError::PendingBelowMessage {
                pending: self.max_pending_bytes,
                largest: max_payload,
            });
        }
        Ok(())
    }
}

/// Why [`BusLimits`] cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A limit is zero.
    #[error("{name} is 0, which no agent can work with")]
    Zero {
        /// The setting (`publish_rate.messages_burst`).
        name: &'static str,
    },
    /// The byte burst cannot carry the largest message.
    #[error(
        "publish_rate.bytes_burst is {burst}, less than the largest message ({largest} bytes): an agent could never send its largest answer"
    )]
    BurstBelowMessage {
        /// The configured burst.
        burst: u64,
        /// The largest message.
        largest: u64,
    },
    /// The pending-output cap cannot hold the largest message.
    #[error("max_pending_bytes is {pending}, less than the largest message ({largest} bytes)")]
    PendingBelowMessage {
        /// The configured cap.
        pending: usize,
        /// The largest message.
        largest: usize,
    },
}

/// One account's publish budget (see [`PublishRate`]). Pure: the caller says what time it is.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    messages: f64,
    bytes: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: &PublishRate, now: Instant) -> TokenBucket {
        TokenBucket {
            messages: f64::from(rate.messages_burst),
            bytes: rate.bytes_burst as f64,
            updated: now,
        }
    }

    /// Takes one message of `size` payload bytes at `now`; false (and nothing taken) when
    /// the account has no budget left for it.
    pub(crate) fn take(&mut self, rate: &PublishRate, size: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = self.updated.max(now);
        self.messages = (self.messages + elapsed * f64::from(rate.messages_per_second))
            .min(f64::from(rate.messages_burst));
        self.bytes =
            (self.bytes + elapsed * rate.bytes_per_second as f64).min(rate.bytes_burst as f64);
        let size = size as f64;
        if self.messages < 1.0 || self.bytes < size {
            return false;
        }
        self.messages -= 1.0;
        self.bytes -= size;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rate() -> PublishRate {
        PublishRate {
            messages_per_second: 10,
            messages_burst: 5,
            bytes_per_second: 1000,
            bytes_burst: 2000,
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = rate();
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&rate, start);
        for n in 0..5 {
            assert!(bucket.take(&rate, 10, start), "message {n} of the burst");
        }
        assert!(!bucket.take(&rate, 10, start), "the burst is used up");
        // 10 messages/s: one more every 100 ms, never more than the burst.
        assert!(!bucket.take(&rate, 10, start + Duration::from_millis(50)));
        assert!(bucket.take(&rate, 10, start + Duration::from_millis(100)));
        assert!(!bucket.take(&rate, 10, start + Duration::from_millis(100)));
        let later = start + Duration::from_secs(60);
        for n in 0..5 {
            assert!(bucket.take(&rate, 10, later), "message {n} after a pause");
        }
        assert!(!bucket.take(&rate, 10, later));
    }

    #[test]
    fn a_bucket_counts_bytes_too() {
        let rate = rate();
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&rate, start);
        assert!(bucket.take(&rate, 1500, start));
        // 500 bytes left: a 600-byte message waits for 100 more bytes (100 ms).
        assert!(!bucket.take(&rate, 600, start));
        assert!(!bucket.take(&rate, 600, start + Duration::from_millis(50)));
        assert!(bucket.take(&rate, 600, start + Duration::from_millis(100)));
        // A refused message took nothing: small ones still pass.
        assert!(bucket.take(&rate, 0, start + Duration::from_millis(100)));
    }

    #[test]
    fn a_clock_going_back_gives_nothing() {
        let rate = rate();
        let start = Instant::now() + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(&rate, start);
        for _ in 0..5 {
            assert!(bucket.take(&rate, 0, start));
        }
        assert!(!bucket.take(&rate, 0, start - Duration::from_secs(1)));
        assert!(!bucket.take(&rate, 0, start));
    }

    #[test]
    fn the_defaults_let_a_normal_agent_through() {
        let limits = BusLimits::default();
        assert_eq!(limits.check(MAX_MESSAGE_BYTES), Ok(()));
        // A burst of largest answers (a few 1 MiB replies in a row) passes at once.
        let rate = &limits.publish_rate;
        let now = Instant::now();
        let mut bucket = TokenBucket::new(rate, now);
        for n in 0..8 {
            assert!(bucket.take(rate, MAX_MESSAGE_BYTES, now), "answer {n}");
        }
        // A heartbeat every second for an hour, with an answer every 10 s, never trips it.
        let mut bucket = TokenBucket::new(rate, now);
        for second in 0..3600u64 {
            let at = now + Duration::from_secs(second);
            assert!(bucket.take(rate, 2048, at));
            if second % 10 == 0 {
                assert!(bucket.take(rate, MAX_MESSAGE_BYTES, at));
            }
        }
    }

    #[test]
    fn limits_that_cannot_work_are_refused() {
        let check = |change: fn(&mut BusLimits)| {
            let mut limits = BusLimits::default();
            change(&mut limits);
            limits.check(MAX_MESSAGE_BYTES).unwrap_err().to_string()
        };
        assert_eq!(
            check(|l| l.max_connections = 0),
            "max_connections is 0, which no agent can work with"
        );
        assert_eq!(
            check(|l| l.publish_rate.messages_per_second = 0),
            "publish_rate.messages_per_second is 0, which no agent can work with"
        );
        assert!(check(|l| l.publish_rate.bytes_burst = 1000).contains(
            "publish_rate.bytes_burst is 1000, less than the largest message (1048576 bytes)"
        ));
        assert!(
            check(|l| l.max_pending_bytes = 1000).contains("max_pending_bytes is 1000, less than")
        );
    }

    #[test]
    fn limits_read_from_yaml_keep_defaults_for_what_is_left_out() {
        let limits: BusLimits = serde_json::from_str(
            r#"{"max_connections": 10, "publish_rate": {"messages_per_second": 5}}"#,
        )
        .unwrap();
        assert_eq!(limits.max_connections, 10);
        assert_eq!(limits.publish_rate.messages_per_second, 5);
        assert_eq!(
            limits.publish_rate.messages_burst,
            PublishRate::default().messages_burst
        );
        assert_eq!(
            limits.max_subscriptions,
            BusLimits::default().max_subscriptions
        );
        let unknown = serde_json::from_str::<BusLimits>(r#"{"max_conections": 10}"#).unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("unknown field `max_conections`"),
            "{unknown}"
        );
    }
}
