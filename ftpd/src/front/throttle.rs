//! Failed-login throttling, per (address, user) and per address.
//!
//! Behind the front libunftp sees every client as the loopback address, so its own
//! `failed_logins_policy` would lock out everybody at once; the front keeps the counts per real
//! address instead, in two tables:
//!
//! - per (address, user): a success clears only its own entry, so a known account (say
//!   `anonymous`) logging in between guesses cannot wipe the failures of the account being
//!   guessed (review finding 6), and a guesser behind a carrier NAT locks out only the account it
//!   guesses, not every box sharing the address (finding 11e);
//! - per address, over all users: bounds guessing across many user names; only the window
//!   clears it.
//!
//! Login attempts whose result is still outstanding count against both limits, so parallel
//! connections cannot fire more guesses than the limit before the first results are in.
//! Both tables are bounded; a full table evicts an entry rather than letting an attempt through
//! untracked (finding 11b).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Longest window honoured; longer settings are cut to this so time arithmetic cannot overflow.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// Upper bound on entries in each table, so a flood from many addresses or user names costs
/// bounded memory.
const MAX_TRACKED: usize = 65_536;

/// How many of the entries idle the longest a full table looks through for one that has run
/// out, before evicting the oldest; bounded so that a flood costs no pass over the whole table.
const EVICTION_SCAN: usize = 32;

/// Longest user name kept in a key, in bytes: names come from the client, and a longer one is
/// counted under its first `MAX_USER_KEY` bytes.
const MAX_USER_KEY: usize = 256;

/// What to do with a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Let it through; report its result with [`LoginThrottle::settle`].
    Go,
    /// Too many attempts are failed or still undecided; wait for [`LoginThrottle::changed`] and
    /// ask again.
    Wait,
    /// The address, or this user at this address, is blocked.
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

/// What a settled failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing is blocked; always the answer to a success or an unknown outcome.
    Open,
    /// This user is refused from this address for the window; other users there are not.
    UserBlocked,
    /// The whole address is refused for the window (reported even if the user is blocked too).
    AddressBlocked,
}

/// Failures counted for one key (an address, or an address and user) within one window.
#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    /// Start of the current window: the first failure counted in it.
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
            self.clear(now);
        }
    }

    /// Forgets failures and any block, keeping attempts in flight.
    fn clear(&mut self, now: Instant) {
        *self = Record {
            in_flight: self.in_flight,
            ..Record::fresh(now)
        };
    }

    fn blocked(&self) -> bool {
        self.blocked_until.is_some()
    }

    /// Whether failures plus undecided attempts have reached `limit`.
    fn full(&self, limit: u32) -> bool {
        self.failures.saturating_add(self.in_flight) >= limit
    }

    /// Counts a failure; returns whether the key is blocked afterwards. The block runs for one
    /// window from the failure that reached the limit; later failures do not extend it.
    fn fail(&mut self, limit: u32, now: Instant, window: Duration) -> bool {
        if self.failures == 0 {
            self.window_start = now;
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= limit {
            self.blocked_until.get_or_insert(now + window);
        }
        self.blocked()
    }

    /// Whether the entry carries nothing worth keeping.
    fn idle(&self) -> bool {
        self.failures == 0 && self.in_flight == 0 && !self.blocked()
    }
}

/// Key of the per-user table. The user name is cut to [`MAX_USER_KEY`] bytes; shared, since
/// the activity index holds a copy of every key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct UserKey {
    ip: IpAddr,
    user: Arc<str>,
}

impl UserKey {
    fn new(ip: IpAddr, user: &str) -> UserKey {
        let mut end = user.len().min(MAX_USER_KEY);
        while !user.is_char_boundary(end) {
            end -= 1;
        }
        UserKey {
            ip,
            user: user[..end].into(),
        }
    }
}

/// A record and its place in the activity order.
struct Entry {
    record: Record,
    stamp: u64,
}

