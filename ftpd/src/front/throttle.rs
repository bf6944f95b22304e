//! Per-client-IP failed-login throttling.
//!
//! Behind the front libunftp sees every client as the loopback address, so its own
//! `failed_logins_policy` would lock out everybody at once; the front keeps the count per real IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bound on tracked addresses, so a flood from many addresses costs bounded memory.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

impl Record {
    fn expired(&self, now: Instant, window: Duration) -> bool {
        match self.blocked_until {
            Some(until) => now >= until,
            None => now.saturating_duration_since(self.window_start) >= window,
        }
    }
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
            window,
            records: Mutex::new(HashMap::new()),
        }
    }

    /// Whether logins from `ip` are refused right now.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.is_blocked_at(ip, Instant::now())
    }

    /// Counts a failed login; returns `true` when `ip` is blocked from now on.
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        self.record_failure_at(ip, Instant::now())
    }

    /// Clears the failure count of `ip`.
    pub fn record_success(&self, ip: IpAddr) {
        self.lock().remove(&ip);
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
        match records.get(&ip) {
            Some(r) if r.expired(now, self.window) => {
                records.remove(&ip);
                false
            }
            Some(r) => r.blocked_until.is_some(),
            None => false,
        }
    }

    fn record_failure_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let window = self.window;
        let mut records = self.lock();
        if !records.contains_key(&ip) && records.len() >= MAX_TRACKED {
            records.retain(|_, r| !r.expired(now, window));
            if records.len() >= MAX_TRACKED {
                tracing::warn!(%ip, "failed-login table full; this failure is not counted");
                return false;
            }
        }
        let fresh = Record {
            failures: 0,
            window_start: now,
            blocked_until: None,
        };
        let record = records.entry(ip).or_insert(fresh);
        if record.expired(now, window) {
            *record = fresh;
        }
        record.failures = record.failures.saturating_add(1);
        if record.failures >= self.max_failures {
            record.blocked_until.get_or_insert(now + window);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn blocks_after_n_failures_within_the_window() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        assert!(!t.record_failure_at(A, now));
        assert!(!t.record_failure_at(A, now + Duration::from_secs(10)));
        assert!(!t.is_blocked_at(A, now + Duration::from_secs(11)));
        assert!(t.record_failure_at(A, now + Duration::from_secs(20)));
        assert!(t.is_blocked_at(A, now + Duration::from_secs(21)));
        assert!(
            !t.is_blocked_at(B, now + Duration::from_secs(21)),
            "other addresses are unaffected"
        );
    }

    #[test]
    fn block_lasts_one_window_from_the_last_failure() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        t.record_failure_at(A, now);
        assert!(t.record_failure_at(A, now + Duration::from_secs(30)));
        assert!(t.is_blocked_at(A, now + Duration::from_secs(89)));
        assert!(!t.is_blocked_at(A, now + Duration::from_secs(90)));
        assert!(
            !t.record_failure_at(A, now + Duration::from_secs(91)),
            "count starts afresh"
        );
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        assert!(!t.record_failure_at(A, now));
        assert!(!t.record_failure_at(A, now + Duration::from_secs(61)));
        assert!(t.record_failure_at(A, now + Duration::from_secs(62)));
    }

    #[test]
    fn success_clears_the_count() {
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        t.record_failure_at(A, now);
        t.record_success(A);
        assert!(!t.record_failure_at(A, now));
    }

    #[test]
    fn zero_turns_throttling_off() {
        let t = LoginThrottle::new(0, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..100 {
            assert!(!t.record_failure_at(A, now));
        }
        assert!(!t.is_blocked_at(A, now));
    }

    #[test]
    fn table_is_bounded() {
        let t = LoginThrottle::new(5, Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            t.record_failure_at(IpAddr::V4(i.into()), now);
        }
        assert!(t.lock().len() <= MAX_TRACKED);
        // Once the old entries expire, new addresses are tracked again.
        t.record_failure_at(A, now + Duration::from_secs(61));
        assert!(t.lock().contains_key(&A));
    }
}
