//! Per-client-IP failed-login throttling.
//!
//! Behind the front libunftp sees every client as the loopback address, so its own
//! `failed_logins_policy` would lock out everybody at once; the front keeps the count per real IP.
//! Login attempts whose result is still outstanding count against the limit too, so parallel
//! connections cannot fire more guesses than the limit before the first results are in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest window honoured; longer settings are cut to this so time arithmetic cannot overflow.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// Upper bound on tracked addresses, so a flood from many addresses costs bounded memory.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
    /// Attempts let through whose result has not been seen.
    in_flight: u32,
}

impl Record {
    fn fresh(now: Instant) -> Record {
        Record {
            failures: 0,
            window_start: now,
            blocked_until: None,
            in_flight: 0,
        }
    }

    /// Whether the failure count (and any block) has run out.
    fn expired(&self, now: Instant, window: Duration) -> bool {
        match self.blocked_until {
            Some(until) => now >= until,
            None => now.saturating_duration_since(self.window_start) >= window,
        }
    }

    /// Resets the count once it has run out, keeping attempts in flight.
    fn refresh(&mut self, now: Instant, window: Duration) {
        if self.expired(now, window) {
            *self = Record {
                in_flight: self.in_flight,
                ..Record::fresh(now)
            };
        }
    }

    fn idle(&self) -> bool {
        self.failures == 0 && self.in_flight == 0 && self.blocked_until.is_none()
    }
}

/// What to do with a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Let it through; report its result with [`LoginThrottle::settle`].
    Go,
    /// Too many attempts are still undecided; ask again shortly.
    Wait,
    /// The address is blocked.
    Blocked,
}

/// The result of an attempt that was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The connection ended before the result was seen.
    Unknown,
}

