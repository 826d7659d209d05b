//! The signature schemes of the voice platforms, each checked over the raw body with a
//! constant-time compare: Retell's (`x-retell-signature`), ElevenLabs'
//! (`ElevenLabs-Signature`) and a generic HMAC scheme whose every part is configured (Vapi's
//! HMAC credential, Bland, and any vendor that signs the same way). The vendors' own SDK
//! test vectors are the unit tests (`../shared/vendor-docs/`).

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use super::AuthFailure;

/// A MAC algorithm the generic scheme may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "sha1" => Some(Algorithm::Sha1),
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The MAC of the concatenated `parts` under `key`.
    pub fn mac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes a key of any length");
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
            Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
            Algorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, parts),
        }
    }
}

/// Whether two MACs are equal, in constant time.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A timestamp of a signature: seconds or milliseconds since the epoch (told apart by
/// magnitude: anything past the year 5138 in seconds is taken as milliseconds).
pub fn unix_ms(value: i64) -> i64 {
    if value.abs() >= 100_000_000_000 {
        value
    } else {
        value.saturating_mul(1000)
    }
}

/// `now_ms - signed_ms` within `past` (older) and `future` (ahead of the gateway's clock).
pub fn within(
    signed_ms: i64,
    now_ms: i64,
    past: Duration,
    future: Duration,
) -> Result<(), AuthFailure> {
    let age = now_ms.saturating_sub(signed_ms);
    let ok = age <= past.as_millis() as i64 && -age <= future.as_millis() as i64;
    match ok {
        true => Ok(()),
        false => Err(AuthFailure::TimestampOutsideTolerance {
            tolerance_seconds: past.max(future).as_secs(),
        }),
    }
}

/// Retell: `x-retell-signature: v=<unix ms>,d=<hex>`, HMAC-SHA256 keyed with the API key over
/// the body immediately followed by the decimal timestamp.
pub fn retell_header(value: &str) -> Result<(i64, Vec<u8>), AuthFailure> {
    let (v, d) = value.trim().split_once(',').ok_or(AuthFailure::Malformed)?;
    let ts = v
        .strip_prefix("v=")
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(AuthFailure::Malformed)?;
    let digest = d
        .strip_prefix("d=")
        .filter(|h| h.len() == 64)
        .and_then(|h| hex::decode(h).ok())
        .ok_or(AuthFailure::Malformed)?;
    Ok((ts.parse().map_err(|_| AuthFailure::Malformed)?, digest))
}

pub fn retell_verify(
    api_key: &[u8],
    header: &str,
    body: &[u8],
    now_ms: i64,
    tolerance: Duration,
) -> Result<(), AuthFailure> {
    let (ts, digest) = retell_header(header)?;
    within(ts, now_ms, tolerance, tolerance)?;
    let expected = Algorithm::Sha256.mac(api_key, &[body, ts.to_string().as_bytes()]);
    same(&expected, &digest)
        .then_some(())
        .ok_or(AuthFailure::Mismatch)
}

/// ElevenLabs: `ElevenLabs-Signature: t=<unix s>,v0=<hex>`, HMAC-SHA256 over `<t>.<body>`.
/// Every `v0=` entry is tried (the vendor's two SDKs keep different ones).
pub fn elevenlabs_header(value: &str) -> Result<(i64, Vec<Vec<u8>>), AuthFailure> {
    let mut ts = None;
    let mut digests = Vec::new();
    for part in value.split(',').map(str::trim) {
        if let Some(t) = part.strip_prefix("t=") {
            ts = Some(t.parse::<i64>().map_err(|_| AuthFailure::Malformed)?);
        } else if let Some(h) = part.strip_prefix("v0=") {
            digests.push(hex::decode(h).map_err(|_| AuthFailure::Malformed)?);
        }
    }
    match (ts, digests.is_empty()) {
        (Some(ts), false) => Ok((ts, digests)),
        _ => Err(AuthFailure::Malformed),
    }
}