/// One bounded table of records, with its entries ordered by last activity (admission,
/// settlement or check) so a full table finds the entry idle the longest without a full scan.
struct Table<K> {
    records: HashMap<K, Entry>,
    /// Keys by activity stamp, oldest first.
    by_activity: BTreeMap<u64, K>,
    next_stamp: u64,
    capacity: usize,
    /// Set while the table is evicting live entries, so the warning is logged once per episode.
    evicting: bool,
    name: &'static str,
}

impl<K: Eq + Hash + Clone> Table<K> {
    fn new(capacity: usize, name: &'static str) -> Self {
        Table {
            records: HashMap::new(),
            by_activity: BTreeMap::new(),
            next_stamp: 0,
            capacity,
            evicting: false,
            name,
        }
    }

    fn stamp(&mut self) -> u64 {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        stamp
    }

    /// The record for `key`, refreshed and marked active, if there is one.
    fn get(&mut self, key: &K, now: Instant, window: Duration) -> Option<&mut Record> {
        let stamp = self.stamp();
        let entry = self.records.get_mut(key)?;
        if let Some(k) = self.by_activity.remove(&entry.stamp) {
            self.by_activity.insert(stamp, k);
        }
        entry.stamp = stamp;
        entry.record.refresh(now, window);
        Some(&mut entry.record)
    }

    /// The record for `key`, refreshed and marked active, created if missing. A full table makes
    /// room first, by evicting rather than leaving the new key untracked.
    fn get_or_insert(&mut self, key: &K, now: Instant, window: Duration) -> &mut Record {
        if !self.records.contains_key(key) {
            self.make_room(now, window);
            let stamp = self.stamp();
            self.by_activity.insert(stamp, key.clone());
            let record = Record::fresh(now);
            self.records.insert(key.clone(), Entry { record, stamp });
        }
        self.get(key, now, window)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Frees one place in a full table: an entry that has run out if one is among the
    /// [`EVICTION_SCAN`] idle the longest (any entry idle for a whole window has), else the entry
    /// idle the longest.
    fn make_room(&mut self, now: Instant, window: Duration) {
        if self.records.len() < self.capacity {
            self.evicting = false;
            return;
        }
        let dead = self
            .by_activity
            .iter()
            .take(EVICTION_SCAN)
            .find(|(_, key)| {
                self.records
                    .get(*key)
                    .is_some_and(|e| e.record.expired(now, window) && e.record.in_flight == 0)
            })
            .map(|(stamp, _)| *stamp);
        let victim = match dead {
            Some(stamp) => Some(stamp),
            None => {
                if !self.evicting {
                    self.evicting = true;
                    tracing::warn!(
                        table = self.name,
                        entries = self.records.len(),
                        "failed-login table full; evicting the entries idle the longest"
                    );
                }
                self.by_activity.keys().next().copied()
            }
        };
        if let Some(key) = victim.and_then(|stamp| self.by_activity.remove(&stamp)) {
            self.records.remove(&key);
        }
    }

    /// Drops the entry if it no longer carries anything.
    fn tidy(&mut self, key: &K) {
        if let Some(entry) = self.records.get(key) {
            if entry.record.idle() {
                self.by_activity.remove(&entry.stamp);
                self.records.remove(key);
            }
        }
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    #[cfg(test)]
    fn peek(&self, key: &K) -> Option<&Record> {
        self.records.get(key).map(|e| &e.record)
    }
}

/// Both tables, behind one lock so an attempt is reserved in both or in neither.
struct Tables {
    users: Table<UserKey>,
    addresses: Table<IpAddr>,
}

/// After `per_user` failed logins for one user from one address within `window`, that user is
/// refused from that address for `window` (counted from the failure that reached the limit);
/// after `per_address` failures from one address over all users, the whole address is. A success
/// clears only its own (address, user) count. `per_user == 0` turns throttling off;
/// `per_address == 0` turns off only the address-wide limit.
pub struct LoginThrottle {
    per_user: u32,
    per_address: u32,
    window: Duration,
    tables: Mutex<Tables>,
    changed: Notify,
}

impl fmt::Debug for LoginThrottle {
    /// Limits and table sizes only: the tables hold client-supplied user names, and up to
    /// [`MAX_TRACKED`] entries each. Never waits for the lock, so it cannot deadlock.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes = match self.tables.try_lock() {
            Ok(t) => Some((t.users.len(), t.addresses.len())),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let t = p.into_inner();
                Some((t.users.len(), t.addresses.len()))
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        f.debug_struct("LoginThrottle")
            .field("per_user", &self.per_user)
            .field("per_address", &self.per_address)
            .field("window", &self.window)
            .field("tracked (users, addresses)", &sizes)
            .finish_non_exhaustive()
    }
}

impl LoginThrottle {
    /// `per_user`: failures for one (address, user) before that user is refused from that
    /// address (0 = throttling off entirely); `per_address`: failures from one address over all
    /// users before the whole address is refused (0 = no address-wide limit).
    pub fn new(per_user: u32, per_address: u32, window: Duration) -> Self {
        Self::with_capacity(per_user, per_address, window, MAX_TRACKED)
    }

