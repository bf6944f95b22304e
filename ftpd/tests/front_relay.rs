//! The front against a scripted back-end: exact bytes on the wire, the switch to raw bytes after
//! `AUTH TLS`, passive replies rewritten to the front's own ports, data connections matched to
//! their promise, busy passive ports, connection caps and deadlines, and a back-end that is down.

use ftpd::front::{Front, FrontConfig, FrontError};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

const T: Duration = Duration::from_secs(10);
/// What "closed at once" means here: well under any timeout of the front's.
const AT_ONCE: Duration = Duration::from_secs(2);

fn random_base() -> u16 {
    20_000 + (RandomState::new().build_hasher().finish() % 40_000) as u16
}

/// A front with four passive ports from a random range, `tune` applied to its configuration.
async fn bind_front_with(
    public: SocketAddr,
    backend: SocketAddr,
    tune: impl Fn(&mut FrontConfig),
) -> Front {
    for _ in 0..20 {
        let base = random_base();
        let mut cfg = FrontConfig::new(public, base..=base + 3, backend);
        tune(&mut cfg);
        match Front::bind(cfg).await {
            Ok(f) => return f,
            // Busy ports are skipped; only a range with none free is an error.
            Err(FrontError::NoPassivePort { .. }) => continue,
            // The kernel gave the control port from inside the random range: draw again.
            Err(FrontError::BadPassiveRange { .. }) => continue,
            Err(e) => panic!("bind: {e}"),
        }
    }
    panic!("no free passive range")
}

async fn bind_front(public: SocketAddr, backend: SocketAddr, max_line: usize) -> Front {
    bind_front_with(public, backend, |cfg| cfg.max_line = max_line).await
}

fn run(front: Front) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(front.run(async move {
        let _ = rx.await;
    }));
    tx
}

async fn line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> String {
    let mut s = String::new();
    tokio::time::timeout(T, r.read_line(&mut s))
        .await
        .expect("line in time")
        .expect("read line");
    s
}

async fn backend_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

/// A back-end that greets every connection and closes it when the client side ends.
fn spawn_greeter(backend: TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 mock\r\n").await;
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
}

async fn connect_from(local: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(IpAddr::V4(local), 0))
        .expect("bind client");
    tokio::time::timeout(T, sock.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// True if the peer closes (or resets) the connection within `AT_ONCE` without sending a byte.
async fn closed_at_once(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(AT_ONCE, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// The address in a `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` reply.
fn pasv_addr(reply: &str) -> SocketAddr {
    assert!(reply.starts_with("227 "), "{reply}");
    let inner = &reply[reply.find('(').expect("(") + 1..reply.find(')').expect(")")];
    let n: Vec<u16> = inner
        .split(',')
        .map(|x| x.trim().parse().expect("number"))
        .collect();
    assert_eq!(n.len(), 6, "{reply}");
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(
            n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8,
        )),
        n[4] * 256 + n[5],
    )
}

fn pasv_reply(port: u16) -> String {
    format!(
        "227 Entering Passive Mode (127,0,0,1,{},{})\r\n",
        port >> 8,
        port & 0xFF
    )
}

/// Without a certificate the front answers `AUTH TLS` itself (libunftp never sees it) and the
/// session goes on in plain text; `KEY` is rewritten before and after.
#[tokio::test]
async fn rewrite_and_auth_tls_without_a_certificate() {
    let (backend, backend_addr) = backend_listener().await;
    let front = bind_front("127.0.0.1:0".parse().expect("addr"), backend_addr, 128).await;
    let public = front.local_addr();
    let _stop = run(front);

    let server = tokio::spawn(async move {
        let (s, _) = backend.accept().await.expect("accept");
        let mut s = BufReader::new(s);
        // No header of any kind: the back-end speaks first, as to any FTP client.
        s.get_mut().write_all(b"220 mock\r\n").await.expect("greet");
        let first = line(&mut s).await;
        s.get_mut()
            .write_all(b"230 KEY ok\r\n")
            .await
            .expect("reply");
        let second = line(&mut s).await;
        s.get_mut()
            .write_all(b"230 KEY ok\r\n")
            .await
            .expect("reply");
        (first, second)
    });

    let c = TcpStream::connect(public).await.expect("connect");
    let mut c = BufReader::new(c);
    assert_eq!(line(&mut c).await, "220 mock\r\n");
    c.get_mut().write_all(b"key 0x1\r\n").await.expect("send");
    assert_eq!(line(&mut c).await, "230 KEY ok\r\n");
    c.get_mut().write_all(b"AUTH TLS\r\n").await.expect("send");
    assert_eq!(
        line(&mut c).await,
        "534 TLS is not configured on this server.\r\n"
    );
    c.get_mut().write_all(b"KEY 0x3\n").await.expect("send");
    assert_eq!(line(&mut c).await, "230 KEY ok\r\n");

    let (first, second) = server.await.expect("server");
    // The first bytes the back-end gets are the client's first command, rewritten; AUTH never
    // reaches it.
    assert_eq!(first, "SITE KEY 0x1\r\n");
    assert_eq!(second, "SITE KEY 0x3\n");
}

/// Echoes one data connection in bounded chunks until the client half-closes; returns the count.
async fn echo(s: &mut TcpStream) -> usize {
    let mut total = 0usize;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        total += n;
        s.write_all(&buf[..n]).await.expect("echo");
    }
    total
}

