//! The front in front of a real libunftp server in PROXY protocol mode, driven over TCP.

use ftpd::front::{Front, FrontConfig, FrontError};
use libunftp::options::{Reply, ReplyCode, SiteCommandContext, SiteCommandHandler};
use libunftp::ServerBuilder;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, DefaultUser, Principal};
use unftp_sbe_fs::Filesystem;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret";
const IO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct TestAuth;

#[async_trait::async_trait]
impl Authenticator for TestAuth {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        if username == USER && creds.password.as_deref() == Some(PASSWORD) {
            Ok(Principal {
                username: username.to_string(),
            })
        } else {
            Err(AuthenticationError::BadPassword)
        }
    }
}

/// Stands in for the real SITE KEY handler: `230 KEY[<arguments>]`.
#[derive(Debug)]
struct EchoKey;

#[async_trait::async_trait]
impl SiteCommandHandler<Filesystem, DefaultUser> for EchoKey {
    async fn handle(&self, ctx: &SiteCommandContext<Filesystem, DefaultUser>) -> Reply {
        Reply::new_with_string(ReplyCode::UserLoggedIn, format!("KEY[{}]", ctx.arguments))
    }
}

fn random_u64() -> u64 {
    RandomState::new().build_hasher().finish()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "ftpd-front-{}-{:x}",
            std::process::id(),
            random_u64()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    front: SocketAddr,
    dir: TempDir,
    _stop: oneshot::Sender<()>,
}

/// A free port on a loopback address of this harness's own (127.200.x.y): tests run in parallel,
/// and a port merely released on 127.0.0.1 can be handed to another test's connection meanwhile.
fn free_loopback_port() -> SocketAddr {
    let r = random_u64();
    let ip = Ipv4Addr::new(127, 200, (r >> 8) as u8, 1 + (r as u8 % 250));
    let l = std::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), 0)).expect("bind");
    l.local_addr().expect("addr")
}

type Builder = ServerBuilder<Filesystem, DefaultUser>;

/// Starts libunftp (PROXY mode, loopback) behind a front on `public_ip`.
async fn start(public_ip: IpAddr, tune: impl Fn(&mut FrontConfig)) -> Harness {
    start_server(public_ip, tune, |b| b).await
}

