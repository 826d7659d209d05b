//! What the tests, the demo and the benchmark share: the vendors' documented example
//! payloads, requests signed the way Agntix's Svix signs them, and a PostgreSQL schema of
//! one's own. Not used by the gateway itself.

/// Tests that need PostgreSQL read its URL here; under `CI=true` its absence is a failure.
pub const POSTGRES_URL_VAR: &str = "SESSIONGATE_TEST_POSTGRES_URL";

/// A documented example payload from `tests/fixtures/{vendor}/{name}`.
pub fn fixture(vendor: &str, name: &str) -> Vec<u8> {
    let path: std::path::PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests",
        "fixtures",
        vendor,
        name,
    ]
    .iter()
    .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Retell's `x-retell-signature` for `body` at `ms` (Unix milliseconds): HMAC-SHA256 with
/// the API key of the body followed by the decimal time.
pub fn retell_headers(api_key: &str, ms: i64, body: &[u8]) -> [(&'static str, String); 1] {
    let d = crate::auth::schemes::Algorithm::Sha256
        .mac(api_key.as_bytes(), &[body, ms.to_string().as_bytes()]);
    [("x-retell-signature", format!("v={ms},d={}", hex::encode(d)))]
}

/// ElevenLabs' `ElevenLabs-Signature` for `body` at `t` (Unix seconds): `t=<t>,v0=<hex of
/// HMAC-SHA256 of "t.body">`.
pub fn elevenlabs_headers(secret: &str, t: i64, body: &[u8]) -> [(&'static str, String); 1] {
    let t = t.to_string();
    let v0 =
        crate::auth::schemes::Algorithm::Sha256.mac(secret.as_bytes(), &[t.as_bytes(), b".", body]);
    [(
        "elevenlabs-signature",
        format!("t={t},v0={}", hex::encode(v0)),
    )]
}

/// Vapi's HMAC credential with its defaults: `x-signature` the hex HMAC-SHA256 of
/// `{timestamp}.{body}`, `x-timestamp` the time (here Unix milliseconds).
pub fn vapi_hmac_headers(secret: &str, ms: i64, body: &[u8]) -> [(&'static str, String); 2] {
    let ts = ms.to_string();
    let mac = crate::auth::schemes::Algorithm::Sha256
        .mac(secret.as_bytes(), &[ts.as_bytes(), b".", body]);
    [("x-signature", hex::encode(mac)), ("x-timestamp", ts)]
}

/// Bland's `X-Webhook-Signature` for `body`: the hex HMAC-SHA256 of the body, nothing else.
pub fn bland_headers(secret: &str, body: &[u8]) -> [(&'static str, String); 1] {
    let mac = crate::auth::schemes::Algorithm::Sha256.mac(secret.as_bytes(), &[body]);
    [("x-webhook-signature", hex::encode(mac))]
}

/// Twilio's `X-Twilio-Signature` for the form `body` posted to `url`.
pub fn twilio_headers(auth_token: &str, url: &str, body: &[u8]) -> [(&'static str, String); 2] {
    [
        (
            "x-twilio-signature",
            crate::auth::schemes::twilio_signature(auth_token.as_bytes(), url, body),
        ),
        (
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        ),
    ]
}

/// The Svix headers for `body`, as Agntix's sender signs it (the integration tests sign
/// with the `svix` crate itself).
pub fn svix_headers(
    signer: &crate::auth::standard::Secret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> [(&'static str, String); 3] {
    let signature = signer.sign(msg_id, timestamp, body);
    [
        ("svix-id", msg_id.to_owned()),
        ("svix-timestamp", timestamp.to_string()),
        ("svix-signature", signature),
    ]
}

/// A URL to a fresh, empty schema of the test database. Only tests that run with
/// PostgreSQL call it (`cfg(sg_postgres)`, see `build.rs`: the others are ignored with
/// their reason), so a database that is not there is a failure, never a skip.
pub async fn postgres_schema_url() -> Option<String> {
    let base = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!("{POSTGRES_URL_VAR} must be set: the PostgreSQL tests run (CI, or it was set when built)")
    });
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test database {base}: {e}"));
    tokio::spawn(connection);
    let now = crate::clock::Clock::system().now_ms() / 1000;
    // Schemas are named after their creation time; drop those left by runs over an hour ago.
    for row in client
        .query(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'sg_test_%'",
            &[],
        )
        .await
        .unwrap()
    {
        let name: String = row.get(0);
        let created = name
            .split('_')
            .nth(2)
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(0);
        if created < now - 3600 {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .await;
        }
    }
    let schema = format!("sg_test_{now}_{:08x}", rand::random::<u32>());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{separator}options=-csearch_path%3D{schema}"))
}

/// Whether the broker `name` answers at `address` (`host:port`); its tests run only with
/// `SESSIONGATE_TEST_BROKERS` set or under `CI=true` (`build.rs`), so one that is down is a
/// failure, never a skip.
pub fn broker(name: &str, address: &str) -> bool {
    use std::net::ToSocketAddrs;
    let up = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).is_ok()
        });
    assert!(
        up,
        "{name} must be running at {address}: the broker tests run (CI, or SESSIONGATE_TEST_BROKERS)"
    );
    up
}

/// An S3-compatible store for tests (SeaweedFS in `.ci/run`), from
/// `SESSIONGATE_TEST_S3_ENDPOINT`, `…_BUCKET`, `…_KEY` and `…_SECRET`. Outside CI, unset
/// skips with a printed reason; under `CI=true` it is a failure.
pub struct TestS3 {
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
    pub secret: String,
}

pub fn s3() -> Option<TestS3> {
    let var = |name: &str| std::env::var(format!("SESSIONGATE_TEST_S3_{name}")).ok();
    match (var("ENDPOINT"), var("BUCKET"), var("KEY"), var("SECRET")) {
        (Some(endpoint), Some(bucket), Some(key), Some(secret)) => Some(TestS3 {
            endpoint,
            bucket,
            key,
            secret,
        }),
        _ => panic!(
            "SESSIONGATE_TEST_S3_ENDPOINT, _BUCKET, _KEY and _SECRET must be set: the S3 tests run"
        ),
    }
}