/// Sends `payload` on `dc`, half-closes, and reads everything echoed back.
async fn round_trip(dc: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = dc.split();
    let send = async {
        w.write_all(payload).await.expect("send");
        w.shutdown().await.expect("half-close");
    };
    let mut echoed = Vec::new();
    let recv = r.read_to_end(&mut echoed);
    let (_, got) = tokio::time::timeout(T * 3, async { tokio::join!(send, recv) })
        .await
        .expect("round trip in time");
    got.expect("echo back");
    echoed
}

#[tokio::test]
async fn passive_replies_name_the_front_and_data_reaches_the_backend_listener() {
    let (backend, backend_addr) = backend_listener().await;
    let front = bind_front("127.0.0.1:0".parse().expect("addr"), backend_addr, 4096).await;
    let public = front.local_addr();
    let ports = front.passive_ports();
    let _stop = run(front);

    // Nothing was promised yet: every public passive port closes a connection at once.
    for port in &ports {
        let mut dc = TcpStream::connect(("127.0.0.1", *port))
            .await
            .expect("connect passive");
        let began = Instant::now();
        assert!(closed_at_once(&mut dc).await, "port {port} without promise");
        assert!(began.elapsed() < AT_ONCE);
    }

    // The scripted back-end answers PASV and EPSV with a listener of its own on 127.0.0.1, as
    // libunftp does in its ordinary mode, and echoes what arrives there.
    let (data_tx, mut data_rx) = tokio::sync::mpsc::unbounded_channel::<(u16, usize)>();
    let server = tokio::spawn(async move {
        let (s, _) = backend.accept().await.expect("accept");
        let mut s = BufReader::new(s);
        s.get_mut().write_all(b"220 mock\r\n").await.expect("greet");
        let mut listeners = Vec::new();
        for _ in 0..2 {
            let cmd = line(&mut s).await;
            let data = TcpListener::bind("127.0.0.1:0").await.expect("bind data");
            let port = data.local_addr().expect("addr").port();
            let reply = match cmd.as_str() {
                "PASV\r\n" => pasv_reply(port),
                "EPSV\r\n" => format!("229 Entering Extended Passive Mode (|||{port}|)\r\n"),
                other => panic!("unexpected command {other:?}"),
            };
            s.get_mut()
                .write_all(reply.as_bytes())
                .await
                .expect("reply");
            let (mut dc, _) = tokio::time::timeout(T, data.accept())
                .await
                .expect("data connection in time")
                .expect("accept data");
            let total = echo(&mut dc).await;
            data_tx.send((port, total)).expect("report");
            // Keep the listener: a second connection to the same promise must not reach it.
            listeners.push(data);
        }
        let _ = line(&mut s).await;
        listeners
    });

    let c = TcpStream::connect(public).await.expect("connect");
    let mut c = BufReader::new(c);
    assert_eq!(line(&mut c).await, "220 mock\r\n");

    // PASV: the client gets the front's public address and one of its passive ports.
    c.get_mut().write_all(b"PASV\r\n").await.expect("send");
    let reply = line(&mut c).await;
    let addr = pasv_addr(&reply);
    assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST), "{reply}");
    assert!(ports.contains(&addr.port()), "{reply} not in {ports:?}");
    assert_eq!(
        reply,
        format!(
            "227 Entering Passive Mode (127,0,0,1,{},{})\r\n",
            addr.port() >> 8,
            addr.port() & 0xFF
        )
    );
    // Another address is not who the port was promised to.
    let mut intruder = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    assert!(closed_at_once(&mut intruder).await);
    let mut dc = TcpStream::connect(addr).await.expect("connect passive");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    assert!(round_trip(&mut dc, &payload).await == payload);
    let (backend_port, total) = data_rx.recv().await.expect("data report");
    assert_ne!(backend_port, addr.port());
    assert_eq!(total, payload.len());
    // The promise was used: a second connection to the same port is closed at once.
    let mut again = TcpStream::connect(addr).await.expect("connect passive");
    assert!(closed_at_once(&mut again).await);

    // EPSV: the same, in the extended form.
    c.get_mut().write_all(b"EPSV\r\n").await.expect("send");
    let reply = line(&mut c).await;
    let port: u16 = reply
        .strip_prefix("229 Entering Extended Passive Mode (|||")
        .and_then(|r| r.strip_suffix("|)\r\n"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reply {reply:?}"));
    assert!(ports.contains(&port), "{reply} not in {ports:?}");
    let mut dc = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect passive");
    assert!(round_trip(&mut dc, b"extended").await == b"extended");
    let (backend_port, total) = data_rx.recv().await.expect("data report");
    assert_ne!(backend_port, port);
    assert_eq!(total, 8);

    c.get_mut().write_all(b"QUIT\r\n").await.expect("send");
    let listeners = server.await.expect("server");
    // Neither back-end listener got a connection beyond the one its promise was for.
    for l in listeners {
        let extra = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(extra.is_err(), "an extra connection reached the back-end");
    }
}

#[tokio::test]
async fn passive_host_is_announced_when_set() {
    let (backend, backend_addr) = backend_listener().await;
    let announced = Ipv4Addr::new(198, 51, 100, 7);
    let front = bind_front_with("127.0.0.1:0".parse().expect("addr"), backend_addr, |cfg| {
        cfg.passive_host = Some(announced)
    })
    .await;
    let public = front.local_addr();
    let ports = front.passive_ports();
    let _stop = run(front);
    let server = tokio::spawn(async move {
        let (s, _) = backend.accept().await.expect("accept");
        let mut s = BufReader::new(s);
        s.get_mut().write_all(b"220 mock\r\n").await.expect("greet");
        assert_eq!(line(&mut s).await, "PASV\r\n");
        let data = TcpListener::bind("127.0.0.1:0").await.expect("bind data");
        let port = data.local_addr().expect("addr").port();
        s.get_mut()
            .write_all(pasv_reply(port).as_bytes())
            .await
            .expect("reply");
        let (mut dc, _) = data.accept().await.expect("accept data");
        echo(&mut dc).await
    });
    let mut c = BufReader::new(TcpStream::connect(public).await.expect("connect"));
    assert_eq!(line(&mut c).await, "220 mock\r\n");
    c.get_mut().write_all(b"PASV\r\n").await.expect("send");
    let addr = pasv_addr(&line(&mut c).await);
    assert_eq!(addr.ip(), IpAddr::V4(announced));
    assert!(ports.contains(&addr.port()));
    // The port is the front's, whatever address is announced (a NAT in front of it).
    let mut dc = TcpStream::connect(("127.0.0.1", addr.port()))
        .await
        .expect("connect passive");
    assert!(round_trip(&mut dc, b"via nat").await == b"via nat");
    assert_eq!(server.await.expect("server"), 7);
}

#[tokio::test]
async fn busy_passive_ports_are_skipped_at_bind() {
    let (_backend, backend_addr) = backend_listener().await;
    let public: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    for _ in 0..20 {
        let base = random_base();
        // Hold every port of the range, to know it was free; then free all but two.
        let held: Vec<_> = (base..=base + 3)
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() < 4 {
            continue;
        }
        let cfg = FrontConfig::new(public, base..=base + 3, backend_addr);
        let err = Front::bind(cfg)
            .await
            .expect_err("no passive port can be bound");
        assert!(
            matches!(err, FrontError::NoPassivePort { start, end, .. } if start == base && end == base + 3),
            "{err}"
        );
        let mut held = held;
        let last = held.pop();
        let first = held.remove(0);
        drop((first, last));
        // Only the two freed ports are listened on; the busy ones do not stop the front.
        let cfg = FrontConfig::new(public, base..=base + 3, backend_addr);
        let front = match Front::bind(cfg).await {
            Ok(f) => f,
            // Someone else took a freed port meanwhile, or the control port fell in the range.
            Err(FrontError::NoPassivePort { .. } | FrontError::BadPassiveRange { .. }) => continue,
            Err(e) => panic!("bind: {e}"),
        };
        let ports = front.passive_ports();
        assert!(!ports.contains(&(base + 1)) && !ports.contains(&(base + 2)));
        assert!(!ports.is_empty() && ports.iter().all(|p| [base, base + 3].contains(p)));
        return;
    }
    panic!("no free passive range")
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
    let (backend, backend_addr) = backend_listener().await;
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
        s.get_mut().write_all(b"220 mock\r\n").await.expect("greet");
        assert_eq!(line(&mut s).await, "PASV\r\n");
        let data = TcpListener::bind("127.0.0.1:0").await.expect("bind data");
        let dport = data.local_addr().expect("addr").port();
        s.get_mut()
            .write_all(pasv_reply(dport).as_bytes())
            .await
            .expect("reply");
        let (mut dc, _) = data.accept().await.expect("accept data");
        echo(&mut dc).await
    });
    // An IPv4 client on the dual-stack listener is an IPv4 client: its PASV names the IPv4
    // address it reached, and its data connection (also IPv4-mapped) matches the promise.
    let c4 = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .expect("connect v4");
    let mut c4 = BufReader::new(c4);
    assert_eq!(line(&mut c4).await, "220 mock\r\n");
    c4.get_mut().write_all(b"PASV\r\n").await.expect("send");
    let addr = pasv_addr(&line(&mut c4).await);
    assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut dc = TcpStream::connect(addr).await.expect("connect passive");
    assert!(round_trip(&mut dc, b"mapped").await == b"mapped");
    assert_eq!(
        tokio::time::timeout(T, server)
            .await
            .expect("data in time")
            .expect("server"),
        6
    );
}

