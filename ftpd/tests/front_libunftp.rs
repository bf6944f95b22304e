//! The front in front of a real libunftp server (ordinary mode, loopback, kernel-picked passive
//! ports), driven over TCP: with unftp-sbe-fs (data connections relayed) and with ftpd's own
//! storage (uploads handed over to the upload path).

use ftpd::context::{Services, UploadConfig};
use ftpd::front::{Front, FrontConfig, FrontError};
use ftpd::handoff::Handoff;
use ftpd::records::{RecordStore, RedbStore};
use ftpd::users::HomeProvider;
use libunftp::options::{Reply, ReplyCode, SiteCommandContext, SiteCommandHandler};
use libunftp::ServerBuilder;
use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, DefaultUser, Principal};
use unftp_sbe_fs::Filesystem;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret";
/// A second account, to tell per-user throttling from per-address throttling.
const USER2: &str = "bob";
const PASSWORD2: &str = "hunter2";
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
        let password = creds.password.as_deref();
        if (username, password) == (USER, Some(PASSWORD))
            || (username, password) == (USER2, Some(PASSWORD2))
        {
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
    /// The front's public passive ports.
    passive: Vec<u16>,
    /// Where `USER`'s uploads land.
    files: PathBuf,
    _dir: TempDir,
    _stop: oneshot::Sender<()>,
}

impl Harness {
    fn file(&self, name: &str) -> PathBuf {
        self.files.join(name)
    }
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

/// Binds a front on `public_ip` with 16 passive ports from a random range (a busy port is
/// skipped), `tune` applied, for a libunftp on a loopback address of its own.
async fn bind_front(
    public_ip: IpAddr,
    handoff: Option<Arc<Handoff>>,
    tune: impl Fn(&mut FrontConfig),
) -> (Front, SocketAddr) {
    let backend = free_loopback_port();
    for _ in 0..20 {
        let base = 20_000 + (random_u64() % 40_000) as u16;
        let mut cfg = FrontConfig::new(SocketAddr::new(public_ip, 0), base..=base + 15, backend);
        cfg.handoff = handoff.clone();
        tune(&mut cfg);
        match Front::bind(cfg).await {
            Ok(f) => return (f, backend),
            Err(FrontError::NoPassivePort { .. }) => continue,
            // The kernel gave the control port from inside the random range: draw again.
            Err(FrontError::BadPassiveRange { .. }) => continue,
            Err(e) => panic!("front bind: {e}"),
        }
    }
    panic!("no free passive range")
}

/// Runs libunftp's `listen` future until it accepts on `backend`, then the front.
async fn launch(
    listen: impl Future<Output = Result<(), libunftp::ServerError>> + Send + 'static,
    backend: SocketAddr,
    front: Front,
    dir: TempDir,
    files: PathBuf,
) -> Harness {
    let listening = tokio::spawn(listen);
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
    let front_addr = front.local_addr();
    let passive = front.passive_ports();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(front.run(async move {
        let _ = stopped.await;
    }));
    Harness {
        front: front_addr,
        passive,
        files,
        _dir: dir,
        _stop: stop,
    }
}

/// Starts libunftp with unftp-sbe-fs (ordinary mode, loopback) behind a front on `public_ip`;
/// the front relays every data connection.
async fn start(public_ip: IpAddr, tune: impl Fn(&mut FrontConfig)) -> Harness {
    start_server(public_ip, tune, |b| b).await
}

async fn start_server(
    public_ip: IpAddr,
    tune: impl Fn(&mut FrontConfig),
    server_options: impl FnOnce(Builder) -> Builder,
) -> Harness {
    let dir = TempDir::new();
    let (front, backend) = bind_front(public_ip, None, tune).await;
    let root = dir.0.clone();
    let server = server_options(
        ServerBuilder::with_authenticator(
            Box::new(move || Filesystem::new(root.clone()).expect("filesystem")),
            Arc::new(TestAuth),
        )
        // As ftpd/src/server.rs runs it: ordinary mode, a kernel-picked loopback port per PASV.
        .passive_ports(0..=0)
        .site_command("KEY", EchoKey),
    )
    .build()
    .expect("libunftp builds");
    let files = dir.0.clone();
    launch(
        server.listen(backend.to_string()),
        backend,
        front,
        dir,
        files,
    )
    .await
}

/// Starts libunftp with ftpd's own storage and upload path behind a front that hands plain
/// uploads over, as `ftpd::server` wires them.
async fn start_ftpd_storage(tune: impl Fn(&mut FrontConfig)) -> Harness {
    let dir = TempDir::new();
    let (root, state) = (dir.0.join("root"), dir.0.join("state"));
    for d in [&root, &state] {
        std::fs::create_dir_all(d).expect("create dir");
    }
    let handoff = Arc::new(Handoff::default());
    let store: Arc<dyn RecordStore> = Arc::new(RedbStore::open(&state, false).expect("store"));
    let shared = Arc::new(Services::new(
        store,
        UploadConfig {
            buffer: 64 * 1024,
            buffer_max: 1024 * 1024,
            checkpoint: 16 << 20,
            fsync: false,
            takeover_wait: Duration::from_secs(5),
            direct_io: false,
            data_idle_timeout: Duration::from_secs(60),
        },
        Some(handoff.clone()),
    ));
    let (front, backend) = bind_front(IpAddr::V4(Ipv4Addr::LOCALHOST), Some(handoff), tune).await;
    let server = ServerBuilder::with_user_detail_provider(
        Box::new(move || ftpd::backend::KeyStorage::new(shared.clone())),
        Arc::new(HomeProvider { root: root.clone() }),
    )
    .authenticator(Arc::new(TestAuth))
    .passive_ports(0..=0)
    .build()
    .expect("libunftp builds");
    launch(
        server.listen(backend.to_string()),
        backend,
        front,
        dir,
        root.join(USER),
    )
    .await
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
        self.login_as(USER, PASSWORD).await;
    }

