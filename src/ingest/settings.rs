//! `[server]` and `[[sources]]`: where ingest listens, its limits, and who may post to it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::SourceAuth;
use crate::settings::limits::TIMEOUT_MS;
use crate::settings::{
    ConfigError, Context, in_range, invalid, parse_duration_in, socket_address, unique_name,
};
use crate::vendors::Vendor;

/// The shortest admin token taken: it guards every stored event.
const MIN_ADMIN_TOKEN_BYTES: usize = 24;

#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where the admin API and `/metrics` listen when they are kept off `listen`.
    pub admin_listen: Option<SocketAddr>,
    pub max_body_bytes: usize,
    /// Request body bytes buffered at once across all requests.
    pub max_body_bytes_in_flight: usize,
    /// Open connections across all HTTP workers.
    pub max_connections: usize,
    /// Open connections of one peer address.
    pub max_connections_per_peer: usize,
    pub admin_token: Option<SecretString>,
    pub workers: usize,
    pub body_timeout: Duration,
    pub header_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// `[server]` as written (the defaults layer gives every key that has a default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    listen: String,
    admin_listen: Option<String>,
    max_body_bytes: usize,
    max_body_bytes_in_flight: usize,
    max_connections: usize,
    max_connections_per_peer: usize,
    admin_token: Option<String>,
    workers: Option<usize>,
    body_timeout_ms: u64,
    header_timeout_ms: u64,
    shutdown_timeout_ms: u64,
}

impl ServerConfig {
    pub fn parse(s: RawServer, cx: &mut Context) -> Result<ServerConfig, ConfigError> {
        let listen = socket_address("server.listen", &s.listen)?;
        let admin_listen = s
            .admin_listen
            .as_deref()
            .map(|a| socket_address("server.admin_listen", a))
            .transpose()?;
        if admin_listen.is_some_and(|a| a == listen && a.port() != 0) {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen (it keeps the admin API and /metrics off the ingest listener)",
            ));
        }
        in_range("server.max_body_bytes", s.max_body_bytes as u64, 1, 1 << 30)?;
        in_range(
            "server.max_connections",
            s.max_connections as u64,
            1,
            1_000_000,
        )?;
        // Above max_connections it is max_connections.
        in_range(
            "server.max_connections_per_peer",
            s.max_connections_per_peer as u64,
            1,
            1_000_000,
        )?;
        if s.max_body_bytes_in_flight / 2 < s.max_body_bytes {
            return Err(invalid(
                "server.max_body_bytes_in_flight",
                "must be at least twice server.max_body_bytes (half is for requests a header \
                 authenticates, half for signed ones), or a body of the largest size allowed \
                 could not be read",
            ));
        }
        if s.max_body_bytes_in_flight > u32::MAX as usize {
            return Err(invalid(
                "server.max_body_bytes_in_flight",
                format!("must be at most {} bytes", u32::MAX),
            ));
        }
        in_range("server.body_timeout_ms", s.body_timeout_ms, 1, TIMEOUT_MS)?;
        in_range(
            "server.header_timeout_ms",
            s.header_timeout_ms,
            1,
            TIMEOUT_MS,
        )?;
        in_range(
            "server.shutdown_timeout_ms",
            s.shutdown_timeout_ms,
            0,
            TIMEOUT_MS,
        )?;
        let workers = match s.workers {
            Some(n) => {
                in_range("server.workers", n as u64, 1, 1024)?;
                n
            }
            None => std::thread::available_parallelism().map_or(2, |n| n.get()),
        };
        Ok(ServerConfig {
            listen,
            admin_listen,
            max_body_bytes: s.max_body_bytes,
            max_body_bytes_in_flight: s.max_body_bytes_in_flight,
            max_connections: s.max_connections,
            max_connections_per_peer: s.max_connections_per_peer,
            admin_token: s
                .admin_token
                .map(|t| cx.secret("server.admin_token", &t))
                .transpose()?
                .map(|token| {
                    if token.len() < MIN_ADMIN_TOKEN_BYTES {
                        return Err(invalid(
                            "server.admin_token",
                            format!(
                                "is {} bytes; use at least {MIN_ADMIN_TOKEN_BYTES} random bytes \
                                 (e.g. `openssl rand -hex 32`)",
                                token.len()
                            ),
                        ));
                    }
                    Ok(SecretString::from(token))
                })
                .transpose()?,
            workers,
            body_timeout: Duration::from_millis(s.body_timeout_ms),
            header_timeout: Duration::from_millis(s.header_timeout_ms),
            shutdown_timeout: Duration::from_millis(s.shutdown_timeout_ms),
        })
    }
}