#[tokio::test]
async fn silent_relayed_data_connection_is_closed() {
    let (backend, backend_addr) = backend_listener().await;
    let front = bind_front_with("127.0.0.1:0".parse().expect("addr"), backend_addr, |cfg| {
        cfg.data_idle = Duration::from_millis(300)
    })
    .await;
    let public = front.local_addr();
    let _stop = run(front);
    let server = tokio::spawn(async move {
        let (s, _) = backend.accept().await.expect("accept");
        let mut s = BufReader::new(s);
        s.get_mut().write_all(b"220 mock\r\n").await.expect("greet");
        assert_eq!(line(&mut s).await, "PASV\r\n");
        let data = TcpListener::bind("127.0.0.1:0").await.expect("bind data");
        let dport = data.local_addr().expect("addr").port();
        s.get_mut()
            .write_all(pasv_reply(dport).as_bytes())
            .await
            .expect("reply");
        let (mut dc, _) = data.accept().await.expect("accept data");
        // Silent too; the front ends the relay, which reaches the back-end as an end or reset.
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(T, dc.read(&mut buf)).await;
        (s, matches!(r, Ok(Ok(0)) | Ok(Err(_))))
    });
    let mut c = BufReader::new(TcpStream::connect(public).await.expect("connect"));
    assert_eq!(line(&mut c).await, "220 mock\r\n");
    c.get_mut().write_all(b"PASV\r\n").await.expect("send");
    let addr = pasv_addr(&line(&mut c).await);
    let mut dc = TcpStream::connect(addr).await.expect("connect passive");
    let began = Instant::now();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(T, dc.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(began.elapsed() >= Duration::from_millis(250));
    let (_control, backend_saw_end) = server.await.expect("server");
    assert!(backend_saw_end);
}

#[tokio::test]
async fn connection_caps_and_login_deadline() {
    let (backend, backend_addr) = backend_listener().await;
    spawn_greeter(backend);
    let front = bind_front_with("127.0.0.1:0".parse().expect("addr"), backend_addr, |cfg| {
        cfg.max_connections = 3;
        cfg.max_connections_per_address = 2;
        cfg.login_timeout = Duration::from_secs(2);
    })
    .await;
    let public = front.local_addr();
    let _stop = run(front);
    let a = Ipv4Addr::new(127, 0, 0, 1);
    let greeted = |s: TcpStream| async move {
        let mut s = BufReader::new(s);
        assert_eq!(line(&mut s).await, "220 mock\r\n");
        s
    };
    let refused = |s: TcpStream| async move {
        let mut s = BufReader::new(s);
        let reply = line(&mut s).await;
        assert!(reply.starts_with("421 "), "{reply}");
        reply
    };
    let c1 = greeted(connect_from(a, public).await).await;
    let _c2 = greeted(connect_from(a, public).await).await;
    let reply = refused(connect_from(a, public).await).await;
    assert!(reply.contains("your address"), "{reply}");
    let _c3 = greeted(connect_from(Ipv4Addr::new(127, 0, 0, 2), public).await).await;
    let reply = refused(connect_from(Ipv4Addr::new(127, 0, 0, 3), public).await).await;
    assert!(!reply.contains("your address"), "{reply}");
    // A closed connection frees its place.
    drop(c1);
    let mut placed = false;
    for _ in 0..50 {
        let mut s = BufReader::new(connect_from(a, public).await);
        if line(&mut s).await == "220 mock\r\n" {
            placed = true;
            // Never logs in: told so, then closed.
            let began = Instant::now();
            let reply = line(&mut s).await;
            assert_eq!(reply, "421 Login timed out.\r\n");
            assert!(began.elapsed() < Duration::from_secs(2) + AT_ONCE);
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(T, s.read_to_end(&mut rest)).await;
            assert!(rest.is_empty());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(placed, "a freed place is used again");
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
    let cfg = FrontConfig::new(public, 0..=10, loopback);
    assert!(matches!(
        Front::bind(cfg).await,
        Err(FrontError::BadPassiveRange { .. })
    ));
    // A range containing the control port.
    for _ in 0..20 {
        let control = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let p = control.port();
        let cfg = FrontConfig::new(control, p.saturating_sub(1)..=p, loopback);
        match Front::bind(cfg).await {
            Err(FrontError::BadPassiveRange { control: c, .. }) => {
                assert_eq!(c, p);
                break;
            }
            // The port was taken again in between.
            Err(FrontError::BindControl { .. }) => continue,
            other => panic!("expected BadPassiveRange, got {other:?}"),
        }
    }
    for (name, zero) in [
        (
            "line_timeout",
            (|c: &mut FrontConfig| c.line_timeout = Duration::ZERO) as fn(&mut FrontConfig),
        ),
        ("login_timeout", |c: &mut FrontConfig| {
            c.login_timeout = Duration::ZERO
        }),
        ("data_idle", |c: &mut FrontConfig| {
            c.data_idle = Duration::ZERO
        }),
    ] {
        let mut cfg = FrontConfig::new(public, 30_000..=30_010, loopback);
        zero(&mut cfg);
        match Front::bind(cfg).await {
            Err(FrontError::ZeroTimeout(n)) => assert_eq!(n, name),
            other => panic!("{name}: expected ZeroTimeout, got {other:?}"),
        }
    }
    for (name, zero) in [
        (
            "max_connections",
            (|c: &mut FrontConfig| c.max_connections = 0) as fn(&mut FrontConfig),
        ),
        ("max_connections_per_address", |c: &mut FrontConfig| {
            c.max_connections_per_address = 0
        }),
    ] {
        let mut cfg = FrontConfig::new(public, 30_000..=30_010, loopback);
        zero(&mut cfg);
        match Front::bind(cfg).await {
            Err(FrontError::ZeroLimit(n)) => assert_eq!(n, name),
            other => panic!("{name}: expected ZeroLimit, got {other:?}"),
        }
    }
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
