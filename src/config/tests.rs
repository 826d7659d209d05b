use super::*;
use std::time::Duration;

use crate::event::EventType;
use crate::settings::{parse_duration, redact_url};
use crate::store::settings::Synchronous;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A source, for configurations a test is not about sources in (one is required).
const SOURCE: &str = "\n[[sources]]\nname = \"s\"\nvendor = \"pathors\"\nauth = { kind = \"header\", header = \"X-T\", value = \"env:PATHORS_TOKEN\" }\n";

fn env(name: &str) -> Option<String> {
    match name {
        "AGNTIX_SECRET" => Some(SECRET.into()),
        "PATHORS_TOKEN" => Some("Bearer t0ken".into()),
        _ => None,
    }
}

const FULL: &str = r#"
    [server]
    listen = "127.0.0.1:0"
    [storage]
    url = "sqlite://data/x.db"
    [delivery]
    max_attempts = 3
    [[sources]]
    name = "pathors"
    vendor = "pathors"
    auth = { kind = "header", header = "Authorization", value = "env:PATHORS_TOKEN" }
    [[sources]]
    name = "agntix"
    vendor = "agntix"
    auth = { kind = "svix", secrets = ["env:AGNTIX_SECRET"] }
    [[targets]]
    name = "crm"
    url = "https://crm.example.com/hooks"
    events = ["session.finalized"]
    sources = ["agntix"]
    secret = "env:AGNTIX_SECRET"
    headers = { "X-Tenant" = "acme" }
    include_raw = false
"#;

fn parse(toml: &str) -> Result<Config, ConfigError> {
    Config::from_toml(toml, &env)
}

fn error_of(toml: &str) -> String {
    parse(toml).unwrap_err().to_string()
}

#[test]
fn a_full_config_parses_with_env_secrets_and_no_warnings() {
    let c = parse(FULL).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.sources.len(), 2);
    assert_eq!(c.delivery.max_attempts, 3);
    assert_eq!(c.delivery.timeout, Duration::from_secs(10));
    let t = &c.targets[0];
    assert!(t.accepts("agntix", EventType::SessionFinalized));
    assert!(!t.accepts("pathors", EventType::SessionFinalized));
    assert!(!t.accepts("agntix", EventType::SessionEnded));
    assert!(!t.shape.include_raw);
    assert!(t.signer.is_some());
    assert_eq!(t.headers[0].0.as_str(), "x-tenant");
    assert!(matches!(
        c.storage,
        StorageConfig::Sqlite {
            synchronous: Synchronous::Full,
            ..
        }
    ));
}

#[test]
fn postgres_urls_are_secrets_and_leases_default_past_the_timeout() {
    let env = |name: &str| {
        (name == "PG_URL")
            .then(|| "postgres://gate:pw@db/sessions".to_owned())
            .or_else(|| env(name))
    };
    let c = Config::from_toml(
        &format!("[storage]\nurl = \"env:PG_URL\"\npool_size = 4\n[[targets]]\nname = \"t\"\nurl = \"http://x\"\ntimeout_ms = 2000{SOURCE}"),
        &env,
    )
    .unwrap();
    assert!(matches!(
        c.storage,
        StorageConfig::Postgres { pool_size: 4, .. }
    ));
    let sized = Config::from_toml(
        &format!(
            "[storage]\nurl = \"env:PG_URL\"\n[[targets]]\nname = \"t\"\nurl = \"http://x\"{SOURCE}"
        ),
        &env,
    )
    .unwrap();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(matches!(
        sized.storage,
        StorageConfig::Postgres { pool_size, .. } if pool_size == (4 * cores).clamp(4, 32)
    ));
    assert!(
        !format!("{:?}", c.storage).contains("pw"),
        "the URL's password never prints"
    );
    assert!(c.warnings.is_empty());
    assert_eq!(c.targets[0].lease, Duration::from_secs(32));

    let inline = parse(&format!(
        "[storage]\nurl = \"postgres://gate:pw@db/sessions\"{SOURCE}"
    ))
    .unwrap();
    assert!(
        inline.warnings[0].contains("storage.url"),
        "{:?}",
        inline.warnings
    );
    assert!(
        parse(&format!(
            "[storage]\nurl = \"postgres://gate@db/sessions\"{SOURCE}"
        ))
        .unwrap()
        .warnings
        .is_empty()
    );
}

#[test]
fn omitted_filters_accept_everything() {
    let c = parse(&format!(
        "[[targets]]\nname = \"all\"\nurl = \"http://127.0.0.1:9/x\"{SOURCE}"
    ))
    .unwrap();
    for t in EventType::ALL {
        assert!(c.targets[0].accepts("anything", t));
    }
    assert!(
        c.targets[0].shape.include_raw,
        "include_raw defaults to true"
    );
}

#[test]
fn inline_secrets_and_auth_none_warn() {
    let c = parse(
        r#"[[sources]]
           name = "p"
           vendor = "pathors"
           auth = { kind = "header", header = "X-Token", value = "inline" }
           [[sources]]
           name = "open"
           vendor = "agntix"
           auth = { kind = "none" }"#,
    )
    .unwrap();
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("sources[0].auth.value"));
    assert!(c.warnings[1].contains("`open`"));
}