/// A vendor endpoint: `POST /ingest/{name}`.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub vendor: Vendor,
    pub auth: SourceAuth,
    /// Agntix only: fetch each ended session's transcript from the vendor's API.
    pub transcripts: Option<std::sync::Arc<Transcripts>>,
    /// This source's own body limit (`max_body_bytes`), else `server.max_body_bytes`.
    pub max_body_bytes: Option<usize>,
    /// How long a `session.finalized` waits for the vendor's completing event after the
    /// session ended (`finalize_wait`, defaulting to the vendor's); `None`: it waits for
    /// that event alone.
    pub finalize_wait: Option<Duration>,
    /// HTTP Basic credentials its recordings are fetched with (`recordings_auth`).
    pub recordings_auth: Option<BasicAuth>,
    /// A declared vendor's mapping (`vendor = "mapped"`, `[sources.mapping]`).
    pub mapping: Option<std::sync::Arc<crate::vendors::mapped::Mapping>>,
    /// Recovery of the calls its vendor never sent, from the vendor's list API (`recover`).
    pub recover: Option<std::sync::Arc<crate::ingest::recover::Recover>>,
}

impl Source {
    /// Maps a verified request: by the source's mapping for a declared vendor, else by its
    /// vendor's adapter.
    pub fn normalize(
        &self,
        verified: &crate::auth::Verified,
        received_at: crate::event::Timestamp,
    ) -> Result<crate::vendors::Normalized, crate::vendors::PayloadError> {
        match &self.mapping {
            Some(mapping) => mapping.normalize(verified.body()),
            None => self.vendor.normalize(verified, received_at),
        }
    }
}

/// A user name and a password, the password a secret.
#[derive(Clone)]
pub struct BasicAuth {
    pub username: String,
    pub password: SecretString,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `transcripts = { api_url, api_key, wait_ms }` of an Agntix source.
pub struct Transcripts {
    pub api_url: reqwest::Url,
    pub api_key: SecretString,
    /// How long `session.finalized` waits for the transcript.
    pub wait: Duration,
    /// The most bytes read of one session's answers (all pages); more is `too_large`.
    pub max_bytes: u64,
}

impl std::fmt::Debug for Transcripts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcripts")
            .field(
                "api_url",
                &crate::settings::redact_url(self.api_url.as_str()),
            )
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    name: String,
    vendor: Vendor,
    auth: RawAuth,
    transcripts: Option<RawTranscripts>,
    max_body_bytes: Option<usize>,
    finalize_wait: Option<String>,
    recordings_auth: Option<RawBasicAuth>,
    mapping: Option<crate::vendors::mapped::RawMapping>,
    recover: Option<crate::ingest::recover::RawRecover>,
}

/// `recordings_auth = { username, password }`: HTTP Basic credentials for the source's
/// recording URLs (Twilio: the Account SID and the Auth Token).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTranscripts {
    api_url: String,
    api_key: String,
    #[serde(default = "default_wait_ms")]
    wait_ms: u64,
    #[serde(default = "default_transcript_bytes")]
    max_bytes: u64,
}

fn default_transcript_bytes() -> u64 {
    16 * 1024 * 1024
}