async fn start_server(
    public_ip: IpAddr,
    tune: impl Fn(&mut FrontConfig),
    server_options: impl FnOnce(Builder) -> Builder,
) -> Harness {
    let dir = TempDir::new();
    let backend = free_loopback_port();
    let mut attempt = 0;
    let (front, passive) = loop {
        attempt += 1;
        let base = 20_000 + (random_u64() % 40_000) as u16;
        let mut cfg = FrontConfig::new(SocketAddr::new(public_ip, 0), base..=base + 15, backend);
        tune(&mut cfg);
        let passive = cfg.passive_ports.clone();
        match Front::bind(cfg).await {
            Ok(f) => break (f, passive),
            Err(FrontError::BindPassive { .. }) if attempt < 20 => continue,
            Err(e) => panic!("front bind: {e}"),
        }
    };
    let front_addr = front.local_addr();
    let root = dir.0.clone();
    let server = server_options(
        ServerBuilder::with_authenticator(
            Box::new(move || Filesystem::new(root.clone()).expect("filesystem")),
            Arc::new(TestAuth),
        )
        .proxy_protocol_mode(front_addr.port())
        .passive_ports(passive)
        .site_command("KEY", EchoKey),
    )
    .build()
    .expect("libunftp builds");
    let listening = tokio::spawn(server.listen(backend.to_string()));
    let mut up = false;
    for _ in 0..500 {
        if listening.is_finished() {
            break;
        }
        if TcpStream::connect(backend).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !up {
        listening.abort();
        panic!("libunftp did not start on {backend}: {:?}", listening.await);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(front.run(async move {
        let _ = stopped.await;
    }));
    Harness {
        front: front_addr,
        dir,
        _stop: stop,
    }
}

/// A minimal FTP client that shows replies exactly as received.
struct Ftp {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Ftp {
    async fn connect(addr: SocketAddr) -> Ftp {
        let s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Self::wrap(s)
    }

    async fn connect_from(local: IpAddr, addr: SocketAddr) -> Ftp {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(local, 0)).expect("bind client");
        let s = tokio::time::timeout(IO_TIMEOUT, sock.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Self::wrap(s)
    }

    fn wrap(s: TcpStream) -> Ftp {
        let (r, w) = s.into_split();
        Ftp {
            r: BufReader::new(r),
            w,
        }
    }

    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let n = tokio::time::timeout(IO_TIMEOUT, self.r.read_line(&mut line))
            .await
            .expect("reply in time")
            .expect("read reply");
        (n > 0).then_some(line)
    }

    /// One reply: (code, full text).
    async fn reply(&mut self) -> (u16, String) {
        let first = self.line().await.expect("a reply, not EOF");
        let code: u16 = first[..3].parse().expect("reply code");
        let mut text = first.clone();
        if first.as_bytes()[3] == b'-' {
            loop {
                let l = self.line().await.expect("rest of multi-line reply");
                text.push_str(&l);
                if l.len() >= 4 && l[..3] == first[..3] && l.as_bytes()[3] == b' ' {
                    break;
                }
            }
        }
        (code, text)
    }

    async fn send(&mut self, raw: &[u8]) {
        self.w.write_all(raw).await.expect("send");
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn greet(&mut self) {
        let (code, text) = self.reply().await;
        assert_eq!(code, 220, "{text}");
    }

    async fn login(&mut self) {
        self.greet().await;
        assert_eq!(self.cmd(&format!("USER {USER}")).await.0, 331);
        let (code, text) = self.cmd(&format!("PASS {PASSWORD}")).await;
        assert_eq!(code, 230, "{text}");
    }

    async fn pasv(&mut self) -> SocketAddr {
        let (code, text) = self.cmd("PASV").await;
        assert_eq!(code, 227, "{text}");
        let inner = &text[text.find('(').expect("(") + 1..text.find(')').expect(")")];
        let n: Vec<u16> = inner
            .split(',')
            .map(|x| x.trim().parse().expect("number"))
            .collect();
        assert_eq!(n.len(), 6, "{text}");
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(
                n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8,
            )),
            n[4] * 256 + n[5],
        )
    }

    /// Reads until EOF; true if the server closed the connection.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(IO_TIMEOUT, self.r.read_to_end(&mut rest)).await,
            Ok(Ok(_)) | Ok(Err(_))
        )
    }
}

fn test_data(len: usize) -> Vec<u8> {
    let mut x = random_u64() | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn stor(ftp: &mut Ftp, name: &str, data: &[u8]) {
    let addr = ftp.pasv().await;
    let mut dc = TcpStream::connect(addr).await.expect("data connect");
    let (code, text) = ftp.cmd(&format!("STOR {name}")).await;
    assert!(code == 150 || code == 125, "{text}");
    dc.write_all(data).await.expect("upload");
    dc.shutdown().await.expect("close upload");
    drop(dc);
    let (code, text) = ftp.reply().await;
    assert_eq!(code, 226, "{text}");
}

async fn retr(ftp: &mut Ftp, cmd: &str) -> Vec<u8> {
    let addr = ftp.pasv().await;
    let mut dc = TcpStream::connect(addr).await.expect("data connect");
    let (code, text) = ftp.cmd(cmd).await;
    assert!(code == 150 || code == 125, "{text}");
    let mut out = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, dc.read_to_end(&mut out))
        .await
        .expect("download in time")
        .expect("download");
    let (code, text) = ftp.reply().await;
    assert_eq!(code, 226, "{text}");
    out
}

async fn start_default() -> Harness {
    start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), |_| {}).await
}

async fn start_with(ip: IpAddr, tune: impl Fn(&mut FrontConfig)) -> Harness {
    start(ip, tune).await
}

