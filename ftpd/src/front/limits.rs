//! Bounds on what clients can hold: connection counts per address and in total, and TCP
//! keepalive so that a box that lost power is noticed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, seen on dual-stack sockets) to IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Interval between keepalive probes once they start, and how many may go unanswered.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
const PROBES: u32 = 6;

/// Turns on TCP keepalive: after `idle` of silence the kernel probes the peer and resets the
/// connection if it does not answer, which wakes whatever waits on the socket.
pub fn keepalive(stream: &TcpStream, idle: Option<Duration>) {
    let Some(idle) = idle else { return };
    let params = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(PROBE_INTERVAL)
        .with_retries(PROBES);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&params) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_address` are open from this address.
    Address,
}

/// Counts open control connections, in total and per address.
#[derive(Debug)]
pub struct Connections {
    max_total: u32,
    max_per_address: u32,
    open: Mutex<(u32, HashMap<IpAddr, u32>)>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    table: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    pub fn new(max_total: u32, max_per_address: u32) -> Arc<Self> {
        Arc::new(Connections {
            max_total,
            max_per_address,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u32, HashMap<IpAddr, u32>)> {
        // Plain counters: a panic elsewhere cannot leave them half-written.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `ip`, or says which limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let mut open = self.lock();
        if open.0 >= self.max_total {
            return Err(Refusal::Total);
        }
        let n = open.1.entry(ip).or_insert(0);
        if *n >= self.max_per_address {
            return Err(Refusal::Address);
        }
        *n += 1;
        open.0 += 1;
        Ok(Admitted {
            table: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.lock().0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn per_address_and_total_caps_hold_and_places_come_back() {
        let c = Connections::new(3, 2);
        let a1 = c.admit(A).expect("first");
        let _a2 = c.admit(A).expect("second");
        assert_eq!(c.admit(A).unwrap_err(), Refusal::Address);
        let _b1 = c.admit(B).expect("other address");
        assert_eq!(c.admit(B).unwrap_err(), Refusal::Total);
        drop(a1);
        assert_eq!(c.open(), 2);
        let _a3 = c.admit(A).expect("place freed");
    }

    #[test]
    fn the_table_forgets_addresses_with_nothing_open() {
        let c = Connections::new(10, 10);
        drop(c.admit(A).expect("admit"));
        assert!(c.lock().1.is_empty());
    }
}
