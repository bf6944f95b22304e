//! Upload data connections handed from the front straight to the upload path.
//!
//! With the front on, every data connection crosses a second TCP connection on loopback so that
//! libunftp can match it to its session; relaying an upload that way costs about a third of the
//! server's CPU. Instead, once a data connection is plainly an upload, the front parks the
//! client's socket here and sends a [`Ticket`] down the back-end connection in place of the
//! bytes. libunftp hands that connection to `put` as usual; [`UploadSource`] finds the ticket in
//! the first bytes, takes the client's socket and reads the upload from it directly.
//!
//! Tickets are random and used once, so nothing arriving from a client can claim another
//! client's socket; bytes that are not a parked ticket are ordinary file data.

use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// Marks a ticket; random bytes follow.
const MAGIC: [u8; 8] = *b"\0ftpd>\x01\0";
/// Random part of a ticket.
const SECRET_LEN: usize = 16;
/// Bytes a ticket occupies at the start of a back-end data connection.
pub const TICKET_LEN: usize = MAGIC.len() + SECRET_LEN;

/// Proof of a parked connection, sent in-band to whoever will read the upload.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ticket([u8; TICKET_LEN]);

impl Ticket {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn secret(&self) -> [u8; SECRET_LEN] {
        let mut s = [0u8; SECRET_LEN];
        s.copy_from_slice(&self.0[MAGIC.len()..]);
        s
    }

    /// The ticket these bytes spell, if they carry the marker.
    fn parse(bytes: &[u8; TICKET_LEN]) -> Option<Ticket> {
        bytes.starts_with(&MAGIC).then_some(Ticket(*bytes))
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.write_str("Ticket(..)")
    }
}

/// Client sockets parked by the front until the upload path claims them.
pub struct Handoff {
    parked: Mutex<HashMap<[u8; SECRET_LEN], TcpStream>>,
    rng: SystemRandom,
}

impl Default for Handoff {
    fn default() -> Self {
        Handoff {
            parked: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("parked", &self.parked().len())
            .finish()
    }
}

impl Handoff {
    /// Parks `stream` under a fresh ticket. Without randomness the stream comes back.
    pub fn park(&self, stream: TcpStream) -> Result<Ticket, (io::Error, TcpStream)> {
        let mut bytes = [0u8; TICKET_LEN];
        bytes[..MAGIC.len()].copy_from_slice(&MAGIC);
        if self.rng.fill(&mut bytes[MAGIC.len()..]).is_err() {
            return Err((io::Error::other("no randomness for a ticket"), stream));
        }
        let ticket = Ticket(bytes);
        self.parked().insert(ticket.secret(), stream);
        Ok(ticket)
    }

