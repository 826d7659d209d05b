//! Source authentication: the only way to obtain a [`Verified`] body.
//!
//! Vendors parse only [`Verified`] bodies, and a `Verified` can only be built here, by a
//! [`SourceAuth`] that checked the request. Svix / Standard Webhooks signatures are verified
//! over the raw bytes with the `svix` crate; shared header secrets are compared in constant
//! time. Failures say only which of four things went wrong, never which secret was tried.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderMap, HeaderName};
use actix_web::web::Bytes;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::event::MAX_ID_LEN;

pub mod schemes;
pub mod standard;

use self::schemes::{Algorithm, Encoding, Piece};

/// The two header sets a Svix-delivered request may carry: Svix's own and the Standard
/// Webhooks names. Svix's take precedence, as in the `svix` crate.
const HEADER_SETS: [[&str; 3]; 2] = [
    ["svix-id", "svix-timestamp", "svix-signature"],
    ["webhook-id", "webhook-timestamp", "webhook-signature"],
];

/// A request body whose origin has been checked.
#[derive(Debug, Clone)]
pub struct Verified {
    body: Bytes,
    message_id: Option<String>,
}

impl Verified {
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn bytes(&self) -> &Bytes {
        &self.body
    }

    /// The Svix / Standard Webhooks message id, for sources that send one.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }
}

/// How a source proves that a request is really from its vendor.
pub enum SourceAuth {
    /// Standard Webhooks / Svix signatures; any of `secrets` may have signed (key rotation).
    Svix {
        secrets: Vec<standard::Secret>,
        tolerance: Duration,
    },
    /// A header that must equal a shared secret (how Pathors is authenticated).
    Header {
        name: HeaderName,
        value: SecretString,
    },
    /// Retell: `x-retell-signature`, keyed with the API key, ±`tolerance`.
    Retell {
        api_key: SecretString,
        tolerance: Duration,
    },
    /// ElevenLabs: `ElevenLabs-Signature`, no older than `past`, no further ahead than
    /// `future`.
    ElevenLabs {
        secret: SecretString,
        past: Duration,
        future: Duration,
    },
    /// A generic HMAC scheme, every part configured (Vapi's HMAC credential, Bland, …).
    Hmac(Box<HmacAuth>),
    /// Twilio: `X-Twilio-Signature` over the URL Twilio calls (`public_url`) and the form
    /// parameters, keyed with the Auth Token.
    Twilio {
        auth_token: SecretString,
        public_url: String,
    },
    /// No authentication. Only when configured explicitly; start-up warns.
    None,
}

/// The generic HMAC scheme of a source (`auth.kind = "hmac"`).
pub struct HmacAuth {
    pub algorithm: Algorithm,
    pub key: secrecy::SecretSlice<u8>,
    pub header: HeaderName,
    pub timestamp_header: Option<HeaderName>,
    pub id_header: Option<HeaderName>,
    pub payload: Vec<Piece>,
    pub encoding: Encoding,
    pub prefix: String,
    /// Applies when the payload holds the timestamp.
    pub tolerance: Duration,
    /// What `{url}` stands for: the URL the vendor calls.
    pub public_url: Option<String>,
}

const RETELL_HEADER: &str = "x-retell-signature";
const ELEVENLABS_HEADER: &str = "elevenlabs-signature";
const TWILIO_HEADER: &str = "x-twilio-signature";

fn now_ms(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, AuthFailure> {
    headers
        .get(name)
        .ok_or_else(|| AuthFailure::MissingHeader(name.to_owned()))?
        .to_str()
        .map_err(|_| AuthFailure::Malformed)
}

impl HmacAuth {
    /// The timestamp and id the payload needs, checked: present, in tolerance, an id's size.
    fn parts<'h>(
        &self,
        headers: &'h HeaderMap,
        now: SystemTime,
    ) -> Result<(Option<&'h str>, Option<&'h str>), AuthFailure> {
        let timestamp = match &self.timestamp_header {
            Some(name) if self.payload.contains(&Piece::Timestamp) => {
                let text = header_text(headers, name.as_str())?;
                let value: i64 = text.trim().parse().map_err(|_| AuthFailure::Malformed)?;
                schemes::within(
                    schemes::unix_ms(value),
                    now_ms(now),
                    self.tolerance,
                    self.tolerance,
                )?;
                Some(text)
            }
            _ => None,
        };
        let id = match &self.id_header {
            Some(name) => {
                let id = header_text(headers, name.as_str())?;
                check_message_id(id)?;
                Some(id)
            }
            None => None,
        };
        Ok((timestamp, id))
    }

    fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Option<String>, AuthFailure> {
        let signature = header_text(headers, self.header.as_str())?;
        let (timestamp, id) = self.parts(headers, now)?;
        let signed = schemes::Signed {
            body,
            timestamp,
            id,
            method: "POST",
            url: self.public_url.as_deref(),
        };
        schemes::generic_matches(
            self.algorithm,
            self.key.expose_secret(),
            signature,
            &self.prefix,
            self.encoding,
            &schemes::payload(&self.payload, &signed),
        )?;
        Ok(id.map(str::to_owned))
    }
}