/// Array entries take no defaults from the defaults layer, so this one is written here.
fn default_wait_ms() -> u64 {
    30_000
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RawAuth {
    Svix {
        secrets: Vec<String>,
        #[serde(default = "default_tolerance")]
        tolerance_seconds: u64,
    },
    Header {
        header: String,
        value: String,
    },
    Retell {
        api_key: String,
        #[serde(default = "default_tolerance")]
        tolerance_seconds: u64,
    },
    Twilio {
        auth_token: String,
        public_url: String,
    },
    Elevenlabs {
        secret: String,
        #[serde(default = "default_elevenlabs_tolerance")]
        tolerance_seconds: u64,
    },
    Hmac {
        secret: String,
        #[serde(default = "default_algorithm")]
        algorithm: String,
        header: String,
        timestamp_header: Option<String>,
        id_header: Option<String>,
        #[serde(default = "default_payload")]
        payload: String,
        #[serde(default = "default_encoding")]
        encoding: String,
        #[serde(default)]
        prefix: String,
        #[serde(default)]
        secret_base64: bool,
        #[serde(default = "default_tolerance")]
        tolerance_seconds: u64,
        public_url: Option<String>,
    },
    // A struct variant, so that a key written beside `kind = "none"` is refused too.
    None {},
}

/// Array entries take no defaults from the defaults layer, so these are written here.
fn default_tolerance() -> u64 {
    300
}
/// ElevenLabs' SDKs take signatures up to 30 minutes old.
fn default_elevenlabs_tolerance() -> u64 {
    1800
}
fn default_algorithm() -> String {
    "sha256".into()
}
fn default_payload() -> String {
    "{body}".into()
}
fn default_encoding() -> String {
    "hex".into()
}

/// A signature's timestamp tolerance: up to a day, since a larger window would switch
/// replay protection off in all but name.
fn tolerance(key: &str, seconds: u64) -> Result<Duration, ConfigError> {
    in_range(&format!("{key}.auth.tolerance_seconds"), seconds, 1, 86_400)?;
    Ok(Duration::from_secs(seconds))
}

/// A header name written in the configuration, checked.
fn header_name(key: &str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(key, format!("`{name}` is not a valid header name")))
}

impl Source {
    /// Every `[[sources]]` entry; names are unique.
    pub fn parse_all(raw: Vec<RawSource>, cx: &mut Context) -> Result<Vec<Source>, ConfigError> {
        let mut sources = Vec::with_capacity(raw.len());
        let mut names = HashSet::new();
        for (i, s) in raw.into_iter().enumerate() {
            let key = format!("sources[{i}]");
            unique_name(&key, "source", &s.name, &mut names)?;
            let auth = parse_auth(&key, &s.name, s.auth, cx)?;
            let transcripts = s
                .transcripts
                .map(|t| parse_transcripts(&format!("{key}.transcripts"), s.vendor, t, cx))
                .transpose()?
                .map(std::sync::Arc::new);
            if let Some(limit) = s.max_body_bytes {
                in_range(&format!("{key}.max_body_bytes"), limit as u64, 1, 1 << 30)?;
            }
            let finalize_wait = match s.finalize_wait {
                Some(wait) => {
                    let key = format!("{key}.finalize_wait");
                    if !s.vendor.ends_before_it_finalizes() {
                        return Err(invalid(
                            &key,
                            format!(
                                "a {} session is finalized by the event that ends it; there is nothing to wait for",
                                s.vendor
                            ),
                        ));
                    }
                    // "0s" is meaningful here: finalized when the session ends.
                    let zero = wait
                        .strip_suffix(['s', 'm', 'h', 'd'])
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b == b'0'));
                    Some(if zero {
                        Duration::ZERO
                    } else {
                        parse_duration_in(
                            &key,
                            &wait,
                            Duration::from_secs(1),
                            Duration::from_secs(7 * 24 * 3600),
                        )?
                    })
                }
                None => s.vendor.finalize_wait(),
            };
            let recordings_auth = match s.recordings_auth {
                Some(basic) => Some(BasicAuth {
                    username: cx
                        .reference(&format!("{key}.recordings_auth.username"), &basic.username)?,
                    password: SecretString::from(
                        cx.secret(&format!("{key}.recordings_auth.password"), &basic.password)?,
                    ),
                }),
                None => None,
            };
            let mapping = match (s.vendor, s.mapping) {
                (Vendor::Mapped, Some(raw)) => Some(std::sync::Arc::new(
                    crate::vendors::mapped::Mapping::parse(&format!("{key}.mapping"), raw)?,
                )),
                (Vendor::Mapped, None) => {
                    return Err(invalid(
                        format!("{key}.mapping"),
                        "a mapped vendor needs [sources.mapping]: where its event type, session id, time and duplicate key are",
                    ));
                }
                (vendor, Some(_)) => {
                    return Err(invalid(
                        format!("{key}.mapping"),
                        format!(
                            "is for vendor = \"mapped\"; the {vendor} adapter maps its own payloads"
                        ),
                    ));
                }
                (_, None) => None,
            };
            let recover = s
                .recover
                .map(|r| {
                    crate::ingest::recover::Recover::parse(
                        &format!("{key}.recover"),
                        s.vendor,
                        r,
                        cx,
                    )
                })
                .transpose()?
                .map(std::sync::Arc::new);
            sources.push(Source {
                name: s.name,
                vendor: s.vendor,
                auth,
                transcripts,
                max_body_bytes: s.max_body_bytes,
                finalize_wait,
                recordings_auth,
                mapping,
                recover,
            });
        }
        Ok(sources)
    }
}