    fn with_capacity(per_user: u32, per_address: u32, window: Duration, capacity: usize) -> Self {
        LoginThrottle {
            per_user,
            per_address,
            window: window.min(MAX_WINDOW),
            tables: Mutex::new(Tables {
                users: Table::new(capacity, "per-user"),
                addresses: Table::new(capacity, "per-address"),
            }),
            changed: Notify::new(),
        }
    }

    /// Whether the whole address is blocked (checked when a connection arrives).
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.is_blocked_at(ip, Instant::now())
    }

    /// Decides on a login attempt for `user` from `ip`; `Go` reserves a place (counted as in
    /// flight against both limits) until [`settle`](Self::settle).
    pub fn admit(&self, ip: IpAddr, user: &str) -> Admission {
        self.admit_at(ip, user, Instant::now())
    }

    /// Reports the result of an admitted attempt.
    pub fn settle(&self, ip: IpAddr, user: &str, outcome: Outcome) -> Verdict {
        self.settle_at(ip, user, outcome, Instant::now())
    }

    /// Notified whenever an attempt is settled, so a caller that got `Wait` can wait for a change
    /// instead of polling. Create the `notified()` future before calling `admit`, or a settle in
    /// between is missed; a window running out is not notified, so wait with a deadline too.
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    fn enabled(&self) -> bool {
        self.per_user > 0
    }

