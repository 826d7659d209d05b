//! Vendor adapters: verified bytes in, canonical event drafts out.
//!
//! Each vendor is one file and one arm of [`Vendor`]. An adapter only parses and maps; it
//! never sees an unverified body (it takes [`Verified`]), and it does no I/O. HTTP, limits,
//! authentication, ids, storage and answers all live outside this folder. An event type an
//! adapter does not know is a value ([`Normalized::Ignored`]), not an error.
//!
//! Adding a vendor: a new file with a `normalize` function, one arm here.

mod agntix;
mod fields;
mod pathors;

use std::fmt;

use serde::Deserialize;

pub use fields::{PayloadError, printable};

use crate::auth::Verified;
use crate::event::{EventType, Session, Timestamp};

/// The vendors sessiongate understands, as written in `[[sources]] vendor = "…"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Pathors,
    Agntix,
}

impl Vendor {
    /// Every vendor sessiongate speaks.
    pub const ALL: [Vendor; 2] = [Vendor::Pathors, Vendor::Agntix];

    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Pathors => "pathors",
            Vendor::Agntix => "agntix",
        }
    }

    /// Maps one verified request body to canonical event drafts.
    pub fn normalize(self, input: &Verified) -> Result<Normalized, PayloadError> {
        let body = fields::parse_object(input.body())?;
        match self {
            Vendor::Pathors => pathors::normalize(&body),
            Vendor::Agntix => agntix::normalize(&body),
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a vendor request means.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalized {
    /// A known event: one or more canonical events, in emission order.
    Events(Recognized),
    /// Authenticated and well-formed, but not an event type this adapter maps. Kept for
    /// audit, never forwarded.
    Ignored { vendor_event_type: Option<String> },
}

/// A recognised vendor event and the canonical events it becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    /// The vendor's session id (Pathors `sessionId`, Agntix `id`).
    pub session_id: String,
    /// The vendor's event type; with the session id and the source it is the duplicate key.
    pub vendor_event_type: String,
    pub events: Vec<Draft>,
}

/// One canonical event before ingest gives it an id and a receive time.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub event_type: EventType,
    pub occurred_at: Timestamp,
    pub session: Session,
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::auth::SourceAuth;

    pub use crate::testing::fixture;

    pub fn normalize(vendor: Vendor, body: &[u8]) -> Result<Normalized, PayloadError> {
        let verified = SourceAuth::None
            .verify(
                &actix_web::http::header::HeaderMap::new(),
                body.to_vec().into(),
            )
            .expect("auth none accepts everything");
        vendor.normalize(&verified)
    }

    pub fn recognized(vendor: Vendor, body: &[u8]) -> Recognized {
        match normalize(vendor, body) {
            Ok(Normalized::Events(r)) => r,
            other => panic!("expected events, got {other:?}"),
        }
    }
}
