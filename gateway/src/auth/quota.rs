//! Per-client transaction quotas: a token bucket for the rate, and a count per UTC day.
//! Kept in memory: a restart refills the bucket and the day's count (the replay window,
//! which is durable, still stops the same transactions from coming twice).

use std::time::Instant;

#[derive(Debug)]
pub struct Quota {
    rate: Option<(f64, f64)>,
    tokens: f64,
    refilled: Instant,
    per_day: Option<u64>,
    day: u64,
    used_today: u64,
}

impl Quota {
    /// `per_second` with a bucket of `burst` (default: one second's worth), and `per_day`.
    pub fn new(per_second: Option<f64>, burst: Option<u64>, per_day: Option<u64>) -> Quota {
        let rate = per_second.map(|r| (r, burst.map_or(r.max(1.0), |b| b as f64)));
        Quota {
            tokens: rate.map_or(0.0, |(_, b)| b),
            rate,
            refilled: Instant::now(),
            per_day,
            day: 0,
            used_today: 0,
        }
    }

    /// Takes `n` transactions from the quota, or says in how many seconds to retry.
    pub fn take(&mut self, n: u64, unix_now: u64) -> Result<(), u64> {
        let today = unix_now / 86_400;
        if today != self.day {
            self.day = today;
            self.used_today = 0;
        }
        if let Some(limit) = self.per_day {
            if self.used_today + n > limit {
                return Err(86_400 - unix_now % 86_400);
            }
        }
        if let Some((rate, burst)) = self.rate {
            let now = Instant::now();
            let elapsed = now.duration_since(self.refilled).as_secs_f64();
            self.refilled = now;
            self.tokens = (self.tokens + elapsed * rate).min(burst);
            let want = n as f64;
            if want > self.tokens {
                if want > burst {
                    // Never fits: retrying the same request cannot help; say a second.
                    return Err(1);
                }
                return Err(((want - self.tokens) / rate).ceil().max(1.0) as u64);
            }
            self.tokens -= want;
        }
        self.used_today += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_and_the_day_limit_hold() {
        let mut q = Quota::new(Some(10.0), Some(5), None);
        assert!(q.take(5, 0).is_ok());
        assert!(q.take(1, 0).is_err(), "bucket empty");
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(q.take(2, 0).is_ok(), "refilled at 10/s");

        let mut d = Quota::new(None, None, Some(3));
        assert!(d.take(2, 100).is_ok());
        assert_eq!(d.take(2, 100), Err(86_300));
        assert!(d.take(1, 100).is_ok());
        assert!(d.take(3, 86_400 + 5).is_ok(), "a new day");
    }
}