    fn address_limit(&self) -> bool {
        self.per_address > 0
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // The tables hold plain counters, so a panic elsewhere cannot leave them inconsistent.
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_blocked_at(&self, ip: IpAddr, now: Instant) -> bool {
        if !self.enabled() || !self.address_limit() {
            return false;
        }
        let mut tables = self.lock();
        let blocked = tables
            .addresses
            .get(&ip, now, self.window)
            .is_some_and(|r| r.blocked());
        tables.addresses.tidy(&ip);
        blocked
    }

    fn admit_at(&self, ip: IpAddr, user: &str, now: Instant) -> Admission {
        if !self.enabled() {
            return Admission::Go;
        }
        let window = self.window;
        let key = UserKey::new(ip, user);
        let mut guard = self.lock();
        let tables = &mut *guard;

        let address = if self.address_limit() {
            tables.addresses.get(&ip, now, window).copied()
        } else {
            None
        };
        let pair = tables.users.get(&key, now, window).copied();
        let admission = if address.is_some_and(|r| r.blocked()) || pair.is_some_and(|r| r.blocked())
        {
            Admission::Blocked
        } else if address.is_some_and(|r| r.full(self.per_address))
            || pair.is_some_and(|r| r.full(self.per_user))
        {
            Admission::Wait
        } else {
            // Reserved in both tables, each made room for rather than skipped when full.
            tables.users.get_or_insert(&key, now, window).in_flight += 1;
            if self.address_limit() {
                tables.addresses.get_or_insert(&ip, now, window).in_flight += 1;
            }
            Admission::Go
        };
        // A refused attempt may have found its entries run out; drop them if so.
        tables.users.tidy(&key);
        tables.addresses.tidy(&ip);
        admission
    }

    fn settle_at(&self, ip: IpAddr, user: &str, outcome: Outcome, now: Instant) -> Verdict {
        if !self.enabled() {
            return Verdict::Open;
        }
        let verdict = self.settle_locked(ip, user, outcome, now);
        self.changed.notify_waiters();
        verdict
    }

    fn settle_locked(&self, ip: IpAddr, user: &str, outcome: Outcome, now: Instant) -> Verdict {
        let window = self.window;
        let key = UserKey::new(ip, user);
        let mut guard = self.lock();
        let tables = &mut *guard;

        // Free the reservations. An entry may be missing (evicted from a full table, or its
        // attempt never admitted); a failure is counted all the same, on a new entry.
        if let Some(r) = tables.users.get(&key, now, window) {
            r.in_flight = r.in_flight.saturating_sub(1);
        }
        if self.address_limit() {
            if let Some(r) = tables.addresses.get(&ip, now, window) {
                r.in_flight = r.in_flight.saturating_sub(1);
            }
        }

        let verdict = match outcome {
            Outcome::Unknown => Verdict::Open,
            Outcome::Success => {
                // Only this user's count at this address: the address-wide count runs out
                // with the window alone, and other users' counts are theirs.
                if let Some(r) = tables.users.get(&key, now, window) {
                    r.clear(now);
                }
                Verdict::Open
            }
            Outcome::Failure => {
                let user_blocked =
                    tables
                        .users
                        .get_or_insert(&key, now, window)
                        .fail(self.per_user, now, window);
                let address_blocked = self.address_limit()
                    && tables.addresses.get_or_insert(&ip, now, window).fail(
                        self.per_address,
                        now,
                        window,
                    );
                if address_blocked {
                    Verdict::AddressBlocked
                } else if user_blocked {
                    Verdict::UserBlocked
                } else {
                    Verdict::Open
                }
            }
        };
        tables.users.tidy(&key);
        tables.addresses.tidy(&ip);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
    const MIN: Duration = Duration::from_secs(60);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn fail(t: &LoginThrottle, ip: IpAddr, user: &str, at: Instant) -> Verdict {
        assert_eq!(t.admit_at(ip, user, at), Admission::Go);
        t.settle_at(ip, user, Outcome::Failure, at)
    }

    fn succeed(t: &LoginThrottle, ip: IpAddr, user: &str, at: Instant) {
        assert_eq!(t.admit_at(ip, user, at), Admission::Go);
        assert_eq!(t.settle_at(ip, user, Outcome::Success, at), Verdict::Open);
    }

    fn pair_failures(t: &LoginThrottle, ip: IpAddr, user: &str) -> Option<u32> {
        let tables = t.lock();
        tables
            .users
            .peek(&UserKey::new(ip, user))
            .map(|r| r.failures)
    }

    /// Every entry has exactly one place in its table's activity order.
    fn assert_consistent(t: &LoginThrottle) {
        let tables = t.lock();
        fn check<K: Eq + Hash + Clone + fmt::Debug>(table: &Table<K>) {
            assert_eq!(table.by_activity.len(), table.records.len());
            for (stamp, key) in &table.by_activity {
                assert_eq!(table.records.get(key).map(|e| e.stamp), Some(*stamp));
            }
            assert!(table.len() <= table.capacity);
        }
        check(&tables.users);
        check(&tables.addresses);
    }

    fn address_failures(t: &LoginThrottle, ip: IpAddr) -> Option<u32> {
        t.lock().addresses.peek(&ip).map(|r| r.failures)
    }

    #[test]
    fn blocks_a_user_after_n_failures_within_the_window() {
        let t = LoginThrottle::new(3, 0, MIN);
        let now = Instant::now();
        assert_eq!(fail(&t, A, "bob", now), Verdict::Open);
        assert_eq!(fail(&t, A, "bob", now + secs(10)), Verdict::Open);
        assert_eq!(t.admit_at(A, "bob", now + secs(11)), Admission::Go);
        t.settle_at(A, "bob", Outcome::Unknown, now + secs(11));
        assert_eq!(fail(&t, A, "bob", now + secs(20)), Verdict::UserBlocked);
        assert_eq!(t.admit_at(A, "bob", now + secs(21)), Admission::Blocked);
        assert_eq!(t.admit_at(B, "bob", now + secs(21)), Admission::Go);
        assert!(
            !t.is_blocked_at(A, now + secs(21)),
            "a user block is not an address block"
        );
    }

    /// Review finding 6: 4 guesses for bob, one login as alice, repeated.
    #[test]
    fn a_known_account_cannot_clear_another_users_failures() {
        let t = LoginThrottle::new(5, 0, MIN);
        let now = Instant::now();
        let mut refused = false;
        'rounds: for round in 0..10u64 {
            let at = now + secs(round);
            for _ in 0..4 {
                match t.admit_at(A, "bob", at) {
                    Admission::Go => {
                        t.settle_at(A, "bob", Outcome::Failure, at);
                    }
                    Admission::Blocked => {
                        refused = true;
                        break 'rounds;
                    }
                    Admission::Wait => unreachable!("nothing is in flight"),
                }
            }
            succeed(&t, A, "alice", at);
        }
        assert!(refused, "bob's guesses were refused in the second round");
        assert_eq!(t.admit_at(A, "bob", now + secs(30)), Admission::Blocked);
        assert_eq!(t.admit_at(A, "alice", now + secs(30)), Admission::Go);
    }

    #[test]
    fn a_success_clears_its_own_count_only() {
        let t = LoginThrottle::new(3, 10, MIN);
        let now = Instant::now();
        fail(&t, A, "bob", now);
        fail(&t, A, "bob", now);
        fail(&t, A, "alice", now);
        succeed(&t, A, "bob", now);
        assert_eq!(pair_failures(&t, A, "bob"), None, "own count cleared");
        assert_eq!(pair_failures(&t, A, "alice"), Some(1));
        assert_eq!(address_failures(&t, A), Some(3), "the address count stays");
        // bob gets his full allowance back.
        assert_eq!(fail(&t, A, "bob", now), Verdict::Open);
        assert_eq!(fail(&t, A, "bob", now), Verdict::Open);
        assert_eq!(fail(&t, A, "bob", now), Verdict::UserBlocked);
    }

    #[test]
    fn the_address_limit_blocks_every_user_there_and_no_other_address() {
        let t = LoginThrottle::new(3, 5, MIN);
        let now = Instant::now();
        for (i, user) in ["u1", "u2", "u3", "u4"].into_iter().enumerate() {
            assert_eq!(fail(&t, A, user, now + secs(i as u64)), Verdict::Open);
        }
        // Successes between guesses do not reduce the address count.
        succeed(&t, A, "alice", now + secs(5));
        assert_eq!(fail(&t, A, "u5", now + secs(6)), Verdict::AddressBlocked);
        assert!(t.is_blocked_at(A, now + secs(7)));
        assert_eq!(t.admit_at(A, "alice", now + secs(7)), Admission::Blocked);
        assert!(!t.is_blocked_at(B, now + secs(7)));
        assert_eq!(t.admit_at(B, "alice", now + secs(7)), Admission::Go);
    }

    #[test]
    fn address_blocked_outranks_user_blocked() {
        let t = LoginThrottle::new(2, 2, MIN);
        let now = Instant::now();
        assert_eq!(fail(&t, A, "bob", now), Verdict::Open);
        assert_eq!(fail(&t, A, "bob", now), Verdict::AddressBlocked);
    }

    /// Review finding 11e: many boxes share a carrier NAT's address.
    #[test]
    fn a_user_block_leaves_other_users_at_the_same_address_alone() {
        let t = LoginThrottle::new(5, 50, MIN);
        let now = Instant::now();
        for _ in 0..4 {
            assert_eq!(fail(&t, A, "bob", now), Verdict::Open);
        }
        assert_eq!(fail(&t, A, "bob", now), Verdict::UserBlocked);
        assert_eq!(t.admit_at(A, "bob", now), Admission::Blocked);
        assert!(!t.is_blocked_at(A, now));
        for i in 0..100 {
            succeed(&t, A, &format!("box{i}"), now);
        }
    }

    #[test]
    fn undecided_attempts_count_against_the_user_limit() {
        let t = LoginThrottle::new(3, 0, MIN);
        let now = Instant::now();
        fail(&t, A, "bob", now);
        assert_eq!(t.admit_at(A, "bob", now), Admission::Go);
        assert_eq!(t.admit_at(A, "bob", now), Admission::Go);
        assert_eq!(
            t.admit_at(A, "bob", now),
            Admission::Wait,
            "1 failure + 2 in flight"
        );
        assert_eq!(t.admit_at(A, "alice", now), Admission::Go, "per user");
        assert_eq!(t.settle_at(A, "bob", Outcome::Unknown, now), Verdict::Open);
        assert_eq!(t.admit_at(A, "bob", now), Admission::Go);
        assert_eq!(t.settle_at(A, "bob", Outcome::Failure, now), Verdict::Open);
        assert_eq!(
            t.settle_at(A, "bob", Outcome::Failure, now),
            Verdict::UserBlocked
        );
        assert_eq!(t.admit_at(A, "bob", now), Admission::Blocked);
    }

    #[test]
    fn undecided_attempts_count_against_the_address_limit() {
        let t = LoginThrottle::new(5, 3, MIN);
        let now = Instant::now();
        fail(&t, A, "u0", now);
        assert_eq!(t.admit_at(A, "u1", now), Admission::Go);
        assert_eq!(t.admit_at(A, "u2", now), Admission::Go);
        assert_eq!(t.admit_at(A, "u3", now), Admission::Wait);
        assert_eq!(t.admit_at(B, "u3", now), Admission::Go, "per address");
        assert_eq!(t.settle_at(A, "u1", Outcome::Failure, now), Verdict::Open);
        assert_eq!(
            t.settle_at(A, "u2", Outcome::Failure, now),
            Verdict::AddressBlocked
        );
        assert_eq!(t.admit_at(A, "u3", now), Admission::Blocked);
    }

    #[test]
    fn parallel_guesses_never_exceed_the_limits() {
        let t = LoginThrottle::new(3, 7, MIN);
        let now = Instant::now();
        // Ten connections per user, three users, all guessing at once.
        let mut admitted = Vec::new();
        for user in ["a", "b", "c"] {
            for _ in 0..10 {
                if t.admit_at(A, user, now) == Admission::Go {
                    admitted.push(user);
                }
            }
        }
        assert_eq!(admitted.len(), 7, "capped by the address limit");
        for user in ["a", "b", "c"] {
            assert!(admitted.iter().filter(|u| **u == user).count() <= 3);
        }
        for user in &admitted {
            t.settle_at(A, user, Outcome::Failure, now);
        }
        assert!(t.is_blocked_at(A, now));
        assert_eq!(address_failures(&t, A), Some(7));
    }

    #[test]
    fn a_block_lasts_one_window_from_the_failure_that_reached_the_limit() {
        let t = LoginThrottle::new(2, 3, MIN);
        let now = Instant::now();
        fail(&t, A, "bob", now);
        assert_eq!(fail(&t, A, "bob", now + secs(30)), Verdict::UserBlocked);
        assert_eq!(t.admit_at(A, "bob", now + secs(89)), Admission::Blocked);
        assert_eq!(t.admit_at(A, "bob", now + secs(90)), Admission::Go);
        assert_eq!(
            t.settle_at(A, "bob", Outcome::Failure, now + secs(90)),
            Verdict::Open,
            "count starts afresh"
        );

        // The address block, likewise.
        fail(&t, B, "u1", now);
        fail(&t, B, "u2", now + secs(10));
        assert_eq!(fail(&t, B, "u3", now + secs(20)), Verdict::AddressBlocked);
        assert!(t.is_blocked_at(B, now + secs(79)));
        assert!(!t.is_blocked_at(B, now + secs(80)));
        assert_eq!(t.admit_at(B, "u1", now + secs(80)), Admission::Go);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = LoginThrottle::new(2, 2, MIN);
        let now = Instant::now();
        assert_eq!(fail(&t, A, "bob", now), Verdict::Open);
        assert_eq!(fail(&t, A, "bob", now + secs(61)), Verdict::Open);
        assert_eq!(fail(&t, A, "bob", now + secs(62)), Verdict::AddressBlocked);
    }

    #[test]
    fn settled_idle_entries_are_dropped() {
        let t = LoginThrottle::new(3, 5, MIN);
        let now = Instant::now();
        assert_eq!(t.admit_at(A, "bob", now), Admission::Go);
        t.settle_at(A, "bob", Outcome::Unknown, now);
        succeed(&t, B, "bob", now);
        let tables = t.lock();
        assert_eq!((tables.users.len(), tables.addresses.len()), (0, 0));
    }

    #[test]
    fn a_failure_is_counted_even_without_an_entry() {
        // An entry can be evicted while its attempt is in flight; the failure still counts.
        let t = LoginThrottle::new(3, 5, MIN);
        let now = Instant::now();
        assert_eq!(t.settle_at(A, "bob", Outcome::Failure, now), Verdict::Open);
        assert_eq!(pair_failures(&t, A, "bob"), Some(1));
        assert_eq!(address_failures(&t, A), Some(1));
        t.settle_at(B, "bob", Outcome::Success, now);
        t.settle_at(B, "bob", Outcome::Unknown, now);
        assert_eq!(t.lock().users.len(), 1, "nothing else is tracked");
    }

    #[test]
    fn zero_turns_throttling_off() {
        let t = LoginThrottle::new(0, 1, MIN);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(t.admit_at(A, "bob", now), Admission::Go);
            assert_eq!(t.admit_at(A, "bob", now), Admission::Go);
            assert_eq!(t.settle_at(A, "bob", Outcome::Failure, now), Verdict::Open);
        }
        assert!(!t.is_blocked_at(A, now));
        let tables = t.lock();
        assert_eq!((tables.users.len(), tables.addresses.len()), (0, 0));
    }

