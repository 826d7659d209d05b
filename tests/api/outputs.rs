//! Outputs beyond HTTP, against the real brokers on this machine (NATS JetStream, RabbitMQ,
//! Redis), read back with each broker's own client; and what each target receives
//! (CloudEvents, redaction). Every name a test creates is its own and removed after.

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use sessiongate::store::DeliveryStatus;
use sessiongate::testing::broker;
use svix::webhooks::Webhook;

use crate::helpers::*;

const NATS: &str = "127.0.0.1:4222";
const RABBITMQ: &str = "127.0.0.1:5672";
const REDIS: &str = "127.0.0.1:6379";

fn unique(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

/// Retries every 50–200 ms for long enough to outlast a broker that is set up late.
fn patient(targets: String) -> Options {
    let mut options = Options::with_targets(targets);
    options.max_attempts = 200;
    options.backoff_initial_ms = 50;
    options
}

/// The Standard Webhooks headers of a broker message verify with the svix crate.
fn verify(body: &[u8], header: impl Fn(&str) -> String) {
    let mut headers = http1::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, header(name).parse().unwrap());
    }
    Webhook::new(TARGET_SECRET)
        .unwrap()
        .verify(body, &headers)
        .expect("the message's signature verifies with the svix crate");
}

/// Waits until the one delivery has been attempted at least `n` times.
async fn attempted(app: &TestApp, n: u32) -> sessiongate::store::DeliveryInfo {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let all = app.deliveries(None).await;
        if let Some(d) = all.first().filter(|d| d.attempts >= n) {
            return d.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{all:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn replay(app: &TestApp, event_id: &str) {
    let status = app
        .admin(
            reqwest::Method::POST,
            &format!("/admin/events/{event_id}/replay"),
        )
        .await
        .status();
    assert_eq!(status.as_u16(), 202);
}

async fn jetstream() -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap())
}

async fn create_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    subjects: &str,
) -> async_nats::jetstream::stream::Stream {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects.to_owned()],
        ..Default::default()
    })
    .await
    .unwrap()
}

#[cfg_attr(
    not(sg_brokers),
    ignore = "needs NATS, RabbitMQ and Redis on their ports: set SESSIONGATE_TEST_BROKERS=1"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_takes_each_event_once_signed_and_acknowledged() {
    if !broker("NATS", NATS) {
        return;
    }
    let js = jetstream().await;
    let name = unique("SG");
    let prefix = unique("sgtest.");
    let stream = create_stream(&js, &name, &format!("{prefix}.>")).await;
    let app = spawn_app(format!(
        "[[targets]]\nname = \"bus\"\nurl = \"nats://{NATS}\"\nsubject = \"{prefix}.{{source}}.{{type}}\"\nsecret = \"env:TARGET_SECRET\"\n"
    ))
    .await;
    let accepted: Value = app
        .post_pathors(&call_ended("s-nats"))
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    app.wait_for_deliveries(DeliveryStatus::Delivered, 1).await;

    let message = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        message.subject.as_str(),
        format!("{prefix}.pathors.call.ended")
    );
    let header = |name: &str| {
        message
            .headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header("Nats-Msg-Id"), id);
    assert_eq!(header("content-type"), "application/json");
    let event: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["type"], "call.ended");
    verify(&message.payload, header);

    // A replay is a new delivery of the same event: delivered, and dropped by JetStream's
    // duplicate window, so the stream still holds one message.
    replay(&app, &id).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, 2).await;
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"sessiongate_target_info{target="bus",output="nats"} 1"#),
        "{metrics}"
    );
    let info = js
        .get_stream(&name)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 1);
    js.delete_stream(&name).await.unwrap();
}