#[test]
fn target_urls_and_headers_may_come_from_the_environment_and_override_attempts() {
    let env = |name: &str| match name {
        "CRM_URL" => Some("https://crm.example.com/hooks?key=k".to_owned()),
        "CRM_TOKEN" => Some("Bearer crm-token".to_owned()),
        other => env(other),
    };
    let c = Config::from_toml(
        &format!("[delivery]\nmax_attempts = 12\n[[targets]]\nname = \"crm\"\nurl = \"env:CRM_URL\"\nheaders = {{ \"Authorization\" = \"env:CRM_TOKEN\" }}\nmax_attempts = 20\ntimeout_ms = 5000\n[[targets]]\nname = \"other\"\nurl = \"http://x\"{SOURCE}"),
        &env,
    )
    .unwrap();
    let t = &c.targets[0];
    assert_eq!(t.url.as_str(), "https://crm.example.com/hooks?key=k");
    assert_eq!(t.headers[0].1, "Bearer crm-token");
    assert!(t.headers[0].1.is_sensitive());
    assert_eq!((t.max_attempts, t.timeout), (20, Duration::from_secs(5)));
    assert_eq!(c.targets[1].max_attempts, 12);
    for (toml, key) in [
        (
            "[[targets]]\nname = \"t\"\nurl = \"env:NOPE_URL\"",
            "NOPE_URL",
        ),
        (
            "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nheaders = { \"X-A\" = \"env:NOPE_H\" }",
            "targets[0].headers.X-A",
        ),
        (
            "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nmax_attempts = 0",
            "targets[0].max_attempts",
        ),
    ] {
        let err = Config::from_toml(toml, &env).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn urls_shown_carry_no_password_nor_query() {
    assert_eq!(
        redact_url("https://user:s3cret@crm.example.com:8443/hooks?token=abc#x"),
        "https://user:***@crm.example.com:8443/hooks?***"
    );
    assert_eq!(redact_url("http://u@h/p"), "http://u@h/p");
    assert_eq!(redact_url("http://h/p"), "http://h/p");
    assert_eq!(redact_url("not a url?key=1"), "not a url?***");
    let c = parse(&format!(
        "[[targets]]\nname = \"t\"\nurl = \"https://u:pw0rd@h.example/x?api_key=k3y\"{SOURCE}"
    ))
    .unwrap();
    let shown = format!("{:?}", c.targets[0]);
    assert!(
        !shown.contains("pw0rd") && !shown.contains("k3y"),
        "{shown}"
    );
    let e = error_of("[[targets]]\nname = \"t\"\nurl = \"ftp://u:pw0rd@h/?k3y\"");
    assert!(!e.contains("pw0rd") && !e.contains("k3y"), "{e}");
}

#[test]
fn empty_and_short_secrets_are_refused_wherever_they_come_from() {
    let cases = [
        (
            "[[sources]]\nname = \"p\"\nvendor = \"pathors\"\nauth = { kind = \"header\", header = \"X-T\", value = \"\" }",
            "sources[0].auth.value",
        ),
        ("[server]\nadmin_token = \"\"", "server.admin_token"),
        (
            "[server]\nadmin_token = \"x\"",
            "server.admin_token`: is 1 bytes; use at least 24",
        ),
        (
            "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"whsec_eA==\"] }",
            "sources[0].auth.secrets[0]",
        ),
        (
            "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"env:SHORT\"] }",
            "sources[0].auth.secrets[0]",
        ),
        (
            "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nsecret = \"env:SHORT\"",
            "targets[0].secret",
        ),
    ];
    // 23 bytes: one short of the Standard Webhooks minimum.
    let short =
        |name: &str| (name == "SHORT").then(|| "whsec_YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE=".to_owned());
    for (toml, key) in cases {
        let err = Config::from_toml(toml, &short).unwrap_err().to_string();
        assert!(err.contains(key), "{toml}: {err}");
    }
}

#[test]
fn environment_overrides_keep_strings_as_strings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, format!("[delivery]\nmax_attempts = 3{SOURCE}")).unwrap();
    let vars = [
        (
            "SESSIONGATE__SERVER__ADMIN_TOKEN",
            "000123456789012345678901",
        ),
        ("SESSIONGATE__DELIVERY__MAX_ATTEMPTS", "20"),
        ("SESSIONGATE__DELIVERY__JITTER", "0.5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let c = Config::load_with_env(&path, vars, &env).unwrap();
    use secrecy::ExposeSecret;
    assert_eq!(
        c.server.admin_token.unwrap().expose_secret(),
        "000123456789012345678901"
    );
    assert_eq!(c.delivery.max_attempts, 20);
    assert_eq!(c.delivery.retry.jitter, 0.5);
}

#[test]
fn every_unknown_key_and_missing_variable_is_reported_at_once() {
    let e = parse(
        "[server]\nlisen = 1\nadmin_token = \"env:NOPE_A\"\n[delivery]\nmax_atempts = 3\n[[targets]]\nname = \"t\"\nurl = \"env:NOPE_B\"\ncolour = 1",
    )
    .unwrap_err()
    .to_string();
    for part in [
        "server.lisen",
        "delivery.max_atempts",
        "targets[0].colour",
        "NOPE_A",
        "NOPE_B",
        "no [[sources]]",
    ] {
        assert!(e.contains(part), "missing {part} in {e}");
    }
    assert!(e.starts_with("6 problems:"), "{e}");
}

#[test]
fn retention_durations_parse_and_a_short_max_age_warns() {
    for (text, secs) in [
        ("90s", 90),
        ("15m", 900),
        ("12h", 43_200),
        ("30d", 2_592_000),
    ] {
        assert_eq!(
            parse_duration("k", text).unwrap(),
            Duration::from_secs(secs)
        );
    }
    for bad in ["", "30", "d", "1.5h", "-1d", "0s", "3w", "1 h"] {
        assert!(parse_duration("k", bad).is_err(), "{bad}");
    }
    let c = parse(&format!("[retention]\nmax_age = \"30d\"{SOURCE}")).unwrap();
    assert_eq!(
        c.retention,
        Some(RetentionConfig {
            max_age: Duration::from_secs(30 * 86_400),
            interval: Duration::from_secs(3600)
        })
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let short = parse(&format!(
        "[retention]\nmax_age = \"1h\"\ninterval = \"5m\"{SOURCE}"
    ))
    .unwrap();
    assert!(
        short.warnings[0].contains("retention.max_age"),
        "{:?}",
        short.warnings
    );
    assert!(parse(SOURCE).unwrap().retention.is_none());
    let e = error_of(&format!("[retention]\nmax_age = \"soon\"{SOURCE}"));
    assert!(e.contains("retention.max_age"), "{e}");
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1", "lisen"),
        ("[storage]\nurl = \"mysql://x\"", "storage.url"),
        (
            "[storage]\nurl = \"postgres://a@h/d?sslmode=sometimes\"",
            "storage.url",
        ),
        ("[storage]\nurl = \"env:NOPE_PG\"", "NOPE_PG"),
        (
            "[storage]\nurl = \"postgres://a@h/d\"\nschema = \"Bad-Name\"",
            "storage.schema",
        ),
        ("[storage]\nschema = \"gw\"", "storage.schema"),
        ("[storage]\nwal_size_mib = 0", "storage.wal_size_mib"),
        (
            "[delivery]\nlease_ms = 5000\n[[targets]]\nname = \"t\"\nurl = \"http://x\"",
            "delivery.lease_ms",
        ),
        ("[delivery]\nmax_attempts = 0", "delivery.max_attempts"),
        ("[delivery]\njitter = 2.0", "delivery.jitter"),
        (
            "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"env:NOPE\"] }",
            "sources[0].auth.secrets[0]",
        ),
        (
            "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"whsec_!!!\"] }",
            "sources[0].auth.secrets[0]",
        ),
        (
            "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"svix\", secrets = [\"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"] }",
            "sources[0].auth.secrets[0]",
        ),
        (
            "[[sources]]\nname = \"a\"\nvendor = \"pathors\"\nauth = { kind = \"none\" }\n[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = { kind = \"none\" }",
            "sources[1].name",
        ),
        (
            "[[sources]]\nname = \"a b\"\nvendor = \"pathors\"\nauth = { kind = \"none\" }",
            "sources[0].name",
        ),
        (
            "[[targets]]\nname = \"t\"\nurl = \"ftp://x\"",
            "targets[0].url",
        ),
        (
            "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nevents = [\"session.created\"]",
            "targets[0].events[0]",
        ),
        (
            "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nsources = [\"ghost\"]",
            "targets[0].sources[0]",
        ),
        (
            "[[targets]]\nname = \"t\"\nurl = \"http://x\"\n[[targets]]\nname = \"t\"\nurl = \"http://y\"",
            "targets[1].name",
        ),
        (
            "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nsecret = \"notwhsec\"",
            "targets[0].secret",
        ),
        (
            "[[targets]]\nname = \"t\"\nurl = \"http://x\"\nheaders = { \"webhook-id\" = \"x\" }",
            "targets[0].headers.webhook-id",
        ),
        (
            "[[targets]]\nname = \"t\"\nurl = \"http://x\"\ncolour = 1",
            "colour",
        ),
        (
            "[[sources]]\nname = \"a\"\nvendor = \"zoom\"\nauth = { kind = \"none\" }",
            "zoom",
        ),
    ];
    for (toml, key) in cases {
        let err = error_of(toml);
        assert!(
            err.contains(key),
            "error for {toml:?} should name {key}: {err}"
        );
    }
}