    #[test]
    fn zero_per_address_leaves_only_the_user_limit() {
        let t = LoginThrottle::new(2, 0, MIN);
        let now = Instant::now();
        for i in 0..100 {
            assert_eq!(fail(&t, A, &format!("u{i}"), now), Verdict::Open);
        }
        assert!(!t.is_blocked_at(A, now));
        assert_eq!(t.lock().addresses.len(), 0);
        assert_eq!(fail(&t, A, "u0", now), Verdict::UserBlocked);
    }

    #[test]
    fn long_user_names_are_cut_in_the_key() {
        let t = LoginThrottle::new(2, 0, MIN);
        let now = Instant::now();
        let long = "é".repeat(10_000); // 2-byte characters: the cut lands on a boundary
        let longer = format!("{long}x");
        fail(&t, A, &long, now);
        assert_eq!(fail(&t, A, &longer, now), Verdict::UserBlocked);
        let tables = t.lock();
        let key = tables.users.records.keys().next().map(|k| k.user.len());
        assert_eq!(key, Some(MAX_USER_KEY));
    }

    #[test]
    fn debug_shows_no_user_names() {
        let t = LoginThrottle::new(3, 5, MIN);
        fail(&t, A, "secret-looking-name", Instant::now());
        let shown = format!("{t:?}");
        assert!(shown.contains("Some((1, 1))"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn huge_windows_do_not_overflow() {
        let t = LoginThrottle::new(1, 1, Duration::MAX);
        assert_eq!(t.admit(A, "bob"), Admission::Go);
        assert_eq!(
            t.settle(A, "bob", Outcome::Failure),
            Verdict::AddressBlocked
        );
        assert!(t.is_blocked(A));
    }

    /// Review finding 11b: a full table used to let new addresses through untracked.
    #[test]
    fn a_full_table_evicts_rather_than_failing_open() {
        let t = LoginThrottle::with_capacity(2, 3, MIN, 4);
        let now = Instant::now();
        let ip = |i: u32| IpAddr::V4(i.into());
        for i in 0..4 {
            fail(&t, ip(i), "bob", now + secs(u64::from(i)));
        }
        // The table is full, nothing has run out: the newcomer is tracked all the same...
        assert_eq!(fail(&t, A, "bob", now + secs(10)), Verdict::Open);
        assert_eq!(fail(&t, A, "bob", now + secs(11)), Verdict::UserBlocked);
        assert_eq!(t.admit_at(A, "bob", now + secs(12)), Admission::Blocked);
        // ...in place of the entry idle the longest.
        let tables = t.lock();
        assert_eq!((tables.users.len(), tables.addresses.len()), (4, 4));
        assert!(!tables.addresses.records.contains_key(&ip(0)));
        assert!(tables.addresses.records.contains_key(&ip(1)));
        assert!(!tables
            .users
            .records
            .contains_key(&UserKey::new(ip(0), "bob")));
    }

    #[test]
    fn a_full_table_evicts_run_out_entries_before_older_live_ones() {
        let t = LoginThrottle::with_capacity(2, 3, MIN, 4);
        let now = Instant::now();
        let ip = |i: u32| IpAddr::V4(i.into());
        // ip(0)'s window starts at 0 but it was active at 50; the others started later and are
        // live at 65, ip(1) being the one idle the longest.
        fail(&t, ip(0), "bob", now);
        for i in 1..4 {
            fail(&t, ip(i), "bob", now + secs(10 * u64::from(i)));
        }
        assert_eq!(t.admit_at(ip(0), "bob", now + secs(50)), Admission::Go);
        t.settle_at(ip(0), "bob", Outcome::Unknown, now + secs(50));
        assert_eq!(address_failures(&t, ip(0)), Some(1));

        fail(&t, A, "bob", now + secs(65));
        assert_eq!(address_failures(&t, ip(0)), None, "run out: evicted first");
        assert_eq!(address_failures(&t, ip(1)), Some(1));
        fail(&t, B, "bob", now + secs(66));
        assert_eq!(
            address_failures(&t, ip(1)),
            None,
            "then the oldest live one"
        );
        assert_eq!(address_failures(&t, ip(2)), Some(1));
        assert_consistent(&t);
    }

    #[test]
    fn the_tables_are_bounded_at_full_size() {
        let t = LoginThrottle::new(5, 50, MIN);
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            fail(&t, IpAddr::V4(i.into()), "bob", now);
        }
        assert_consistent(&t);
        let tables = t.lock();
        assert_eq!(tables.users.len(), MAX_TRACKED);
        assert_eq!(tables.addresses.len(), MAX_TRACKED);
    }

    #[test]
    fn churn_keeps_the_tables_consistent() {
        let t = LoginThrottle::with_capacity(3, 5, MIN, 16);
        let now = Instant::now();
        let outcomes = [Outcome::Failure, Outcome::Success, Outcome::Unknown];
        for i in 0..2_000u32 {
            let ip = IpAddr::V4((i % 23).into());
            let user = format!("u{}", i % 7);
            let at = now + secs(u64::from(i / 10));
            if t.admit_at(ip, &user, at) == Admission::Go {
                t.settle_at(ip, &user, outcomes[(i % 3) as usize], at);
            }
            t.is_blocked_at(ip, at);
            assert_consistent(&t);
        }
    }

    #[tokio::test]
    async fn settling_notifies_waiters() {
        let t = LoginThrottle::new(1, 0, MIN);
        let now = Instant::now();
        assert_eq!(t.admit_at(A, "bob", now), Admission::Go);
        let notified = t.changed().notified();
        assert_eq!(t.admit_at(A, "bob", now), Admission::Wait);
        t.settle_at(A, "bob", Outcome::Unknown, now);
        // Ready on its first poll: the settle came after the future was created.
        assert!(tokio::time::timeout(Duration::ZERO, notified).await.is_ok());
        assert_eq!(t.admit_at(A, "bob", now), Admission::Go);
    }
}
