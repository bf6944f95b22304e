//! A small scripted FTP server on 127.0.0.1 that speaks the KEY protocol, for end-to-end
//! tests of the driver and the CLI. It serves one control connection at a time, which is
//! all a single client needs, and can cut the link mid-upload or refuse completion.
#![allow(dead_code, clippy::unwrap_used)]

use crc_tools::{crc32, KeyAnswer, KeyCommand, KeyValue};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub const USER: &str = "stb";
pub const PASSWORD: &str = "secret";

/// What the server holds and how it misbehaves.
#[derive(Default)]
pub struct State {
    pub files: HashMap<String, Vec<u8>>,
    pub declared: HashMap<String, u32>,
    /// Every command received, in order, across connections.
    pub commands: Vec<String>,
    /// Answer KEY with 500, as a server without the extension does.
    pub no_key: bool,
    /// Answer KEY INFO with 501, as a server with KEY but without INFO does.
    pub no_info: bool,
    /// Cut the next uploads (one entry each) after this many bytes: both connections drop.
    pub cuts: Vec<usize>,
    /// Refuse completion even when the CRC matches.
    pub refuse_completion: bool,
    /// Control connections accepted.
    pub connections: u32,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _thread: JoinHandle<()>,
}

impl FakeServer {
    pub fn start(state: State) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let shared = Arc::clone(&state);
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                shared.lock().unwrap().connections += 1;
                // A failed session (a cut, a client gone) just ends that connection.
                let _ = serve(stream, &shared);
            }
        });
        FakeServer {
            addr,
            state,
            _thread: thread,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ftp://{USER}@{}/{path}", self.addr)
    }

    /// The commands' first words (`SITE KEY NULL x` is `SITE`).
    pub fn verbs(&self) -> Vec<String> {
        self.state()
            .commands
            .iter()
            .map(|c| c.split(' ').next().unwrap_or("").to_string())
            .collect()
    }
}