#[tokio::test(flavor = "current_thread")]
async fn bare_key_reaches_the_site_handler() {
    let h = start_default().await;
    let mut ftp = Ftp::connect(h.front).await;
    ftp.greet().await;
    let (code, _) = ftp.cmd("KEY 0x5F2D3A26").await;
    assert_eq!(code, 530, "KEY needs a login, like SITE KEY");
    assert_eq!(ftp.cmd(&format!("USER {USER}")).await.0, 331);
    assert_eq!(ftp.cmd(&format!("PASS {PASSWORD}")).await.0, 230);

    assert_eq!(
        ftp.cmd("KEY 0x5F2D3A26").await,
        (230, "230 KEY[0x5F2D3A26]\r\n".into())
    );
    assert_eq!(
        ftp.cmd("SITE KEY 0x5F2D3A26").await,
        (230, "230 KEY[0x5F2D3A26]\r\n".into())
    );
    assert_eq!(ftp.cmd("key NULL").await, (230, "230 KEY[NULL]\r\n".into()));
    assert_eq!(
        ftp.cmd("Key NULL rec.ts").await,
        (230, "230 KEY[NULL rec.ts]\r\n".into())
    );
    assert_eq!(
        ftp.cmd("KEY INFO dir/a b.ts").await,
        (230, "230 KEY[INFO dir/a b.ts]\r\n".into())
    );
    assert_eq!(ftp.cmd("KEY").await, ftp.cmd("SITE KEY").await);
    // Bare LF works as it does for libunftp.
    ftp.send(b"KEY 0x1\n").await;
    assert_eq!(ftp.reply().await, (230, "230 KEY[0x1]\r\n".into()));
    // Only the exact command word is rewritten.
    assert_eq!(ftp.cmd("KEYS 0x1").await.0, 500);
    assert_eq!(ftp.cmd("KEYX").await.0, 500);
    assert_eq!(ftp.cmd("QUIT").await.0, 221);
    assert!(ftp.closed().await);
}

#[tokio::test(flavor = "current_thread")]
async fn pasv_upload_download_and_list() {
    let h = start_default().await;
    let mut ftp = Ftp::connect(h.front).await;
    ftp.login().await;
    assert_eq!(ftp.cmd("TYPE I").await.0, 200);
    let data = test_data(5 * 1024 * 1024 + 123);
    stor(&mut ftp, "rec.ts", &data).await;
    let stored = std::fs::read(h.dir.0.join("rec.ts")).expect("stored file");
    assert!(stored == data, "upload arrived byte-identical");

    let (code, text) = ftp.cmd("SIZE rec.ts").await;
    assert_eq!((code, text), (213, format!("213 {}\r\n", data.len())));
    let listing = retr(&mut ftp, "LIST").await;
    assert!(String::from_utf8_lossy(&listing).contains("rec.ts"));
    assert!(
        retr(&mut ftp, "RETR rec.ts").await == data,
        "download byte-identical"
    );

    // Resume: REST + STOR, and APPE.
    let tail = test_data(300_000);
    assert_eq!(ftp.cmd("REST 1000").await.0, 350);
    stor(&mut ftp, "rec.ts", &tail).await;
    let mut expect = data[..1000].to_vec();
    expect.extend_from_slice(&tail);
    assert!(std::fs::read(h.dir.0.join("rec.ts")).expect("file") == expect);
    let addr = ftp.pasv().await;
    let mut dc = TcpStream::connect(addr).await.expect("data connect");
    assert_eq!(ftp.cmd("APPE rec.ts").await.0, 150);
    dc.write_all(b"appended").await.expect("append");
    drop(dc);
    assert_eq!(ftp.reply().await.0, 226);
    expect.extend_from_slice(b"appended");
    assert!(std::fs::read(h.dir.0.join("rec.ts")).expect("file") == expect);
    assert_eq!(ftp.cmd("QUIT").await.0, 221);
}

