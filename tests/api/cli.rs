//! `sessiongate admin deliveries|retry|replay`: the binary, against a running gateway,
//! with the admin address and token from `--config`.

use std::process::Command;

use serde_json::Value;
use sessiongate::store::DeliveryStatus;

use crate::helpers::*;

struct Cli {
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Cli {
    /// A configuration file describing a gateway whose admin API answers on `admin_port`.
    fn for_gateway(options: Options, admin_port: u16) -> Cli {
        Cli::for_address(options, &format!("127.0.0.1:{admin_port}"))
    }

    fn for_address(mut options: Options, admin_listen: &str) -> Cli {
        let dir = tempfile::tempdir().unwrap();
        options.server_extra = format!("admin_listen = \"{admin_listen}\"");
        let config = dir.path().join("cli.toml");
        std::fs::write(&config, options.toml(&dir.path().join("unused.db"))).unwrap();
        Cli { config, _dir: dir }
    }

    async fn run(&self, args: &[&str]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sessiongate"));
        command
            .arg("admin")
            .args(args)
            .arg("--config")
            .arg(&self.config);
        for name in SECRET_ENV {
            command.env(name, secret_env(name).unwrap());
        }
        output(command).await
    }
}

async fn output(mut command: Command) -> Run {
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn options(receiver: &TestReceiver) -> Options {
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\n",
        receiver.url("/crm")
    ));
    options.max_attempts = 1;
    options
}

#[tokio::test]
async fn deliveries_retry_and_replay_from_the_command_line() {
    let receiver = TestReceiver::start().await;
    receiver.answer(Reply::status(500));
    let mut served = options(&receiver);
    served.server_extra = "admin_listen = \"127.0.0.1:0\"".into();
    let app = spawn_app_with(served, None).await;
    let port: u16 = app
        .admin_address
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let cli = Cli::for_gateway(options(&receiver), port);

    let accepted: Value = app
        .post_pathors(&fixture("pathors", "call-ended.json"))
        .await
        .json()
        .await
        .unwrap();
    let event_id = accepted["id"].as_str().unwrap().to_owned();
    let dead = app.wait_for_deliveries(DeliveryStatus::Dead, 1).await;

    let listed = cli.run(&["deliveries", "--status", "dead"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let lines: Vec<&str> = listed.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", listed.stdout);
    assert!(lines[0].contains("TARGET") && lines[0].contains("LAST"));
    let row: Vec<&str> = lines[1].split("  ").filter(|c| !c.is_empty()).collect();
    assert_eq!(
        row.iter().map(|c| c.trim()).collect::<Vec<_>>(),
        [
            dead[0].id.as_str(),
            "crm",
            "dead",
            "1",
            "HTTP 500",
            &event_id
        ]
    );

    // One delivery, a page of one: nothing follows, so no cursor is offered.
    let one = cli.run(&["deliveries", "--limit", "1"]).await;
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert!(!one.stdout.contains("more:"), "{}", one.stdout);

    let as_json = cli.run(&["deliveries", "--json", "--target", "crm"]).await;
    assert_eq!(as_json.code, 0, "{}", as_json.stderr);
    let page: Value = serde_json::from_str(&as_json.stdout).unwrap();
    assert_eq!(page["deliveries"][0]["id"], dead[0].id.as_str());

    let missing = cli.run(&["retry", "dlv_nope"]).await;
    assert_eq!(missing.code, 1);
    assert_eq!(
        missing.stderr.trim(),
        "error: 404 not_found: no delivery dlv_nope"
    );
    let bad = cli.run(&["deliveries", "--status", "lost"]).await;
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("unknown status `lost`"),
        "{}",
        bad.stderr
    );

    receiver.answer(Reply::status(200));
    let retried = cli.run(&["retry", "--dead", "--target", "crm"]).await;
    assert_eq!(retried.code, 0, "{}", retried.stderr);
    assert_eq!(retried.stdout, "retried 1 dead deliveries of target crm\n");
    app.wait_for_deliveries(DeliveryStatus::Delivered, 1).await;
    let again = cli.run(&["retry", dead[0].id.as_str()]).await;
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("409 conflict"), "{}", again.stderr);

    let replayed = cli.run(&["replay", &event_id, "--target", "crm"]).await;
    assert_eq!(replayed.code, 0, "{}", replayed.stderr);
    assert!(
        replayed
            .stdout
            .starts_with(&format!("replaying {event_id} as 1 new deliveries: dlv_")),
        "{}",
        replayed.stdout
    );
    let got = receiver.wait_for(3).await;
    assert!(got.iter().all(|g| g.json()["id"] == event_id.as_str()));
}

#[tokio::test]
async fn a_gateway_out_of_reach_or_without_an_admin_api_is_a_readable_error() {
    let receiver = TestReceiver::start().await;
    // A refused port: asked for on 127.0.0.2 while held on 127.0.0.1, so that no parallel
    // test's server can take it meanwhile.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let refused = Cli::for_address(options(&receiver), &format!("127.0.0.2:{port}"));
    let out = refused.run(&["deliveries"]).await;
    drop(held);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("error: cannot reach the admin API at http://127.0.0.2:"),
        "{}",
        out.stderr
    );

    let mut closed = options(&receiver);
    closed.admin_api = false;
    let closed = Cli::for_gateway(closed, 1);
    let out = closed.run(&["retry", "--dead"]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("server.admin_token is not set"),
        "{}",
        out.stderr
    );
}