#[test]
fn defaults_come_from_the_compiled_in_file_alone() {
    // Only a source is written: every other value is config/defaults.toml's.
    let c = parse(SOURCE).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.max_body_bytes, 1_048_576);
    assert_eq!(c.server.max_body_bytes_in_flight, 64 * 1024 * 1024);
    assert_eq!(c.server.max_connections, 2048);
    assert_eq!(c.server.body_timeout, Duration::from_secs(15));
    assert!(c.server.admin_listen.is_none() && c.server.admin_token.is_none());
    assert!(matches!(
        &c.storage,
        StorageConfig::Sqlite { path, synchronous: Synchronous::Full, wal_size_mib: 32 } if path.to_str() == Some("data/sessiongate.db")
    ));
    assert_eq!(c.delivery.max_attempts, 12);
    assert_eq!(c.delivery.retry.initial, Duration::from_secs(10));
    assert_eq!(c.delivery.retry.max, Duration::from_secs(7200));
    assert_eq!(c.delivery.max_in_flight, 32);
    assert!(c.delivery.lease.is_none() && c.retention.is_none());
    // The file is the only place: the parsed sections take no defaults of their own, so a
    // defaults layer without a key is a missing field, not a silent second default.
    let read = crate::settings::read::<RawConfig>(
        config::Config::builder()
            .add_source(config::File::from_str(SOURCE, config::FileFormat::Toml)),
        &env,
    )
    .unwrap();
    assert!(
        read.raw.is_none(),
        "sections parsed without the defaults layer"
    );
}