#[cfg_attr(
    not(sg_brokers),
    ignore = "needs NATS, RabbitMQ and Redis on their ports: set SESSIONGATE_TEST_BROKERS=1"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_captures_is_retried_until_one_does() {
    if !broker("NATS", NATS) {
        return;
    }
    let prefix = unique("sgtest.");
    let app = spawn_app_with(
        patient(format!(
            "[[targets]]\nname = \"bus\"\nurl = \"nats://{NATS}\"\nsubject = \"{prefix}.{{type}}\"\n"
        )),
        None,
    )
    .await;
    assert_eq!(
        app.post_pathors(&call_ended("s-nostream"))
            .await
            .status()
            .as_u16(),
        202
    );
    let failing = attempted(&app, 2).await;
    assert_eq!(
        failing.status,
        DeliveryStatus::Pending,
        "not delivered without a stream"
    );
    assert!(
        failing
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains(&prefix),
        "{failing:?}"
    );

    let js = jetstream().await;
    let name = unique("SG");
    let stream = create_stream(&js, &name, &format!("{prefix}.>")).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, 1).await;
    assert_eq!(
        stream.get_raw_message(1).await.unwrap().subject.as_str(),
        format!("{prefix}.call.ended")
    );
    js.delete_stream(&name).await.unwrap();
}

/// A TCP relay to NATS on a port of its own that can be stopped, connections and all: a
/// broker outage.
struct Relay {
    task: Option<tokio::task::JoinHandle<()>>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    /// A port on 127.0.0.2, where no other test listens, so nobody takes it meanwhile.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn start(port: u16, to: &'static str) -> Relay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.2", port))
            .await
            .unwrap();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relayed = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _copied =
                            tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                open.lock().unwrap().push(relayed);
            }
        });
        Relay {
            task: Some(task),
            connections,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

#[cfg_attr(
    not(sg_brokers),
    ignore = "needs NATS, RabbitMQ and Redis on their ports: set SESSIONGATE_TEST_BROKERS=1"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_then_up_loses_nothing_and_counts_nothing_early() {
    if !broker("NATS", NATS) {
        return;
    }
    let js = jetstream().await;
    let name = unique("SG");
    let prefix = unique("sgtest.");
    let stream = create_stream(&js, &name, &format!("{prefix}.>")).await;
    // Nothing listens on the port yet: the broker is down.
    let port = Relay::free_port();
    let app = spawn_app_with(
        patient(format!(
            "[[targets]]\nname = \"bus\"\nurl = \"nats://127.0.0.2:{port}\"\nsubject = \"{prefix}.{{type}}\"\n"
        )),
        None,
    )
    .await;
    for i in 0..3 {
        let status = app
            .post_pathors(&call_ended(&format!("s-outage-{i}")))
            .await
            .status();
        assert_eq!(status.as_u16(), 202, "ingest does not wait for the broker");
    }
    attempted(&app, 2).await;
    assert!(
        app.deliveries(Some(DeliveryStatus::Delivered))
            .await
            .is_empty()
    );
    assert_eq!(stream.get_info().await.unwrap().state.messages, 0);

    let _relay = Relay::start(port, NATS).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, 3).await;
    assert_eq!(
        js.get_stream(&name)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .messages,
        3
    );
    js.delete_stream(&name).await.unwrap();
}

#[cfg_attr(
    not(sg_brokers),
    ignore = "needs NATS, RabbitMQ and Redis on their ports: set SESSIONGATE_TEST_BROKERS=1"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_lost_mid_connection_delays_only_its_own_target_and_loses_nothing() {
    if !broker("NATS", NATS) {
        return;
    }
    let js = jetstream().await;
    let name = unique("SG");
    let prefix = unique("sgtest.");
    let stream = create_stream(&js, &name, &format!("{prefix}.>")).await;
    let receiver = TestReceiver::start().await;
    let port = Relay::free_port();
    let relay = Relay::start(port, NATS).await;
    let app = spawn_app_with(
        patient(format!(
            "[[targets]]\nname = \"bus\"\nurl = \"nats://127.0.0.2:{port}\"\nsubject = \"{prefix}.{{type}}\"\n\
             [[targets]]\nname = \"crm\"\nurl = \"{}\"\n",
            receiver.url("/")
        )),
        None,
    )
    .await;
    assert_eq!(
        app.post_pathors(&call_ended("s-before"))
            .await
            .status()
            .as_u16(),
        202
    );
    app.wait_for_deliveries(DeliveryStatus::Delivered, 2).await;

    // The connection drops and nothing answers on the port.
    drop(relay);
    for i in 0..3 {
        let status = app
            .post_pathors(&call_ended(&format!("s-during-{i}")))
            .await
            .status();
        assert_eq!(status.as_u16(), 202);
    }
    // The HTTP target does not wait for the broker.
    receiver.wait_for(4).await;
    assert_eq!(stream.get_info().await.unwrap().state.messages, 1);

    let _relay = Relay::start(port, NATS).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, 8).await;
    // Attempts that timed out while the client buffered may have been published on
    // reconnect as well as retried; JetStream's duplicate window keeps one of each.
    assert_eq!(
        js.get_stream(&name)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .messages,
        4
    );
    js.delete_stream(&name).await.unwrap();
}