/// `sessiongate admin` with an environment of exactly `env` (nothing inherited).
async fn admin_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sessiongate"));
    command.arg("admin").args(args).env_clear();
    for (k, v) in env {
        command.env(k, v);
    }
    output(command).await
}

#[tokio::test]
async fn the_admin_command_needs_only_the_admin_address_and_token() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(options(&receiver), None).await;
    let nowhere = "/nonexistent/sessiongate.toml";

    // --url and --token: no configuration file at all.
    let flags = admin_with(
        &[
            "deliveries",
            "--json",
            "--config",
            nowhere,
            "--url",
            &app.admin_address,
            "--token",
            ADMIN_TOKEN,
        ],
        &[],
    )
    .await;
    assert_eq!(flags.code, 0, "{}", flags.stderr);
    assert!(flags.stdout.contains("\"deliveries\""), "{}", flags.stdout);

    // The same from the environment.
    let from_env = admin_with(
        &["deliveries", "--config", nowhere],
        &[
            ("SESSIONGATE_ADMIN_URL", &app.admin_address),
            ("SESSIONGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    assert_eq!(from_env.code, 0, "{}", from_env.stderr);

    // A production file whose other secrets are not in this environment: only the admin
    // address and token are read from it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prod.toml");
    let port = app.admin_address.rsplit(':').next().unwrap();
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_token = \"env:ONLY_THE_ADMIN_TOKEN\"\n\
             [storage]\nurl = \"env:DATABASE_URL_NOT_HERE\"\n\
             [[sources]]\nname = \"pathors\"\nvendor = \"pathors\"\n\
             auth = {{ kind = \"header\", header = \"Authorization\", value = \"env:NOT_HERE_EITHER\" }}\n"
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let from_file = admin_with(
        &["deliveries", "--config", config],
        &[("ONLY_THE_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    assert_eq!(from_file.code, 0, "{}", from_file.stderr);

    // Nothing to go on: a readable error naming the ways to give it.
    let none = admin_with(&["deliveries", "--config", nowhere], &[]).await;
    assert_eq!(none.code, 2, "{}", none.stderr);
    assert!(none.stderr.contains("--url and --token"), "{}", none.stderr);
    let bad = admin_with(&["deliveries", "--url", "ftp://x", "--token", "t"], &[]).await;
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("is not an http(s) URL"),
        "{}",
        bad.stderr
    );
}

#[tokio::test]
async fn recover_and_backfill_from_the_command_line() {
    let (api, stand_in) = crate::recovery::stand_in();
    let receiver = TestReceiver::start().await;
    receiver.answer(Reply::status(500));
    let bland = crate::recovery::sources(&api, "1h", crate::recovery::RETELL_API_KEY)
        .split("[[sources]]")
        .find(|block| block.contains("vendor = \"bland\""))
        .unwrap()
        .to_owned();
    let with_bland = || {
        let mut options = options(&receiver);
        options.tables = format!("[[sources]]{bland}");
        options
    };
    let mut served = with_bland();
    served.server_extra = "admin_listen = \"127.0.0.1:0\"".into();
    let app = spawn_app_with(served, None).await;
    let port: u16 = app
        .admin_address
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let cli = Cli::for_gateway(with_bland(), port);

    // A delivery that died: not delivered, so a backfill queues it again.
    app.post_pathors(&fixture("pathors", "call-ended.json"))
        .await;
    app.wait_for_deliveries(DeliveryStatus::Dead, 1).await;
    let now = sessiongate::event::Timestamp::now();
    let (since, until) = (
        now.minus(std::time::Duration::from_secs(600)).to_string(),
        now.plus_millis(60_000).to_string(),
    );
    let window = ["--since", since.as_str(), "--until", until.as_str()];
    let dry = cli
        .run(&[&["backfill", "crm"][..], &window, &["--dry-run"]].concat())
        .await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.stdout, "would queue 1 deliveries to crm\n");
    receiver.answer(Reply::status(200));
    let queued = cli.run(&[&["backfill", "crm"][..], &window].concat()).await;
    assert_eq!(
        queued.stdout, "queued 1 deliveries to crm\n",
        "{}",
        queued.stderr
    );
    receiver.wait_for(1).await;

    // Two Bland calls ended a second ago, their webhooks lost.
    for i in 0..2 {
        let id = crate::recovery::call_id("bland", i);
        let ended = now.unix_millis() - 1_000;
        stand_in.add("bland", crate::recovery::call("bland", &id, ended));
    }
    let recovered = cli
        .run(&[&["recover", "bland"][..], &window].concat())
        .await;
    assert_eq!(recovered.code, 0, "{}", recovered.stderr);
    assert_eq!(
        recovered.stdout,
        "bland: the vendor listed 2 calls in the window; 2 recovered\n"
    );
    let refused = cli
        .run(&[&["recover", "pathors"][..], &window].concat())
        .await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("409 conflict"),
        "{}",
        refused.stderr
    );
    let bad = cli
        .run(&["recover", "bland", "--since", "then", "--until", &until])
        .await;
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("400 invalid_request"), "{}", bad.stderr);
    app.stop().await;
}