#[test]
fn the_shipped_configurations_parse() {
    let env = |name: &str| match name {
        "AGNTIX_WEBHOOK_SECRET" | "CRM_SIGNING_SECRET" | "WAREHOUSE_SIGNING_SECRET" => {
            Some(SECRET.to_owned())
        }
        _ => Some("a-value-long-enough-for-any-secret".to_owned()),
    };
    for file in ["sessiongate.toml", "dev.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(file);
        let c = Config::load_with_env(&path, Default::default(), &env)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!c.sources.is_empty(), "{file}");
    }
    let prod = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sessiongate.toml");
    let c = Config::load_with_env(&prod, Default::default(), &env).unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(
        c.delivery.max_attempts, 12,
        "a default the file does not restate"
    );
}

#[test]
fn a_target_url_must_name_a_scheme_some_output_sends_to() {
    let e = error_of(&format!(
        "{SOURCE}[[targets]]\nname = \"q\"\nurl = \"ftp://files.example.com/x\"\n"
    ));
    assert!(e.contains("targets[0].url"), "{e}");
    assert!(e.contains("schemes: http, https"), "{e}");
    let c = parse(&format!(
        "{SOURCE}[[targets]]\nname = \"q\"\nurl = \"https://files.example.com/x\"\n"
    ))
    .unwrap();
    assert_eq!(c.targets[0].url.scheme(), "https");
}

#[test]
fn each_output_checks_its_own_keys_naming_the_target() {
    let target = |rest: &str| format!("{SOURCE}[[targets]]\nname = \"q\"\n{rest}\n");
    let c = parse(&target(
        "url = \"nats://127.0.0.1:4222\"\nsubject = \"sessions.{source}.{type}\"\nformat = \"cloudevents\"\nredact = [\"session.customer.phoneNumber\"]",
    ))
    .unwrap();
    let t = &c.targets[0];
    assert!(
        matches!(&t.output, crate::delivery::outputs::Settings::Nats(n) if n.subject.as_str() == "sessions.{source}.{type}")
    );
    assert_eq!(
        t.shape.format,
        crate::delivery::message::Format::Cloudevents
    );
    assert_eq!(
        t.shape.redact,
        vec![vec!["session", "customer", "phoneNumber"]]
    );
    let amqp = parse(&target(
        "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nexchange = \"sessions\"\nrouting_key = \"{type}\"",
    ))
    .unwrap();
    assert!(matches!(
        &amqp.targets[0].output,
        crate::delivery::outputs::Settings::Amqp(_)
    ));
    let redis = parse(&target(
        "url = \"redis://127.0.0.1:6379/0\"\nstream = \"s\"\nmaxlen = 1000",
    ))
    .unwrap();
    assert!(
        matches!(&redis.targets[0].output, crate::delivery::outputs::Settings::Redis(r) if r.maxlen == Some(1000))
    );

    for (rest, expected) in [
        (
            "url = \"nats://127.0.0.1:4222\"",
            "targets[0].subject`: is required for nats:// targets",
        ),
        (
            "url = \"https://x.example.com\"\nsubject = \"a\"",
            "targets[0].subject`: unknown key (not one a https:// target takes)",
        ),
        (
            "url = \"nats://h:4222\"\nsubject = \"a.{kind}\"",
            "`{kind}` is not a placeholder",
        ),
        (
            "url = \"amqp://h/%2f\"\nexchange = \"x\"",
            "targets[0].routing_key`: is required",
        ),
        (
            "url = \"redis://h/0\"\nstream = \"s\"\nmaxlen = 0",
            "targets[0].maxlen`: must be a whole number greater than 0",
        ),
        (
            "url = \"nats://h:4222\"\nsubject = \"a\"\nheaders = { \"X-A\" = \"b\" }",
            "targets[0].headers`: static headers are for http(s) targets",
        ),
        (
            "url = \"https://x.example.com\"\nredact = [\"session.nope\"]",
            "targets[0].redact[0]",
        ),
        (
            "url = \"https://x.example.com\"\nformat = \"xml\"",
            "format",
        ),
        (
            "url = \"https://x.example.com\"\nsubjekt = \"a\"",
            "targets[0].subjekt`: unknown key",
        ),
    ] {
        let e = error_of(&target(rest));
        assert!(e.contains(expected), "{rest}: {e}");
    }
}

