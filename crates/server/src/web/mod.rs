//! The browser client's side of the server: HTTP on the native port.
//!
//! A connection's first byte tells the two protocols apart (see `lib.rs`): a native frame
//! starts with its length, whose first byte is 0 for any frame a client may send, while an
//! HTTP request starts with a method name. HTTP connections land here. They get the browser
//! client's files (embedded in the binary), a WebSocket at `/ws` that carries the native
//! protocol's messages to an ordinary session ([`socket`]), and file downloads and uploads
//! over plain HTTP ([`files`]), allowed to whoever holds the token a WebSocket session was
//! given at sign-in ([`grants`]).

mod assets;
mod files;
mod grants;
mod rewind;
mod socket;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router, middleware};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parley_proto::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::ActiveGuard;
use crate::hub::Refusal;
use crate::session::Context;

pub(crate) use grants::Grants;
pub(crate) use rewind::Rewind;

/// When the server stops, how long a request in progress has to finish.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Largest request head (request line and headers) accepted, in bytes.
const MAX_HEAD: usize = 16 * 1024;

/// What a request knows of the connection it came on.
#[derive(Clone)]
struct Connection {
    peer: std::net::SocketAddr,
    /// Whether the connection is TLS: the page's origin is then `https`.
    secure: bool,
    /// The server's count of connections, which a WebSocket session joins.
    active: crate::Counter,
    /// Set when the connection becomes a WebSocket, whose session then says when it ends.
    upgraded: Arc<AtomicBool>,
    /// The server's tasks, which a WebSocket's joins: a shutdown waits for its `bye`.
    tasks: TaskTracker,
}

/// Serves HTTP requests on one connection until the client closes it, it idles past the
/// handshake timeout between requests, or the server shuts down.
pub(crate) async fn serve<S>(
    io: S,
    peer: std::net::SocketAddr,
    ctx: Arc<Context>,
    guard: ActiveGuard,
    secure: bool,
    tasks: TaskTracker,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let connection = Connection {
        peer,
        secure,
        active: guard.counter(),
        upgraded: Arc::default(),
        tasks,
    };
    let upgraded = connection.upgraded.clone();
    let app = routes(ctx.clone()).layer(Extension(connection));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ctx.config.handshake_timeout)
        .max_buf_size(MAX_HEAD);
    let serving = http
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .with_upgrades();
    let mut serving = std::pin::pin!(serving);
    let result = tokio::select! {
        result = serving.as_mut() => result,
        _ = ctx.stopping.cancelled() => {
            // A request in progress may finish if it is quick; a long download is cut off.
            serving.as_mut().graceful_shutdown();
            timeout(STOP_GRACE, serving).await.unwrap_or(Ok(()))
        }
    };
    match result {
        Ok(()) if upgraded.load(Ordering::Relaxed) => {}
        Ok(()) => info!("{peer} left: HTTP connection closed"),
        Err(err) => info!("{peer} left: HTTP connection ended: {err}"),
    }
    drop(guard);
}

/// Every path the server answers over HTTP.
fn routes(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/ws", get(socket::upgrade))
        .route("/files/{*path}", get(files::download))
        .route("/upload", post(files::upload))
        .route("/session", post(grants::cookie))
        .fallback(assets::serve)
        .layer(middleware::map_response(harden))
        .with_state(ctx)
}

/// Headers on every response that keep the page to itself: scripts, styles and connections
/// only from this server, no framing by other sites, no guessing of content types.
async fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
             object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Whether the request's `Origin` is the page's own: the same scheme and the same host and
/// port as it asked for. Browsers always send `Origin` on a WebSocket; without this check any
/// site the user visits could talk to the server as them. (It cannot tell a site that has
/// made its own name point at the server, DNS rebinding; with TLS, the certificate does.)
fn same_origin(headers: &HeaderMap, secure: bool) -> bool {
    let value = |name| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(origin), Some(host)) = (value(header::ORIGIN), value(header::HOST)) else {
        return false;
    };
    let scheme = if secure { "https://" } else { "http://" };
    origin
        .strip_prefix(scheme)
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// Whether a request that acts for a user may come from where it says: from this server's own
/// page if it comes from a browser (which says so by `Origin`, or by `Sec-Fetch-Site`), and
/// from anything else that holds the token (a script, `curl`), which has no cookies to abuse.
fn from_own_page(headers: &HeaderMap, secure: bool) -> bool {
    let fetched_from = headers
        .get("sec-fetch-site")
        .and_then(|value| value.to_str().ok());
    if fetched_from.is_some_and(|site| site != "same-origin") {
        return false;
    }
    !headers.contains_key(header::ORIGIN) || same_origin(headers, secure)
}

/// A refusal as an HTTP response: a status for the browser, and the protocol's error code and
/// sentence as JSON for the page to show.
fn refused(refusal: Refusal) -> Response {
    let status = match refusal.code {
        ErrorCode::HandshakeRequired => StatusCode::UNAUTHORIZED,
        ErrorCode::NoSuchFile => StatusCode::NOT_FOUND,
        ErrorCode::FileTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::UploadQuota => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::UploadStalled => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::TooManyTransfers => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::StorageFailed => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    refused_as(status, refusal)
}

/// A refusal with the given status.
fn refused_as(status: StatusCode, refusal: Refusal) -> Response {
    let body = serde_json::json!({ "code": refusal.code, "message": refusal.message });
    (status, Json(body)).into_response()
}

/// Request headers for the tests of this module's parts.
#[cfg(test)]
fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, HeaderValue::from_static(value));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_own_page_may_open_a_socket() {
        let from = |origin, host| headers(&[("origin", origin), ("host", host)]);
        assert!(same_origin(
            &from("http://127.0.0.1:4000", "127.0.0.1:4000"),
            false
        ));
        assert!(same_origin(
            &from("https://Chat.Example:443", "chat.example:443"),
            true
        ));
        assert!(!same_origin(
            &from("http://evil.example", "127.0.0.1:4000"),
            false
        ));
        assert!(!same_origin(
            &from("http://127.0.0.1:4000", "127.0.0.1:4000"),
            true
        ));
        assert!(!same_origin(
            &from("http://127.0.0.1:4001", "127.0.0.1:4000"),
            false
        ));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:4000")]), false));
    }

    #[test]
    fn only_the_servers_own_page_may_act_for_a_user() {
        let host = ("host", "127.0.0.1:4000");
        let own = headers(&[host, ("origin", "http://127.0.0.1:4000")]);
        assert!(from_own_page(&own, false));
        // Another port of the same host is another origin, though the same site.
        let port = headers(&[host, ("origin", "http://127.0.0.1:4001")]);
        assert!(!from_own_page(&port, false));
        let sibling = headers(&[host, ("sec-fetch-site", "same-site")]);
        assert!(!from_own_page(&sibling, false));
        let fetched = headers(&[host, ("sec-fetch-site", "same-origin")]);
        assert!(from_own_page(&fetched, false));
        // Not a browser: it holds the token itself and has no cookies to be abused.
        assert!(from_own_page(&headers(&[host]), false));
    }
}