#[tokio::test(flavor = "current_thread")]
async fn remote_client_gets_a_reachable_pasv_address() {
    // A non-loopback address of this host stands in for a remote network: libunftp sees the
    // client as that address (logs, switchboard) and PASV must name the address it connected to.
    let Some(ip) = non_loopback_ipv4() else {
        eprintln!("no non-loopback IPv4 address; skipping");
        return;
    };
    let h = start_with(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |_| {}).await;
    let public = SocketAddr::new(IpAddr::V4(ip), h.front.port());
    let mut ftp = Ftp::connect_from(IpAddr::V4(ip), public).await;
    ftp.login().await;
    let addr = ftp.pasv().await;
    assert_eq!(
        addr.ip(),
        IpAddr::V4(ip),
        "PASV names the address the client reached"
    );
    let data = test_data(2 * 1024 * 1024);
    stor(&mut ftp, "remote.ts", &data).await;
    assert!(std::fs::read(h.dir.0.join("remote.ts")).expect("file") == data);
    assert_eq!(ftp.cmd("KEY NULL").await.0, 230);
}

fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    // The local address of a UDP socket "connected" to a public address is the outgoing interface's.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.200:9").ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_mebibyte_without_newline_is_refused() {
    let h = start_default().await;
    let mut ftp = Ftp::connect(h.front).await;
    ftp.greet().await;
    let junk = vec![b'A'; 1024 * 1024];
    // The front may close before all of it is sent; that is the point.
    let _ = ftp.w.write_all(&junk).await;
    let (code, text) = ftp.reply().await;
    assert_eq!(
        (code, text.as_str()),
        (500, "500 Command line too long.\r\n")
    );
    assert!(ftp.closed().await);
}

#[tokio::test(flavor = "current_thread")]
async fn an_unfinished_line_times_out() {
    let h = start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), |cfg| {
        cfg.line_timeout = Duration::from_millis(300)
    })
    .await;
    let mut ftp = Ftp::connect(h.front).await;
    ftp.greet().await;
    ftp.send(b"USER al").await;
    let (code, _) = ftp.reply().await;
    assert_eq!(code, 421);
    assert!(ftp.closed().await);
}

