//! Who may use the HTTP file endpoints: the holders of a token that a browser's WebSocket
//! session received in its welcome. A token is good for as long as that session stays signed
//! in, and names the user it acts for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use axum::Extension;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parley_proto::ErrorCode;
use parley_proto::limits::MAX_TRANSFERS;

use crate::files::Holder;
use crate::hub::{Refusal, SessionId};
use crate::session::Context;

/// The cookie the page keeps its token in.
pub(crate) const COOKIE: &str = "parley_token";

/// The tokens of the signed-in browser sessions.
#[derive(Default)]
pub(crate) struct Grants {
    /// A std mutex: held only to look up, add or remove one entry, never across an await.
    by_token: Mutex<HashMap<String, Grant>>,
}

/// What a token allows: acting as `name`, whose session is `session`.
#[derive(Clone)]
pub(crate) struct Grant {
    pub(crate) session: SessionId,
    pub(crate) name: String,
    /// Uploads in progress over HTTP with this token, limited as a session's transfers are.
    uploads: Arc<AtomicUsize>,
    /// Whom its uploads hold disk space for: the session's connection and address.
    pub(crate) holder: Holder,
}

impl Grants {
    /// A new token, unguessable: 256 bits from the operating system.
    pub(crate) fn new_token() -> String {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Lets `token` act as `name` until [`Grants::revoke`] is called for `session`.
    pub(crate) fn grant(&self, token: String, session: SessionId, name: &str, holder: Holder) {
        let grant = Grant {
            session,
            name: name.to_owned(),
            uploads: Arc::default(),
            holder,
        };
        self.by_token.lock().unwrap().insert(token, grant);
    }

    /// Ends the token of `session`, which signed out.
    pub(crate) fn revoke(&self, session: SessionId) {
        self.by_token
            .lock()
            .unwrap()
            .retain(|_, grant| grant.session != session);
    }

    fn find(&self, token: &str) -> Option<Grant> {
        self.by_token.lock().unwrap().get(token).cloned()
    }
}

impl Grant {
    /// Counts one more upload in progress, unless as many run as a session may have.
    pub(crate) fn start_upload(&self) -> Result<UploadSlot, Refusal> {
        if self.uploads.fetch_add(1, Ordering::AcqRel) >= MAX_TRANSFERS {
            self.uploads.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal {
                code: ErrorCode::TooManyTransfers,
                message: format!(
                    "At most {MAX_TRANSFERS} transfers can run at once; wait for one to finish."
                ),
            });
        }
        Ok(UploadSlot(self.uploads.clone()))
    }
}

/// One upload in progress, counted until dropped.
pub(crate) struct UploadSlot(Arc<AtomicUsize>);

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A download from a signed-in browser session: a `parley_token` cookie holds a token still
/// granted. The cookie is set by the server, `HttpOnly` (see [`cookie`]); several may arrive (a
/// page on another port of the same host can add its own, since cookies ignore ports), and any
/// one still granted will do: a download reads the shared folder, the same for every user.
pub(crate) struct SignedIn(pub(crate) Grant);

impl FromRequestParts<Arc<Context>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Context>) -> Result<Self, Response> {
        parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|cookies| cookies.split(';'))
            .filter_map(|cookie| cookie.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .find_map(|token| ctx.grants.find(token))
            .map(SignedIn)
            .ok_or_else(sign_in_first)
    }
}

/// A request that acts for a signed-in browser session (an upload, setting the cookie): the
/// token comes in the `X-Parley-Token` header, which only the page's own script can add. A
/// cookie would not do: the browser sends it with requests that pages of other ports or
/// subdomains of the same host make, and those may not act for the user. The request, if it
/// comes from a browser, must also come from the server's own page.
pub(crate) struct Authorized(pub(crate) Grant);

/// The header that carries the token.
pub(crate) const TOKEN_HEADER: &str = "x-parley-token";

impl FromRequestParts<Arc<Context>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Context>) -> Result<Self, Response> {
        let secure = parts
            .extensions
            .get::<super::Connection>()
            .is_some_and(|connection| connection.secure);
        if !super::from_own_page(&parts.headers, secure) {
            return Err(super::refused(Refusal {
                code: ErrorCode::BadRequest,
                message: "Only this server's own page may do that.".into(),
            }));
        }
        parts
            .headers
            .get(TOKEN_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|token| ctx.grants.find(token))
            .map(Authorized)
            .ok_or_else(sign_in_first)
    }
}

fn sign_in_first() -> Response {
    super::refused(Refusal {
        code: ErrorCode::HandshakeRequired,
        message: "Sign in first: files are for signed-in users.".into(),
    })
}

/// `POST /session`: sets the download cookie for the session whose token the header carries.
/// `HttpOnly`, so that no script, this page's or another port's, can read it; limited to
/// `/files`; `Secure` with TLS.
pub(crate) async fn cookie(
    Authorized(_): Authorized,
    Extension(connection): Extension<super::Connection>,
    headers: axum::http::HeaderMap,
) -> Response {
    let token = headers
        .get(TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let secure = if connection.secure { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/files; HttpOnly; SameSite=Strict{secure}");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::try_from(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> Holder {
        Holder::new(1, [127, 0, 0, 1].into(), true)
    }

    #[test]
    fn tokens_differ_and_end_with_their_session() {
        let grants = Grants::default();
        let (first, second) = (Grants::new_token(), Grants::new_token());
        assert_ne!(first, second);
        assert_eq!(first.len(), 64);
        grants.grant(first.clone(), 1, "alice", holder());
        grants.grant(second.clone(), 2, "bob", holder());
        assert_eq!(grants.find(&first).unwrap().name, "alice");
        grants.revoke(1);
        assert!(grants.find(&first).is_none());
        assert_eq!(grants.find(&second).unwrap().name, "bob");
    }

    #[test]
    fn uploads_are_limited_per_token() {
        let grants = Grants::default();
        grants.grant("t".into(), 1, "alice", holder());
        let grant = grants.find("t").unwrap();
        let slots: Vec<_> = (0..MAX_TRANSFERS)
            .map(|_| grant.start_upload().unwrap())
            .collect();
        assert!(grant.start_upload().is_err());
        drop(slots);
        assert!(grant.start_upload().is_ok());
    }
}