    /// `USER` + `PASS`; the code of the reply to `PASS`.
    async fn try_login(&mut self, user: &str, password: &str) -> u16 {
        assert_eq!(self.cmd(&format!("USER {user}")).await.0, 331);
        self.cmd(&format!("PASS {password}")).await.0
    }

    async fn login_as(&mut self, user: &str, password: &str) {
        assert_eq!(self.try_login(user, password).await, 230);
    }

    /// `EPSV`: the port announced, at the address the control connection reached.
    async fn epsv(&mut self) -> SocketAddr {
        let (code, text) = self.cmd("EPSV").await;
        assert_eq!(code, 229, "{text}");
        let port = text
            .split("(|||")
            .nth(1)
            .and_then(|r| r.split('|').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected reply {text:?}"));
        let ip = self.w.peer_addr().expect("peer").ip();
        SocketAddr::new(ip, port)
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
    let stored = std::fs::read(h.file("rec.ts")).expect("stored file");
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
    assert!(std::fs::read(h.file("rec.ts")).expect("file") == expect);
    let addr = ftp.pasv().await;
    let mut dc = TcpStream::connect(addr).await.expect("data connect");
    assert_eq!(ftp.cmd("APPE rec.ts").await.0, 150);
    dc.write_all(b"appended").await.expect("append");
    drop(dc);
    assert_eq!(ftp.reply().await.0, 226);
    expect.extend_from_slice(b"appended");
    assert!(std::fs::read(h.file("rec.ts")).expect("file") == expect);

    // EPSV: the front's port in the extended form, both ways.
    let addr = ftp.epsv().await;
    assert!(
        h.passive.contains(&addr.port()),
        "{addr} not in {:?}",
        h.passive
    );
    let mut dc = TcpStream::connect(addr).await.expect("data connect");
    assert_eq!(ftp.cmd("STOR e.bin").await.0, 150);
    dc.write_all(&tail).await.expect("upload");
    drop(dc);
    assert_eq!(ftp.reply().await.0, 226);
    let addr = ftp.epsv().await;
    let mut dc = TcpStream::connect(addr).await.expect("data connect");
    assert_eq!(ftp.cmd("RETR e.bin").await.0, 150);
    let mut back = Vec::new();
    dc.read_to_end(&mut back).await.expect("download");
    assert_eq!(ftp.reply().await.0, 226);
    assert!(back == tail);
    assert_eq!(ftp.cmd("QUIT").await.0, 221);
}

#[tokio::test(flavor = "current_thread")]
async fn remote_client_gets_a_reachable_pasv_address() {
    // A non-loopback address of this host stands in for a remote network: PASV must name the
    // address the client connected to, and a data connection from there must match its promise.
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
    assert!(
        h.passive.contains(&addr.port()),
        "PASV names a port of the front's"
    );
    let data = test_data(2 * 1024 * 1024);
    stor(&mut ftp, "remote.ts", &data).await;
    assert!(std::fs::read(h.file("remote.ts")).expect("file") == data);
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
    // The session goes on as before: a passive transfer works.
    stor(&mut ftp, "p.bin", b"hello").await;
    assert_eq!(std::fs::read(h.file("p.bin")).expect("file"), b"hello");
}

#[tokio::test(flavor = "current_thread")]
async fn failed_logins_are_throttled_per_user_at_an_address() {
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
        assert_eq!(a.try_login(USER, "wrong").await, 530);
    }
    // A second connection from the same address adds to the same count.
    let mut a2 = Ftp::connect_from(attacker, h.front).await;
    a2.greet().await;
    assert_eq!(a2.try_login(USER, "wrong").await, 530);
    // The failure that reaches the limit is answered, then that connection is closed with 421.
    assert_eq!(a2.reply().await.0, 421);
    assert!(a2.closed().await);
    // That user's logins from that address get 421 on an open connection and on a new one,
    // even with the right password.
    assert_eq!(a.try_login(USER, PASSWORD).await, 421);
    assert!(a.closed().await);
    let mut a3 = Ftp::connect_from(attacker, h.front).await;
    a3.greet().await;
    assert_eq!(a3.try_login(USER, PASSWORD).await, 421);
    assert!(a3.closed().await);

    // Another user at that address is not blocked (a carrier NAT shares addresses)...
    let mut a4 = Ftp::connect_from(attacker, h.front).await;
    a4.greet().await;
    a4.login_as(USER2, PASSWORD2).await;
    assert_eq!(a4.cmd("KEY 0x1").await.0, 230);
    // ...nor is that user from another address.
    let mut b = Ftp::connect_from(other, h.front).await;
    b.login().await;
    assert_eq!(b.cmd("KEY 0x1").await.0, 230);
}

#[tokio::test(flavor = "current_thread")]
async fn failed_logins_over_all_users_are_throttled_per_address() {
    let h = start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), |cfg| {
        cfg.login_failures = 3;
        cfg.login_failures_per_address = 4;
        cfg.login_window = Duration::from_secs(60);
    })
    .await;
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));
    let mut a = Ftp::connect_from(attacker, h.front).await;
    a.greet().await;
    // Two failures each for two users: neither user reaches 3, the address reaches 4.
    for user in [USER, USER2, USER] {
        assert_eq!(a.try_login(user, "wrong").await, 530);
    }
    assert_eq!(a.try_login(USER2, "wrong").await, 530);
    assert_eq!(a.reply().await.0, 421);
    assert!(a.closed().await);
    // The whole address is refused on connect, whoever it would log in as.
    let mut again = Ftp::connect_from(attacker, h.front).await;
    let (code, text) = again.reply().await;
    assert_eq!(code, 421, "{text}");
    assert!(again.closed().await);
    // Other addresses are not.
    let mut b = Ftp::connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)), h.front).await;
    b.login().await;
}

