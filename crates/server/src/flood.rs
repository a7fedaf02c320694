//! Flood control: how fast one session may make requests.
//!
//! Each session has a token bucket: [`FloodLimit::burst`] requests at once, then
//! [`FloodLimit::rate`] a second. A request over the allowance is not refused but delayed
//! until the bucket allows it ("fake lag", as IRC servers do it): a person typing fast, or a
//! page catching up after a reconnection, only waits a moment, while a client that goes on
//! sending gains nothing by it. Requests keep their order, delayed ones included; once the
//! delayed requests would wait longer than [`MAX_LAG`] (or hold more than
//! [`MAX_DELAYED_BYTES`] of the client's frames), the client is disconnected as flooding.
//!
//! The bucket is kept as GCRA keeps one: a single number, the theoretical time at which the
//! bucket is full again, on a clock in microseconds. Pure, so it is tested without a clock.

use std::time::Duration;

use parley_proto::RequestBody;

/// A session's allowance: `burst` requests at once, then `rate` a second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloodLimit {
    /// Requests a second, once the burst is spent; more than zero.
    pub rate: f64,
    /// Requests allowed at once, after a quiet spell; at least one.
    pub burst: u32,
}

impl Default for FloodLimit {
    /// A person never notices it; a script sending as fast as it can is held to 2 a second.
    fn default() -> Self {
        Self {
            rate: 2.0,
            burst: 10,
        }
    }
}

/// The longest delayed requests may wait before the client is disconnected as flooding: at
/// the default 2 a second, 20 requests beyond the burst.
pub const MAX_LAG: Duration = Duration::from_secs(10);

/// The most bytes of frames delayed requests may hold, whatever their count: what a flooding
/// session makes the server hold stays this small.
pub const MAX_DELAYED_BYTES: usize = 64 * 1024;

impl FloodLimit {
    /// Microseconds between two requests once the burst is spent.
    fn interval(&self) -> u64 {
        (1e6 / self.rate).ceil().max(1.0) as u64
    }

    /// The most requests that may wait, delayed: as many as the rate allows in [`MAX_LAG`].
    pub fn max_delayed(&self) -> usize {
        ((self.rate * MAX_LAG.as_secs_f64()).ceil() as usize).max(1)
    }
}

/// Whether a request counts against the allowance. Those that do not are the ones a client
/// makes because the server asked, or to stop something: acknowledging a download's data, a
/// cancellation, signing off. They still wait behind delayed requests, to keep the order.
pub fn counts(body: &RequestBody) -> bool {
    !matches!(
        body,
        RequestBody::DownloadProgress(_) | RequestBody::Cancel(_) | RequestBody::Quit(_)
    )
}

/// One session's bucket: the time, in microseconds of the server's clock, at which it is
/// full again (0: full from the start).
#[derive(Debug, Default, Clone, Copy)]
pub struct Bucket {
    full_at: u64,
}

impl Bucket {
    /// Takes a request's token at `now` (microseconds) if the bucket has one; otherwise
    /// returns when it will, leaving the bucket as it was.
    pub fn take(&mut self, limit: &FloodLimit, now: u64) -> Result<(), u64> {
        let allowed_at = self.allowed_at(limit, now);
        if allowed_at > now {
            return Err(allowed_at);
        }
        self.full_at = self.full_at.max(now) + limit.interval();
        Ok(())
    }

    /// When, at `now` or later, the bucket has a token.
    pub fn allowed_at(&self, limit: &FloodLimit, now: u64) -> u64 {
        // A full bucket is `burst` intervals ahead of being empty.
        let tolerance = limit.interval() * u64::from(limit.burst.max(1) - 1);
        self.full_at.saturating_sub(tolerance).max(now)
    }

    /// Takes a token whether or not there is one: the next request waits the longer.
    pub fn force(&mut self, limit: &FloodLimit) {
        self.full_at += limit.interval();
    }

    /// Whether the bucket is full at `now`: it is then as good as a new one.
    pub fn is_full(&self, now: u64) -> bool {
        self.full_at <= now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: FloodLimit = FloodLimit {
        rate: 2.0,
        burst: 10,
    };

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut bucket = Bucket::default();
        let start = 5_000_000;
        for i in 0..10 {
            assert_eq!(
                bucket.take(&LIMIT, start),
                Ok(()),
                "request {i} of the burst"
            );
        }
        assert_eq!(bucket.take(&LIMIT, start), Err(start + 500_000));
        // Refused takes leave the bucket as it was.
        assert_eq!(bucket.take(&LIMIT, start + 1), Err(start + 500_000));
        assert_eq!(bucket.take(&LIMIT, start + 500_000), Ok(()));
        assert_eq!(bucket.take(&LIMIT, start + 500_000), Err(start + 1_000_000));
    }

    #[test]
    fn a_quiet_spell_fills_the_bucket_again_and_no_further() {
        let mut bucket = Bucket::default();
        for _ in 0..10 {
            bucket.take(&LIMIT, 0).unwrap();
        }
        // An hour later: one burst again, not an hour's worth.
        let later = 3_600_000_000;
        let passed = (0..100)
            .take_while(|_| bucket.take(&LIMIT, later).is_ok())
            .count();
        assert_eq!(passed, 10);
    }

    #[test]
    fn over_time_no_more_pass_than_the_burst_and_the_rate() {
        let mut bucket = Bucket::default();
        let mut passed = 0;
        // A client trying every millisecond for 10 s.
        for ms in 0..10_000u64 {
            if bucket.take(&LIMIT, ms * 1000).is_ok() {
                passed += 1;
            }
        }
        assert_eq!(passed, 10 + 20 - 1, "the burst, then 2 a second");
    }

    #[test]
    fn the_delayed_requests_allowed_are_the_lags_worth() {
        assert_eq!(LIMIT.max_delayed(), 20);
        let slow = FloodLimit {
            rate: 0.01,
            burst: 1,
        };
        assert_eq!(slow.max_delayed(), 1);
    }
}