pub fn elevenlabs_verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_ms: i64,
    (past, future): (Duration, Duration),
) -> Result<(), AuthFailure> {
    let (ts, digests) = elevenlabs_header(header)?;
    within(ts.saturating_mul(1000), now_ms, past, future)?;
    let expected = Algorithm::Sha256.mac(secret, &[ts.to_string().as_bytes(), b".", body]);
    digests
        .iter()
        .any(|d| same(&expected, d))
        .then_some(())
        .ok_or(AuthFailure::Mismatch)
}

/// One piece of a generic scheme's payload template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Body,
    Timestamp,
    Id,
    Method,
    Url,
}

/// Parses a payload template such as `{timestamp}.{body}`; `None` names an unknown
/// placeholder or an unclosed brace.
pub fn template(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.find('{') {
            None => {
                pieces.push(Piece::Text(rest.to_owned()));
                break;
            }
            Some(open) => {
                if open > 0 {
                    pieces.push(Piece::Text(rest[..open].to_owned()));
                }
                let close = rest[open..]
                    .find('}')
                    .map(|c| open + c)
                    .ok_or_else(|| format!("`{text}` has a `{{` that is never closed"))?;
                pieces.push(match &rest[open + 1..close] {
                    "body" => Piece::Body,
                    "timestamp" => Piece::Timestamp,
                    "id" | "svix-id" => Piece::Id,
                    "method" => Piece::Method,
                    "url" => Piece::Url,
                    other => {
                        return Err(format!(
                            "`{{{other}}}` is not a placeholder (use {{body}}, {{timestamp}}, {{id}}, {{method}}, {{url}})"
                        ));
                    }
                });
                rest = &rest[close + 1..];
            }
        }
    }
    Ok(pieces)
}

/// How the generic scheme's MAC is written in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    /// The MAC a candidate names, or `None` when it is not in this encoding.
    pub fn decode(self, text: &str) -> Option<Vec<u8>> {
        match self {
            Encoding::Hex => hex::decode(text).ok(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(text).ok(),
        }
    }
}

/// What a generic scheme's payload is made from, for one request.
pub struct Signed<'a> {
    pub body: &'a [u8],
    pub timestamp: Option<&'a str>,
    pub id: Option<&'a str>,
    pub method: &'a str,
    pub url: Option<&'a str>,
}

/// The string to sign, from the template's pieces.
pub fn payload<'a>(pieces: &'a [Piece], signed: &Signed<'a>) -> Vec<&'a [u8]> {
    pieces
        .iter()
        .map(|piece| match piece {
            Piece::Text(text) => text.as_bytes(),
            Piece::Body => signed.body,
            Piece::Timestamp => signed.timestamp.unwrap_or("").as_bytes(),
            Piece::Id => signed.id.unwrap_or("").as_bytes(),
            Piece::Method => signed.method.as_bytes(),
            Piece::Url => signed.url.unwrap_or("").as_bytes(),
        })
        .collect()
}

/// Whether any space-separated candidate in the signature header, after `prefix`, is the
/// MAC of `payload`.
pub fn generic_matches(
    algorithm: Algorithm,
    key: &[u8],
    header: &str,
    prefix: &str,
    encoding: Encoding,
    payload: &[&[u8]],
) -> Result<(), AuthFailure> {
    let expected = algorithm.mac(key, payload);
    let mut any = false;
    let mut matched = false;
    for candidate in header.split_ascii_whitespace() {
        let Some(encoded) = candidate.strip_prefix(prefix) else {
            continue;
        };
        let Some(mac) = encoding.decode(encoded) else {
            continue;
        };
        any = true;
        matched |= same(&expected, &mac);
    }
    match (any, matched) {
        (_, true) => Ok(()),
        (false, false) => Err(AuthFailure::Malformed),
        (true, false) => Err(AuthFailure::Mismatch),
    }
}

