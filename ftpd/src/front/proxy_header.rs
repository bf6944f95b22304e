//! PROXY protocol v1 headers, the form libunftp 0.24 parses in `proxy_protocol_mode`.
//!
//! libunftp accepts only `TCP4` headers; `TCP6` is encoded for completeness and for a future
//! back-end, but the front refuses plain IPv6 clients before it would need one.

use std::net::{IpAddr, SocketAddr};

/// Why a header cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// PROXY v1 carries one address family for both ends.
    #[error("client {client} and server {server} are of different address families")]
    MixedFamilies {
        client: SocketAddr,
        server: SocketAddr,
    },
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, seen on dual-stack sockets) to IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Encodes `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` (at most 104 bytes).
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Result<String, ProxyHeaderError> {
    let (s, d) = (canonical(source), canonical(destination));
    let family = match (s.ip(), d.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => "TCP4",
        (IpAddr::V6(_), IpAddr::V6(_)) => "TCP6",
        _ => {
            return Err(ProxyHeaderError::MixedFamilies {
                client: source,
                server: destination,
            })
        }
    };
    Ok(format!(
        "PROXY {family} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_protocol::version1::ProxyAddresses;
    use proxy_protocol::ProxyHeader;
    use std::net::{SocketAddrV4, SocketAddrV6};

    fn parse(header: &str) -> ProxyHeader {
        let mut bytes = header.as_bytes();
        proxy_protocol::parse(&mut bytes).expect("header parses")
    }

    #[test]
    fn v4_header_matches_the_parser_libunftp_uses() {
        let src: SocketAddr = "203.0.113.7:50123".parse().expect("addr");
        let dst: SocketAddr = "192.0.2.1:21".parse().expect("addr");
        let h = encode_v1(src, dst).expect("encodes");
        assert_eq!(h, "PROXY TCP4 203.0.113.7 192.0.2.1 50123 21\r\n");
        assert_eq!(
            parse(&h),
            ProxyHeader::Version1 {
                addresses: ProxyAddresses::Ipv4 {
                    source: SocketAddrV4::new([203, 0, 113, 7].into(), 50123),
                    destination: SocketAddrV4::new([192, 0, 2, 1].into(), 21),
                }
            }
        );
    }

    #[test]
    fn v6_header() {
        let src: SocketAddr = "[2001:db8::7]:40000".parse().expect("addr");
        let dst: SocketAddr = "[2001:db8::1]:2121".parse().expect("addr");
        let h = encode_v1(src, dst).expect("encodes");
        assert_eq!(h, "PROXY TCP6 2001:db8::7 2001:db8::1 40000 2121\r\n");
        let (SocketAddr::V6(s), SocketAddr::V6(d)) = (src, dst) else {
            unreachable!("literals are IPv6")
        };
        assert_eq!(
            parse(&h),
            ProxyHeader::Version1 {
                addresses: ProxyAddresses::Ipv6 {
                    source: SocketAddrV6::new(*s.ip(), s.port(), 0, 0),
                    destination: SocketAddrV6::new(*d.ip(), d.port(), 0, 0),
                }
            }
        );
    }

    #[test]
    fn longest_header_fits_libunftps_buffer() {
        let src: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535"
            .parse()
            .expect("addr");
        let h = encode_v1(src, src).expect("encodes");
        assert!(h.len() <= 104, "{}", h.len());
        let v4: SocketAddr = "255.255.255.255:65535".parse().expect("addr");
        assert!(encode_v1(v4, v4).expect("encodes").len() <= 56);
    }

    #[test]
    fn v4_mapped_addresses_become_tcp4() {
        let src: SocketAddr = "[::ffff:198.51.100.9]:1234".parse().expect("addr");
        let dst: SocketAddr = "[::ffff:192.0.2.1]:21".parse().expect("addr");
        assert_eq!(
            encode_v1(src, dst).expect("encodes"),
            "PROXY TCP4 198.51.100.9 192.0.2.1 1234 21\r\n"
        );
    }

    #[test]
    fn mixed_families_are_refused() {
        let src: SocketAddr = "[2001:db8::7]:1".parse().expect("addr");
        let dst: SocketAddr = "192.0.2.1:21".parse().expect("addr");
        assert!(matches!(
            encode_v1(src, dst),
            Err(ProxyHeaderError::MixedFamilies { .. })
        ));
    }
}