#[tokio::test(flavor = "current_thread")]
async fn a_proxy_header_from_a_client_is_just_a_bad_command() {
    let h = start_default().await;
    let mut ftp = Ftp::connect(h.front).await;
    ftp.greet().await;
    // Before login libunftp answers any unknown command 530, after login 500: the same here.
    let header = "PROXY TCP4 10.9.8.7 10.0.0.1 1111 21";
    assert_eq!(ftp.cmd(header).await.0, ftp.cmd("XYZZY 1 2").await.0);
    assert_eq!(ftp.cmd(&format!("USER {USER}")).await.0, 331);
    assert_eq!(ftp.cmd(&format!("PASS {PASSWORD}")).await.0, 230);
    assert_eq!(ftp.cmd(header).await.0, 500);
    // The session still belongs to the real address: a passive transfer works.
    stor(&mut ftp, "p.bin", b"hello").await;
    assert_eq!(
        std::fs::read(h.dir.0.join("p.bin")).expect("file"),
        b"hello"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn failed_logins_are_throttled_per_address() {
    let h = start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), |cfg| {
        cfg.login_failures = 3;
        cfg.login_window = Duration::from_secs(60);
    })
    .await;
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

    let mut a = Ftp::connect_from(attacker, h.front).await;
    a.greet().await;
    for _ in 0..2 {
        assert_eq!(a.cmd(&format!("USER {USER}")).await.0, 331);
        assert_eq!(a.cmd("PASS wrong").await.0, 530);
    }
    // A second connection from the same address adds to the same count.
    let mut a2 = Ftp::connect_from(attacker, h.front).await;
    a2.greet().await;
    assert_eq!(a2.cmd(&format!("USER {USER}")).await.0, 331);
    assert_eq!(a2.cmd("PASS wrong").await.0, 530);
    // The failure that reaches the limit is answered, then that connection is closed with 421.
    assert_eq!(a2.reply().await.0, 421);
    assert!(a2.closed().await);
    // Further logins on an open connection and new connections get 421, even with the right password.
    assert_eq!(a.cmd(&format!("USER {USER}")).await.0, 331);
    assert_eq!(a.cmd(&format!("PASS {PASSWORD}")).await.0, 421);
    assert!(a.closed().await);
    let mut a3 = Ftp::connect_from(attacker, h.front).await;
    assert_eq!(a3.reply().await.0, 421);
    assert!(a3.closed().await);

    // Everybody else still logs in.
    let mut b = Ftp::connect_from(other, h.front).await;
    b.login().await;
    assert_eq!(b.cmd("KEY 0x1").await.0, 230);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_do_not_exceed_the_limit() {
    let h = start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), |cfg| {
        cfg.login_failures = 3
    })
    .await;
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
    let front = h.front;
    let guesses = (0..12).map(|i| {
        tokio::spawn(async move {
            let mut c = Ftp::connect_from(ip, front).await;
            let (code, _) = c.reply().await;
            if code != 220 {
                return code;
            }
            c.send(format!("USER {USER}\r\nPASS wrong{i}\r\n").as_bytes())
                .await;
            assert_eq!(c.reply().await.0, 331);
            c.reply().await.0
        })
    });
    let mut failures = 0;
    for g in guesses.collect::<Vec<_>>() {
        match g.await.expect("guess task") {
            530 => failures += 1,
            421 => {}
            other => panic!("unexpected reply {other}"),
        }
    }
    assert_eq!(failures, 3, "guesses answered before the block");
    let mut again = Ftp::connect_from(ip, h.front).await;
    assert_eq!(again.reply().await.0, 421);
}

#[tokio::test(flavor = "current_thread")]
async fn a_success_resets_the_count() {
    let h = start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), |cfg| {
        cfg.login_failures = 2
    })
    .await;
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
    for _ in 0..3 {
        let mut c = Ftp::connect_from(ip, h.front).await;
        c.greet().await;
        assert_eq!(c.cmd(&format!("USER {USER}")).await.0, 331);
        assert_eq!(c.cmd("PASS wrong").await.0, 530);
        assert_eq!(c.cmd(&format!("USER {USER}")).await.0, 331);
        assert_eq!(c.cmd(&format!("PASS {PASSWORD}")).await.0, 230);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn abor_during_a_download() {
    let h = start_default().await;
    let size = 64 * 1024 * 1024;
    std::fs::write(h.dir.0.join("big.bin"), test_data(size)).expect("write big file");
    let mut ftp = Ftp::connect(h.front).await;
    ftp.login().await;
    let addr = ftp.pasv().await;
    let mut dc = TcpStream::connect(addr).await.expect("data connect");
    assert_eq!(ftp.cmd("RETR big.bin").await.0, 150);
    let mut buf = vec![0u8; 64 * 1024];
    dc.read_exact(&mut buf).await.expect("some data");
    // Keep reading, as clients do: libunftp handles ABOR only while the transfer can move.
    let drain = tokio::spawn(async move {
        let mut rest = Vec::new();
        let _ = dc.read_to_end(&mut rest).await;
        rest.len()
    });
    let (code, text) = ftp.cmd("ABOR").await;
    assert!(matches!(code, 225 | 226 | 426), "{text}");
    // The data connection ends (aborted, or complete if the transfer won the race).
    let got = drain.await.expect("drain task");
    assert!(got <= size);
    // Whatever libunftp reports for the transfer itself, the session goes on.
    ftp.send(b"NOOP\r\n").await;
    loop {
        let (code, text) = ftp.reply().await;
        if code == 200 {
            break;
        }
        assert!(matches!(code, 225 | 226 | 426 | 451), "{text}");
    }
    assert_eq!(ftp.cmd("KEY NULL").await.0, 230);
}

#[tokio::test(flavor = "current_thread")]
async fn unmatched_data_connection_is_closed() {
    let h = start_default().await;
    let mut ftp = Ftp::connect(h.front).await;
    ftp.login().await;
    let addr = ftp.pasv().await;
    // A connection from another address to that passive port does not get the session's data.
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 0))
        .expect("bind");
    let mut intruder = sock.connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(IO_TIMEOUT, intruder.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    // The legitimate client still gets its connection.
    stor(&mut ftp, "after.bin", b"ok").await;
}

