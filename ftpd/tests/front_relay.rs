//! The front against a scripted back-end: exact bytes on the wire, PROXY headers, the switch to
//! raw bytes after `AUTH TLS`, and a back-end that is down.

use ftpd::front::{Front, FrontConfig, FrontError};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const T: Duration = Duration::from_secs(10);
/// Not FTP text: once raw, a "530" inside it must not count as a failed login.
const RAW_REPLY: &[u8] = b"\x16\x03\x03 server bytes\r\n530 \n";

async fn bind_front(public: SocketAddr, backend: SocketAddr, max_line: usize) -> Front {
    for _ in 0..20 {
        let base = 20_000 + (RandomState::new().build_hasher().finish() % 40_000) as u16;
        let mut cfg = FrontConfig::new(public, base..=base + 3, backend);
        cfg.max_line = max_line;
        match Front::bind(cfg).await {
            Ok(f) => return f,
            Err(FrontError::BindPassive { .. }) => continue,
            Err(e) => panic!("bind: {e}"),
        }
    }
    panic!("no free passive range")
}

fn run(front: Front) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(front.run(async move {
        let _ = rx.await;
    }));
    tx
}

async fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    tokio::time::timeout(T, r.read_line(&mut s))
        .await
        .expect("line in time")
        .expect("read line");
    s
}

#[tokio::test]
async fn headers_rewrite_and_raw_bytes_after_auth_tls() {
    let backend = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let backend_addr = backend.local_addr().expect("addr");
    let front = bind_front("127.0.0.1:0".parse().expect("addr"), backend_addr, 128).await;
    let public = front.local_addr();
    let _stop = run(front);

    let server = tokio::spawn(async move {
        let (s, _) = backend.accept().await.expect("accept");
        let mut s = BufReader::new(s);
        let header = line(&mut s).await;
        s.get_mut().write_all(b"220 mock\r\n").await.expect("greet");
        let first = line(&mut s).await;
        s.get_mut()
            .write_all(b"230 KEY ok\r\n")
            .await
            .expect("reply");
        let auth = line(&mut s).await;
        s.get_mut()
            .write_all(b"534 not now\r\n")
            .await
            .expect("reply");
        let after_refused_auth = line(&mut s).await;
        s.get_mut()
            .write_all(b"230 KEY ok\r\n")
            .await
            .expect("reply");
        let auth2 = line(&mut s).await;
        s.get_mut()
            .write_all(b"234 go ahead\r\n")
            .await
            .expect("reply");
        // From here on the channel would be TLS: bytes, not lines.
        let mut raw = vec![0u8; 9 + 10_000];
        tokio::time::timeout(T, s.read_exact(&mut raw))
            .await
            .expect("raw in time")
            .expect("raw bytes");
        s.get_mut().write_all(RAW_REPLY).await.expect("raw reply");
        (header, first, auth, after_refused_auth, auth2, raw)
    });

    let c = TcpStream::connect(public).await.expect("connect");
    let client_addr = c.local_addr().expect("addr");
    let mut c = BufReader::new(c);
    assert_eq!(line(&mut c).await, "220 mock\r\n");
    c.get_mut().write_all(b"key 0x1\r\n").await.expect("send");
    assert_eq!(line(&mut c).await, "230 KEY ok\r\n");
    c.get_mut().write_all(b"AUTH TLS\r\n").await.expect("send");
    assert_eq!(line(&mut c).await, "534 not now\r\n");
    c.get_mut().write_all(b"KEY 0x3\n").await.expect("send");
    assert_eq!(line(&mut c).await, "230 KEY ok\r\n");
    c.get_mut().write_all(b"AUTH TLS\r\n").await.expect("send");
    assert_eq!(line(&mut c).await, "234 go ahead\r\n");
    let mut raw_out = b"KEY 0x2\r\n".to_vec();
    raw_out.extend(std::iter::repeat_n(b'z', 10_000));
    c.get_mut().write_all(&raw_out).await.expect("send raw");
    let mut back = vec![0u8; RAW_REPLY.len()];
    tokio::time::timeout(T, c.read_exact(&mut back))
        .await
        .expect("raw back in time")
        .expect("raw back");
    assert_eq!(back, RAW_REPLY);

    let (header, first, auth, after_refused_auth, auth2, raw) = server.await.expect("server");
    assert_eq!(
        header,
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            client_addr.port(),
            public.port()
        )
    );
    assert_eq!(first, "SITE KEY 0x1\r\n");
    assert_eq!(auth, "AUTH TLS\r\n");
    assert_eq!(after_refused_auth, "SITE KEY 0x3\n");
    assert_eq!(auth2, "AUTH TLS\r\n");
    assert!(raw == raw_out, "raw bytes pass untouched and unlimited");
}

