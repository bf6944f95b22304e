//! The front's passive ports: which control session each one is promised to.
//!
//! libunftp runs in its ordinary mode behind the front and listens for each `PASV` on a port of
//! its own on loopback. The front announces one of its public passive ports instead and records
//! here that a connection from the client's address to that port belongs to that session and
//! goes to libunftp's port. A promise is taken by the first connection, is never shared by two
//! sessions of one address, expires with libunftp's listener, and only its own session can
//! withdraw it; so no data connection can reach a session other than the one that asked.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a promise waits for its connection: libunftp's passive listener gives up after 15 s.
pub const PROMISE_TTL: Duration = Duration::from_secs(15);

/// Identifies one control session for the table's bookkeeping.
pub type SessionId = u64;

/// What a data connection to a promised port is matched to.
#[derive(Debug, Clone)]
pub struct Promise<L> {
    /// The session that asked; only it may withdraw the promise.
    pub session: SessionId,
    /// libunftp's listener for that session's `PASV`.
    pub backend: SocketAddr,
    /// Whatever the data connection needs of its session (the front's session link).
    pub link: L,
}

/// A port held for a session whose `PASV` is on its way to libunftp.
#[derive(Debug, Clone)]
struct Entry<L> {
    session: SessionId,
    /// `None` until libunftp's reply names its listener.
    promise: Option<(SocketAddr, L)>,
    expires: Instant,
}

/// Promises by (public port, client address).
#[derive(Debug)]
pub struct PassiveTable<L> {
    ports: Vec<u16>,
    next: AtomicUsize,
    promises: Mutex<HashMap<(u16, IpAddr), Entry<L>>>,
    ids: AtomicU64,
    /// Signalled when a port is freed, for sessions waiting for one.
    freed: tokio::sync::Notify,
}