async fn rabbit() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(
        &format!("amqp://guest:guest@{RABBITMQ}/%2f"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

#[cfg_attr(
    not(sg_brokers),
    ignore = "needs NATS, RabbitMQ and Redis on their ports: set SESSIONGATE_TEST_BROKERS=1"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_unroutable_is_retried_and_a_confirmed_message_carries_its_properties() {
    if !broker("RabbitMQ", RABBITMQ) {
        return;
    }
    let (_connection, channel) = rabbit().await;
    let exchange = unique("sg.x.");
    let queue = unique("sg.q.");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let app = spawn_app_with(
        patient(format!(
            "[[targets]]\nname = \"rabbit\"\nurl = \"amqp://guest:guest@{RABBITMQ}/%2f\"\nexchange = \"{exchange}\"\nrouting_key = \"{{source}}.{{type}}\"\nsecret = \"env:TARGET_SECRET\"\n"
        )),
        None,
    )
    .await;
    let accepted: Value = app
        .post_pathors(&call_ended("s-rabbit"))
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();

    // Nothing is bound: the broker returns the message, which is not a delivery.
    let failing = attempted(&app, 2).await;
    assert_eq!(failing.status, DeliveryStatus::Pending);
    assert!(
        failing
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("NO_ROUTE"),
        "{failing:?}"
    );

    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "pathors.call.ended".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    app.wait_for_deliveries(DeliveryStatus::Delivered, 1).await;
    let got = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message is in the queue");
    let properties = &got.delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    let headers = properties.headers().clone().unwrap_or_default();
    let header = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {name}: {other:?}"),
    };
    assert_eq!(header("webhook-id"), id);
    verify(&got.delivery.data, header);
    let event: Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(event["id"], id.as_str());

    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

#[cfg_attr(
    not(sg_brokers),
    ignore = "needs NATS, RabbitMQ and Redis on their ports: set SESSIONGATE_TEST_BROKERS=1"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_add_each_event_once_even_when_replayed() {
    if !broker("Redis", REDIS) {
        return;
    }
    let stream = unique("sg:test:");
    let app = spawn_app(format!(
        "[[targets]]\nname = \"stream\"\nurl = \"redis://{REDIS}/0\"\nstream = \"{stream}\"\nmaxlen = 1000\nsecret = \"env:TARGET_SECRET\"\nformat = \"cloudevents\"\n"
    ))
    .await;
    let accepted: Value = app
        .post_pathors(&call_ended("s-redis"))
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    app.wait_for_deliveries(DeliveryStatus::Delivered, 1).await;
    replay(&app, &id).await;
    app.wait_for_deliveries(DeliveryStatus::Delivered, 2).await;

    let client = redis::Client::open(format!("redis://{REDIS}/0")).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "the replay was not added again");
    let fields: std::collections::HashMap<String, Vec<u8>> = entries[0].1.iter().cloned().collect();
    let text = |name: &str| String::from_utf8(fields[name].clone()).unwrap();
    assert_eq!(text("id"), id);
    assert_eq!(text("type"), "call.ended");
    let body = &fields["body"];
    verify(body, text);
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["data"]["id"], id.as_str());
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .arg(format!("{stream}:sessiongate-ids"))
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn cloudevents_over_http_with_redaction_are_signed_as_sent() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(format!(
        "[[targets]]\nname = \"analytics\"\nurl = \"{}\"\nevents = [\"session.ended\"]\nsecret = \"env:TARGET_SECRET\"\nformat = \"cloudevents\"\nredact = [\"session.customer.phoneNumber\", \"raw.metadata.customerPhoneNumber\"]\n\n[[targets]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"session.ended\"]\n",
        receiver.url("/ce"),
        receiver.url("/plain")
    ))
    .await;
    let raw = fixture("agntix", "session-ended.json");
    let sent: Value = serde_json::from_slice(&raw).unwrap();
    let phone = sent["metadata"]["customerPhoneNumber"].clone();
    assert!(phone.is_string(), "the fixture has a phone number");
    assert_eq!(app.post_agntix(&raw).await.status().as_u16(), 202);
    let got = receiver.wait_for(2).await;
    let ce = got.iter().find(|r| r.path == "/ce").unwrap();
    let plain = got.iter().find(|r| r.path == "/plain").unwrap();

    assert_eq!(ce.header("content-type"), "application/cloudevents+json");
    verify(&ce.body, |name| ce.header(name).to_owned());
    let envelope = ce.json();
    let event = plain.json();
    assert_eq!(envelope["specversion"], "1.0");
    assert_eq!(envelope["id"], event["id"]);
    assert_eq!(envelope["type"], "dev.sessiongate.session.ended");
    assert_eq!(envelope["source"], "/sessiongate/sources/agntix");
    assert_eq!(envelope["subject"], sent["id"]);
    assert_eq!(envelope["time"], event["occurredAt"]);
    assert_eq!(envelope["datacontenttype"], "application/json");
    assert_eq!(
        envelope["data"]["session"]["customer"]["phoneNumber"],
        "[redacted]"
    );
    assert_eq!(
        envelope["data"]["raw"]["metadata"]["customerPhoneNumber"],
        "[redacted]"
    );
    assert_eq!(
        envelope["data"]["session"]["id"], event["session"]["id"],
        "the rest stays"
    );
    // Only for that target: the other gets the canonical event, unredacted.
    assert_eq!(event["raw"]["metadata"]["customerPhoneNumber"], phone);
    assert_eq!(event["session"]["customer"]["phoneNumber"], phone);
}

