//! The login cache: which (user, password, stored PBKDF2 record) triples were verified lately,
//! so a box that logged in before costs one HMAC instead of one PBKDF2 the next time.
//!
//! Nothing in it can be turned back into a password faster than the users file can: an entry is
//! HMAC-SHA256 under a key drawn at start-up that never leaves the process, over the user name,
//! the password and the stored record (salt, hash, rounds), so an entry matches only that exact
//! user and password against that exact record. Only checks that succeeded are inserted. Entries
//! live for a fixed time from their insertion, the cache holds at most `capacity` of them (the
//! oldest goes first), and [`LoginCache::clear`] drops them all when the users file changes.

use ring::hmac;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a login presented, bound to the stored record: the HMAC input. Built per login and
/// dropped with it; only its HMAC is kept.
pub(super) struct Presented(Vec<u8>);

impl Presented {
    /// Each field length-prefixed, so no two different triples give the same bytes.
    pub(super) fn new(user: &str, password: &str, salt: &[u8], hash: &[u8], rounds: u32) -> Self {
        let fields: [&[u8]; 6] = [
            b"ftpd login cache v1",
            user.as_bytes(),
            password.as_bytes(),
            salt,
            hash,
            &rounds.to_be_bytes(),
        ];
        let mut m = Vec::with_capacity(fields.iter().map(|f| 8 + f.len()).sum());
        for f in fields {
            m.extend_from_slice(&(f.len() as u64).to_be_bytes());
            m.extend_from_slice(f);
        }
        Presented(m)
    }
}

struct Entry {
    tag: hmac::Tag,
    at: Instant,
}

struct Inner {
    /// The users-file version the entries belong to; a lookup or insertion for another misses.
    generation: u64,
    entries: HashMap<String, Entry>,
    /// User names in insertion order, one per entry: the oldest is the next to expire and the
    /// first to be evicted.
    order: VecDeque<(Instant, String)>,
    /// The latest time seen, so insertion times never go backwards whatever the callers' clocks.
    latest: Option<Instant>,
}

/// Verified logins, one entry per user name. See the module documentation.
pub(super) struct LoginCache {
    key: hmac::Key,
    capacity: usize,
    lifetime: Duration,
    inner: Mutex<Inner>,
}

