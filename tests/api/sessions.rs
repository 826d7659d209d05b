//! The session record and exactly-once `session.finalized`, as a property over arrival orders
//! and repetitions, and under concurrent duplicates.

use std::collections::HashMap;

use serde_json::Value;
use sessiongate::store::DeliveryStatus;

use crate::helpers::*;

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for at in 0..=p.len() {
            let mut q = p.clone();
            q.insert(at, n - 1);
            out.push(q);
        }
    }
    out
}

/// A small deterministic generator, so every run tests the same cases.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % below
    }
}

/// The arrival orders tested for `n` events: every permutation, each sent plain, with every
/// event repeated back to back, and with two random events repeated at random later places.
fn arrival_orders(n: usize, rng: &mut Lcg) -> Vec<Vec<usize>> {
    let mut orders = Vec::new();
    for p in permutations(n) {
        orders.push(p.clone());
        orders.push(p.iter().flat_map(|&i| [i, i]).collect());
        let mut with_repeats = p.clone();
        for _ in 0..2 {
            let event = p[rng.next(n)];
            let first = with_repeats.iter().position(|&i| i == event).unwrap();
            let at = first + 1 + rng.next(with_repeats.len() - first);
            with_repeats.insert(at, event);
        }
        orders.push(with_repeats);
    }
    orders
}

fn with_session(body: &[u8], key: &str, session: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    v[key] = Value::String(session.to_owned());
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn every_arrival_order_merges_to_the_same_record_and_finalizes_once() {
    every_arrival_order(None).await;
}

#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_arrival_order_on_postgres() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    every_arrival_order(Some(url)).await;
}