/// Why a request was not authenticated. Answered as 401 `unauthorized`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    MissingSignature,
    MissingHeader(String),
    Malformed,
    /// The message id header is empty, longer than ids may be, or holds control characters.
    BadMessageId,
    Mismatch,
    TimestampOutsideTolerance {
        tolerance_seconds: u64,
    },
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthFailure::MissingSignature => f.write_str(
                "missing signature headers: send svix-id, svix-timestamp and svix-signature \
                 (or webhook-id, webhook-timestamp and webhook-signature)",
            ),
            AuthFailure::MissingHeader(name) => write!(f, "missing credentials header `{name}`"),
            AuthFailure::Malformed => f.write_str("malformed signature headers"),
            AuthFailure::BadMessageId => write!(
                f,
                "the svix-id (or webhook-id) header must be 1 to {MAX_ID_LEN} bytes of text \
                 without control characters"
            ),
            AuthFailure::Mismatch => f.write_str("credentials or signature do not match"),
            AuthFailure::TimestampOutsideTolerance { tolerance_seconds } => write!(
                f,
                "signature timestamp is more than {tolerance_seconds} s away from the gateway's clock"
            ),
        }
    }
}

impl std::error::Error for AuthFailure {}

impl SourceAuth {
    /// Checks what can be checked from the request head alone, before any of the body is
    /// read: a shared header completely; Svix / Standard Webhooks headers for presence,
    /// shape (an id, a timestamp, at least one `v1,` signature of 32 bytes) and timestamp
    /// tolerance. A request refused here costs the gateway no body buffer.
    pub fn check_head(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        match self {
            SourceAuth::None => Ok(()),
            SourceAuth::Header { .. } => self.verify(headers, Bytes::new()).map(drop),
            SourceAuth::Svix { tolerance, .. } => {
                let signed = signature_headers(headers)?;
                check_timestamp(signed.timestamp, *tolerance, SystemTime::now())?;
                if !has_v1_signature(&signed.signatures) {
                    return Err(AuthFailure::Malformed);
                }
                Ok(())
            }
            SourceAuth::Retell { tolerance, .. } => {
                let (ts, _) = schemes::retell_header(header_text(headers, RETELL_HEADER)?)?;
                schemes::within(ts, now_ms(SystemTime::now()), *tolerance, *tolerance)
            }
            SourceAuth::ElevenLabs { past, future, .. } => {
                let (ts, _) = schemes::elevenlabs_header(header_text(headers, ELEVENLABS_HEADER)?)?;
                schemes::within(
                    ts.saturating_mul(1000),
                    now_ms(SystemTime::now()),
                    *past,
                    *future,
                )
            }
            SourceAuth::Hmac(hmac) => {
                header_text(headers, hmac.header.as_str())?;
                hmac.parts(headers, SystemTime::now()).map(drop)
            }
            SourceAuth::Twilio { .. } => header_text(headers, TWILIO_HEADER).map(drop),
        }
    }

    /// Whether [`SourceAuth::check_head`] alone proves the sender (a shared header), as
    /// opposed to a signature that only the body can confirm, or no authentication.
    pub fn authenticates_from_head(&self) -> bool {
        matches!(self, SourceAuth::Header { .. })
    }