/// Runs `guesses` parallel connections from `ip`, each sending `USER`+`PASS` with a wrong
/// password for `user(i)` at once; returns how many were answered 530 (the rest got 421).
async fn parallel_guesses(
    front: SocketAddr,
    ip: IpAddr,
    guesses: usize,
    user: fn(usize) -> String,
) -> usize {
    let tasks = (0..guesses).map(|i| {
        tokio::spawn(async move {
            let mut c = Ftp::connect_from(ip, front).await;
            let (code, _) = c.reply().await;
            if code != 220 {
                return code;
            }
            c.send(format!("USER {}\r\nPASS wrong{i}\r\n", user(i)).as_bytes())
                .await;
            assert_eq!(c.reply().await.0, 331);
            c.reply().await.0
        })
    });
    let mut failures = 0;
    for g in tasks.collect::<Vec<_>>() {
        match g.await.expect("guess task") {
            530 => failures += 1,
            421 => {}
            other => panic!("unexpected reply {other}"),
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_do_not_exceed_the_limit() {
    let h = start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), |cfg| {
        cfg.login_failures = 3
    })
    .await;
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
    let failures = parallel_guesses(h.front, ip, 12, |_| USER.to_string()).await;
    assert_eq!(failures, 3, "guesses answered before the block");
    // The user is blocked at that address; the address itself is not.
    let mut again = Ftp::connect_from(ip, h.front).await;
    again.greet().await;
    assert_eq!(again.try_login(USER, PASSWORD).await, 421);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_over_many_users_do_not_exceed_the_address_limit() {
    let h = start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), |cfg| {
        cfg.login_failures = 100;
        cfg.login_failures_per_address = 3;
    })
    .await;
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 8));
    let failures = parallel_guesses(h.front, ip, 12, |i| format!("user{i}")).await;
    assert_eq!(failures, 3, "guesses answered before the block");
    let mut again = Ftp::connect_from(ip, h.front).await;
    assert_eq!(again.reply().await.0, 421);
}