impl<L: Clone> PassiveTable<L> {
    /// A table over the ports the front could bind.
    pub fn new(ports: Vec<u16>) -> Arc<Self> {
        Arc::new(PassiveTable {
            ports,
            next: AtomicUsize::new(0),
            promises: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(1),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// A fresh session identity.
    pub fn session_id(&self) -> SessionId {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u16, IpAddr), Entry<L>>> {
        // Plain map entries: a panic elsewhere cannot leave one half-written.
        self.promises
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Holds a public port for `session` and a connection from `client`, replacing the
    /// session's earlier one (a client that sends `PASV` twice uses the second answer), waiting
    /// until `deadline` while every port has a live entry for this address. `None` if none
    /// came free in time.
    pub async fn reserve(
        &self,
        session: SessionId,
        client: IpAddr,
        deadline: tokio::time::Instant,
    ) -> Option<u16> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let now = Instant::now();
            if let Some(port) = self.reserve_at(session, client, now) {
                return Some(port);
            }
            // Entries also free their port by expiring, which nobody signals.
            let next = tokio::time::Instant::now() + Duration::from_millis(200);
            let _ = tokio::time::timeout_at(next.min(deadline), freed).await;
            if tokio::time::Instant::now() >= deadline {
                return self.reserve_at(session, client, Instant::now());
            }
        }
    }

    fn reserve_at(&self, session: SessionId, client: IpAddr, now: Instant) -> Option<u16> {
        if self.ports.is_empty() {
            return None;
        }
        let mut promises = self.lock();
        promises.retain(|_, p| p.session != session && p.expires > now);
        // Start where the last search ended, so ports are used in turn, not the first ones.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.ports.len();
        let port = (0..n)
            .map(|i| self.ports[(start + i) % n])
            .find(|port| !promises.contains_key(&(*port, client)))?;
        promises.insert(
            (port, client),
            Entry {
                session,
                promise: None,
                expires: now + PROMISE_TTL,
            },
        );
        Some(port)
    }

    /// Completes `session`'s reservation of `port` with libunftp's listener: from now on a
    /// connection from `client` to `port` goes there. `false` if the reservation is gone.
    pub fn promise(
        &self,
        session: SessionId,
        client: IpAddr,
        port: u16,
        backend: SocketAddr,
        link: L,
    ) -> bool {
        let mut promises = self.lock();
        match promises.get_mut(&(port, client)) {
            Some(e) if e.session == session && e.promise.is_none() => {
                e.promise = Some((backend, link));
                e.expires = Instant::now() + PROMISE_TTL;
                true
            }
            _ => false,
        }
    }

    /// The promise for a connection from `client` to `port`, taken: a second connection to the
    /// same promise finds nothing.
    pub fn take(&self, port: u16, client: IpAddr) -> Option<Promise<L>> {
        self.take_at(port, client, Instant::now())
    }

    fn take_at(&self, port: u16, client: IpAddr, now: Instant) -> Option<Promise<L>> {
        let mut promises = self.lock();
        match promises.get(&(port, client)) {
            // Reserved, but libunftp's reply is not in yet: not for the taking.
            Some(e) if e.promise.is_none() && e.expires > now => return None,
            None => return None,
            Some(_) => {}
        }
        let entry = promises.remove(&(port, client))?;
        drop(promises);
        self.freed.notify_waiters();
        let (backend, link) = entry.promise?;
        (entry.expires > now).then_some(Promise {
            session: entry.session,
            backend,
            link,
        })
    }

    /// Withdraws `session`'s reservation or promise, if it still has one (its control
    /// connection ended).
    pub fn withdraw(&self, session: SessionId) {
        self.lock().retain(|_, p| p.session != session);
        self.freed.notify_waiters();
    }

    /// Promises waiting for their connection (for tests and figures).
    pub fn pending(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    /// Reserves and promises in one step, as a session whose reply came at once.
    fn promise<L: Clone>(
        t: &PassiveTable<L>,
        s: SessionId,
        ip: IpAddr,
        b: u16,
        link: L,
        now: Instant,
    ) -> Option<u16> {
        let port = t.reserve_at(s, ip, now)?;
        assert!(t.promise(s, ip, port, backend(b), link));
        Some(port)
    }

    #[test]
    fn sessions_of_one_address_never_share_a_port() {
        let t = PassiveTable::new(vec![1, 2, 3]);
        let now = Instant::now();
        let mut got: Vec<u16> = (0..3)
            .map(|s| promise(&t, s, A, 900 + s as u16, s, now))
            .map(|p| p.expect("a free port"))
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3]);
        // Every port is held for this address: a fourth session gets none...
        assert_eq!(t.reserve_at(3, A, now), None);
        // ...but another address may use the same ports.
        assert!(promise(&t, 4, B, 904, 4, now).is_some());
    }

    #[test]
    fn a_connection_reaches_only_the_session_that_was_promised_the_port() {
        let t = PassiveTable::new(vec![1, 2]);
        let now = Instant::now();
        let p1 = promise(&t, 1, A, 901, "one", now).expect("port");
        let p2 = promise(&t, 2, A, 902, "two", now).expect("port");
        assert_ne!(p1, p2);
        let got = t.take_at(p2, A, now).expect("promise");
        assert_eq!(
            (got.session, got.backend, got.link),
            (2, backend(902), "two")
        );
        // Taken once: a second connection to the same port finds nothing.
        assert!(t.take_at(p2, A, now).is_none());
        // Another address cannot take a promise made to A.
        assert!(t.take_at(p1, B, now).is_none());
        assert_eq!(t.take_at(p1, A, now).expect("promise").link, "one");
    }

    #[test]
    fn a_reserved_port_is_not_taken_before_its_promise() {
        let t = PassiveTable::new(vec![1]);
        let now = Instant::now();
        let port = t.reserve_at(1, A, now).expect("port");
        assert!(t.take_at(port, A, now).is_none());
        // Still reserved: the reply can complete it.
        assert!(t.promise(1, A, port, backend(901), 1));
        assert!(t.take_at(port, A, now).is_some());
        // Only the session that reserved may complete a reservation.
        let port = t.reserve_at(2, A, now).expect("port");
        assert!(!t.promise(3, A, port, backend(903), 3));
    }

    /// The race that mixed uploads in libunftp's switchboard: session 1's port is taken and then
    /// promised to session 2; session 1 ending must not remove session 2's promise.
    #[test]
    fn an_ending_session_cannot_withdraw_a_port_now_promised_to_another() {
        let t = PassiveTable::new(vec![7]);
        let now = Instant::now();
        assert_eq!(promise(&t, 1, A, 901, 1, now), Some(7));
        assert!(t.take_at(7, A, now).is_some());
        assert_eq!(promise(&t, 2, A, 902, 2, now), Some(7));
        t.withdraw(1);
        assert_eq!(t.take_at(7, A, now).expect("still promised").session, 2);
    }

    #[test]
    fn a_second_pasv_replaces_the_first_promise() {
        let t = PassiveTable::new(vec![1, 2, 3]);
        let now = Instant::now();
        let first = promise(&t, 1, A, 901, 1, now).expect("port");
        let second = promise(&t, 1, A, 902, 1, now).expect("port");
        assert_eq!(t.pending(), 1);
        assert!(t.take_at(first, A, now).is_none() || first == second);
        assert_eq!(t.take_at(second, A, now).expect("p").backend, backend(902));
    }

    #[test]
    fn promises_expire_and_free_their_port() {
        let t = PassiveTable::new(vec![5]);
        let now = Instant::now();
        assert!(promise(&t, 1, A, 901, 1, now).is_some());
        let later = now + PROMISE_TTL + Duration::from_millis(1);
        assert!(t.take_at(5, A, later).is_none());
        assert!(promise(&t, 2, A, 902, 2, later).is_some());
    }

    #[test]
    fn withdraw_removes_only_the_own_promise() {
        let t = PassiveTable::new(vec![1, 2]);
        let now = Instant::now();
        promise(&t, 1, A, 901, 1, now).expect("port");
        promise(&t, 2, A, 902, 2, now).expect("port");
        t.withdraw(1);
        assert_eq!(t.pending(), 1);
    }

    #[tokio::test]
    async fn a_session_waits_for_a_port_to_come_free() {
        let t = PassiveTable::new(vec![1]);
        let now = Instant::now();
        promise(&t, 1, A, 901, 1, now).expect("port");
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                t.reserve(2, A, deadline).await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(t.take(1, A).is_some());
        assert_eq!(waiter.await.expect("join"), Some(1));
        // With nothing freed, the wait ends at the deadline.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        assert_eq!(t.reserve(3, A, deadline).await, None);
    }

    #[test]
    fn no_ports_no_promise() {
        let t = PassiveTable::<u8>::new(Vec::new());
        assert_eq!(t.reserve_at(1, A, Instant::now()), None);
    }
}