fn reply(w: &mut TcpStream, lines: &[&str]) -> std::io::Result<()> {
    for l in lines {
        w.write_all(l.as_bytes())?;
        w.write_all(b"\r\n")?;
    }
    w.flush()
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    reply(&mut out, &["220-fake server", "220 ready"])?;
    let mut logged_in = false;
    let mut user_ok = false;
    let mut pasv: Option<TcpListener> = None;
    let mut rest: u64 = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        state.lock().unwrap().commands.push(line.clone());
        let (verb, arg) = line.split_once(' ').unwrap_or((&line, ""));
        let verb = verb.to_ascii_uppercase();
        if !logged_in && !matches!(verb.as_str(), "USER" | "PASS" | "QUIT") {
            reply(&mut out, &["530 please log in"])?;
            continue;
        }
        match verb.as_str() {
            "USER" => {
                user_ok = arg == USER;
                reply(&mut out, &["331 password please"])?;
            }
            "PASS" if user_ok && arg == PASSWORD => {
                logged_in = true;
                reply(&mut out, &["230 logged in"])?;
            }
            "PASS" => reply(&mut out, &["530 login incorrect"])?,
            "TYPE" => reply(&mut out, &["200 type set"])?,
            "SIZE" => {
                let size = state.lock().unwrap().files.get(arg).map(Vec::len);
                match size {
                    Some(n) => reply(&mut out, &[&format!("213 {n}")])?,
                    None => reply(&mut out, &["550 no such file"])?,
                }
            }
            "SITE" => match arg.split_once(' ') {
                Some((word, rest)) if word.eq_ignore_ascii_case("KEY") => {
                    key(&mut out, state, rest)?
                }
                _ => reply(&mut out, &["500 unknown SITE command"])?,
            },
            "KEY" => key(&mut out, state, arg)?,
            "DELE" => {
                let mut s = state.lock().unwrap();
                s.declared.remove(arg);
                match s.files.remove(arg) {
                    Some(_) => reply(&mut out, &["250 deleted"])?,
                    None => reply(&mut out, &["550 no such file"])?,
                }
            }
            "PASV" => {
                let l = TcpListener::bind("127.0.0.1:0")?;
                let port = l.local_addr()?.port();
                pasv = Some(l);
                reply(
                    &mut out,
                    &[&format!(
                        "227 Entering Passive Mode (127,0,0,1,{},{})",
                        port >> 8,
                        port & 0xFF
                    )],
                )?;
            }
            "REST" => match arg.parse::<u64>() {
                Ok(n) => {
                    rest = n;
                    reply(&mut out, &["350 restarting"])?;
                }
                _ => reply(&mut out, &["501 bad offset"])?,
            },
            "STOR" => {
                let Some(listener) = pasv.take() else {
                    reply(&mut out, &["425 use PASV first"])?;
                    continue;
                };
                let (mut data, _) = listener.accept()?;
                data.set_read_timeout(Some(Duration::from_secs(10)))?;
                let from = std::mem::take(&mut rest) as usize;
                {
                    let mut s = state.lock().unwrap();
                    let file = s.files.entry(arg.to_string()).or_default();
                    if from > file.len() {
                        drop(s);
                        reply(&mut out, &["554 REST beyond the end"])?;
                        continue;
                    }
                    file.truncate(from);
                }
                reply(&mut out, &["150 send the data"])?;
                let cut = {
                    let mut s = state.lock().unwrap();
                    (!s.cuts.is_empty()).then(|| s.cuts.remove(0))
                };
                let mut received = 0usize;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let want = cut.map_or(buf.len(), |c| buf.len().min(c - received));
                    if want == 0 {
                        // The link drops: what arrived is kept, both connections die.
                        return Ok(());
                    }
                    let n = data.read(&mut buf[..want])?;
                    if n == 0 {
                        break;
                    }
                    received += n;
                    state
                        .lock()
                        .unwrap()
                        .files
                        .get_mut(arg)
                        .unwrap()
                        .extend_from_slice(&buf[..n]);
                }
                let s = state.lock().unwrap();
                let crc = crc32(&s.files[arg]);
                let ok = s.declared.get(arg).is_none_or(|&d| d == crc) && !s.refuse_completion;
                drop(s);
                if ok {
                    reply(&mut out, &["226 transfer complete"])?;
                } else {
                    reply(&mut out, &["451 CRC mismatch: upload kept as partial"])?;
                }
            }
            "QUIT" => {
                reply(&mut out, &["221 bye"])?;
                return Ok(());
            }
            _ => reply(&mut out, &["502 not implemented"])?,
        }
    }
}

fn key(out: &mut TcpStream, state: &Mutex<State>, arg: &str) -> std::io::Result<()> {
    let mut s = state.lock().unwrap();
    if s.no_key {
        drop(s);
        return reply(out, &["500 Command not implemented"]);
    }
    match KeyCommand::parse(arg) {
        Err(e) => {
            drop(s);
            reply(out, &[&format!("501 {e}")])
        }
        Ok(KeyCommand::Declare { crc, path }) => {
            s.declared.insert(path.unwrap_or("").to_string(), crc.0);
            drop(s);
            reply(out, &["230 KEY accepted"])
        }
        Ok(KeyCommand::Query { path }) => {
            let answer = KeyAnswer::from_declared(s.declared.get(path.unwrap_or("")).copied());
            drop(s);
            reply(out, &[&format!("230 {answer}")])
        }
        Ok(KeyCommand::Info { .. }) if s.no_info => {
            drop(s);
            reply(out, &["501 CRC value is not hexadecimal"])
        }
        Ok(KeyCommand::Info { path }) => {
            let path = path.unwrap_or("");
            let file = s.files.get(path).cloned().unwrap_or_default();
            let declared = KeyAnswer::from_declared(s.declared.get(path).copied());
            drop(s);
            reply(
                out,
                &[
                    &format!("213-KEY INFO {path}"),
                    &format!(" declared={declared}"),
                    &format!(" size={}", file.len()),
                    &format!(" received-crc={}", KeyValue(crc32(&file))),
                    " state=partial",
                    " updated=2026-11-22T03:04:05Z",
                    "213 End",
                ],
            )
        }
    }
}

/// Deterministic test content.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}