impl fmt::Debug for LoginCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginCache")
            .field("capacity", &self.capacity)
            .field("lifetime", &self.lifetime)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl LoginCache {
    /// An empty cache for users-file version `generation`, with a fresh random key. A capacity
    /// or lifetime of zero disables it.
    pub(super) fn new(
        capacity: usize,
        lifetime: Duration,
        generation: u64,
    ) -> Result<Self, ring::error::Unspecified> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())?;
        Ok(LoginCache {
            key,
            capacity,
            lifetime,
            inner: Mutex::new(Inner {
                generation,
                entries: HashMap::new(),
                order: VecDeque::new(),
                latest: None,
            }),
        })
    }

    /// Changes the bounds, dropping every entry.
    pub(super) fn configure(&mut self, capacity: usize, lifetime: Duration) {
        self.capacity = capacity;
        self.lifetime = lifetime;
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        inner.entries.clear();
        inner.order.clear();
    }

    pub(super) fn enabled(&self) -> bool {
        self.capacity > 0 && !self.lifetime.is_zero()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries held now (expired ones may still count until the next lookup or insertion).
    pub(super) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when `user` presented exactly what was verified for them within the lifetime, for
    /// users-file version `generation`. The comparison is HMAC verification, in constant time.
    pub(super) fn contains(
        &self,
        generation: u64,
        user: &str,
        presented: &Presented,
        now: Instant,
    ) -> bool {
        if !self.enabled() {
            return false;
        }
        let tag = {
            let mut inner = self.lock();
            let now = inner.advance(now);
            inner.expire(now, self.lifetime);
            if inner.generation != generation {
                return false;
            }
            match inner.entries.get(user) {
                Some(e) if now.saturating_duration_since(e.at) < self.lifetime => e.tag,
                _ => return false,
            }
        };
        hmac::verify(&self.key, &presented.0, tag.as_ref()).is_ok()
    }

    /// Records a successful check. Call it only after PBKDF2 accepted the password.
    pub(super) fn insert(&self, generation: u64, user: &str, presented: &Presented, now: Instant) {
        if !self.enabled() {
            return;
        }
        let tag = hmac::sign(&self.key, &presented.0);
        let mut inner = self.lock();
        // A check that began before the users file changed belongs to no current version.
        if inner.generation != generation {
            return;
        }
        let now = inner.advance(now);
        inner.expire(now, self.lifetime);
        if let Some(e) = inner.entries.get_mut(user) {
            // Checked again before a concurrent check's entry appeared: keep its place (and
            // its earlier expiry).
            e.tag = tag;
            return;
        }
        while inner.entries.len() >= self.capacity {
            let Some((_, oldest)) = inner.order.pop_front() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
        inner.order.push_back((now, user.to_string()));
        inner
            .entries
            .insert(user.to_string(), Entry { tag, at: now });
    }

    /// Drops every entry; from now on only users-file version `generation` is served.
    /// Returns how many entries there were.
    pub(super) fn clear(&self, generation: u64) -> usize {
        let mut inner = self.lock();
        let n = inner.entries.len();
        inner.generation = generation;
        inner.entries = HashMap::new();
        inner.order = VecDeque::new();
        n
    }
}

impl Inner {
    fn advance(&mut self, now: Instant) -> Instant {
        let now = self.latest.map_or(now, |l| l.max(now));
        self.latest = Some(now);
        now
    }

    /// Removes the entries older than `lifetime`: all at the front, since insertion times only
    /// grow.
    fn expire(&mut self, now: Instant, lifetime: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < lifetime {
                break;
            }
            if let Some((_, user)) = self.order.pop_front() {
                self.entries.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn p(user: &str, password: &str) -> Presented {
        Presented::new(user, password, b"salt", b"hash", 1000)
    }

    #[test]
    fn a_hit_needs_the_same_user_password_and_record() {
        let c = LoginCache::new(10, HOUR, 0).unwrap();
        let t = Instant::now();
        assert!(!c.contains(0, "a", &p("a", "pw"), t), "empty");
        c.insert(0, "a", &p("a", "pw"), t);
        assert!(c.contains(0, "a", &p("a", "pw"), t));
        assert!(!c.contains(0, "a", &p("a", "pw2"), t));
        assert!(!c.contains(0, "a", &p("a", "p"), t));
        assert!(!c.contains(0, "b", &p("b", "pw"), t), "another user");
        assert!(
            !c.contains(0, "b", &p("a", "pw"), t),
            "another user's entry"
        );
        for other in [
            Presented::new("a", "pw", b"salt2", b"hash", 1000),
            Presented::new("a", "pw", b"salt", b"hash2", 1000),
            Presented::new("a", "pw", b"salt", b"hash", 1001),
        ] {
            assert!(!c.contains(0, "a", &other, t), "another stored record");
        }
        // Length prefixes: moving bytes between fields gives another input.
        assert_ne!(
            Presented::new("ab", "c", b"s", b"h", 1).0,
            Presented::new("a", "bc", b"s", b"h", 1).0
        );
        assert!(!c.contains(1, "a", &p("a", "pw"), t), "another generation");
    }

    #[test]
    fn entries_expire_after_their_lifetime_and_hits_do_not_extend_it() {
        let c = LoginCache::new(10, HOUR, 0).unwrap();
        let t = Instant::now();
        c.insert(0, "a", &p("a", "pw"), t);
        c.insert(0, "b", &p("b", "pw"), t + HOUR / 2);
        assert!(c.contains(0, "a", &p("a", "pw"), t + HOUR - Duration::from_secs(1)));
        assert!(!c.contains(0, "a", &p("a", "pw"), t + HOUR));
        assert_eq!(
            c.len(),
            1,
            "the expired entry is gone, the younger one stays"
        );
        assert!(c.contains(0, "b", &p("b", "pw"), t + HOUR));
        assert!(!c.contains(0, "b", &p("b", "pw"), t + HOUR * 3 / 2));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_clock_that_goes_backwards_cannot_revive_an_entry() {
        let c = LoginCache::new(10, HOUR, 0).unwrap();
        let t = Instant::now();
        c.insert(0, "a", &p("a", "pw"), t);
        assert!(!c.contains(0, "a", &p("a", "pw"), t + HOUR));
        assert!(!c.contains(0, "a", &p("a", "pw"), t));
        // An insertion stamped in the past counts as now.
        c.insert(0, "b", &p("b", "pw"), t);
        assert!(!c.contains(0, "b", &p("b", "pw"), t + HOUR * 2));
    }

    #[test]
    fn the_oldest_entry_goes_when_full() {
        let c = LoginCache::new(3, HOUR, 0).unwrap();
        let t = Instant::now();
        for (i, u) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            c.insert(0, u, &p(u, "pw"), t + Duration::from_secs(i as u64));
            assert!(c.len() <= 3);
        }
        let at = t + Duration::from_secs(10);
        let held: Vec<_> = ["a", "b", "c", "d", "e"]
            .into_iter()
            .filter(|u| c.contains(0, u, &p(u, "pw"), at))
            .collect();
        assert_eq!(held, ["c", "d", "e"]);
        // Inserting a held user again neither grows the cache nor evicts anyone.
        c.insert(0, "c", &p("c", "pw"), at);
        assert_eq!(c.len(), 3);
        assert!(c.contains(0, "d", &p("d", "pw"), at));
    }

    #[test]
    fn clearing_drops_everything_and_stale_insertions() {
        let c = LoginCache::new(10, HOUR, 0).unwrap();
        let t = Instant::now();
        c.insert(0, "a", &p("a", "pw"), t);
        assert_eq!(c.clear(1), 1);
        assert!(!c.contains(0, "a", &p("a", "pw"), t));
        assert!(!c.contains(1, "a", &p("a", "pw"), t));
        // A check that began on the previous version finishes after the change: not kept.
        c.insert(0, "a", &p("a", "pw"), t);
        assert_eq!(c.len(), 0);
        c.insert(1, "a", &p("a", "pw"), t);
        assert!(c.contains(1, "a", &p("a", "pw"), t));
    }

    #[test]
    fn a_zero_capacity_or_lifetime_disables_it() {
        let t = Instant::now();
        for c in [
            LoginCache::new(0, HOUR, 0).unwrap(),
            LoginCache::new(10, Duration::ZERO, 0).unwrap(),
        ] {
            assert!(!c.enabled());
            c.insert(0, "a", &p("a", "pw"), t);
            assert_eq!(c.len(), 0);
            assert!(!c.contains(0, "a", &p("a", "pw"), t));
        }
    }

    #[test]
    fn keys_differ_per_cache() {
        // Each process (each cache) draws its own key: an entry means nothing to another.
        let (a, b) = (
            LoginCache::new(10, HOUR, 0).unwrap(),
            LoginCache::new(10, HOUR, 0).unwrap(),
        );
        let x = p("a", "pw");
        assert_ne!(
            hmac::sign(&a.key, &x.0).as_ref(),
            hmac::sign(&b.key, &x.0).as_ref()
        );
    }
}