/// After `max_failures` failed logins from one IP within `window`, that IP is blocked for
/// `window` (counted from the failure that reached the limit). A successful login clears the count.
/// `max_failures == 0` turns throttling off.
#[derive(Debug)]
pub struct LoginThrottle {
    max_failures: u32,
    window: Duration,
    records: Mutex<HashMap<IpAddr, Record>>,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginThrottle {
            max_failures,
            window: window.min(MAX_WINDOW),
            records: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` is blocked right now.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.is_blocked_at(ip, Instant::now())
    }

    /// Decides on a login attempt from `ip`; `Go` reserves a place until [`settle`](Self::settle).
    pub fn admit(&self, ip: IpAddr) -> Admission {
        self.admit_at(ip, Instant::now())
    }

    /// Reports the result of an admitted attempt; returns `true` when `ip` is blocked from now on.
    pub fn settle(&self, ip: IpAddr, outcome: Outcome) -> bool {
        self.settle_at(ip, outcome, Instant::now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Record>> {
        // The map holds plain counters, so a panic elsewhere cannot leave it inconsistent.
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_blocked_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let mut records = self.lock();
        let Some(record) = records.get_mut(&ip) else {
            return false;
        };
        record.refresh(now, self.window);
        let blocked = record.blocked_until.is_some();
        if record.idle() {
            records.remove(&ip);
        }
        blocked
    }

    fn admit_at(&self, ip: IpAddr, now: Instant) -> Admission {
        if self.max_failures == 0 {
            return Admission::Go;
        }
        let window = self.window;
        let mut records = self.lock();
        if !records.contains_key(&ip) && records.len() >= MAX_TRACKED {
            records.retain(|_, r| !(r.expired(now, window) && r.in_flight == 0));
            if records.len() >= MAX_TRACKED {
                tracing::warn!(%ip, "failed-login table full; attempt not tracked");
                return Admission::Go;
            }
        }
        let record = records.entry(ip).or_insert_with(|| Record::fresh(now));
        record.refresh(now, window);
        if record.blocked_until.is_some() {
            Admission::Blocked
        } else if record.failures.saturating_add(record.in_flight) >= self.max_failures {
            Admission::Wait
        } else {
            record.in_flight += 1;
            Admission::Go
        }
    }

    fn settle_at(&self, ip: IpAddr, outcome: Outcome, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let window = self.window;
        let mut records = self.lock();
        let Some(record) = records.get_mut(&ip) else {
            // Not tracked (table was full): nothing to settle.
            return false;
        };
        record.in_flight = record.in_flight.saturating_sub(1);
        record.refresh(now, window);
        let blocked = match outcome {
            Outcome::Success => {
                record.failures = 0;
                record.window_start = now;
                false
            }
            Outcome::Unknown => false,
            Outcome::Failure => {
                if record.failures == 0 {
                    record.window_start = now;
                }
                record.failures = record.failures.saturating_add(1);
                if record.failures >= self.max_failures {
                    record.blocked_until.get_or_insert(now + window);
                    true
                } else {
                    false
                }
            }
        };
        if record.idle() {
            records.remove(&ip);
        }
        blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn fail(t: &LoginThrottle, ip: IpAddr, at: Instant) -> bool {
        assert_eq!(t.admit_at(ip, at), Admission::Go);
        t.settle_at(ip, Outcome::Failure, at)
    }

    #[test]
    fn blocks_after_n_failures_within_the_window() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        assert!(!fail(&t, A, now));
        assert!(!fail(&t, A, now + Duration::from_secs(10)));
        assert!(!t.is_blocked_at(A, now + Duration::from_secs(11)));
        assert!(fail(&t, A, now + Duration::from_secs(20)));
        assert!(t.is_blocked_at(A, now + Duration::from_secs(21)));
        assert_eq!(
            t.admit_at(A, now + Duration::from_secs(21)),
            Admission::Blocked
        );
        assert!(
            !t.is_blocked_at(B, now + Duration::from_secs(21)),
            "other addresses are unaffected"
        );
        assert_eq!(t.admit_at(B, now + Duration::from_secs(21)), Admission::Go);
    }

    #[test]
    fn block_lasts_one_window_from_the_last_failure() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        fail(&t, A, now);
        assert!(fail(&t, A, now + Duration::from_secs(30)));
        assert!(t.is_blocked_at(A, now + Duration::from_secs(89)));
        assert!(!t.is_blocked_at(A, now + Duration::from_secs(90)));
        assert!(
            !fail(&t, A, now + Duration::from_secs(91)),
            "count starts afresh"
        );
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        assert!(!fail(&t, A, now));
        assert!(!fail(&t, A, now + Duration::from_secs(61)));
        assert!(fail(&t, A, now + Duration::from_secs(62)));
    }

    #[test]
    fn success_clears_the_count() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        fail(&t, A, now);
        assert_eq!(t.admit_at(A, now), Admission::Go);
        assert!(!t.settle_at(A, Outcome::Success, now));
        assert!(!fail(&t, A, now));
        assert!(t.lock().get(&A).is_some_and(|r| r.failures == 1));
    }

    #[test]
    fn undecided_attempts_count_against_the_limit() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        assert!(!fail(&t, A, now));
        assert_eq!(t.admit_at(A, now), Admission::Go);
        assert_eq!(t.admit_at(A, now), Admission::Go);
        assert_eq!(
            t.admit_at(A, now),
            Admission::Wait,
            "1 failure + 2 in flight"
        );
        assert!(!t.settle_at(A, Outcome::Unknown, now));
        assert_eq!(t.admit_at(A, now), Admission::Go);
        assert!(!t.settle_at(A, Outcome::Failure, now));
        assert!(t.settle_at(A, Outcome::Failure, now));
        assert_eq!(t.admit_at(A, now), Admission::Blocked);
    }

    #[test]
    fn settled_idle_records_are_dropped() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(t.admit_at(A, now), Admission::Go);
        t.settle_at(A, Outcome::Success, now);
        assert!(t.lock().is_empty());
        t.settle_at(B, Outcome::Failure, now);
        assert!(
            t.lock().is_empty(),
            "settling an unknown address tracks nothing"
        );
    }

    #[test]
    fn zero_turns_throttling_off() {
        let t = LoginThrottle::new(0, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..100 {
            assert!(!fail(&t, A, now));
        }
        assert!(!t.is_blocked_at(A, now));
    }

    #[test]
    fn huge_windows_do_not_overflow() {
        let t = LoginThrottle::new(1, Duration::MAX);
        assert_eq!(t.admit(A), Admission::Go);
        assert!(t.settle(A, Outcome::Failure));
        assert!(t.is_blocked(A));
    }

    #[test]
    fn table_is_bounded() {
        let t = LoginThrottle::new(5, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let ip = IpAddr::V4(i.into());
            if t.admit_at(ip, now) == Admission::Go {
                t.settle_at(ip, Outcome::Failure, now);
            }
        }
        assert!(t.lock().len() <= MAX_TRACKED);
        // Once the old entries expire, new addresses are tracked again.
        fail(&t, A, now + Duration::from_secs(61));
        assert!(t.lock().contains_key(&A));
    }
}
