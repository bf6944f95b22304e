//! Passive data connections: matched to the session that was promised the port, then handed to
//! the upload path (plain uploads) or relayed to that session's libunftp listener.

use super::control::{connect_backend, DataRoute, DataUse};
use super::limits::{canonical, keepalive};
use super::line::Direction;
use super::passive::{PassiveTable, PROMISE_TTL};
use crate::handoff::Handoff;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What every data connection needs.
#[derive(Debug, Clone)]
pub(super) struct DataSettings {
    pub passive: Arc<PassiveTable<DataRoute>>,
    pub handoff: Option<Arc<Handoff>>,
    /// A relayed connection with no byte either way for this long is closed.
    pub idle: Duration,
    pub keepalive: Option<Duration>,
}

/// How long after its back-end connection was made a data connection may be reset.
const EARLY_RESET_DELAY: Duration = Duration::from_millis(500);

/// Serves one connection to passive port `port`.
pub(super) async fn data_connection(
    mut client: TcpStream,
    peer: SocketAddr,
    port: u16,
    settings: DataSettings,
) {
    let peer = canonical(peer);
    let Some(promise) = settings.passive.take(port, peer.ip()) else {
        // Nobody from this address was sent here (or the promise was used or expired): no
        // session is behind it, so nothing may be held for it.
        tracing::info!(port, "data connection matches no passive reply; closed");
        return;
    };
    keepalive(&client, settings.keepalive);
    if promise.link.link.data_tls() && !opens_tls(&client, settings.idle).await {
        // libunftp's TLS handshake on a data connection panics its transfer (leaving the
        // session without a reply) when the client sends anything else or nothing.
        tracing::info!("TLS data connection that does not start a handshake; closed");
        return;
    }
    let mut server = match connect_backend(promise.backend).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(backend = %promise.backend, error = %e, "session's data listener unreachable");
            return;
        }
    };
    let connected = Instant::now();
    let route = promise.link;
    // The session's next transfer command says what the connection is for. Only a plain upload
    // skips the relay (a download must never be read by the front and thrown away, and a TLS
    // data connection is libunftp's to decrypt); one the front refused is closed. Without
    // either to decide, the relay starts at once.
    let deadline = Instant::now() + PROMISE_TTL;
    let decide = settings.handoff.is_some() || route.link.tls_required();
    let transfer = match decide {
        true => route.link.transfer_after(route.after, deadline).await,
        false => None,
    };
    match transfer {
        Some(DataUse::Refused) => {
            tracing::info!("transfer refused without PROT P; data connection closed");
            return;
        }
        Some(DataUse::Transfer(Direction::Upload, false)) => {
            if let Some(handoff) = &settings.handoff {
                match hand_off(client, &mut server, handoff).await {
                    Ok(()) => return,
                    Err(returned) => client = returned,
                }
            }
        }
        _ => {}
    }
    match relay_data(&mut client, &mut server, settings.idle).await {
        Ok((up, down)) => tracing::debug!(bytes_in = up, bytes_out = down, "data connection done"),
        Err(e) => {
            // A connection that broke must not look finished to the other side: a reset link
            // would otherwise reach libunftp as a clean end of the upload. Reset both.
            tracing::debug!(error = %e, "data connection broke; resetting both sides");
            // libunftp reads the accepted socket's peer address before anything else and, if
            // that fails (a reset socket has none), drops the transfer without any reply, which
            // leaves the client waiting. A reset that comes very early waits a little first.
            tokio::time::sleep_until(connected + EARLY_RESET_DELAY).await;
            #[allow(deprecated)]
            for s in [&client, &server] {
                let _ = s.set_linger(Some(Duration::ZERO));
            }
        }
    }
}

/// The first byte of every TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Whether the client's first byte, within `wait`, can open a TLS handshake. Nothing is read.
async fn opens_tls(client: &TcpStream, wait: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, client.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE
    )
}

/// Parks an upload's client socket for the upload path and sends the ticket in its place, then
/// waits until libunftp closes the back-end connection. A socket nobody claimed is closed
/// then. If the ticket cannot be sent, the socket comes back for an ordinary relay.
async fn hand_off(
    client: TcpStream,
    server: &mut TcpStream,
    handoff: &Handoff,
) -> Result<(), TcpStream> {
    let ticket = match handoff.park(client) {
        Ok(t) => t,
        Err((e, client)) => {
            tracing::warn!(error = %e, "cannot hand the upload over; relaying it");
            return Err(client);
        }
    };
    if let Err(e) = server.write_all(ticket.as_bytes()).await {
        // Back to the relay, which then fails and resets both sides like any broken one.
        tracing::debug!(error = %e, "cannot send the upload's ticket");
        return match handoff.claim(&ticket) {
            Some(client) => Err(client),
            None => Ok(()),
        };
    }
    tracing::debug!("upload data connection handed over");
    // libunftp writes nothing on an upload's connection; it only closes it when done. Bytes
    // from it mean something else is going on: stop at once rather than read them.
    let mut one = [0u8; 1];
    let _ = server.read(&mut one).await;
    if handoff.claim(&ticket).is_some() {
        tracing::debug!("back-end closed before the upload was read; client connection closed");
    }
    Ok(())
}

/// Relays a data connection both ways; half-closes are forwarded, so a clean end stays a
/// clean end. No byte either way for `idle` ends it with an error.
#[cfg(target_os = "linux")]
async fn relay_data(
    client: &mut TcpStream,
    server: &mut TcpStream,
    idle: Duration,
) -> io::Result<(u64, u64)> {
    super::splice::relay(client, server, idle).await
}

/// Relays a data connection both ways through one fixed buffer per direction.
#[cfg(not(target_os = "linux"))]
async fn relay_data(
    client: &mut TcpStream,
    server: &mut TcpStream,
    _idle: Duration,
) -> io::Result<(u64, u64)> {
    const DATA_BUFFER: usize = 256 * 1024;
    tokio::io::copy_bidirectional_with_sizes(client, server, DATA_BUFFER, DATA_BUFFER).await
}