#[test]
fn recordings_stores_are_file_or_s3_with_their_keys() {
    let c = parse(&format!(
        "[recordings]\nstore = \"s3://bucket/some/prefix\"\ns3_endpoint = \"http://127.0.0.1:8333\"\n\
         s3_access_key_id = \"env:PATHORS_TOKEN\"\ns3_secret_access_key = \"env:AGNTIX_SECRET\"\n{SOURCE}"
    ))
    .unwrap();
    let recordings = c.recordings.as_ref().unwrap();
    assert!(
        !recordings.hosts.allow_private_networks && recordings.hosts.allow_hosts.is_empty(),
        "private networks are refused by default"
    );
    assert_eq!(recordings.max_wait, std::time::Duration::from_secs(86_400));
    let store = &recordings.store;
    assert!(
        matches!(store, crate::enrich::settings::StoreConfig::S3 { bucket, prefix, region, .. }
        if bucket == "bucket" && prefix == "some/prefix" && region == "us-east-1")
    );
    assert!(
        !format!("{c:?}").contains("t0ken"),
        "secrets stay out of Debug"
    );
    for (table, expected) in [
        (
            "store = \"file://x\"\ns3_region = \"eu\"",
            "recordings.s3_region`: is for s3:// stores",
        ),
        (
            "store = \"s3://\"",
            "recordings.store`: s3:// needs a bucket",
        ),
        (
            "store = \"s3://b\"\ns3_access_key_id = \"env:PATHORS_TOKEN\"",
            "go together",
        ),
        (
            "store = \"ftp://x\"",
            "must be file://PATH or s3://BUCKET/PREFIX",
        ),
        (
            "store = \"file://x\"\nmax_bytes = 0",
            "recordings.max_bytes",
        ),
        (
            "store = \"file://x\"\nmax_wait = \"90d\"",
            "recordings.max_wait`: `90d` is out of range: from 60s to 2592000s",
        ),
        (
            "store = \"file://x\"\nattempt_timeout = \"0s\"",
            "recordings.attempt_timeout`: must be greater than 0",
        ),
        (
            "store = \"file://x\"\nlease = \"1s\"",
            "recordings.lease`: `1s` is out of range",
        ),
        (
            "store = \"file://x\"\nallow_hosts = [\"ok.example\", \"http://x/\"]",
            "recordings.allow_hosts[1]`: `http://x/` is not a host name",
        ),
    ] {
        let e = error_of(&format!("[recordings]\n{table}\n{SOURCE}"));
        assert!(e.contains(expected), "{table}: {e}");
    }
}

#[test]
fn transcripts_keys_have_ranges() {
    let agntix = |t: &str| {
        format!(
            "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = {{ kind = \"svix\", secrets = [\"env:AGNTIX_SECRET\"] }}\n\
             transcripts = {{ api_url = \"https://app.agntix.example\", api_key = \"env:PATHORS_TOKEN\"{t} }}"
        )
    };
    let c = parse(&agntix("")).unwrap();
    let t = c.sources[0].transcripts.as_ref().unwrap();
    assert_eq!(
        (t.max_bytes, t.wait.as_millis()),
        (16 * 1024 * 1024, 30_000)
    );
    for (extra, expected) in [
        (
            ", max_bytes = 10",
            "sources[0].transcripts.max_bytes`: 10 is out of range: from 1024 to 1073741824",
        ),
        (
            ", wait_ms = 0",
            "sources[0].transcripts.wait_ms`: 0 is out of range",
        ),
        (
            ", wait_ms = 9223372036854775807",
            "sources[0].transcripts.wait_ms`",
        ),
    ] {
        let e = error_of(&agntix(extra));
        assert!(e.contains(expected), "{extra}: {e}");
    }
}