/// Twilio's `X-Twilio-Signature` over a form-encoded request: base64 HMAC-SHA1, keyed with
/// the Auth Token, of `url` followed by every parameter as `name` + `value`, sorted by name
/// (bytes; a repeated name's values sorted too). Twilio may sign its URL with or without the
/// scheme's default port, and its SDKs accept either: so does this, and nothing more
/// (twilio-node's extra re-encodings of the query are not accepted; unconfirmed that Twilio
/// ever needs them). No timestamp is signed: a replay is answered as a duplicate.
pub fn twilio_verify(auth_token: &[u8], url: &str, form: &[u8], signature: &str) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let signed = twilio_signed_params(form);
    twilio_urls(url).iter().any(|candidate| {
        let mac = Algorithm::Sha1.mac(auth_token, &[candidate.as_bytes(), &signed]);
        same(&mac, &given)
    })
}

/// The signature Twilio sends for `form` posted to `url` (the tests' and the demo's
/// sender).
pub fn twilio_signature(auth_token: &[u8], url: &str, form: &[u8]) -> String {
    let mac = Algorithm::Sha1.mac(auth_token, &[url.as_bytes(), &twilio_signed_params(form)]);
    base64::engine::general_purpose::STANDARD.encode(mac)
}

/// The decoded parameters sorted by name (then value), each as `name` + `value`.
fn twilio_signed_params(form: &[u8]) -> Vec<u8> {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(form).into_owned().collect();
    params.sort();
    params.dedup();
    let mut signed = Vec::with_capacity(form.len());
    for (name, value) in &params {
        signed.extend_from_slice(name.as_bytes());
        signed.extend_from_slice(value.as_bytes());
    }
    signed
}

