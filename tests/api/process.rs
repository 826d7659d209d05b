//! The `sessiongate` binary as an operator runs it: check-config exit codes, JSON logs,
//! SIGTERM draining in-flight deliveries, and no secret in logs at any level.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sessiongate::store::settings::Synchronous;
use sessiongate::store::sqlite::SqliteStore;
use sessiongate::store::{DeliveryFilter, DeliveryStatus, Store};

use crate::helpers::*;

fn config(db: &std::path::Path, target_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
shutdown_timeout_ms = 10000
[storage]
url = "sqlite://{db}"
[[sources]]
name = "pathors"
vendor = "pathors"
auth = {{ kind = "header", header = "Authorization", value = "env:TEST_PATHORS_TOKEN" }}
[[sources]]
name = "agntix"
vendor = "agntix"
auth = {{ kind = "svix", secrets = ["env:TEST_AGNTIX_SECRET"] }}
[[targets]]
name = "crm"
url = "{target_url}"
secret = "env:TEST_TARGET_SECRET"
"#,
        db = db.display()
    )
}

#[test]
fn check_config_exits_0_for_a_valid_file_and_1_naming_the_key_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        config(&dir.path().join("x.db"), "http://127.0.0.1:9/x"),
    )
    .unwrap();
    let ok = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("TEST_PATHORS_TOKEN", "t")
        .env("TEST_AGNTIX_SECRET", AGNTIX_SECRET)
        .env("TEST_TARGET_SECRET", TARGET_SECRET)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("pathors") && out.contains("crm") && out.contains("signed"),
        "{out}"
    );
    assert!(!out.contains(AGNTIX_SECRET) && !out.contains(TARGET_SECRET));
    assert!(
        out.contains("admin API and console: off (no server.admin_token)"),
        "where the admin API and console are: {out}"
    );

    // With an admin token and listener, check-config says where the console is.
    let admin = dir.path().join("admin.toml");
    std::fs::write(
        &admin,
        config(&dir.path().join("x.db"), "http://127.0.0.1:9/x").replace(
            "[server]\n",
            "[server]\nadmin_token = \"env:TEST_ADMIN\"\nadmin_listen = \"0.0.0.0:9191\"\n",
        ),
    )
    .unwrap();
    let with_admin = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&admin)
        .env("TEST_PATHORS_TOKEN", "t")
        .env("TEST_AGNTIX_SECRET", AGNTIX_SECRET)
        .env("TEST_TARGET_SECRET", TARGET_SECRET)
        .env("TEST_ADMIN", "an-admin-token-of-24-bytes-or-more")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&with_admin.stdout);
    assert!(
        with_admin.status.success(),
        "{}",
        String::from_utf8_lossy(&with_admin.stderr)
    );
    assert!(
        out.contains("admin API, console and /metrics: 0.0.0.0:9191 (own listener)"),
        "{out}"
    );
    assert!(
        out.contains("console: http://127.0.0.1:9191/console"),
        "{out}"
    );

    // A voice platform's source: its signature scheme, body limit and finalize wait.
    let voice = dir.path().join("voice.toml");
    std::fs::write(
        &voice,
        config(&dir.path().join("x.db"), "http://127.0.0.1:9/x").replacen(
            "[[sources]]",
            "[[sources]]\nname = \"retell\"\nvendor = \"retell\"\n\
             auth = { kind = \"retell\", api_key = \"env:TEST_RETELL_KEY\" }\n\
             max_body_bytes = 1048576\nfinalize_wait = \"5m\"\n\n[[sources]]",
            1,
        ),
    )
    .unwrap();
    let voice = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&voice)
        .env("TEST_PATHORS_TOKEN", "t")
        .env("TEST_AGNTIX_SECRET", AGNTIX_SECRET)
        .env("TEST_TARGET_SECRET", TARGET_SECRET)
        .env("TEST_RETELL_KEY", "key_check_config_retell")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&voice.stdout);
    assert!(
        voice.status.success(),
        "{}",
        String::from_utf8_lossy(&voice.stderr)
    );
    let line = out
        .lines()
        .find(|l| l.contains("vendor retell"))
        .expect(&out);
    assert!(
        line.contains("auth: retell (x-retell-signature, tolerance 300 s)"),
        "{line}"
    );
    assert!(line.contains("bodies up to 1048576 bytes"), "{line}");
    assert!(
        line.contains("session.finalized 300 s after the end at the latest"),
        "{line}"
    );
    assert!(!out.contains("key_check_config_retell"));

    let missing_env = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("TEST_AGNTIX_SECRET")
        .env("TEST_PATHORS_TOKEN", "t")
        .env("TEST_TARGET_SECRET", TARGET_SECRET)
        .output()
        .unwrap();
    assert_eq!(missing_env.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing_env.stderr);
    assert!(
        err.contains("sources[1].auth.secrets[0]") && err.contains("TEST_AGNTIX_SECRET"),
        "{err}"
    );

    // The environment overrides the file, and is checked like it.
    let overridden = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("TEST_PATHORS_TOKEN", "t")
        .env("TEST_AGNTIX_SECRET", AGNTIX_SECRET)
        .env("TEST_TARGET_SECRET", TARGET_SECRET)
        .env("SESSIONGATE__DELIVERY__MAX_ATTEMPTS", "0")
        .output()
        .unwrap();
    assert_eq!(overridden.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&overridden.stderr).contains("delivery.max_attempts"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_exits_0_and_logs_no_secret() {
    let receiver = TestReceiver::start().await;
    receiver.answer(Reply {
        status: 200,
        delay: Duration::from_millis(700),
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gate.db");
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, config(&db, &receiver.url("/hook"))).unwrap();
    let pathors_token = "Bearer pathors-token-that-must-not-leak";

    let mut gateway = GatewayProcess::start(
        &path,
        &[
            ("RUST_LOG", "trace"),
            ("TEST_PATHORS_TOKEN", pathors_token),
            ("TEST_AGNTIX_SECRET", AGNTIX_SECRET),
            ("TEST_TARGET_SECRET", TARGET_SECRET),
        ],
    );
    let address = gateway.address.clone();

    let client = reqwest::Client::new();
    let pathors = client
        .post(format!("http://{address}/ingest/pathors"))
        .header("authorization", pathors_token)
        .body(fixture("pathors", "session-ended.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(pathors.status().as_u16(), 202);
    let body = fixture("agntix", "session-created.json");
    let signed = svix_headers(AGNTIX_SECRET, "msg_process", unix_now(), &body);
    let mut request = client
        .post(format!("http://{address}/ingest/agntix"))
        .body(body);
    for (name, value) in &signed {
        request = request.header(*name, value);
    }
    assert_eq!(request.send().await.unwrap().status().as_u16(), 202);
    let wrong = client
        .post(format!("http://{address}/ingest/pathors"))
        .header("authorization", "Bearer wrong-token-also-secret")
        .body(fixture("pathors", "call-ended.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);

    // Both deliveries are in flight at the receiver (answering after 700 ms) when SIGTERM comes.
    let got = receiver.wait_for(2).await;
    let killed = Command::new("kill")
        .args(["-TERM", &gateway.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::block_in_place(|| gateway.child.wait()).unwrap();
    assert!(status.success(), "exit status {status:?}");
    let log = gateway.drain_log().to_vec();

    // The drained attempts were recorded before exit: nothing is left to repeat.
    let store = SqliteStore::open(&db, Synchronous::Full).await.unwrap();
    let delivered = store
        .deliveries(DeliveryFilter {
            status: Some(DeliveryStatus::Delivered),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        delivered.len(),
        2,
        "in-flight deliveries finished during shutdown"
    );

    let text = log.join("\n");
    assert!(text.contains("Stopped"), "{text}");
    assert!(
        log.iter()
            .any(|l| l.contains(r#""level":"TRACE""#) || l.contains(r#""level":"DEBUG""#)),
        "the secret check must run against verbose logs"
    );
    for line in &log {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not a JSON log line: {line}"
        );
    }
    let signatures: Vec<String> = got
        .iter()
        .map(|g| g.header("webhook-signature").to_owned())
        .collect();
    let forbidden = [
        pathors_token,
        "pathors-token-that-must-not-leak",
        "wrong-token-also-secret",
        AGNTIX_SECRET.trim_start_matches("whsec_"),
        TARGET_SECRET.trim_start_matches("whsec_"),
        signed[2].1.trim_start_matches("v1,"),
        signatures[0].trim_start_matches("v1,"),
        signatures[1].trim_start_matches("v1,"),
    ];
    for secret in forbidden {
        assert!(
            !text.contains(secret),
            "a secret appears in the logs: {secret}"
        );
    }
}

#[test]
fn demo_runs_the_whole_pipeline_and_exits_0() {
    let out = Command::new(BIN)
        .arg("demo")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("The receiver got 23 events:"), "{stdout}");
    assert_eq!(stdout.matches("signature verified").count(), 23, "{stdout}");
    assert!(!stdout.contains("INVALID"));
    assert_eq!(
        stdout.matches("200 duplicate").count(),
        3,
        "a re-delivery, a Svix retry and a Retell retry: {stdout}"
    );
    assert!(
        stdout.contains("One session.finalized per session (8 sessions)"),
        "{stdout}"
    );
    // The pretty-printed record is the merged one: endedAt came from session.ended.
    let json_start = stdout.find("\n{").expect("a pretty-printed event");
    let event: Value = serde_json::Deserializer::from_str(&stdout[json_start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    // The Agntix session.finalized carries the transcript the gateway fetched.
    assert!(
        stdout.contains("session.transcript\n(complete):"),
        "{stdout}"
    );
    assert!(
        stdout.contains("assistant Done: you are booked"),
        "{stdout}"
    );
    // Each voice platform's call went in signed its vendor's way and was finalized once.
    for vendor in ["retell", "vapi", "elevenlabs", "bland", "twilio"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("session.finalized") && l.contains(&format!(" {vendor} "))),
            "{vendor}: {stdout}"
        );
    }
    // It ends saying that order is not a promise, and how to run the gateway for real.
    assert!(
        stdout.contains("Receivers must not\nrely on order"),
        "{stdout}"
    );
    assert!(stdout.contains("de-duplicate on the event id"), "{stdout}");
    assert!(
        stdout.contains("cargo run -- serve --config config/dev.toml"),
        "{stdout}"
    );
    assert!(stdout.contains("check-config"), "{stdout}");
    assert_eq!(event["type"], "session.finalized");
    assert_eq!(event["session"]["endedAt"], "2026-05-03T08:42:11.512Z");
    assert_eq!(event["session"]["call"]["outcome"], "completed");
    assert!(
        out.stderr.is_empty(),
        "no warnings on a clean run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