#[test]
fn every_numeric_key_is_held_to_its_range() {
    let huge = "9223372036854775807";
    for (table, expected) in [
        (
            "[delivery]\nmax_in_flight = 2305843009213693953".into(),
            "delivery.max_in_flight`: 2305843009213693953 is out of range: from 1 to 100000",
        ),
        (
            format!("[delivery]\nbackoff_initial_ms = {huge}\nbackoff_max_ms = {huge}"),
            "delivery.backoff_initial_ms`: 9223372036854775807 is out of range: from 1 to 604800000",
        ),
        (
            format!("[delivery]\nbackoff_max_ms = {huge}"),
            "delivery.backoff_max_ms`: 9223372036854775807 is out of range",
        ),
        (
            format!("[delivery]\ntimeout_ms = {huge}"),
            "delivery.timeout_ms`: 9223372036854775807 is out of range: from 1 to 3600000",
        ),
        (
            "[delivery]\nmax_attempts = 1000000".into(),
            "delivery.max_attempts`: 1000000 is out of range: from 1 to 1000",
        ),
        (
            "[delivery]\nbackoff_multiplier = 1e300".into(),
            "delivery.backoff_multiplier`",
        ),
        (
            format!("[delivery]\nlease_ms = {huge}"),
            "delivery.lease_ms`: 9223372036854775807 is out of range",
        ),
        (
            format!("[server]\nbody_timeout_ms = {huge}"),
            "server.body_timeout_ms`",
        ),
        (
            format!("[server]\nheader_timeout_ms = {huge}"),
            "server.header_timeout_ms`",
        ),
        (
            format!("[server]\nshutdown_timeout_ms = {huge}"),
            "server.shutdown_timeout_ms`",
        ),
        (
            "[server]\nworkers = 100000".into(),
            "server.workers`: 100000 is out of range: from 1 to 1024",
        ),
        (
            "[server]\nmax_connections = 0".into(),
            "server.max_connections`: 0 is out of range: from 1 to 1000000",
        ),
        (
            "[server]\nmax_body_bytes = 2000000000\nmax_body_bytes_in_flight = 4000000000".into(),
            "server.max_body_bytes`",
        ),
        (
            "[storage]\npool_size = 100000\nurl = \"postgres://u@h/d\"".into(),
            "storage.pool_size`: 100000 is out of range: from 1 to 1024",
        ),
        (
            "[retention]\nmax_age = \"99999999d\"".into(),
            "retention.max_age`: `99999999d` is out of range",
        ),
        (
            "[retention]\nmax_age = \"30d\"\ninterval = \"400d\"".into(),
            "retention.interval`: `400d` is out of range",
        ),
        (
            format!("[[targets]]\nname = \"t\"\nurl = \"http://x/\"\ntimeout_ms = {huge}"),
            "targets[0].timeout_ms`",
        ),
        (
            format!(
                "[[sources]]\nname = \"a\"\nvendor = \"agntix\"\nauth = {{ kind = \"svix\", secrets = [\"env:AGNTIX_SECRET\"], tolerance_seconds = {huge} }}"
            ),
            "sources[0].auth.tolerance_seconds`: 9223372036854775807 is out of range: from 1 to 86400",
        ),
    ] {
        let e = error_of(&format!("{table}\n{SOURCE}"));
        assert!(e.contains(expected), "{table}: {e}");
    }
}

#[test]
fn check_config_names_every_problem_with_its_key_and_the_valid_words() {
    let toml = "[server]\nmax_connections = \"many\"\n[delivery]\nmax_atempts = 3\n\
                [[sources]]\nname = \"x\"\nvendor = \"agnitx\"\nauth = { kind = \"none\" }\n\
                [[targets]]\nname = \"t\"\nurl = \"http://127.0.0.1:1/\"\nformat = \"cloudevent\"\n\
                [storage]\nsynchronous = \"fsync\"\n";
    let e = error_of(toml);
    for expected in [
        "`server.max_connections`: invalid type: string \"many\", expected an integer",
        "`delivery.max_atempts`: unknown key",
        "`sources[0].vendor`: `agnitx` is not one of: pathors, agntix",
        "`targets[0].format`: `cloudevent` is not one of: canonical, cloudevents",
        "`storage.synchronous`: `fsync` is not one of: full, normal",
    ] {
        assert!(e.contains(expected), "{expected} in\n{e}");
    }
    assert!(
        !e.contains("cannot load"),
        "one type error hides nothing: {e}"
    );
}

#[test]
fn a_bad_key_from_the_environment_names_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, SOURCE).unwrap();
    let vars = [(
        "SESSIONGATE__DELIVERY__MAX_ATEMPTS".to_owned(),
        "3".to_owned(),
    )]
    .into_iter()
    .collect();
    let e = Config::load_with_env(&path, vars, &env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`delivery.max_atempts`: unknown key (set by the environment variable SESSIONGATE__DELIVERY__MAX_ATEMPTS)"),
        "{e}"
    );
}

#[test]
fn an_authorization_value_without_a_scheme_is_warned_of() {
    let bare = "[[sources]]\nname = \"p\"\nvendor = \"pathors\"\nauth = { kind = \"header\", header = \"Authorization\", value = \"env:PATHORS_TOKEN\" }\n";
    let c = Config::from_toml(bare, &|_| Some("t0ken-without-scheme".into())).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("sources[0].auth.value") && w.contains("Bearer <token>")),
        "{:?}",
        c.warnings
    );
    let with_scheme = Config::from_toml(bare, &|_| Some("Bearer t0ken".into())).unwrap();
    assert!(
        !with_scheme.warnings.iter().any(|w| w.contains("scheme")),
        "{:?}",
        with_scheme.warnings
    );
}

