//! The HTTP listener (`http_listen`): one axum server for the routes of every part (`/metrics`,
//! and whatever `server.rs` merges next to it), behind an optional bearer token
//! (`http_token`). Off unless `http_listen` is set; `config.rs` refuses an address other than
//! loopback without a token.
//!
//! Every request, to any path, must carry `Authorization: Bearer <token>` when a token is set;
//! otherwise it is answered `401`. The token is compared in constant time: both sides go
//! through one HMAC under a key drawn at start-up, and `ring` compares the tags.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::hmac;
use std::net::SocketAddr;
use std::sync::Arc;

/// The bound HTTP socket, with the token its requests must carry.
#[derive(Debug)]
pub struct HttpListener {
    listener: tokio::net::TcpListener,
    token: Option<Token>,
}

impl HttpListener {
    /// The address it listens on (the port the kernel chose for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Why the HTTP listener could not start; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on `http_listen` {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("`http_token`: no secure random numbers available")]
    Random,
}

/// Binds `http_listen`; errors name the setting.
pub async fn bind(addr: SocketAddr, token: Option<String>) -> Result<HttpListener, HttpError> {
    let token = token
        .filter(|t| !t.is_empty())
        .map(|t| Token::new(&t))
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    Ok(HttpListener { listener, token })
}

/// Serves `app` (the routes of every part, merged by server.rs) until `shutdown` resolves;
/// applies the token check to every route.
pub async fn serve(
    listener: HttpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let HttpListener { listener, token } = listener;
    let app = match token {
        // `layer` covers the fallback too: an unknown path without the token is a 401, not a 404.
        Some(t) => app.layer(axum::middleware::from_fn_with_state(
            Arc::new(t),
            require_token,
        )),
        None => app,
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The expected token, kept as its HMAC under a random key: a presented token is put through
/// the same HMAC and the tags are compared in constant time, whatever its length.
#[derive(Debug)]
struct Token {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl Token {
    fn new(token: &str) -> Result<Self, HttpError> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| HttpError::Random)?;
        let tag = hmac::sign(&key, token.as_bytes());
        Ok(Token { key, tag })
    }

    /// True when the `Authorization` header value is `Bearer <the token>`.
    fn accepts(&self, authorization: &[u8]) -> bool {
        let Some(presented) = bearer(authorization) else {
            return false;
        };
        hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }
}

/// The credentials of a `Bearer` authorization (the scheme is case-insensitive, RFC 9110).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(value[SCHEME.len()..].trim_ascii())
}

async fn require_token(State(token): State<Arc<Token>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| token.accepts(v.as_bytes()));
    if ok {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(WWW_AUTHENTICATE, "Bearer")],
        "missing or wrong bearer token\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bearer_tokens_are_checked_exactly() {
        let t = Token::new("s3cret").unwrap();
        assert!(t.accepts(b"Bearer s3cret"));
        assert!(t.accepts(b"bearer s3cret"));
        assert!(t.accepts(b"BEARER  s3cret "));
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"Bearer ",
            b"Bearer",
            b"s3cret",
            b"Basic s3cret",
            b"",
        ] {
            assert!(!t.accepts(wrong), "{}", String::from_utf8_lossy(wrong));
        }
    }

    /// One HTTP/1.1 request to `addr`; the status code and the body.
    async fn get_once(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let code = resp[9..12].parse().unwrap();
        let body = resp.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
        (code, body.to_string())
    }

    async fn server(token: Option<&str>) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let l = bind(addr, token.map(String::from)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = axum::Router::new().route("/hello", get(|| async { "hi" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(l, app, async move {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    #[tokio::test]
    async fn a_token_guards_every_path() {
        let (addr, stop) = server(Some("tok")).await;
        assert_eq!(get_once(addr, "/hello", None).await.0, 401);
        assert_eq!(get_once(addr, "/hello", Some("Bearer nope")).await.0, 401);
        assert_eq!(get_once(addr, "/nowhere", None).await.0, 401);
        assert_eq!(
            get_once(addr, "/hello", Some("Bearer tok")).await,
            (200, "hi".to_string())
        );
        assert_eq!(get_once(addr, "/nowhere", Some("Bearer tok")).await.0, 404);
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn without_a_token_requests_need_none_and_shutdown_stops_it() {
        let (addr, stop) = server(None).await;
        assert_eq!(get_once(addr, "/hello", None).await.0, 200);
        let _ = stop.send(());
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("still listening after shutdown");
    }

    #[tokio::test]
    async fn a_busy_address_names_the_setting() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = bind(taken.local_addr().unwrap(), None).await.unwrap_err();
        assert!(e.to_string().contains("http_listen"), "{e}");
    }
}