#[tokio::test]
async fn data_connections_carry_the_passive_port() {
    let backend = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let backend_addr = backend.local_addr().expect("addr");
    let mut base = 0;
    let mut front = None;
    for _ in 0..20 {
        base = 20_000 + (RandomState::new().build_hasher().finish() % 40_000) as u16;
        let cfg = FrontConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            base..=base + 3,
            backend_addr,
        );
        if let Ok(f) = Front::bind(cfg).await {
            front = Some(f);
            break;
        }
    }
    let front = front.expect("front bound");
    let _stop = run(front);

    let server = tokio::spawn(async move {
        let (s, _) = backend.accept().await.expect("accept");
        let mut s = BufReader::new(s);
        let header = line(&mut s).await;
        // Echo in bounded chunks until the client half-closes, then close.
        let mut total = 0usize;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            total += n;
            s.get_mut().write_all(&buf[..n]).await.expect("echo");
        }
        (header, total)
    });
    let mut dc = TcpStream::connect(("127.0.0.1", base + 2))
        .await
        .expect("connect passive");
    let client_port = dc.local_addr().expect("addr").port();
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = dc.split();
    let send = async {
        w.write_all(&payload).await.expect("send");
        w.shutdown().await.expect("half-close");
    };
    let mut echoed = Vec::new();
    let recv = r.read_to_end(&mut echoed);
    let (_, got) = tokio::join!(send, recv);
    got.expect("echo back");
    assert!(echoed == payload);
    let (header, total) = server.await.expect("server");
    assert_eq!(
        header,
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\n",
            base + 2
        )
    );
    assert_eq!(total, payload.len());
}

#[tokio::test]
async fn backend_down_gets_421() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let front = bind_front("127.0.0.1:0".parse().expect("addr"), dead, 4096).await;
    let public = front.local_addr();
    let _stop = run(front);
    let mut c = BufReader::new(TcpStream::connect(public).await.expect("connect"));
    assert!(line(&mut c).await.starts_with("421 "));
}

#[tokio::test]
async fn dual_stack_listener_maps_ipv4_and_refuses_ipv6() {
    let backend = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let backend_addr = backend.local_addr().expect("addr");
    let public = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
    if std::net::TcpListener::bind(public).is_err() {
        eprintln!("no IPv6 on this host; skipping");
        return;
    }
    let front = bind_front(public, backend_addr, 4096).await;
    let port = front.local_addr().port();
    let _stop = run(front);

    if let Ok(c6) = TcpStream::connect((Ipv6Addr::LOCALHOST, port)).await {
        let mut c6 = BufReader::new(c6);
        assert!(line(&mut c6).await.starts_with("421 "));
    }

    let server = tokio::spawn(async move {
        let (s, _) = backend.accept().await.expect("accept");
        let mut s = BufReader::new(s);
        line(&mut s).await
    });
    let c4 = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .expect("connect v4");
    let header = tokio::time::timeout(T, server)
        .await
        .expect("header in time")
        .expect("server");
    let cport = c4.local_addr().expect("addr").port();
    assert_eq!(
        header,
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {port}\r\n")
    );
}

#[tokio::test]
async fn configuration_errors_are_reported() {
    let public: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let outside: SocketAddr = "192.0.2.10:2121".parse().expect("addr");
    let cfg = FrontConfig::new(public, 30_000..=30_010, outside);
    assert!(matches!(
        Front::bind(cfg).await,
        Err(FrontError::BackendNotLoopback(_))
    ));
    let loopback: SocketAddr = "127.0.0.1:2121".parse().expect("addr");
    #[allow(clippy::reversed_empty_ranges)]
    let cfg = FrontConfig::new(public, 30_010..=30_000, loopback);
    assert!(matches!(
        Front::bind(cfg).await,
        Err(FrontError::BadPassiveRange { .. })
    ));
    let cfg = FrontConfig::new(public, 30_000..=30_000, loopback);
    assert!(matches!(
        Front::bind(cfg).await,
        Err(FrontError::BadPassiveRange { .. })
    ));
    let mut cfg = FrontConfig::new(public, 30_000..=30_010, loopback);
    cfg.line_timeout = Duration::ZERO;
    assert!(matches!(
        Front::bind(cfg).await,
        Err(FrontError::ZeroLineTimeout)
    ));
    let mut cfg = FrontConfig::new(public, 30_000..=30_010, loopback);
    cfg.max_line = 10;
    assert!(matches!(
        Front::bind(cfg).await,
        Err(FrontError::LineLimitTooSmall(10))
    ));
    // The error names the address that could not be bound.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let cfg = FrontConfig::new(taken_addr, 30_000..=30_010, loopback);
    let err = Front::bind(cfg).await.expect_err("port in use");
    assert!(err.to_string().contains(&taken_addr.to_string()), "{err}");
}
