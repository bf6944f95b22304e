//! PROXY protocol headers (v1 text, v2 binary) from the balancers in `proxy_from` (HAProxy's
//! `send-proxy`, `send-proxy-v2`). Behind a balancer every connection comes from the balancer;
//! the header names the client, whose address then stands for the peer in everything the front
//! decides by address (limits, throttle, passive promises, logs).
//!
//! Only the header's own bytes are taken from the socket: whatever the client sent behind it
//! stays there for whoever reads the connection next (the control lines, a parked upload).

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a balancer has to send its header: HAProxy sends it as soon as it connects.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest header taken: v1 is at most 107 bytes; v2 addresses take at most 216 bytes, and the
/// TLVs a balancer adds (unique id, TLS details) stay well below the rest.
pub const MAX_HEADER: usize = 1024;

/// Who a connection is between, as the front uses it: the TCP endpoints, or those a PROXY
/// header names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    /// The client.
    pub peer: SocketAddr,
    /// The address the client connected to (the balancer's, behind one).
    pub local: SocketAddr,
}

impl Ends {
    /// The TCP endpoints of `stream`, IPv4-mapped addresses as IPv4.
    pub fn of(stream: &TcpStream, peer: SocketAddr) -> io::Result<Ends> {
        Ok(Ends {
            peer: super::limits::canonical(peer),
            local: super::limits::canonical(stream.local_addr()?),
        })
    }
}

/// Why a connection from a balancer was closed before the front read anything else from it.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("no PROXY header: the connection starts with other bytes")]
    Missing,
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1(#[from] ppp::v1::BinaryParseError),
    #[error("malformed PROXY v2 header: {0}")]
    V2(#[from] ppp::v2::ParseError),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// The balancers allowed to send a header (`proxy_from`); empty: nobody.
#[derive(Debug, Clone, Default)]
pub struct ProxyFrom(Arc<[IpNet]>);

impl ProxyFrom {
    pub fn new(nets: &[IpNet]) -> Self {
        ProxyFrom(nets.into())
    }

    /// Whether a connection from `peer` starts with a PROXY header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let ip = peer.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Takes one PROXY header, and nothing behind it, from `stream` within `limit`, and returns the
/// ends it names; `tcp` when it names none (a v2 `LOCAL` header, as HAProxy's health checks
/// send, v1 `UNKNOWN`, or an address family other than IP).
pub async fn read_header(
    stream: &mut TcpStream,
    tcp: Ends,
    limit: Duration,
) -> Result<Ends, HeaderError> {
    match tokio::time::timeout(limit, take_header(stream)).await {
        Ok(named) => Ok(named?.unwrap_or(tcp)),
        Err(_) => Err(HeaderError::Timeout(limit)),
    }
}

/// Reads the header in steps: every step peeks at what has arrived, and takes either all of it
/// (when the header is not complete yet, all of it belongs to the header) or exactly the rest of
/// the header.
async fn take_header(stream: &mut TcpStream) -> Result<Option<Ends>, HeaderError> {
    let mut taken: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let n = stream.peek(&mut buf[..MAX_HEADER - taken.len()]).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let mut seen = taken.clone();
        seen.extend_from_slice(&buf[..n]);
        let parsed = parse(&seen);
        if let HeaderResult::V2(Err(ppp::v2::ParseError::Partial(_, payload))) = &parsed {
            if V2_FIXED + *payload > MAX_HEADER {
                return Err(HeaderError::TooLong);
            }
        }
        if parsed.is_incomplete() {
            if seen.len() >= MAX_HEADER {
                return Err(HeaderError::TooLong);
            }
            stream.read_exact(&mut buf[..n]).await?;
            taken.extend_from_slice(&buf[..n]);
            continue;
        }
        let (len, named) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_ends(h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_ends(&h)),
            HeaderResult::V1(Err(ppp::v1::BinaryParseError::Parse(
                ppp::v1::ParseError::InvalidPrefix,
            ))) => return Err(HeaderError::Missing),
            HeaderResult::V1(Err(e)) => return Err(e.into()),
            HeaderResult::V2(Err(e)) => return Err(e.into()),
        };
        stream.read_exact(&mut buf[..len - taken.len()]).await?;
        return Ok(named);
    }
}

/// The fixed part of a v2 header: signature, version and command, family, payload length.
const V2_FIXED: usize = 16;

/// Parses `seen` as the version its first bytes announce (ppp's own guess reads a v2 header it
/// rejects as v1, which hides why it was rejected).
fn parse(seen: &[u8]) -> HeaderResult<'_> {
    let signature = ppp::v2::PROTOCOL_PREFIX;
    if seen.starts_with(signature) || signature.starts_with(seen) {
        ppp::v2::Header::try_from(seen).into()
    } else {
        ppp::v1::Header::try_from(seen).into()
    }
}