async fn every_arrival_order(storage_url: Option<String>) {
    let receiver = TestReceiver::start().await;
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"all\"\nurl = \"{}\"\ninclude_raw = false",
        receiver.url("/")
    ));
    options.storage_url = storage_url;
    let app = spawn_app_with(options, None).await;
    let mut rng = Lcg(0x5e55_1047);

    let pathors = [
        "session-ended.json",
        "call-ended.json",
        "recording-ready.json",
        "session-finalized-call.json",
    ]
    .map(|n| fixture("pathors", n));
    let agntix = ["session-created.json", "session-ended.json"].map(|n| fixture("agntix", n));
    let mut cases: Vec<(&str, String)> = Vec::new();
    for (case, order) in arrival_orders(pathors.len(), &mut rng)
        .into_iter()
        .enumerate()
    {
        let session = format!("pathors-case-{case}");
        for i in order {
            let status = app
                .post_pathors(&with_session(&pathors[i], "sessionId", &session))
                .await
                .status()
                .as_u16();
            assert!(status == 202 || status == 200, "{status}");
        }
        cases.push(("pathors", session));
    }
    for (case, order) in arrival_orders(agntix.len(), &mut rng)
        .into_iter()
        .enumerate()
    {
        let session = format!("agntix-case-{case}");
        for i in order {
            let status = app
                .post_agntix(&with_session(&agntix[i], "id", &session))
                .await
                .status()
                .as_u16();
            assert!(status == 202 || status == 200, "{status}");
        }
        cases.push(("agntix", session));
    }
    let pathors_cases = cases.iter().filter(|(v, _)| *v == "pathors").count();
    let agntix_cases = cases.len() - pathors_cases;
    assert_eq!((pathors_cases, agntix_cases), (72, 6));
    println!("property cases: {pathors_cases} Pathors orders, {agntix_cases} Agntix orders");

    // 4 canonical events per Pathors session, 3 per Agntix session, each delivered once.
    let expected = 4 * pathors_cases + 3 * agntix_cases;
    app.wait_for_deliveries(DeliveryStatus::Delivered, expected)
        .await;
    let received = receiver.wait_for(expected).await;
    assert_eq!(received.len(), expected, "duplicates were forwarded");

    let mut finalized: HashMap<String, usize> = HashMap::new();
    for got in &received {
        let event = got.json();
        if event["type"] == "session.finalized" {
            *finalized
                .entry(event["session"]["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let mut reference: HashMap<&str, Value> = HashMap::new();
    for (vendor, session) in &cases {
        assert_eq!(
            finalized.get(session.as_str()),
            Some(&1),
            "{session} finalized once"
        );
        let view: Value = app
            .admin(
                reqwest::Method::GET,
                &format!("/admin/sessions/{vendor}/{session}"),
            )
            .await
            .json()
            .await
            .unwrap();
        let mut record = view["session"].clone();
        assert_eq!(record["id"], session.as_str());
        record["id"] = Value::Null;
        let first = reference.entry(vendor).or_insert_with(|| record.clone());
        assert_eq!(
            &record, first,
            "{session}: the final record depends on arrival order"
        );
    }

    let pathors_record = &reference["pathors"];
    assert_eq!(pathors_record["channel"], "voice");
    assert_eq!(pathors_record["state"], "closed");
    assert_eq!(pathors_record["endedAt"], "2026-05-03T08:42:11.512Z");
    assert_eq!(pathors_record["call"]["outcome"], "completed");
    assert_eq!(pathors_record["recording"]["status"], "ready");
    assert_eq!(pathors_record["messageCount"], 8);
    let agntix_record = &reference["agntix"];
    assert_eq!(agntix_record["state"], "closed");
    assert_eq!(agntix_record["startedAt"], "2026-04-08T05:00:01.130Z");
    assert_eq!(agntix_record["variables"]["crmContactId"], "CRM-7728");
    assert_eq!(
        agntix_record["analysis"]["resolution"]["status"],
        "resolved"
    );
}

#[tokio::test]
async fn each_event_carries_the_record_as_of_that_event() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(format!(
        "[[targets]]\nname = \"all\"\nurl = \"{}\"",
        receiver.url("/")
    ))
    .await;
    // call.ended first, then session.finalized: the finalized event must already carry the
    // call outcome it never stated itself, and the later session.ended adds endedAt.
    let mut finalized: Value =
        serde_json::from_slice(&fixture("pathors", "session-finalized-text.json")).unwrap();
    finalized["sessionId"] = "merge-1".into();
    let mut call: Value = serde_json::from_slice(&fixture("pathors", "call-ended.json")).unwrap();
    call["sessionId"] = "merge-1".into();
    app.post_pathors(call.to_string().as_bytes()).await;
    app.post_pathors(finalized.to_string().as_bytes()).await;

    let got = receiver.wait_for(2).await;
    let event = got
        .iter()
        .map(|g| g.json())
        .find(|e| e["type"] == "session.finalized")
        .unwrap();
    assert_eq!(event["session"]["call"]["vendorStatus"], "userHangup");
    assert_eq!(
        event["session"]["channel"], "voice",
        "voice once any call event was seen"
    );
    assert_eq!(event["session"]["messageCount"], 10);
    let call_event = got
        .iter()
        .map(|g| g.json())
        .find(|e| e["type"] == "call.ended")
        .unwrap();
    assert_eq!(
        call_event["session"]["messageCount"],
        Value::Null,
        "as of that event, not later"
    );
}

#[tokio::test]
async fn concurrent_copies_of_the_final_event_finalize_once() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"session.finalized\"]",
        receiver.url("/")
    ))
    .await;
    let app = std::sync::Arc::new(app);
    let pathors = fixture("pathors", "session-finalized-call.json");
    let agntix = fixture("agntix", "session-ended.json");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let app = app.clone();
        let (pathors, agntix) = (pathors.clone(), agntix.clone());
        tasks.push(tokio::spawn(async move {
            let response = if i % 2 == 0 {
                app.post_pathors(&pathors).await
            } else {
                app.post_agntix(&agntix).await
            };
            response.status().as_u16()
        }));
    }
    let mut statuses = HashMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        statuses.get(&202),
        Some(&2),
        "one accepted per vendor: {statuses:?}"
    );
    assert_eq!(statuses.get(&200), Some(&38), "{statuses:?}");

    app.wait_for_deliveries(DeliveryStatus::Delivered, 2).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|g| g.json()["type"] == "session.finalized"));
    assert_eq!(
        app.deliveries(None).await.len(),
        2,
        "no second finalized was ever queued"
    );
}