#[tokio::test(flavor = "current_thread")]
async fn a_success_clears_only_its_own_users_count() {
    let h = start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), |cfg| {
        cfg.login_failures = 2
    })
    .await;
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
    // A failure then a success, again and again: the success clears the user's count.
    for _ in 0..3 {
        let mut c = Ftp::connect_from(ip, h.front).await;
        c.greet().await;
        assert_eq!(c.try_login(USER, "wrong").await, 530);
        c.login_as(USER, PASSWORD).await;
    }
    // Another user's success does not clear this one's.
    let mut c = Ftp::connect_from(ip, h.front).await;
    c.greet().await;
    assert_eq!(c.try_login(USER2, "wrong").await, 530);
    c.login_as(USER, PASSWORD).await;
    let mut c = Ftp::connect_from(ip, h.front).await;
    c.greet().await;
    assert_eq!(c.try_login(USER2, "wrong").await, 530);
    assert_eq!(c.reply().await.0, 421);
    assert!(c.closed().await);
    let mut c = Ftp::connect_from(ip, h.front).await;
    c.greet().await;
    assert_eq!(c.try_login(USER2, PASSWORD2).await, 421);
    // The user that succeeded still logs in from there.
    let mut c = Ftp::connect_from(ip, h.front).await;
    c.greet().await;
    c.login_as(USER, PASSWORD).await;
}

#[tokio::test(flavor = "current_thread")]
async fn abor_during_a_download() {
    let h = start_default().await;
    let size = 64 * 1024 * 1024;
    std::fs::write(h.file("big.bin"), test_data(size)).expect("write big file");
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
    // No PASV yet: every passive port closes a connection at once.
    for port in &h.passive {
        let mut dc = TcpStream::connect((Ipv4Addr::LOCALHOST, *port))
            .await
            .expect("connect");
        let began = Instant::now();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), dc.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(matches!(n, Ok(0) | Err(_)));
        assert!(began.elapsed() < Duration::from_secs(2));
    }
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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/ftplib_client.py");
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