/// A vendor API's base URL (`key`): http or https, with a host; the error shows it
/// without a password or query.
pub(crate) fn http_url(key: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            invalid(
                key,
                format!(
                    "`{}` is not an http(s) URL",
                    crate::settings::redact_url(url)
                ),
            )
        })
}

fn parse_transcripts(
    key: &str,
    vendor: Vendor,
    t: RawTranscripts,
    cx: &mut Context,
) -> Result<Transcripts, ConfigError> {
    if !vendor.fetches_transcripts() {
        return Err(invalid(
            key,
            format!(
                "transcripts are fetched from the Agntix API; a {vendor} source has none (its webhooks carry the conversation, or none)"
            ),
        ));
    }
    let url = cx.reference(&format!("{key}.api_url"), &t.api_url)?;
    let api_url = http_url(&format!("{key}.api_url"), &url)?;
    let api_key = cx.secret(&format!("{key}.api_key"), &t.api_key)?;
    // A day is far past any wait a finalized event should have (and keeps the deadline's
    // arithmetic far from overflow).
    in_range(&format!("{key}.wait_ms"), t.wait_ms, 1, 86_400_000)?;
    in_range(&format!("{key}.max_bytes"), t.max_bytes, 1024, 1 << 30)?;
    Ok(Transcripts {
        api_url,
        api_key: SecretString::from(api_key),
        wait: Duration::from_millis(t.wait_ms),
        max_bytes: t.max_bytes,
    })
}