    /// Checks a request and, if it is authentic, hands out its body as [`Verified`].
    pub fn verify(&self, headers: &HeaderMap, body: Bytes) -> Result<Verified, AuthFailure> {
        match self {
            SourceAuth::None => Ok(Verified {
                message_id: svix_message_id(headers),
                body,
            }),
            SourceAuth::Header { name, value } => {
                let sent = headers
                    .get(name)
                    .ok_or_else(|| AuthFailure::MissingHeader(name.to_string()))?;
                if constant_time_eq(sent.as_bytes(), value.expose_secret().as_bytes()) {
                    Ok(Verified {
                        body,
                        message_id: None,
                    })
                } else {
                    Err(AuthFailure::Mismatch)
                }
            }
            SourceAuth::Svix { secrets, tolerance } => {
                let signed = signature_headers(headers)?;
                check_timestamp(signed.timestamp, *tolerance, SystemTime::now())?;
                if !has_v1_signature(&signed.signatures) {
                    return Err(AuthFailure::Malformed);
                }
                // Any of the secrets (a key being rotated) may have signed.
                let signed_by_one = secrets.iter().any(|secret| {
                    secret.verifies(&signed.id, signed.timestamp, &body, &signed.signatures)
                });
                if signed_by_one {
                    Ok(Verified {
                        body,
                        message_id: Some(signed.id),
                    })
                } else {
                    Err(AuthFailure::Mismatch)
                }
            }
            SourceAuth::Retell { api_key, tolerance } => {
                schemes::retell_verify(
                    api_key.expose_secret().as_bytes(),
                    header_text(headers, RETELL_HEADER)?,
                    &body,
                    now_ms(SystemTime::now()),
                    *tolerance,
                )?;
                Ok(Verified {
                    body,
                    message_id: None,
                })
            }
            SourceAuth::ElevenLabs {
                secret,
                past,
                future,
            } => {
                schemes::elevenlabs_verify(
                    secret.expose_secret().as_bytes(),
                    header_text(headers, ELEVENLABS_HEADER)?,
                    &body,
                    now_ms(SystemTime::now()),
                    (*past, *future),
                )?;
                Ok(Verified {
                    body,
                    message_id: None,
                })
            }
            SourceAuth::Hmac(hmac) => {
                let message_id = hmac.verify(headers, &body, SystemTime::now())?;
                Ok(Verified { body, message_id })
            }
            SourceAuth::Twilio {
                auth_token,
                public_url,
            } => {
                let signature = header_text(headers, TWILIO_HEADER)?;
                if schemes::twilio_verify(
                    auth_token.expose_secret().as_bytes(),
                    public_url,
                    &body,
                    signature,
                ) {
                    Ok(Verified {
                        body,
                        message_id: None,
                    })
                } else {
                    Err(AuthFailure::Mismatch)
                }
            }
        }
    }

    /// A one-line description for `check-config`, without secrets.
    pub fn describe(&self) -> String {
        match self {
            SourceAuth::Svix { secrets, tolerance } => format!(
                "svix ({} secret{}, tolerance {} s)",
                secrets.len(),
                if secrets.len() == 1 { "" } else { "s" },
                tolerance.as_secs()
            ),
            SourceAuth::Header { name, .. } => format!("header `{name}`"),
            SourceAuth::Twilio { public_url, .. } => format!(
                "twilio (X-Twilio-Signature over {})",
                crate::settings::redact_url(public_url)
            ),
            SourceAuth::Retell { tolerance, .. } => format!(
                "retell (x-retell-signature, tolerance {} s)",
                tolerance.as_secs()
            ),
            SourceAuth::ElevenLabs { past, future, .. } => format!(
                "elevenlabs (ElevenLabs-Signature, up to {} s old, {} s ahead)",
                past.as_secs(),
                future.as_secs()
            ),
            SourceAuth::Hmac(h) => format!(
                "hmac-{} in `{}`{}",
                h.algorithm.as_str(),
                h.header,
                if h.payload.contains(&Piece::Timestamp) {
                    format!(", tolerance {} s", h.tolerance.as_secs())
                } else {
                    ", no timestamp (replays are answered as duplicates)".to_owned()
                }
            ),
            SourceAuth::None => "none (unauthenticated)".to_owned(),
        }
    }
}

impl fmt::Debug for SourceAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Compares digests of both sides, so neither contents nor length leak through timing.
/// Every secret the gateway is shown (source headers, the admin token) is compared here.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

/// A message id is kept as the events' `source.messageId`: the same limit as every id.
fn check_message_id(id: &str) -> Result<(), AuthFailure> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(AuthFailure::BadMessageId);
    }
    Ok(())
}

/// The message id an unauthenticated source's sender named, if it is one an id may be.
fn svix_message_id(headers: &HeaderMap) -> Option<String> {
    HEADER_SETS
        .iter()
        .find_map(|[id, _, _]| headers.get(*id))
        .and_then(|v| v.to_str().ok())
        .filter(|id| check_message_id(id).is_ok())
        .map(str::to_owned)
}