fn ends(peer: SocketAddr, local: SocketAddr) -> Ends {
    Ends {
        peer: super::limits::canonical(peer),
        local: super::limits::canonical(local),
    }
}

fn v1_ends(addresses: ppp::v1::Addresses) -> Option<Ends> {
    use ppp::v1::Addresses;
    match addresses {
        Addresses::Tcp4(a) => Some(ends(
            (a.source_address, a.source_port).into(),
            (a.destination_address, a.destination_port).into(),
        )),
        Addresses::Tcp6(a) => Some(ends(
            (a.source_address, a.source_port).into(),
            (a.destination_address, a.destination_port).into(),
        )),
        Addresses::Unknown => None,
    }
}

fn v2_ends(header: &ppp::v2::Header<'_>) -> Option<Ends> {
    use ppp::v2::{Addresses, Command};
    if header.command == Command::Local {
        return None;
    }
    match header.addresses {
        Addresses::IPv4(a) => Some(ends(
            (a.source_address, a.source_port).into(),
            (a.destination_address, a.destination_port).into(),
        )),
        Addresses::IPv6(a) => Some(ends(
            (a.source_address, a.source_port).into(),
            (a.destination_address, a.destination_port).into(),
        )),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Command, IPv4, Protocol, Version};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const LIMIT: Duration = Duration::from_secs(5);

    /// A connected pair: the sending side, and the accepted side with its TCP ends.
    async fn pair() -> (TcpStream, TcpStream, Ends) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (accepted, peer) = listener.accept().await.expect("accept");
        let tcp = Ends::of(&accepted, peer).expect("ends");
        (client, accepted, tcp)
    }

    /// Sends `pieces` one after the other with a pause between them, then reads the header.
    async fn header_of(pieces: &[&[u8]], limit: Duration) -> (Result<Ends, HeaderError>, Ends) {
        let (mut client, mut accepted, tcp) = pair().await;
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        tokio::spawn(async move {
            for p in pieces {
                client.write_all(&p).await.expect("send");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            // Held open until the reader is done.
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        (read_header(&mut accepted, tcp, limit).await, tcp)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn v2(command: Command, addresses: ppp::v2::Addresses) -> Vec<u8> {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
            .build()
            .expect("v2 header")
    }

    fn v2_proxy() -> Vec<u8> {
        v2(
            Command::Proxy,
            IPv4::new([203, 0, 113, 8], [192, 0, 2, 1], 40_000, 2121).into(),
        )
    }

    /// Bytes behind the header stay in the socket, in the same segment as the header or not.
    async fn rest_after_header(whole: &[u8]) -> (Ends, Vec<u8>) {
        let (mut client, mut accepted, tcp) = pair().await;
        client.write_all(whole).await.expect("send");
        client.shutdown().await.expect("shutdown");
        let ends = read_header(&mut accepted, tcp, LIMIT)
            .await
            .expect("header");
        let mut rest = Vec::new();
        accepted.read_to_end(&mut rest).await.expect("rest");
        (ends, rest)
    }

    #[tokio::test]
    async fn a_v1_header_names_the_client_and_what_follows_it_stays() {
        let (ends, rest) =
            rest_after_header(b"PROXY TCP4 203.0.113.7 192.0.2.1 1234 2121\r\nUSER alice\r\n")
                .await;
        assert_eq!(ends.peer, addr("203.0.113.7:1234"));
        assert_eq!(ends.local, addr("192.0.2.1:2121"));
        assert_eq!(rest, b"USER alice\r\n");
    }

    #[tokio::test]
    async fn a_v2_header_names_the_client_and_what_follows_it_stays() {
        let mut whole = v2_proxy();
        whole.extend_from_slice(b"\x00\x01binary upload bytes");
        let (ends, rest) = rest_after_header(&whole).await;
        assert_eq!(ends.peer, addr("203.0.113.8:40000"));
        assert_eq!(ends.local, addr("192.0.2.1:2121"));
        assert_eq!(rest, b"\x00\x01binary upload bytes");
    }

    #[tokio::test]
    async fn ipv4_mapped_sources_become_ipv4() {
        let (ends, _) =
            rest_after_header(b"PROXY TCP6 ::ffff:203.0.113.9 ::ffff:192.0.2.1 5 21\r\n").await;
        assert_eq!(ends.peer, addr("203.0.113.9:5"));
    }

    #[tokio::test]
    async fn local_and_unknown_headers_keep_the_tcp_ends() {
        let local = v2(Command::Local, ppp::v2::Addresses::Unspecified);
        for header in [&local[..], b"PROXY UNKNOWN\r\n"] {
            let mut whole = header.to_vec();
            whole.extend_from_slice(b"QUIT\r\n");
            let (result, tcp) = header_of(&[&whole], LIMIT).await;
            assert_eq!(result.expect("header"), tcp);
        }
        let (ends, rest) = rest_after_header(&local).await;
        assert!(ends.peer.ip().is_loopback());
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_header_split_across_reads_is_put_together() {
        let v2 = v2_proxy();
        let (result, _) = header_of(&[&v2[..5], &v2[5..14], &v2[14..20], &v2[20..]], LIMIT).await;
        assert_eq!(result.expect("v2").peer, addr("203.0.113.8:40000"));
        let v1: &[&[u8]] = &[
            b"PRO",
            b"XY TCP4 203.0.113.7 ",
            b"192.0.2.1 1234 2121\r",
            b"\n",
        ];
        let (result, _) = header_of(v1, LIMIT).await;
        assert_eq!(result.expect("v1").peer, addr("203.0.113.7:1234"));
    }

    #[tokio::test]
    async fn other_bytes_are_no_header() {
        let (result, _) = header_of(&[b"USER alice\r\n"], LIMIT).await;
        assert!(matches!(result, Err(HeaderError::Missing)), "{result:?}");
        let (result, _) = header_of(&[b"\x16\x03\x01\x02\x00"], LIMIT).await;
        assert!(matches!(result, Err(HeaderError::Missing)), "{result:?}");
    }

    #[tokio::test]
    async fn malformed_headers_are_refused() {
        for bad in [
            &b"PROXY TCP4 203.0.113.300 192.0.2.1 1234 2121\r\n"[..],
            b"PROXY TCP5 203.0.113.7 192.0.2.1 1234 2121\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 1234 2121\rX",
        ] {
            let (result, _) = header_of(&[bad], LIMIT).await;
            assert!(matches!(result, Err(HeaderError::V1(_))), "{result:?}");
        }
        let mut wrong_version = v2_proxy();
        wrong_version[12] = 0x31;
        let (result, _) = header_of(&[&wrong_version], LIMIT).await;
        assert!(matches!(result, Err(HeaderError::V2(_))), "{result:?}");
    }

    #[tokio::test]
    async fn oversized_headers_are_refused() {
        let mut long_v1 = b"PROXY TCP4 ".to_vec();
        long_v1.resize(200, b'1');
        let (result, _) = header_of(&[&long_v1], LIMIT).await;
        assert!(matches!(result, Err(HeaderError::V1(_))), "{result:?}");
        // A v2 header announcing more than MAX_HEADER bytes, all of which arrive.
        let mut long_v2 = v2_proxy();
        let payload = 2000u16;
        long_v2[14..16].copy_from_slice(&payload.to_be_bytes());
        long_v2.resize(16 + payload as usize, 0);
        let (result, _) = header_of(&[&long_v2], LIMIT).await;
        assert!(matches!(result, Err(HeaderError::TooLong)), "{result:?}");
        // Refused on its length alone, without waiting for the rest.
        let (result, _) = header_of(&[&long_v2[..16]], LIMIT).await;
        assert!(matches!(result, Err(HeaderError::TooLong)), "{result:?}");
    }

    #[tokio::test]
    async fn a_header_that_does_not_come_times_out_or_ends() {
        let limit = Duration::from_millis(200);
        let (result, _) = header_of(&[b"PROXY TCP4 203.0.113.7"], limit).await;
        assert!(matches!(result, Err(HeaderError::Timeout(_))), "{result:?}");
        let (result, _) = header_of(&[], limit).await;
        assert!(matches!(result, Err(HeaderError::Timeout(_))), "{result:?}");

        let (mut client, mut accepted, tcp) = pair().await;
        client.write_all(b"PROXY TCP4 ").await.expect("send");
        client.shutdown().await.expect("shutdown");
        let result = read_header(&mut accepted, tcp, LIMIT).await;
        assert!(matches!(result, Err(HeaderError::Closed)), "{result:?}");
    }

    #[test]
    fn only_listed_balancers_are_trusted() {
        let nets: Vec<IpNet> = ["127.0.0.1/32", "10.0.0.0/24"]
            .iter()
            .map(|n| n.parse().expect("net"))
            .collect();
        let from = ProxyFrom::new(&nets);
        for ip in ["127.0.0.1", "10.0.0.7", "::ffff:10.0.0.8"] {
            assert!(from.trusts(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["127.0.0.2", "10.0.1.1", "::1"] {
            assert!(!from.trusts(ip.parse().expect("ip")), "{ip}");
        }
        assert!(!ProxyFrom::default().trusts("127.0.0.1".parse().expect("ip")));
    }
}
