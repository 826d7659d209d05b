//! Standard Webhooks (Svix) signatures: `v1,` then the base64 HMAC-SHA256 of
//! `{id}.{timestamp}.{body}`, keyed with the secret's bytes (`whsec_` + base64). What Agntix
//! signs with and what targets are signed with. The tests sign and verify with the `svix`
//! crate itself, so this agrees with the vendor's own code; the crate is not needed at run
//! time (it brought an HTTP client stack for one HMAC).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::settings::{ConfigError, invalid};

/// The shortest signing key Standard Webhooks allows (its secrets are 24 to 64 bytes).
const MIN_SECRET_BYTES: usize = 24;

/// A Standard Webhooks signing secret: its key bytes.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// A secret as written: `whsec_` and the base64 of its key (the prefix may be left
    /// out, as the vendors' libraries allow); `None` if it is not base64 or is empty.
    pub fn parse(value: &str) -> Option<Secret> {
        let encoded = value.strip_prefix("whsec_").unwrap_or(value);
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        (!key.is_empty()).then_some(Secret { key })
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The signature header's value for a message: `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(id, timestamp, body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac)
        )
    }

    /// Whether one of the space-separated `v1,` signatures in `signatures` is this
    /// secret's for the message, compared in constant time. Other versions are skipped.
    pub fn verifies(&self, id: &str, timestamp: i64, body: &[u8], signatures: &str) -> bool {
        let expected = self.mac(id, timestamp, body);
        signatures
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|sig| base64::engine::general_purpose::STANDARD.decode(sig).ok())
            .any(|sig| super::constant_time_eq(&sig, &expected))
    }
}

/// A configured `whsec_` secret (`key` names it in errors): the prefix, base64, and at
/// least the key length Standard Webhooks requires.
pub fn parse_whsec(key: &str, value: &str) -> Result<Secret, ConfigError> {
    let Some(encoded) = value.strip_prefix("whsec_") else {
        return Err(invalid(key, "must start with `whsec_` followed by base64"));
    };
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(bytes) if bytes.len() >= MIN_SECRET_BYTES => Ok(Secret { key: bytes }),
        Ok(bytes) => Err(invalid(
            key,
            format!(
                "the key is {} bytes; Standard Webhooks requires at least {MIN_SECRET_BYTES} \
                 (whsec_ followed by the base64 of 24 to 64 random bytes)",
                bytes.len()
            ),
        )),
        Err(_) => Err(invalid(key, "the part after `whsec_` must be base64")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_dGVzdC1hZ250aXgtY3VycmVudC1zZWNyZXQ=";

    #[test]
    fn a_signature_verifies_among_others_and_nothing_else_does() {
        let secret = Secret::parse(SECRET).unwrap();
        let sig = secret.sign("msg_1", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("v1,"));
        assert!(secret.verifies("msg_1", 1_700_000_000, b"{\"a\":1}", &sig));
        let several = format!("v2,abc v1,AAAA {sig}");
        assert!(secret.verifies("msg_1", 1_700_000_000, b"{\"a\":1}", &several));
        assert!(!secret.verifies("msg_2", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!secret.verifies("msg_1", 1_700_000_001, b"{\"a\":1}", &sig));
        assert!(!secret.verifies("msg_1", 1_700_000_000, b"{\"a\":2}", &sig));
        let other = Secret::parse("whsec_dGVzdC1hZ250aXgtb2xkLXNlY3JldC1rZXk=").unwrap();
        assert!(!other.verifies("msg_1", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!secret.verifies("msg_1", 1_700_000_000, b"{\"a\":1}", ""));
        assert!(!format!("{secret:?}").contains("dGVz"));
    }

    #[test]
    fn whsec_secrets_are_checked_naming_the_key() {
        assert!(parse_whsec("k", SECRET).is_ok());
        let short = parse_whsec("k", "whsec_eA==").unwrap_err().to_string();
        assert!(
            short.contains("`k`") && short.contains("at least 24"),
            "{short}"
        );
        assert!(parse_whsec("k", "dGVzdA==").is_err(), "the prefix");
        assert!(parse_whsec("k", "whsec_!!!").is_err(), "base64");
    }
}