#[test]
fn the_signature_kinds_of_the_voice_platforms_are_checked_when_read() {
    let source = |auth: &str| {
        format!("[[sources]]\nname = \"v\"\nvendor = \"pathors\"\nauth = {{ {auth} }}\n")
    };
    for ok in [
        "kind = \"retell\", api_key = \"env:PATHORS_TOKEN\"",
        "kind = \"elevenlabs\", secret = \"env:PATHORS_TOKEN\"",
        "kind = \"hmac\", secret = \"env:PATHORS_TOKEN\", header = \"X-Webhook-Signature\"",
        "kind = \"hmac\", secret = \"env:PATHORS_TOKEN\", algorithm = \"sha512\", header = \"x-signature\", timestamp_header = \"x-timestamp\", payload = \"{timestamp}.{body}\", encoding = \"base64\", prefix = \"sha512=\"",
    ] {
        let c = parse(&source(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert!(
            !format!("{:?}", c.sources).contains("t0ken"),
            "no secret in Debug"
        );
    }
    for (auth, expected) in [
        (
            "kind = \"hmac\", secret = \"s\", header = \"x-sig\", payload = \"{timestamp}\", timestamp_header = \"x-t\"",
            "sources[0].auth.payload`: must contain {body}",
        ),
        (
            "kind = \"hmac\", secret = \"s\", header = \"x-sig\", payload = \"{timestamp}.{body}\"",
            "sources[0].auth.payload`: uses {timestamp}, so timestamp_header",
        ),
        (
            "kind = \"hmac\", secret = \"s\", header = \"x-sig\", payload = \"{url}{body}\"",
            "uses {url}, so public_url",
        ),
        (
            "kind = \"hmac\", secret = \"s\", header = \"x-sig\", payload = \"{bodi}\"",
            "`{bodi}` is not a placeholder",
        ),
        (
            "kind = \"hmac\", secret = \"s\", header = \"x-sig\", algorithm = \"md5\"",
            "sources[0].auth.algorithm`: `md5` is not one of: sha256, sha512, sha1",
        ),
        (
            "kind = \"hmac\", secret = \"s\", header = \"x-sig\", encoding = \"b32\"",
            "sources[0].auth.encoding`: `b32` is not one of: hex, base64",
        ),
        (
            "kind = \"hmac\", secret = \"@@@\", header = \"x-sig\", secret_base64 = true",
            "sources[0].auth.secret`: is not base64",
        ),
        (
            "kind = \"hmac\", secret = \"s\", header = \"bad header\"",
            "sources[0].auth.header`",
        ),
        (
            "kind = \"retell\", api_key = \"\"",
            "sources[0].auth.api_key",
        ),
        (
            "kind = \"elevenlabs\", secret = \"s\", tolerance_seconds = 0",
            "sources[0].auth.tolerance_seconds`: 0 is out of range",
        ),
    ] {
        let e = error_of(&source(auth));
        assert!(e.contains(expected), "{auth}: {e}");
    }
}

#[test]
fn a_sources_body_limit_fits_its_half_of_the_budget() {
    let source = |limit: u64| {
        format!(
            "[[sources]]\nname = \"e\"\nvendor = \"pathors\"\nmax_body_bytes = {limit}\nauth = {{ kind = \"none\" }}\n"
        )
    };
    let c = parse(&source(33_554_432)).unwrap();
    assert_eq!(c.sources[0].max_body_bytes, Some(33_554_432));
    let e = error_of(&source(40_000_000));
    assert!(e.contains("sources[0].max_body_bytes`: 40000000 is more than half of server.max_body_bytes_in_flight"), "{e}");
    assert!(error_of(&source(0)).contains("sources[0].max_body_bytes`: 0 is out of range"));
}

#[test]
fn finalize_wait_defaults_to_the_vendors_and_is_refused_where_nothing_waits() {
    let source = |vendor: &str, extra: &str| {
        format!(
            "[[sources]]\nname = \"s\"\nvendor = \"{vendor}\"\nauth = {{ kind = \"none\" }}\n{extra}\n"
        )
    };
    let wait =
        |vendor: &str, extra: &str| parse(&source(vendor, extra)).unwrap().sources[0].finalize_wait;
    assert_eq!(wait("retell", ""), Some(Duration::from_secs(900)));
    assert_eq!(
        wait("retell", "finalize_wait = \"0s\""),
        Some(Duration::ZERO)
    );
    assert_eq!(wait("vapi", ""), None);
    assert_eq!(
        wait("vapi", "finalize_wait = \"10m\""),
        Some(Duration::from_secs(600))
    );
    for vendor in ["agntix", "elevenlabs"] {
        let e = error_of(&source(vendor, "finalize_wait = \"1m\""));
        assert!(
            e.contains("sources[0].finalize_wait`: a") && e.contains("nothing to wait for"),
            "{e}"
        );
    }
    let e = error_of(&source("retell", "finalize_wait = \"30d\""));
    assert!(e.contains("sources[0].finalize_wait`"), "{e}");
}

#[test]
fn a_twilio_source_names_its_url_and_keeps_its_secrets_secret() {
    let source = |url: &str, extra: &str| {
        format!(
            "[[sources]]\nname = \"tw\"\nvendor = \"twilio\"\n\
             auth = {{ kind = \"twilio\", auth_token = \"tok-secret-twilio\", public_url = \"{url}\" }}\n{extra}\n"
        )
    };
    let c = parse(&source(
        "https://gw.example.com/ingest/tw#rc=3",
        "recordings_auth = { username = \"AC1\", password = \"pw-secret-twilio\" }",
    ))
    .unwrap();
    let s = &c.sources[0];
    let described = s.auth.describe();
    assert_eq!(
        described,
        "twilio (X-Twilio-Signature over https://gw.example.com/ingest/tw)"
    );
    assert_eq!(
        s.finalize_wait,
        Some(Duration::ZERO),
        "the end finalizes at once"
    );
    let auth = s.recordings_auth.as_ref().unwrap();
    assert_eq!(auth.username, "AC1");
    assert!(!format!("{auth:?}").contains("pw-secret-twilio"));
    for (url, extra, expected) in [
        ("gw.example.com/x", "", "sources[0].auth.public_url`"),
        ("ftp://gw.example.com/x", "", "sources[0].auth.public_url`"),
        (
            "https://gw.example.com/x",
            "recordings_auth = { username = \"AC1\" }",
            "password",
        ),
    ] {
        let e = error_of(&source(url, extra));
        assert!(e.contains(expected), "{url} {extra}: {e}");
    }
}

#[test]
fn a_mapped_vendor_needs_its_mapping_and_only_it_has_one() {
    let mapping = "[sources.mapping]\nevent = \"/type\"\nsession_id = \"/id\"\n\
                   occurred_at = \"/at\"\ndedup = [\"/type\", \"/id\"]\n\
                   events = { \"done\" = [\"session.ended\", \"session.finalized\"] }\n";
    let source = |vendor: &str, tail: &str| {
        format!(
            "[[sources]]\nname = \"acme\"\nvendor = \"{vendor}\"\nauth = {{ kind = \"none\" }}\n{tail}"
        )
    };
    let c = parse(&source("mapped", mapping)).unwrap();
    assert!(c.sources[0].mapping.is_some());
    let e = error_of(&source("mapped", ""));
    assert!(
        e.contains("sources[0].mapping`: a mapped vendor needs [sources.mapping]"),
        "{e}"
    );
    let e = error_of(&source("pathors", mapping));
    assert!(
        e.contains("sources[0].mapping`: is for vendor = \"mapped\""),
        "{e}"
    );
    let e = error_of(&source("mapped", &mapping.replace("\"/at\"", "\"at\"")));
    assert!(e.contains("sources[0].mapping.occurred_at`"), "{e}");
    let e = error_of(&source(
        "mapped",
        &format!("{mapping}[sources.mapping.fields]\n\"session.call.outcomes\" = \"/x\"\n"),
    ));
    assert!(e.contains("has no field `session.call.outcomes`"), "{e}");
}

#[test]
fn a_key_beside_kind_none_is_unknown_too() {
    let e = error_of(
        "[[sources]]\nname = \"x\"\nvendor = \"pathors\"\nauth = { kind = \"none\", value = \"meant-a-header\" }\n",
    );
    assert!(e.contains("`sources[0].auth.value`: unknown key"), "{e}");
}

#[test]
fn recover_is_for_the_vendors_with_a_list_api_and_checks_its_keys() {
    let source = |vendor: &str, recover: &str| {
        format!(
            "[[sources]]\nname = \"s\"\nvendor = \"{vendor}\"\nauth = {{ kind = \"none\" }}\nrecover = {recover}\n"
        )
    };
    let config = parse(&source(
        "retell",
        r#"{ api_key = "env:PATHORS_TOKEN", interval = "1m" }"#,
    ))
    .unwrap();
    let recover = config.sources[0].recover.as_ref().unwrap();
    assert_eq!(recover.api_url.as_str(), "https://api.retellai.com/");
    assert_eq!(recover.interval, Duration::from_secs(60));
    assert_eq!(recover.lookback, Duration::from_secs(86_400), "the default");
    assert!(
        !format!("{recover:?}").contains("t0ken"),
        "the key is secret"
    );
    for vendor in ["pathors", "agntix"] {
        let e = error_of(&source(vendor, r#"{ api_key = "k" }"#));
        assert!(
            e.contains("sources[0].recover`")
                && e.contains("publishes no API that lists its calls"),
            "{e}"
        );
    }
    let e = error_of(&source("twilio", r#"{ api_key = "k" }"#));
    assert!(
        e.contains("sources[0].recover.account_sid`") && e.contains("per account"),
        "{e}"
    );
    let e = error_of(&source("vapi", r#"{ api_key = "k", account_sid = "AC1" }"#));
    assert!(
        e.contains("sources[0].recover.account_sid`: is for Twilio"),
        "{e}"
    );
    let e = error_of(&source("bland", r#"{ api_key = "k", interval = "0s" }"#));
    assert!(e.contains("sources[0].recover.interval`"), "{e}");
    let e = error_of(&source(
        "bland",
        r#"{ api_key = "k", api_url = "ftp://x" }"#,
    ));
    assert!(e.contains("sources[0].recover.api_url`"), "{e}");
    let e = error_of(&source("bland", r#"{ api_key = "env:NOPE" }"#));
    assert!(e.contains("sources[0].recover.api_key`"), "{e}");
}