    /// Takes the stream parked under `ticket`; a ticket works once.
    pub fn claim(&self, ticket: &Ticket) -> Option<TcpStream> {
        self.parked().remove(&ticket.secret())
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; SECRET_LEN], TcpStream>> {
        // The map stays consistent whatever a panicking holder was doing.
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An upload's bytes: from the client's own socket when the connection from libunftp starts
/// with a parked ticket, otherwise from that connection, first bytes included.
pub struct UploadSource<R> {
    inner: R,
    state: Source,
    /// The receive low-water mark asked for, and the one set on the client's socket.
    low_water: (usize, usize),
}

enum Source {
    /// Collecting the first bytes to see whether they are a ticket parked in `handoff`.
    Sniffing {
        buf: [u8; TICKET_LEN],
        len: usize,
        handoff: std::sync::Arc<Handoff>,
    },
    /// Not a ticket: the bytes collected are data and go out first.
    Replay {
        buf: [u8; TICKET_LEN],
        pos: usize,
        len: usize,
    },
    Inner,
    Client(TcpStream),
}

impl<R: AsyncRead + Unpin> UploadSource<R> {
    /// Reads `inner`, looking for a ticket first when `handoff` is given.
    pub fn new(inner: R, handoff: Option<std::sync::Arc<Handoff>>) -> Self {
        let state = match handoff {
            Some(handoff) => Source::Sniffing {
                buf: [0; TICKET_LEN],
                len: 0,
                handoff,
            },
            None => Source::Inner,
        };
        UploadSource {
            inner,
            state,
            low_water: (1, 1),
        }
    }

    /// Sets `SO_RCVLOWAT` on the client's socket once it is read directly, if it changed.
    fn apply_low_water(&mut self) {
        let (asked, set) = self.low_water;
        if let (Source::Client(client), true) = (&self.state, asked != set) {
            if let Err(e) = set_recv_low_water(client, asked) {
                tracing::debug!(error = %e, "SO_RCVLOWAT not set");
            }
            self.low_water.1 = asked;
        }
    }

    /// Whether the bytes now come from the client's socket directly.
    pub fn handed_off(&self) -> bool {
        matches!(self.state, Source::Client(_))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for UploadSource<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                Source::Sniffing { buf, len, handoff } => {
                    let mut rb = ReadBuf::new(&mut buf[*len..]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    *len += n;
                    if n > 0 && *len < TICKET_LEN {
                        continue;
                    }
                    let (buf, len) = (*buf, *len);
                    let parked = (len == TICKET_LEN)
                        .then(|| Ticket::parse(&buf))
                        .flatten()
                        .and_then(|ticket| handoff.claim(&ticket));
                    this.state = match parked {
                        Some(client) => {
                            tracing::debug!("upload reads the client's data connection directly");
                            this.state = Source::Client(client);
                            this.apply_low_water();
                            continue;
                        }
                        None => Source::Replay { buf, pos: 0, len },
                    };
                }
                Source::Replay { buf, pos, len } => {
                    if pos == len {
                        this.state = Source::Inner;
                        continue;
                    }
                    let n = (*len - *pos).min(out.remaining());
                    out.put_slice(&buf[*pos..*pos + n]);
                    *pos += n;
                    return Poll::Ready(Ok(()));
                }
                Source::Inner => return Pin::new(&mut this.inner).poll_read(cx, out),
                Source::Client(client) => return Pin::new(client).poll_read(cx, out),
            }
        }
    }
}

// `SO_RCVLOWAT`, which neither socket2 nor tokio offers, as nix's helper defines options.
#[derive(Clone, Copy, Debug)]
struct RecvLowWater;
nix::setsockopt_impl!(
    RecvLowWater,
    libc::SOL_SOCKET,
    libc::SO_RCVLOWAT,
    libc::c_int,
    nix::sys::socket::sockopt::SetStruct<libc::c_int>
);

fn set_recv_low_water(sock: &TcpStream, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    nix::sys::socket::setsockopt(sock, RecvLowWater, &value).map_err(io::Error::from)
}

impl<R: AsyncRead + Unpin + Send + 'static> crate::upload::Source for UploadSource<R> {
    fn low_water(&mut self, bytes: usize) {
        self.low_water.0 = bytes.max(1);
        self.apply_low_water();
    }