/// Whether the signature header holds at least one `v1,<base64 of 32 bytes>` entry (the
/// only scheme Svix and Standard Webhooks define); the rest of the header is ignored.
fn has_v1_signature(value: &str) -> bool {
    use base64::Engine as _;
    value.split_whitespace().any(|entry| {
        entry.strip_prefix("v1,").is_some_and(|sig| {
            base64::engine::general_purpose::STANDARD
                .decode(sig)
                .is_ok_and(|bytes| bytes.len() == 32)
        })
    })
}

struct SignatureHeaders {
    id: String,
    timestamp: i64,
    /// The signature header: space-separated `v1,<base64>` entries.
    signatures: String,
}

fn signature_headers(headers: &HeaderMap) -> Result<SignatureHeaders, AuthFailure> {
    let set = HEADER_SETS
        .iter()
        .find(|set| set.iter().all(|name| headers.contains_key(*name)))
        .ok_or(AuthFailure::MissingSignature)?;
    let mut values = [""; 3];
    for (i, name) in set.iter().enumerate() {
        let value = headers.get(*name).ok_or(AuthFailure::MissingSignature)?;
        values[i] = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    }
    let timestamp = values[1]
        .trim()
        .parse::<i64>()
        .map_err(|_| AuthFailure::Malformed)?;
    check_message_id(values[0])?;
    Ok(SignatureHeaders {
        id: values[0].to_owned(),
        timestamp,
        signatures: values[2].to_owned(),
    })
}