/// libunftp with FTPS behind a front, and the directory holding its certificate; `None` without
/// openssl or curl.
async fn start_ftps() -> Option<(Harness, TempDir)> {
    let tools = ["openssl", "curl"].iter().all(|t| {
        std::process::Command::new(t)
            .arg("--version")
            .output()
            .is_ok()
    });
    if !tools {
        eprintln!("openssl or curl not found; skipping");
        return None;
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
    // The front ends the control channel's TLS; libunftp, with the same certificate, the data
    // connections' (PROT P).
    let tls = ftpd::front::tls::server_config(&cert, &key).expect("TLS configuration");
    let h = start_server(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        move |cfg| cfg.tls = Some(tls.clone()),
        move |b| b.ftps(cert, key),
    )
    .await;
    Some((h, certs))
}

/// curl over explicit FTPS to `tls.bin` on the harness, with `args` before the URL.
async fn curl_ftps(h: &Harness, args: Vec<std::ffi::OsString>) -> std::process::Output {
    let url = format!("ftp://{USER}:{PASSWORD}@{}/tls.bin", h.front);
    tokio::process::Command::new("curl")
        .args(["-sS", "--ssl-reqd", "-k", "--max-time", "60"])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("run curl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftps_control_channel_is_read_by_the_front() {
    let Some((h, _certs)) = start_ftps().await else {
        return;
    };
    std::fs::write(h.file("tls.bin"), b"0123456789").expect("write file");
    // `-I`: SIZE and MDTM over the TLS control channel, no data connection.
    let head = |quote: &'static str| curl_ftps(&h, vec!["-I".into(), "-Q".into(), quote.into()]);
    // Inside TLS the front still reads lines: SITE KEY works, and so does bare KEY.
    for quote in ["SITE KEY 0x5F2D3A26", "KEY 0x5F2D3A26"] {
        let ok = head(quote).await;
        let stdout = String::from_utf8_lossy(&ok.stdout);
        assert!(
            ok.status.success(),
            "{quote}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(stdout.contains("Content-Length: 10"), "{stdout}");
    }
}

/// Inside TLS the front still rewrites libunftp's `227`/`229`, so the client is sent to one of
/// the front's passive ports (not libunftp's loopback listener), and the TLS data connection
/// is relayed to libunftp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftps_uploads_go_through_the_front() {
    let Some((h, certs)) = start_ftps().await else {
        return;
    };
    let upload = certs.0.join("up.bin");
    let data = test_data(1024 * 1024);
    std::fs::write(&upload, &data).expect("write upload");
    let ok = curl_ftps(&h, vec!["-v".into(), "-T".into(), upload.into_os_string()]).await;
    let log = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{log}");
    assert!(std::fs::read(h.file("tls.bin")).expect("file") == data);
    let port: u16 = log
        .split("(|||")
        .nth(1)
        .and_then(|rest| rest.split('|').next())
        .and_then(|p| p.parse().ok())
        .expect("an EPSV reply in curl's log");
    assert!(
        h.passive.contains(&port),
        "{port} is not one of {:?}",
        h.passive
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

/// Many sessions from one address upload at once, each its own content in rounds that start
/// together; every file must hold exactly what its own session sent.
async fn concurrent_uploads_stay_apart(h: &Harness, sessions: usize, rounds: usize) {
    let barrier = Arc::new(tokio::sync::Barrier::new(sessions));
    let front = h.front;
    let tasks: Vec<_> = (0..sessions)
        .map(|i| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut ftp = Ftp::connect(front).await;
                ftp.login().await;
                assert_eq!(ftp.cmd("TYPE I").await.0, 200);
                let mut sent = Vec::new();
                for r in 0..rounds {
                    let name = format!("s{i:02}-r{r}.bin");
                    // Different lengths too, so a mix-up cannot go unnoticed by size alone.
                    let data = test_data(96 * 1024 + i * 1021 + r * 7);
                    barrier.wait().await;
                    stor(&mut ftp, &name, &data).await;
                    sent.push((name, data));
                }
                assert_eq!(ftp.cmd("QUIT").await.0, 221);
                sent
            })
        })
        .collect();
    let mut files = 0;
    for t in tasks {
        let sent = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("sessions in time")
            .expect("session task");
        for (name, data) in sent {
            let stored = std::fs::read(h.file(&name)).expect("stored file");
            assert!(
                stored == data,
                "{name}: {} bytes stored, {} sent by its session",
                stored.len(),
                data.len()
            );
            files += 1;
        }
    }
    assert_eq!(files, sessions * rounds);
}

/// 30 sessions, 32 passive ports: ports are used again and again by different sessions of the
/// same address.
fn room_for_30(cfg: &mut FrontConfig) {
    let start = *cfg.passive_ports.start();
    cfg.passive_ports = start..=start + 31;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sessions_of_one_address_get_their_own_data_relayed() {
    let h = start_with(IpAddr::V4(Ipv4Addr::LOCALHOST), room_for_30).await;
    concurrent_uploads_stay_apart(&h, 30, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sessions_of_one_address_get_their_own_data_handed_over() {
    let h = start_ftpd_storage(room_for_30).await;
    concurrent_uploads_stay_apart(&h, 30, 3).await;
}

/// A client QUITs while its upload's data connection is open and silent; nobody else waits.
async fn quit_mid_upload_holds_up_nobody(h: &Harness) {
    let quick = Duration::from_secs(2);
    let mut other = Ftp::connect(h.front).await;
    other.login().await;
    let mut a = Ftp::connect(h.front).await;
    a.login().await;
    let addr = a.pasv().await;
    let mut dc = TcpStream::connect(addr).await.expect("data connect");
    let (code, text) = a.cmd("STOR stalled.bin").await;
    assert!(code == 150 || code == 125, "{text}");
    dc.write_all(&test_data(256 * 1024)).await.expect("upload");
    // From here the data connection is held open and silent.
    a.send(b"QUIT\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let began = Instant::now();
    let mut b = tokio::time::timeout(quick, async {
        let mut b = Ftp::connect(h.front).await;
        b.greet().await;
        b
    })
    .await
    .expect("a new connection is greeted within 2 s");
    assert!(began.elapsed() < quick);
    let addr = tokio::time::timeout(quick, other.pasv())
        .await
        .expect("PASV on another session within 2 s");
    // That session's transfer goes through, and the new one's login and PASV too.
    let mut odc = TcpStream::connect(addr).await.expect("data connect");
    let (code, text) = other.cmd("STOR other.bin").await;
    assert!(code == 150 || code == 125, "{text}");
    odc.write_all(b"unhindered").await.expect("upload");
    drop(odc);
    assert_eq!(other.reply().await.0, 226);
    assert_eq!(
        std::fs::read(h.file("other.bin")).expect("file"),
        b"unhindered"
    );
    b.login_as(USER, PASSWORD).await;
    tokio::time::timeout(quick, b.pasv())
        .await
        .expect("PASV on a new session within 2 s");
    drop(dc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quit_mid_relayed_upload_holds_up_nobody() {
    let h = start_default().await;
    quit_mid_upload_holds_up_nobody(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quit_mid_handed_over_upload_holds_up_nobody() {
    let h = start_ftpd_storage(|_| {}).await;
    quit_mid_upload_holds_up_nobody(&h).await;
}