    fn drain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Source::Client(client) = &self.state else {
            return Ok(0);
        };
        // A plain recv on the non-blocking socket: bytes below the low-water mark raise no
        // readiness, so tokio's own read would not even try.
        let sock = socket2::SockRef::from(client);
        match std::io::Read::read(&mut &*sock, buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read_all<R: AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).await.expect("read");
        v
    }

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    #[tokio::test]
    async fn ordinary_bytes_pass_unchanged() {
        let handoff = Arc::new(Handoff::default());
        let mut lookalike = MAGIC.to_vec();
        lookalike.extend_from_slice(&[7u8; SECRET_LEN]);
        lookalike.extend_from_slice(b"and more");
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"short".to_vec(),
            vec![9u8; TICKET_LEN],
            (0..100_000u32).map(|i| i as u8).collect(),
            MAGIC.to_vec(),
            lookalike,
        ];
        for data in cases {
            for h in [None, Some(handoff.clone())] {
                let got = read_all(UploadSource::new(&data[..], h)).await;
                assert_eq!(got, data);
            }
        }
    }

    #[tokio::test]
    async fn bytes_arriving_one_at_a_time_pass_unchanged() {
        let data: Vec<u8> = (0..200u8).collect();
        let source = UploadSource::new(one_by_one(&data), Some(Arc::new(Handoff::default())));
        let got = read_all(source).await;
        assert_eq!(got, data);
    }

    /// A reader that yields one byte per read.
    fn one_by_one(data: &[u8]) -> impl AsyncRead + Unpin + '_ {
        struct OneByOne<'a>(&'a [u8]);
        impl AsyncRead for OneByOne<'_> {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                out: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                if let Some((first, rest)) = self.0.split_first() {
                    out.put_slice(&[*first]);
                    self.0 = rest;
                }
                Poll::Ready(Ok(()))
            }
        }
        OneByOne(data)
    }

    #[tokio::test]
    async fn a_parked_ticket_switches_to_the_client_socket_once() {
        let handoff = Arc::new(Handoff::default());
        let (mut client, parked) = pair().await;
        let ticket = handoff.park(parked).expect("park");
        client.write_all(b"upload body").await.expect("write");
        drop(client);

        // What libunftp passes on: the ticket, then nothing (the front sends nothing else).
        let mut source = UploadSource::new(ticket.as_bytes(), Some(handoff.clone()));
        let mut got = Vec::new();
        source.read_to_end(&mut got).await.expect("read");
        assert!(source.handed_off());
        assert_eq!(got, b"upload body");

        // Used once: the same bytes again are only data.
        let again = read_all(UploadSource::new(ticket.as_bytes(), Some(handoff))).await;
        assert_eq!(again, ticket.as_bytes());
    }

    #[tokio::test]
    async fn below_the_low_water_mark_bytes_wait_for_a_drain_or_the_end() {
        use crate::upload::Source;
        let handoff = Arc::new(Handoff::default());
        let (mut client, parked) = pair().await;
        let ticket = handoff.park(parked).expect("park");
        client.write_all(b"first").await.expect("write");
        let inner = std::io::Cursor::new(ticket.as_bytes().to_vec());
        let mut source = UploadSource::new(inner, Some(handoff));
        let mut buf = [0u8; 64];
        let n = source.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"first");
        assert!(source.handed_off());

        source.low_water(1 << 10);
        client.write_all(b"below the mark").await.expect("write");
        let woken = tokio::time::timeout(Duration::from_millis(300), source.read(&mut buf)).await;
        assert!(
            woken.is_err(),
            "14 bytes under a 1 KiB mark must not wake the reader"
        );
        let n = source.drain(&mut buf).expect("drain");
        assert_eq!(&buf[..n], b"below the mark");
        assert_eq!(source.drain(&mut buf).expect("drain"), 0, "nothing left");

        // The end of the stream wakes the reader whatever the mark.
        client.write_all(b"tail").await.expect("write");
        drop(client);
        let mut rest = Vec::new();
        source.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"tail");
    }

    #[tokio::test]
    async fn without_a_handoff_a_ticket_is_data() {
        let handoff = Handoff::default();
        let (_client, parked) = pair().await;
        let ticket = handoff.park(parked).expect("park");
        let got = read_all(UploadSource::new(ticket.as_bytes(), None)).await;
        assert_eq!(got, ticket.as_bytes());
        assert!(handoff.claim(&ticket).is_some(), "still parked");
    }

    #[test]
    fn tickets_differ_and_never_show_their_secret() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let handoff = Handoff::default();
            let (_a, b) = pair().await;
            let (_c, d) = pair().await;
            let t1 = handoff.park(b).expect("park");
            let t2 = handoff.park(d).expect("park");
            assert_ne!(t1, t2);
            assert_eq!(format!("{t1:?}"), "Ticket(..)");
            assert_eq!(format!("{handoff:?}"), "Handoff { parked: 2 }");
        });
    }
}
