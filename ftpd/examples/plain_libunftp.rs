//! A plain libunftp + unftp-sbe-fs server with nothing of ftpd's: the baseline that the
//! benchmarks in `tests/bench/` compare ftpd against. Any user name and password log in.
//!
//! Usage: plain_libunftp ADDR ROOT FIRST_PASSIVE-LAST_PASSIVE

use libunftp::ServerBuilder;
use unftp_sbe_fs::Filesystem;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, root, ports] = args.as_slice() else {
        return Err("usage: plain_libunftp ADDR ROOT FIRST-LAST".into());
    };
    let (lo, hi) = ports
        .split_once('-')
        .ok_or("passive ports must be FIRST-LAST")?;
    let root = std::path::PathBuf::from(root);
    let server = ServerBuilder::new(Box::new(move || {
        Filesystem::new(root.clone()).unwrap_or_else(|e| panic!("cannot open root: {e}"))
    }))
    .passive_ports(lo.parse()?..=hi.parse()?)
    .build()?;
    server.listen(addr.clone()).await?;
    Ok(())
}