#[tokio::test(flavor = "current_thread")]
async fn python_ftplib_works_through_the_front() {
    if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("python3 not found; skipping");
        return;
    }
    let h = start_default().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ftplib_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(h.front.ip().to_string())
        .arg(h.front.port().to_string())
        .arg(USER)
        .arg(PASSWORD)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("ftplib in time")
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("ftplib: all ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftps_control_channel_is_relayed_raw() {
    let tools = ["openssl", "curl"].iter().all(|t| {
        std::process::Command::new(t)
            .arg("--version")
            .output()
            .is_ok()
    });
    if !tools {
        eprintln!("openssl or curl not found; skipping");
        return;
    }
    let certs = TempDir::new();
    let (cert, key) = (certs.0.join("cert.pem"), certs.0.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-days", "2", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (c, k) = (cert.clone(), key.clone());
    let h = start_server(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        |_| {},
        move |b| b.ftps(c, k),
    )
    .await;
    let upload = certs.0.join("up.bin");
    let data = test_data(1024 * 1024);
    std::fs::write(&upload, &data).expect("write upload");
    let curl = |quote: &'static str| {
        let url = format!("ftp://{USER}:{PASSWORD}@{}/tls.bin", h.front);
        let upload = upload.clone();
        async move {
            tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "--ssl-reqd",
                    "-k",
                    "--max-time",
                    "60",
                    "-Q",
                    quote,
                    "-T",
                ])
                .arg(&upload)
                .arg(url)
                .output()
                .await
                .expect("run curl")
        }
    };
    // Under TLS the front cannot see commands: SITE KEY works, bare KEY reaches libunftp as is.
    let ok = curl("SITE KEY 0x5F2D3A26").await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(std::fs::read(h.dir.0.join("tls.bin")).expect("file") == data);
    let bare = curl("KEY 0x5F2D3A26").await;
    assert!(
        !bare.status.success(),
        "bare KEY is not rewritten inside TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_clients_leaves_the_front_serving() {
    let h = start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), |cfg| {
        cfg.max_line = 512;
        cfg.line_timeout = Duration::from_millis(500);
    })
    .await;
    let mut seed = random_u64() | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces: [&[u8]; 12] = [
        b"KEY ",
        b"key\xff\xfe",
        b"PASS ",
        b"AUTH TLS",
        b"\r\n",
        b"\n",
        b"\r",
        b"\0",
        b"\xff\xf4\xff\xf2",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"SITE KEY ",
        b"230-",
    ];
    let mut clients = Vec::new();
    for _ in 0..40 {
        let mut junk = Vec::new();
        for _ in 0..(next() % 64) {
            if next() % 3 == 0 {
                junk.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
            } else {
                junk.extend((0..(next() % 300)).map(|_| next() as u8));
            }
        }
        let front = h.front;
        clients.push(tokio::spawn(async move {
            if let Ok(mut s) = TcpStream::connect(front).await {
                let _ = s.write_all(&junk).await;
                let mut sink = vec![0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(3), async {
                    while let Ok(n) = s.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            }
        }));
    }
    for c in clients {
        c.await.expect("junk client");
    }
    let mut ftp = Ftp::connect(h.front).await;
    ftp.login().await;
    assert_eq!(ftp.cmd("KEY 0x5F2D3A26").await.0, 230);
    stor(&mut ftp, "after-junk.bin", b"fine").await;
}