fn check_timestamp(
    timestamp: i64,
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), AuthFailure> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if timestamp.abs_diff(now) > tolerance.as_secs() {
        return Err(AuthFailure::TimestampOutsideTolerance {
            tolerance_seconds: tolerance.as_secs(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const OTHER: &str = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk=";

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn svix(secrets: &[&str]) -> SourceAuth {
        SourceAuth::Svix {
            secrets: secrets
                .iter()
                .map(|s| standard::Secret::parse(s).unwrap())
                .collect(),
            tolerance: Duration::from_secs(300),
        }
    }

    fn signed(prefix: &str, secret: &str, ts: i64, body: &[u8]) -> HeaderMap {
        // Signed by the vendor's own library.
        let sig = svix::webhooks::Webhook::new(secret)
            .unwrap()
            .sign("msg_1", ts, body)
            .unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("id", "msg_1".to_owned()),
            ("timestamp", ts.to_string()),
            ("signature", sig),
        ] {
            h.insert(
                HeaderName::from_bytes(format!("{prefix}-{k}").as_bytes()).unwrap(),
                HeaderValue::from_str(&v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn accepts_both_header_sets_and_reports_the_message_id() {
        let body = br#"{"a":1}"#;
        for prefix in ["svix", "webhook"] {
            let v = svix(&[SECRET])
                .verify(
                    &signed(prefix, SECRET, now(), body),
                    Bytes::from_static(body),
                )
                .unwrap();
            assert_eq!(v.message_id(), Some("msg_1"));
            assert_eq!(v.body(), body);
        }
    }

    #[test]
    fn any_configured_secret_may_have_signed() {
        let body = b"{}";
        let h = signed("svix", OTHER, now(), body);
        assert!(
            svix(&[SECRET, OTHER])
                .verify(&h, Bytes::from_static(body))
                .is_ok()
        );
        assert_eq!(
            svix(&[SECRET])
                .verify(&h, Bytes::from_static(body))
                .unwrap_err(),
            AuthFailure::Mismatch
        );
    }

    #[test]
    fn one_of_several_signatures_may_match() {
        let body = b"{}";
        let mut h = signed("svix", SECRET, now(), body);
        let good = h
            .get("svix-signature")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let both = format!("v1,AAAAbm90IGl0 {good} v2,ignored");
        h.insert(
            HeaderName::from_static("svix-signature"),
            HeaderValue::from_str(&both).unwrap(),
        );
        assert!(svix(&[SECRET]).verify(&h, Bytes::from_static(body)).is_ok());
    }

    #[test]
    fn a_tampered_body_does_not_verify() {
        let h = signed("svix", SECRET, now(), br#"{"a":1}"#);
        assert_eq!(
            svix(&[SECRET])
                .verify(&h, Bytes::from_static(br#"{"a":2}"#))
                .unwrap_err(),
            AuthFailure::Mismatch
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused_both_ways() {
        for ts in [now() - 301, now() + 301] {
            let h = signed("svix", SECRET, ts, b"{}");
            assert_eq!(
                svix(&[SECRET])
                    .verify(&h, Bytes::from_static(b"{}"))
                    .unwrap_err(),
                AuthFailure::TimestampOutsideTolerance {
                    tolerance_seconds: 300
                }
            );
        }
        let h = signed("svix", SECRET, now() - 299, b"{}");
        assert!(
            svix(&[SECRET])
                .verify(&h, Bytes::from_static(b"{}"))
                .is_ok()
        );
    }

    #[test]
    fn missing_and_malformed_headers() {
        let mut h = signed("svix", SECRET, now(), b"{}");
        h.remove("svix-signature");
        assert_eq!(
            svix(&[SECRET]).verify(&h, Bytes::new()).unwrap_err(),
            AuthFailure::MissingSignature
        );
        let mut h = signed("svix", SECRET, now(), b"{}");
        h.insert(
            HeaderName::from_static("svix-timestamp"),
            HeaderValue::from_static("soon"),
        );
        assert_eq!(
            svix(&[SECRET]).verify(&h, Bytes::new()).unwrap_err(),
            AuthFailure::Malformed
        );
    }

    #[test]
    fn a_message_id_is_held_to_the_limit_of_every_id() {
        let auth = svix(&[SECRET]);
        for (id, ok) in [
            ("x".repeat(MAX_ID_LEN), true),
            ("x".repeat(MAX_ID_LEN + 1), false),
        ] {
            let mut h = signed("svix", SECRET, now(), b"{}");
            h.insert(
                HeaderName::from_static("svix-id"),
                HeaderValue::from_str(&id).unwrap(),
            );
            assert_eq!(auth.check_head(&h).is_ok(), ok, "{} bytes", id.len());
            if !ok {
                assert_eq!(auth.check_head(&h).unwrap_err(), AuthFailure::BadMessageId);
                assert_eq!(
                    auth.verify(&h, Bytes::from_static(b"{}")).unwrap_err(),
                    AuthFailure::BadMessageId
                );
            }
        }
    }

    #[test]
    fn the_head_check_refuses_what_the_body_cannot_change() {
        let auth = svix(&[SECRET]);
        let ok = signed("svix", SECRET, now(), b"any body");
        assert!(auth.check_head(&ok).is_ok(), "a well-formed head passes");

        let mut missing = ok.clone();
        missing.remove("svix-id");
        assert_eq!(
            auth.check_head(&missing).unwrap_err(),
            AuthFailure::MissingSignature
        );
        assert!(matches!(
            auth.check_head(&signed("svix", SECRET, now() - 400, b"")),
            Err(AuthFailure::TimestampOutsideTolerance { .. })
        ));
        for bad in ["v1,notbase64!", "v1,AAAA", "v2,c2lnbmF0dXJl", "garbage"] {
            let mut h = ok.clone();
            h.insert(
                HeaderName::from_static("svix-signature"),
                HeaderValue::from_str(bad).unwrap(),
            );
            assert_eq!(
                auth.check_head(&h).unwrap_err(),
                AuthFailure::Malformed,
                "{bad}"
            );
        }

        let header = SourceAuth::Header {
            name: HeaderName::from_static("x-token"),
            value: SecretString::from("s3cret"),
        };
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("x-token"),
            HeaderValue::from_static("wrong"),
        );
        assert_eq!(header.check_head(&h).unwrap_err(), AuthFailure::Mismatch);
        h.insert(
            HeaderName::from_static("x-token"),
            HeaderValue::from_static("s3cret"),
        );
        assert!(header.check_head(&h).is_ok());
    }

    #[test]
    fn header_auth_compares_the_whole_value() {
        let auth = SourceAuth::Header {
            name: HeaderName::from_static("authorization"),
            value: SecretString::from("Bearer s3cret"),
        };
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static("authorization"),
                HeaderValue::from_str(v).unwrap(),
            );
            auth.verify(&h, Bytes::new())
        };
        assert!(with("Bearer s3cret").is_ok());
        assert_eq!(with("Bearer s3cre").unwrap_err(), AuthFailure::Mismatch);
        assert_eq!(with("Bearer s3cret!").unwrap_err(), AuthFailure::Mismatch);
        assert_eq!(
            auth.verify(&HeaderMap::new(), Bytes::new()).unwrap_err(),
            AuthFailure::MissingHeader("authorization".into())
        );
    }

    #[test]
    fn descriptions_never_contain_secrets() {
        let auth = SourceAuth::Header {
            name: HeaderName::from_static("x-token"),
            value: SecretString::from("hunter2"),
        };
        assert!(!format!("{auth:?} {}", auth.describe()).contains("hunter2"));
        assert!(!svix(&[SECRET]).describe().contains("whsec"));
    }
}