/// The README's redaction example, as written there: what it names never leaves, neither
/// in the canonical session nor in the vendor's payload under `raw`.
#[tokio::test]
async fn the_readmes_redaction_example_leaks_nothing_it_names() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let redact_line = readme
        .lines()
        .find(|l| l.starts_with("redact = ["))
        .expect("the README has a redaction example");
    let receiver = TestReceiver::start().await;
    let app = spawn_app(format!(
        "[[targets]]\nname = \"analytics\"\nurl = \"{}\"\nevents = [\"session.ended\"]\n{redact_line}\n",
        receiver.url("/")
    ))
    .await;
    let raw = fixture("agntix", "session-ended.json");
    let sent: Value = serde_json::from_slice(&raw).unwrap();
    let secrets = [
        sent["metadata"]["customerPhoneNumber"].as_str().unwrap(),
        sent["metadata"]["sessionVariables"]["customerName"]
            .as_str()
            .unwrap(),
        sent["metadata"]["sessionVariables"]["crmContactId"]
            .as_str()
            .unwrap(),
    ];
    assert_eq!(app.post_agntix(&raw).await.status().as_u16(), 202);
    let got = receiver.wait_for(1).await;
    let body = String::from_utf8(got[0].body.to_vec()).unwrap();
    for secret in secrets {
        assert!(!body.contains(secret), "{secret} left in {body}");
    }
    let event = got[0].json();
    assert_eq!(
        event["raw"]["metadata"]["sessionVariables"]["customerName"],
        "[redacted]"
    );
    assert_eq!(
        event["session"]["id"], sent["id"],
        "what is not named stays"
    );
}