fn parse_auth(
    key: &str,
    name: &str,
    auth: RawAuth,
    cx: &mut Context,
) -> Result<SourceAuth, ConfigError> {
    Ok(match auth {
        RawAuth::Svix {
            secrets,
            tolerance_seconds,
        } => {
            if secrets.is_empty() {
                return Err(invalid(
                    format!("{key}.auth.secrets"),
                    "needs at least one whsec_ secret",
                ));
            }
            let secrets = secrets
                .iter()
                .enumerate()
                .map(|(j, value)| {
                    let k = format!("{key}.auth.secrets[{j}]");
                    crate::auth::standard::parse_whsec(&k, &cx.secret(&k, value)?)
                })
                .collect::<Result<_, _>>()?;
            let tolerance = tolerance(key, tolerance_seconds)?;
            SourceAuth::Svix { secrets, tolerance }
        }
        RawAuth::Twilio {
            auth_token,
            public_url,
        } => {
            let url_key = format!("{key}.auth.public_url");
            let url = cx.reference(&url_key, &public_url)?;
            let parsed = reqwest::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| {
                    invalid(
                        &url_key,
                        "must be the http(s) URL Twilio calls, exactly as configured there",
                    )
                })?;
            // Twilio's connection overrides (`#rc=…`) are not sent, and not signed.
            let public_url = match parsed.fragment() {
                Some(_) => url[..url.find('#').unwrap_or(url.len())].to_owned(),
                None => url,
            };
            SourceAuth::Twilio {
                auth_token: SecretString::from(
                    cx.secret(&format!("{key}.auth.auth_token"), &auth_token)?,
                ),
                public_url,
            }
        }
        RawAuth::Retell {
            api_key,
            tolerance_seconds,
        } => {
            let tolerance = tolerance(key, tolerance_seconds)?;
            SourceAuth::Retell {
                api_key: SecretString::from(cx.secret(&format!("{key}.auth.api_key"), &api_key)?),
                tolerance,
            }
        }
        RawAuth::Elevenlabs {
            secret,
            tolerance_seconds,
        } => {
            let tolerance = tolerance(key, tolerance_seconds)?;
            SourceAuth::ElevenLabs {
                secret: SecretString::from(cx.secret(&format!("{key}.auth.secret"), &secret)?),
                past: tolerance,
                // Stricter than the vendor's SDKs, which take any future time.
                future: Duration::from_secs(300),
            }
        }
        RawAuth::Hmac {
            secret,
            algorithm,
            header,
            timestamp_header,
            id_header,
            payload,
            encoding,
            prefix,
            secret_base64,
            tolerance_seconds,
            public_url,
        } => {
            use crate::auth::schemes::{self, Piece};
            let k = |name: &str| format!("{key}.auth.{name}");
            let algorithm = schemes::Algorithm::parse(&algorithm).ok_or_else(|| {
                invalid(
                    k("algorithm"),
                    format!("`{algorithm}` is not one of: sha256, sha512, sha1"),
                )
            })?;
            let encoding = match encoding.as_str() {
                "hex" => schemes::Encoding::Hex,
                "base64" => schemes::Encoding::Base64,
                other => {
                    return Err(invalid(
                        k("encoding"),
                        format!("`{other}` is not one of: hex, base64"),
                    ));
                }
            };
            let pieces = schemes::template(&payload).map_err(|e| invalid(k("payload"), e))?;
            if !pieces.contains(&Piece::Body) {
                return Err(invalid(
                    k("payload"),
                    "must contain {body}: the signature has to cover the body",
                ));
            }
            let timestamp_header = timestamp_header
                .map(|h| header_name(&k("timestamp_header"), &h))
                .transpose()?;
            let id_header = id_header
                .map(|h| header_name(&k("id_header"), &h))
                .transpose()?;
            if pieces.contains(&Piece::Timestamp) && timestamp_header.is_none() {
                return Err(invalid(
                    k("payload"),
                    "uses {timestamp}, so timestamp_header must name the header that carries it",
                ));
            }
            if pieces.contains(&Piece::Id) && id_header.is_none() {
                return Err(invalid(
                    k("payload"),
                    "uses {id}, so id_header must name the header that carries it",
                ));
            }
            if pieces.contains(&Piece::Url) && public_url.is_none() {
                return Err(invalid(
                    k("payload"),
                    "uses {url}, so public_url must be the URL the vendor calls",
                ));
            }
            let tolerance = tolerance(key, tolerance_seconds)?;
            let secret = cx.secret(&k("secret"), &secret)?;
            let key_bytes = match secret_base64 {
                false => secret.into_bytes(),
                true => {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD
                        .decode(secret.trim())
                        .map_err(|_| {
                            invalid(k("secret"), "is not base64, and secret_base64 = true")
                        })?
                }
            };
            SourceAuth::Hmac(Box::new(crate::auth::HmacAuth {
                algorithm,
                key: secrecy::SecretSlice::from(key_bytes),
                header: header_name(&k("header"), &header)?,
                timestamp_header,
                id_header,
                payload: pieces,
                encoding,
                prefix,
                tolerance,
                public_url,
            }))
        }
        RawAuth::Header { header, value } => {
            let header_name = header_name(&format!("{key}.auth.header"), &header)?;
            let value = cx.secret(&format!("{key}.auth.value"), &value)?;
            if HeaderValue::from_str(&value).is_err() {
                return Err(invalid(
                    format!("{key}.auth.value"),
                    "is not a valid header value",
                ));
            }
            // The value is the header's whole value: for Authorization, scheme included.
            if header_name == actix_web::http::header::AUTHORIZATION && !value.contains(' ') {
                cx.warn(format!(
                    "{key}.auth.value is compared with the whole Authorization header, which \
                     senders write with a scheme (\"Bearer <token>\"); this value has none, so \
                     no request will match unless the sender sends the bare token"
                ));
            }
            SourceAuth::Header {
                name: header_name,
                value: SecretString::from(value),
            }
        }
        RawAuth::None {} => {
            cx.warn(format!(
                "source `{name}` accepts unauthenticated requests (auth kind = \"none\")"
            ));
            SourceAuth::None
        }
    })
}
