//! Who may use the HTTP file endpoints: the holders of a token that a browser's WebSocket
//! session received in its welcome. A token is good for as long as that session stays signed
//! in, and names the user it acts for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::Response;
use parley_proto::ErrorCode;
use parley_proto::limits::MAX_TRANSFERS;

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
}

impl Grants {
    /// A new token, unguessable: 256 bits from the operating system.
    pub(crate) fn new_token() -> String {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Lets `token` act as `name` until [`Grants::revoke`] is called for `session`.
    pub(crate) fn grant(&self, token: String, session: SessionId, name: &str) {
        let grant = Grant {
            session,
            name: name.to_owned(),
            uploads: Arc::default(),
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

/// A request from a signed-in browser session: its cookie holds a token still granted.
pub(crate) struct SignedIn(pub(crate) Grant);

impl FromRequestParts<Arc<Context>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Context>) -> Result<Self, Response> {
        let token = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|cookies| cookies.split(';'))
            .find_map(|cookie| cookie.trim().strip_prefix(COOKIE)?.strip_prefix('='));
        match token.and_then(|token| ctx.grants.find(token)) {
            Some(grant) => Ok(SignedIn(grant)),
            None => Err(super::refused(Refusal {
                code: ErrorCode::HandshakeRequired,
                message: "Sign in first: files are for signed-in users.".into(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_and_end_with_their_session() {
        let grants = Grants::default();
        let (first, second) = (Grants::new_token(), Grants::new_token());
        assert_ne!(first, second);
        assert_eq!(first.len(), 64);
        grants.grant(first.clone(), 1, "alice");
        grants.grant(second.clone(), 2, "bob");
        assert_eq!(grants.find(&first).unwrap().name, "alice");
        grants.revoke(1);
        assert!(grants.find(&first).is_none());
        assert_eq!(grants.find(&second).unwrap().name, "bob");
    }

    #[test]
    fn uploads_are_limited_per_token() {
        let grants = Grants::default();
        grants.grant("t".into(), 1, "alice");
        let grant = grants.find("t").unwrap();
        let slots: Vec<_> = (0..MAX_TRANSFERS)
            .map(|_| grant.start_upload().unwrap())
            .collect();
        assert!(grant.start_upload().is_err());
        drop(slots);
        assert!(grant.start_upload().is_ok());
    }
}
