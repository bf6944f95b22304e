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
    expires: Instant,
}

/// Promises by (public port, client address).
#[derive(Debug)]
pub struct PassiveTable<L> {
    ports: Vec<u16>,
    next: AtomicUsize,
    promises: Mutex<HashMap<(u16, IpAddr), Promise<L>>>,
    ids: AtomicU64,
}

impl<L: Clone> PassiveTable<L> {
    /// A table over the ports the front could bind.
    pub fn new(ports: Vec<u16>) -> Arc<Self> {
        Arc::new(PassiveTable {
            ports,
            next: AtomicUsize::new(0),
            promises: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(1),
        })
    }

    /// A fresh session identity.
    pub fn session_id(&self) -> SessionId {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u16, IpAddr), Promise<L>>> {
        // Plain map entries: a panic elsewhere cannot leave one half-written.
        self.promises
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Promises a public port to `session` for a connection from `client`, replacing the
    /// session's earlier promise (a client that sends `PASV` twice uses the second answer).
    /// `None` when every port already has a live promise to this address.
    pub fn promise(
        &self,
        session: SessionId,
        client: IpAddr,
        backend: SocketAddr,
        link: L,
    ) -> Option<u16> {
        self.promise_at(session, client, backend, link, Instant::now())
    }

    fn promise_at(
        &self,
        session: SessionId,
        client: IpAddr,
        backend: SocketAddr,
        link: L,
        now: Instant,
    ) -> Option<u16> {
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
            Promise {
                session,
                backend,
                link,
                expires: now + PROMISE_TTL,
            },
        );
        Some(port)
    }

    /// The promise for a connection from `client` to `port`, taken: a second connection to the
    /// same promise finds nothing.
    pub fn take(&self, port: u16, client: IpAddr) -> Option<Promise<L>> {
        self.take_at(port, client, Instant::now())
    }

    fn take_at(&self, port: u16, client: IpAddr, now: Instant) -> Option<Promise<L>> {
        let mut promises = self.lock();
        let promise = promises.remove(&(port, client))?;
        (promise.expires > now).then_some(promise)
    }

    /// Withdraws `session`'s promise, if it still has one (its control connection ended).
    pub fn withdraw(&self, session: SessionId) {
        self.lock().retain(|_, p| p.session != session);
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

    #[test]
    fn sessions_of_one_address_never_share_a_port() {
        let t = PassiveTable::new(vec![1, 2, 3]);
        let now = Instant::now();
        let mut got: Vec<u16> = (0..3)
            .map(|s| t.promise_at(s, A, backend(900 + s as u16), s, now))
            .map(|p| p.expect("a free port"))
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![1, 2, 3]);
        // Every port is promised to this address: a fourth session gets none...
        assert_eq!(t.promise_at(3, A, backend(903), 3, now), None);
        // ...but another address may use the same ports.
        assert!(t.promise_at(4, B, backend(904), 4, now).is_some());
    }

    #[test]
    fn a_connection_reaches_only_the_session_that_was_promised_the_port() {
        let t = PassiveTable::new(vec![1, 2]);
        let now = Instant::now();
        let p1 = t.promise_at(1, A, backend(901), "one", now).expect("port");
        let p2 = t.promise_at(2, A, backend(902), "two", now).expect("port");
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

    /// The race that mixed uploads in libunftp's switchboard: session 1's port is taken and then
    /// promised to session 2; session 1 ending must not remove session 2's promise.
    #[test]
    fn an_ending_session_cannot_withdraw_a_port_now_promised_to_another() {
        let t = PassiveTable::new(vec![7]);
        let now = Instant::now();
        assert_eq!(t.promise_at(1, A, backend(901), 1, now), Some(7));
        assert!(t.take_at(7, A, now).is_some());
        assert_eq!(t.promise_at(2, A, backend(902), 2, now), Some(7));
        t.withdraw(1);
        assert_eq!(t.take_at(7, A, now).expect("still promised").session, 2);
    }

    #[test]
    fn a_second_pasv_replaces_the_first_promise() {
        let t = PassiveTable::new(vec![1, 2, 3]);
        let now = Instant::now();
        let first = t.promise_at(1, A, backend(901), 1, now).expect("port");
        let second = t.promise_at(1, A, backend(902), 1, now).expect("port");
        assert_eq!(t.pending(), 1);
        assert!(t.take_at(first, A, now).is_none() || first == second);
        assert_eq!(t.take_at(second, A, now).expect("p").backend, backend(902));
    }

    #[test]
    fn promises_expire_and_free_their_port() {
        let t = PassiveTable::new(vec![5]);
        let now = Instant::now();
        assert!(t.promise_at(1, A, backend(901), 1, now).is_some());
        let later = now + PROMISE_TTL + Duration::from_millis(1);
        assert!(t.take_at(5, A, later).is_none());
        assert!(t.promise_at(2, A, backend(902), 2, later).is_some());
    }

    #[test]
    fn withdraw_removes_only_the_own_promise() {
        let t = PassiveTable::new(vec![1, 2]);
        t.promise(1, A, backend(901), 1).expect("port");
        t.promise(2, A, backend(902), 2).expect("port");
        t.withdraw(1);
        assert_eq!(t.pending(), 1);
    }

    #[test]
    fn no_ports_no_promise() {
        let t = PassiveTable::<u8>::new(Vec::new());
        assert_eq!(t.promise(1, A, backend(1), 0), None);
    }
}