/// The configured URL as given, and with its default port added or taken away.
fn twilio_urls(url: &str) -> Vec<String> {
    let mut urls = vec![url.to_owned()];
    if let Ok(parsed) = url::Url::parse(url) {
        let default = match parsed.scheme() {
            "https" => 443,
            "http" => 80,
            _ => return urls,
        };
        let host = parsed.host_str().unwrap_or_default();
        let rest = &url[url.find(host).map_or(0, |i| i + host.len())..];
        let scheme = parsed.scheme();
        let port = format!(":{default}");
        let other = match rest.strip_prefix(&port) {
            Some(after) => format!("{scheme}://{host}{after}"),
            None if parsed.port().is_none() => format!("{scheme}://{host}{port}{rest}"),
            None => return urls,
        };
        urls.push(other);
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(300);

    #[test]
    fn retells_sdk_vector() {
        let header =
            "v=1700000000000,d=07024cabe7dd8f6d1c6e4a8324ca92c812e6ad4a7ee506c04f7e462e3321823e";
        let body = br#"{"event":"call_ended"}"#;
        assert_eq!(
            retell_verify(b"test-api-key", header, body, 1_700_000_000_000, MIN),
            Ok(())
        );
        assert_eq!(
            retell_verify(
                b"test-api-key",
                header,
                b"{\"event\":\"call_started\"}",
                1_700_000_000_000,
                MIN
            ),
            Err(AuthFailure::Mismatch)
        );
        assert_eq!(
            retell_verify(b"other-key", header, body, 1_700_000_000_000, MIN),
            Err(AuthFailure::Mismatch)
        );
        // ±300 s, both ways.
        assert!(retell_verify(b"test-api-key", header, body, 1_700_000_300_000, MIN).is_ok());
        assert!(matches!(
            retell_verify(b"test-api-key", header, body, 1_700_000_300_001, MIN),
            Err(AuthFailure::TimestampOutsideTolerance { .. })
        ));
        assert!(matches!(
            retell_verify(b"test-api-key", header, body, 1_699_999_699_999, MIN),
            Err(AuthFailure::TimestampOutsideTolerance { .. })
        ));
        for bad in [
            "",
            "v=1,d=zz",
            "d=07,v=1",
            "v=,d=07024cabe7dd8f6d1c6e4a8324ca92c812e6ad4a7ee506c04f7e462e3321823e",
        ] {
            assert_eq!(
                retell_header(bad).err(),
                Some(AuthFailure::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn elevenlabs_vector_and_window() {
        let header =
            "t=1778601676,v0=9e6f2156bcdc33af1cb16d2eb7d6ff57acf69b508c554e58c780ed85968b874a";
        let body = br#"{"type":"post_call_transcription"}"#;
        let window = (Duration::from_secs(1800), MIN);
        let at = 1_778_601_676_000;
        assert_eq!(
            elevenlabs_verify(b"wsec_test_0123456789", header, body, at, window),
            Ok(())
        );
        assert_eq!(
            elevenlabs_verify(b"wsec_other", header, body, at, window),
            Err(AuthFailure::Mismatch)
        );
        // 30 minutes old is still taken; older is not; 5 minutes ahead is the most.
        assert!(
            elevenlabs_verify(
                b"wsec_test_0123456789",
                header,
                body,
                at + 1_800_000,
                window
            )
            .is_ok()
        );
        assert!(
            elevenlabs_verify(
                b"wsec_test_0123456789",
                header,
                body,
                at + 1_800_001,
                window
            )
            .is_err()
        );
        assert!(
            elevenlabs_verify(b"wsec_test_0123456789", header, body, at - 300_000, window).is_ok()
        );
        assert!(
            elevenlabs_verify(b"wsec_test_0123456789", header, body, at - 300_001, window).is_err()
        );
        // Another v0 beside the right one does not hide it.
        let two = format!(
            "t=1778601676,v0={},v0=9e6f2156bcdc33af1cb16d2eb7d6ff57acf69b508c554e58c780ed85968b874a",
            "00".repeat(32)
        );
        assert_eq!(
            elevenlabs_verify(b"wsec_test_0123456789", &two, body, at, window),
            Ok(())
        );
    }

    #[test]
    fn the_generic_scheme_signs_what_its_template_says() {
        // Bland: hex HMAC-SHA256 of the body (the vendor note's vector).
        let body = br#"{"call_id":"x"}"#;
        let bland = Signed {
            body,
            timestamp: None,
            id: None,
            method: "POST",
            url: None,
        };
        let pieces = template("{body}").unwrap();
        let expected = hex::encode(Algorithm::Sha256.mac(b"bland_test_secret", &[body]));
        assert_eq!(
            generic_matches(
                Algorithm::Sha256,
                b"bland_test_secret",
                &expected,
                "",
                Encoding::Hex,
                &payload(&pieces, &bland)
            ),
            Ok(())
        );
        assert_eq!(
            generic_matches(
                Algorithm::Sha256,
                b"bland_test_secret",
                &expected.to_uppercase(),
                "",
                Encoding::Hex,
                &payload(&pieces, &bland)
            ),
            Ok(()),
            "hex in any case"
        );
        // Vapi's defaults: {timestamp}.{body}, with a prefix, among several candidates.
        let pieces = template("{timestamp}.{body}").unwrap();
        let vapi = Signed {
            body,
            timestamp: Some("1700000000"),
            id: None,
            method: "POST",
            url: None,
        };
        let mac = Algorithm::Sha512.mac(b"k", &[b"1700000000", b".", body]);
        let header = format!(
            "sha512=AAAA sha512={}",
            base64::engine::general_purpose::STANDARD.encode(&mac)
        );
        assert_eq!(
            generic_matches(
                Algorithm::Sha512,
                b"k",
                &header,
                "sha512=",
                Encoding::Base64,
                &payload(&pieces, &vapi)
            ),
            Ok(())
        );
        assert_eq!(
            generic_matches(
                Algorithm::Sha512,
                b"other",
                &header,
                "sha512=",
                Encoding::Base64,
                &payload(&pieces, &vapi)
            ),
            Err(AuthFailure::Mismatch)
        );
        assert_eq!(
            generic_matches(
                Algorithm::Sha1,
                b"k",
                "not-hex",
                "",
                Encoding::Hex,
                &payload(&pieces, &vapi)
            ),
            Err(AuthFailure::Malformed)
        );
        // RFC 2202's first HMAC-SHA1 case, so sha1 is HMAC-SHA1.
        assert_eq!(
            hex::encode(Algorithm::Sha1.mac(&[0x0b; 20], &[b"Hi There"])),
            "b617318655057264e28bc0b6fb378c8ef146be00"
        );
    }

    #[test]
    fn templates_name_their_placeholders() {
        assert_eq!(
            template("{method}:{url}:{id}:{timestamp}.{body}")
                .unwrap()
                .len(),
            9
        );
        assert!(template("{bodyy}").unwrap_err().contains("{bodyy}"));
        assert!(template("{body").unwrap_err().contains("never closed"));
        assert_eq!(unix_ms(1_700_000_000), 1_700_000_000_000);
        assert_eq!(unix_ms(1_700_000_000_000), 1_700_000_000_000);
    }

    #[test]
    fn twilios_sdk_vector_and_ours() {
        // twilio-python tests/unit/test_request_validator.py
        let form = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(twilio_verify(
            b"12345",
            url,
            form,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        // Parameters in another order, re-encoded: the same signed string.
        let shuffled = b"To=%2b18005551212&Digits=1234&CallSid=CA1234567890ABCDE&From=+14158675309&Caller=%2B14158675309";
        let shuffled = String::from_utf8_lossy(shuffled).replace("From=+1", "From=%2B1");
        assert!(twilio_verify(
            b"12345",
            url,
            shuffled.as_bytes(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        // With the default port written out: Twilio may sign either form.
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert!(twilio_verify(
            b"12345",
            with_port,
            form,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        // Wrong token, another URL, a parameter added, a mangled signature: refused.
        assert!(!twilio_verify(
            b"54321",
            url,
            form,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!twilio_verify(
            b"12345",
            "https://mycompany.com/other.php",
            form,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        let added = [&form[..], b"&Extra=1"].concat();
        assert!(!twilio_verify(
            b"12345",
            url,
            &added,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!twilio_verify(
            b"12345",
            url,
            form,
            "rsoydt4t1cutdk1pdd93/vvr8b8="
        ));
        assert!(!twilio_verify(b"12345", url, form, "not base64!"));
        assert_eq!(
            twilio_signature(b"12345", url, form),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        // The fixtures, signed by the vendor note with the SDK's algorithm.
        let token = b"0123456789abcdef0123456789abcdef";
        let status = crate::testing::fixture("twilio", "status-callback-completed.form");
        assert!(twilio_verify(
            token,
            "https://gateway.example.com/hooks/twilio/status",
            &status,
            "I/QWabDfcKWxlaONKwjhNqsJU28="
        ));
        let recording = crate::testing::fixture("twilio", "recording-status-completed.form");
        assert!(twilio_verify(
            token,
            "https://gateway.example.com/hooks/twilio/recording",
            &recording,
            "1JCeO8nONnjkb5+4Fh42bLMWTRY="
        ));
    }

    #[test]
    fn twilio_urls_differ_only_by_the_default_port() {
        assert_eq!(
            twilio_urls("https://a.example/x?y=1"),
            ["https://a.example/x?y=1", "https://a.example:443/x?y=1"]
        );
        assert_eq!(
            twilio_urls("http://a.example:80/x"),
            ["http://a.example:80/x", "http://a.example/x"]
        );
        assert_eq!(
            twilio_urls("https://a.example:8443/x"),
            ["https://a.example:8443/x"]
        );
    }
}
