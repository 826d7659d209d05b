//! Recovery from the vendors' list APIs through the real server: a local stand-in serves
//! Retell's, Vapi's, ElevenLabs', Bland's and Twilio's documented list and get endpoints
//! (shapes, pagination, auth headers, error answers, from `../shared/vendor-docs/`) over
//! calls that "happened" while the gateway was down, their webhooks never sent.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use sessiongate::event::Timestamp;
use sessiongate::store::DeliveryStatus;

use crate::helpers::*;

pub const RETELL_API_KEY: &str = "key_retell_api_0123456789";
const RETELL_WEBHOOK_KEY: &str = "key_retell_test_0123456789";
const VAPI_API_KEY: &str = "vapi_private_key_0123";
const ELEVENLABS_API_KEY: &str = "xi_api_key_0123";
const BLAND_API_KEY: &str = "sk-bland-0123";
const TWILIO_ACCOUNT: &str = "AC4f2a6c8e0b1d3f5a7c9e2b4d6f8a0c13";
const TWILIO_TOKEN: &str = "twilio_auth_token_0123";

pub const VENDORS: [&str; 5] = ["retell", "vapi", "elevenlabs", "bland", "twilio"];

fn now_ms() -> i64 {
    Timestamp::now().unix_millis()
}

fn iso(ms: i64) -> String {
    Timestamp::from_unix_millis(ms).to_string()
}

fn rfc2822(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc2822()
}

fn fixture_json(vendor: &str, name: &str) -> Value {
    serde_json::from_slice(&fixture(vendor, name)).unwrap()
}

/// A call of `vendor` that ended at `ended` (unix ms), as its get-call API answers it.
pub fn call(vendor: &str, id: &str, ended: i64) -> Value {
    match vendor {
        "retell" => {
            let mut c = fixture_json("retell", "call-analyzed.json")["call"].clone();
            c["call_id"] = id.into();
            c["start_timestamp"] = (ended - 60_000).into();
            c["end_timestamp"] = ended.into();
            c
        }
        "vapi" => {
            let mut c = fixture_json("vapi", "list-calls-page.json")[0].clone();
            c["id"] = id.into();
            c["createdAt"] = iso(ended - 65_000).into();
            c["startedAt"] = iso(ended - 60_000).into();
            c["endedAt"] = iso(ended).into();
            c["updatedAt"] = iso(ended + 2_000).into();
            c
        }
        "elevenlabs" => {
            let mut c = fixture_json("elevenlabs", "post-call-transcription.json")["data"].clone();
            c["conversation_id"] = id.into();
            c["metadata"]["start_time_unix_secs"] = ((ended - 60_000) / 1000).into();
            c["metadata"]["call_duration_secs"] = 60.into();
            c
        }
        "bland" => {
            let mut c = fixture_json("bland", "post-call.json");
            c["call_id"] = id.into();
            c["c_id"] = id.into();
            c["created_at"] = iso(ended - 61_000).into();
            c["started_at"] = iso(ended - 60_000).into();
            c["call_length"] = 1.0.into();
            c["corrected_duration"] = "60".into();
            c
        }
        "twilio" => {
            let mut c = fixture_json("twilio", "list-calls-page.json")["calls"][0].clone();
            c["sid"] = id.into();
            c["start_time"] = rfc2822(ended - 60_000).into();
            c["end_time"] = rfc2822(ended).into();
            c["duration"] = "60".into();
            c
        }
        other => panic!("no calls of {other}"),
    }
}

/// The id of call `i` of `vendor` (Twilio's are Call SIDs).
pub fn call_id(vendor: &str, i: usize) -> String {
    match vendor {
        "twilio" => format!("CA{i:032x}"),
        _ => format!("{vendor}-call-{i}"),
    }
}

/// A scripted answer the stand-in gives before its real ones: a status and `Retry-After`.
pub type Fault = (u16, Option<u64>);

/// The five vendors' list and get-call APIs over calls held in memory.
#[derive(Default)]
pub struct StandIn {
    /// Per vendor, the calls as its get-call API answers them.
    pub calls: Mutex<HashMap<&'static str, Vec<Arc<Value>>>>,
    /// Twilio recordings by Call SID.
    pub recordings: Mutex<HashMap<String, Value>>,
    pub faults: Mutex<HashMap<&'static str, VecDeque<Fault>>>,
    /// Every request answered, as `vendor path`, with when.
    pub log: Mutex<Vec<(String, Instant)>>,
}

impl StandIn {
    pub fn add(&self, vendor: &'static str, call: Value) {
        self.calls
            .lock()
            .unwrap()
            .entry(vendor)
            .or_default()
            .push(Arc::new(call));
    }

    pub fn fail(&self, vendor: &'static str, faults: &[Fault]) {
        self.faults
            .lock()
            .unwrap()
            .entry(vendor)
            .or_default()
            .extend(faults);
    }

    pub fn requests(&self, vendor: &str) -> Vec<(String, Instant)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(line, _)| line.starts_with(&format!("{vendor} ")))
            .cloned()
            .collect()
    }

    /// The vendor's calls, shared (a list of 10,000 copies none).
    fn calls_of(&self, vendor: &str) -> Vec<Arc<Value>> {
        self.calls
            .lock()
            .unwrap()
            .get(vendor)
            .cloned()
            .unwrap_or_default()
    }
}

/// Starts the stand-in: its base URL (every vendor's `api_url`) and the stand-in.
pub fn stand_in() -> (String, web::Data<StandIn>) {
    let data = web::Data::new(StandIn::default());
    let (address, _handle) = serve(data.clone(), answer);
    (format!("http://{address}"), data)
}

fn query(request: &HttpRequest) -> HashMap<String, String> {
    web::Query::<HashMap<String, String>>::from_query(request.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> &'a str {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn answer(request: HttpRequest, body: web::Bytes, data: web::Data<StandIn>) -> HttpResponse {
    let path = request.path().to_owned();
    let vendor = if path.starts_with("/v3/list-calls") || path.starts_with("/v2/get-call/") {
        "retell"
    } else if path.starts_with("/call") {
        "vapi"
    } else if path.starts_with("/v1/convai/") {
        "elevenlabs"
    } else if path.starts_with("/v1/calls") {
        "bland"
    } else if path.starts_with("/2010-04-01/") {
        "twilio"
    } else {
        return HttpResponse::NotFound().finish();
    };
    use base64::Engine as _;
    let authorized = match vendor {
        "retell" => header(&request, "authorization") == format!("Bearer {RETELL_API_KEY}"),
        "vapi" => header(&request, "authorization") == format!("Bearer {VAPI_API_KEY}"),
        "elevenlabs" => header(&request, "xi-api-key") == ELEVENLABS_API_KEY,
        // Bland's key goes bare.
        "bland" => header(&request, "authorization") == BLAND_API_KEY,
        _ => {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{TWILIO_ACCOUNT}:{TWILIO_TOKEN}"));
            header(&request, "authorization") == format!("Basic {basic}")
                && path.starts_with(&format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/"))
        }
    };
    data.log
        .lock()
        .unwrap()
        .push((format!("{vendor} {path}"), Instant::now()));
    if !authorized {
        return HttpResponse::Unauthorized().json(json!({"error": "invalid api key"}));
    }
    let fault = data
        .faults
        .lock()
        .unwrap()
        .get_mut(vendor)
        .and_then(VecDeque::pop_front);
    if let Some((status, retry_after)) = fault {
        let mut answer =
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
        if let Some(seconds) = retry_after {
            answer.insert_header(("Retry-After", seconds.to_string()));
        }
        return answer.json(json!({"error": "scripted"}));
    }
    let q = query(&request);
    // One call, found under the lock (a list clones them all).
    let found = |key: &str, id: &str| {
        data.calls
            .lock()
            .unwrap()
            .get(vendor)
            .and_then(|calls| calls.iter().find(|c| c[key] == id).map(|c| Value::clone(c)))
    };
    let calls = || data.calls_of(vendor);
    let one = |call: Option<Value>| match call {
        Some(c) => HttpResponse::Ok().json(c),
        None => HttpResponse::NotFound().json(json!({"error": "not found"})),
    };
    match vendor {
        "retell" => {
            if let Some(id) = path.strip_prefix("/v2/get-call/") {
                return one(found("call_id", id));
            }
            let q: Value = serde_json::from_slice(&body).unwrap_or_default();
            let range = &q["filter_criteria"]["end_timestamp"]["value"];
            let (lo, hi) = (range[0].as_i64().unwrap(), range[1].as_i64().unwrap());
            let mut listed: Vec<Arc<Value>> = calls()
                .into_iter()
                .filter(|c| (lo..=hi).contains(&c["end_timestamp"].as_i64().unwrap()))
                .collect();
            listed.sort_by_key(|c| c["start_timestamp"].as_i64());
            let from: usize = q["pagination_key"]
                .as_str()
                .map_or(0, |k| k.trim_start_matches("pk_").parse().unwrap());
            let limit = q["limit"].as_u64().unwrap_or(50) as usize;
            let page: Vec<Value> = listed
                .iter()
                .skip(from)
                .take(limit)
                .map(|c| {
                    // The list omits the transcripts.
                    let mut c = Value::clone(c);
                    let o = c.as_object_mut().unwrap();
                    for k in [
                        "transcript",
                        "transcript_object",
                        "transcript_with_tool_calls",
                    ] {
                        o.remove(k);
                    }
                    c
                })
                .collect();
            let more = from + page.len() < listed.len();
            HttpResponse::Ok().json(json!({
                "items": page,
                "has_more": more,
                "pagination_key": if more { json!(format!("pk_{}", from + limit)) } else { Value::Null },
            }))
        }
        "vapi" => {
            if let Some(id) = path.strip_prefix("/call/") {
                return one(found("id", id));
            }
            let at = |k: &str| q.get(k).map(|v| Timestamp::parse(v).unwrap().unix_millis());
            let (ge, le) = (at("updatedAtGe"), at("updatedAtLe"));
            let mut listed: Vec<Arc<Value>> = calls()
                .into_iter()
                .filter(|c| {
                    let u = Timestamp::parse(c["updatedAt"].as_str().unwrap())
                        .unwrap()
                        .unix_millis();
                    ge.is_none_or(|g| u >= g) && le.is_none_or(|l| u <= l)
                })
                .collect();
            // Newest first, the limit applied after: a client paging by moving its lower
            // bound past the latest seen would miss the rest.
            listed.sort_by(|a, b| b["createdAt"].as_str().cmp(&a["createdAt"].as_str()));
            let limit: usize = q.get("limit").map_or(100, |l| l.parse().unwrap());
            listed.truncate(limit);
            let page: Vec<&Value> = listed.iter().map(|c| &**c).collect();
            HttpResponse::Ok().json(page)
        }
        "elevenlabs" => {
            if let Some(id) = path.strip_prefix("/v1/convai/conversations/") {
                return one(found("conversation_id", id));
            }
            let secs = |k: &str| q.get(k).map(|v| v.parse::<i64>().unwrap());
            let (after, before) = (
                secs("call_start_after_unix"),
                secs("call_start_before_unix"),
            );
            let mut listed: Vec<Value> = calls()
                .into_iter()
                .filter(|c| {
                    let s = c["metadata"]["start_time_unix_secs"].as_i64().unwrap();
                    after.is_none_or(|a| s >= a) && before.is_none_or(|b| s < b)
                })
                .map(|c| {
                    json!({
                        "agent_id": c["agent_id"], "agent_name": c["agent_name"],
                        "conversation_id": c["conversation_id"],
                        "start_time_unix_secs": c["metadata"]["start_time_unix_secs"],
                        "call_duration_secs": c["metadata"]["call_duration_secs"],
                        "message_count": 6, "status": c["status"], "call_successful": "success",
                    })
                })
                .collect();
            listed.sort_by_key(|c| -c["start_time_unix_secs"].as_i64().unwrap());
            let from: usize = q.get("cursor").map_or(0, |c| c.parse().unwrap());
            let size: usize = q.get("page_size").map_or(30, |s| s.parse().unwrap());
            assert!(size <= 100, "ElevenLabs allows 100 per page");
            let page: Vec<Value> = listed.iter().skip(from).take(size).cloned().collect();
            let more = from + page.len() < listed.len();
            HttpResponse::Ok().json(json!({
                "conversations": page,
                "has_more": more,
                "next_cursor": if more { json!((from + size).to_string()) } else { Value::Null },
            }))
        }
        "bland" => {
            if let Some(id) = path.strip_prefix("/v1/calls/") {
                return one(found("call_id", id));
            }
            let mut listed = calls();
            listed.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
            let from: usize = q.get("from").map_or(0, |f| f.parse().unwrap());
            let limit: usize = q.get("limit").map_or(1000, |l| l.parse().unwrap());
            let to: usize = q.get("to").map_or(from + limit, |t| t.parse().unwrap());
            let page: Vec<Value> = listed
                .iter()
                .skip(from)
                .take(to.saturating_sub(from).min(limit))
                .map(|c| {
                    json!({
                        "call_id": c["call_id"], "created_at": c["created_at"],
                        "call_length": c["call_length"], "to": c["to"], "from": c["from"],
                        "completed": c["completed"], "queue_status": c["queue_status"],
                        "error_message": null, "answered_by": c["answered_by"], "batch_id": null,
                    })
                })
                .collect();
            HttpResponse::Ok().json(json!({"count": listed.len(), "calls": page}))
        }
        _ => {
            let calls_path = format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Calls");
            let rest = path.strip_prefix(&calls_path).unwrap_or("");
            if let Some(sid) = rest
                .strip_prefix('/')
                .and_then(|r| r.strip_suffix("/Recordings.json"))
            {
                let recordings: Vec<Value> = data
                    .recordings
                    .lock()
                    .unwrap()
                    .get(sid)
                    .cloned()
                    .into_iter()
                    .collect();
                return HttpResponse::Ok()
                    .json(json!({"recordings": recordings, "next_page_uri": null}));
            }
            if rest != ".json" {
                return HttpResponse::NotFound().json(json!({"code": 20404}));
            }
            let day = |c: &Value| {
                chrono::DateTime::parse_from_rfc2822(c["end_time"].as_str().unwrap())
                    .unwrap()
                    .format("%Y-%m-%d")
                    .to_string()
            };
            let (after, before) = (q.get("EndTime>").cloned(), q.get("EndTime<").cloned());
            let mut listed: Vec<Arc<Value>> = calls()
                .into_iter()
                .filter(|c| {
                    let d = day(c);
                    after.as_ref().is_none_or(|a| &d >= a) && before.as_ref().is_none_or(|b| &d < b)
                })
                .collect();
            listed.sort_by(|a, b| b["sid"].as_str().cmp(&a["sid"].as_str()));
            let size: usize = q.get("PageSize").map_or(50, |s| s.parse().unwrap());
            let page_no: usize = q.get("Page").map_or(0, |p| p.parse().unwrap());
            let page: Vec<&Value> = listed
                .iter()
                .skip(page_no * size)
                .take(size)
                .map(|c| &**c)
                .collect();
            let more = (page_no + 1) * size < listed.len();
            let next = more.then(|| {
                format!(
                    "{calls_path}.json?EndTime%3E={}&EndTime%3C={}&PageSize={size}&Page={}&PageToken=PA{}",
                    after.clone().unwrap_or_default(),
                    before.clone().unwrap_or_default(),
                    page_no + 1,
                    page_no + 1
                )
            });
            HttpResponse::Ok().json(json!({
                "calls": page, "page": page_no, "page_size": size, "next_page_uri": next,
            }))
        }
    }
}

/// The five sources, each recovering from the stand-in at `api` every `interval`, leaving
/// a call a second to its webhooks; `retell_key` is the key Retell's recovery sends.
pub fn sources(api: &str, interval: &str, retell_key: &str) -> String {
    let recover = sources_recovering(api, interval, retell_key);
    recover.replace("interval = ", "settle = \"1s\", interval = ")
}

fn sources_recovering(api: &str, interval: &str, retell_key: &str) -> String {
    format!(
        "[[sources]]\nname = \"retell\"\nvendor = \"retell\"\n\
         auth = {{ kind = \"retell\", api_key = \"{RETELL_WEBHOOK_KEY}\" }}\n\
         recover = {{ api_key = \"{retell_key}\", api_url = \"{api}\", interval = \"{interval}\" }}\n\
         [[sources]]\nname = \"vapi\"\nvendor = \"vapi\"\n\
         auth = {{ kind = \"header\", header = \"X-Vapi-Secret\", value = \"vapi-secret-0123\" }}\n\
         recover = {{ api_key = \"{VAPI_API_KEY}\", api_url = \"{api}\", interval = \"{interval}\" }}\n\
         [[sources]]\nname = \"elevenlabs\"\nvendor = \"elevenlabs\"\n\
         auth = {{ kind = \"elevenlabs\", secret = \"wsec_test_0123456789\" }}\n\
         recover = {{ api_key = \"{ELEVENLABS_API_KEY}\", api_url = \"{api}\", interval = \"{interval}\" }}\n\
         [[sources]]\nname = \"bland\"\nvendor = \"bland\"\n\
         auth = {{ kind = \"hmac\", secret = \"bland_test_secret\", header = \"X-Webhook-Signature\", payload = \"{{body}}\", encoding = \"hex\" }}\n\
         recover = {{ api_key = \"{BLAND_API_KEY}\", api_url = \"{api}\", interval = \"{interval}\" }}\n\
         [[sources]]\nname = \"twilio\"\nvendor = \"twilio\"\n\
         auth = {{ kind = \"twilio\", auth_token = \"{TWILIO_TOKEN}\", public_url = \"https://gate.example/ingest/twilio\" }}\n\
         recover = {{ api_key = \"{TWILIO_TOKEN}\", account_sid = \"{TWILIO_ACCOUNT}\", api_url = \"{api}\", interval = \"{interval}\" }}\n"
    )
}

/// Options delivering every event to `receiver` (target `crm`), with the five sources.
fn options(receiver: &TestReceiver, api: &str, interval: &str, retell_key: &str) -> Options {
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"",
        receiver.url("/crm")
    ));
    options.tables = sources(api, interval, retell_key);
    options
}

/// `n` calls of every vendor that ended `ended_ms_ago` (and a millisecond apart), webhooks
/// never sent; the first Twilio call has a recording and a child leg.
fn calls_happened(stand_in: &StandIn, n: usize, ended_ms_ago: i64) -> usize {
    let ended = now_ms() - ended_ms_ago;
    for vendor in VENDORS {
        for i in 0..n {
            let id = call_id(vendor, i);
            stand_in.add(vendor, call(vendor, &id, ended - i as i64));
        }
    }
    let parent = call_id("twilio", 0);
    stand_in.recordings.lock().unwrap().insert(
        parent.clone(),
        json!({
            "sid": "RE2b7d1f5a9c3e8b0d4f6a2c8e1b5d9f36", "call_sid": parent, "status": "completed",
            "duration": "58", "channels": 2, "source": "OutboundAPI",
            "uri": format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT}/Recordings/RE2b7d1f5a9c3e8b0d4f6a2c8e1b5d9f36.json"),
        }),
    );
    let mut child = call("twilio", "CAchildleg", ended);
    child["parent_call_sid"] = parent.into();
    stand_in.add("twilio", child);
    n * VENDORS.len()
}

/// The `session.finalized` events received, by session id.
fn finalized(receiver: &TestReceiver) -> HashMap<String, Vec<Value>> {
    let mut by_session: HashMap<String, Vec<Value>> = HashMap::new();
    for r in receiver.received() {
        let event = r.json();
        if event["type"] == "session.finalized" {
            by_session
                .entry(event["session"]["id"].as_str().unwrap().to_owned())
                .or_default()
                .push(event);
        }
    }
    by_session
}

async fn wait_for_finalized(receiver: &TestReceiver, n: usize) -> HashMap<String, Vec<Value>> {
    let arrived = receiver
        .wait_until(Duration::from_secs(60), |r| finalized(r).len() >= n)
        .await;
    let found = finalized(receiver);
    assert!(
        arrived,
        "{} of {n} sessions finalized: {:?}",
        found.len(),
        found.keys()
    );
    found
}

#[tokio::test]
async fn calls_that_ended_while_the_gateway_was_down_are_each_finalized_once_at_start() {
    let (api, stand_in) = stand_in();
    let receiver = TestReceiver::start().await;
    // The gateway runs (nothing to recover), then stops.
    let app = spawn_app_with(options(&receiver, &api, "1s", RETELL_API_KEY), None).await;
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(
        ready["recovery"]["retell"]["state"], "recovering",
        "{ready}"
    );
    let dir = app.stop().await;
    // Calls end meanwhile, their webhooks lost; the gateway starts again a second later
    // (`settle`: a call's webhooks have a second to come).
    let sessions = calls_happened(&stand_in, 3, 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let app = spawn_app_with(options(&receiver, &api, "1s", RETELL_API_KEY), Some(dir)).await;
    let found = wait_for_finalized(&receiver, sessions).await;
    eprintln!(
        "start to the last recovered session.finalized: {:?}",
        started.elapsed()
    );
    for (session, events) in &found {
        assert_eq!(events.len(), 1, "{session}: one session.finalized");
        let event = &events[0];
        assert_eq!(event["source"]["recovered"], true, "{event}");
        assert!(event["source"]["messageId"].is_null());
    }
    // Each vendor's adapter mapped its call: the Retell one carries its analysis and
    // transcript (from get-call), Twilio's its recording and child leg.
    let retell = &found[&call_id("retell", 0)][0];
    assert!(
        retell["session"]["analysis"]["summary"].is_string(),
        "{retell}"
    );
    assert!(
        !retell["session"]["transcript"]["messages"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let twilio = &found[&call_id("twilio", 0)][0];
    assert!(
        twilio["session"]["recording"]["url"]
            .as_str()
            .unwrap()
            .ends_with("RE2b7d1f5a9c3e8b0d4f6a2c8e1b5d9f36.wav"),
        "{twilio}"
    );
    // The events its webhooks would have produced: Retell's start and end too.
    let types: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|e| e["session"]["id"] == call_id("retell", 1))
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    for t in [
        "session.started",
        "session.ended",
        "call.ended",
        "session.finalized",
    ] {
        assert!(types.iter().any(|x| x == t), "{t} in {types:?}");
    }
    // A webhook that arrives after recovery is a duplicate.
    let late = json!({
        "event": "call_ended",
        "call": *stand_in.calls_of("retell").into_iter().find(|c| c["call_id"] == call_id("retell", 2)).unwrap(),
    });
    let body = serde_json::to_vec(&late).unwrap();
    let headers = sessiongate::testing::retell_headers(RETELL_WEBHOOK_KEY, now_ms(), &body);
    let answer = app.post("/ingest/retell", &body, &headers).await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["status"], "duplicate");
    // Later polls (every second) find every call finalized: nothing more is sent.
    let before = receiver.received().len();
    let polls = |vendor| stand_in.requests(vendor).len();
    let listed = polls("vapi");
    assert!(
        wait_until(Duration::from_secs(10), || polls("vapi") >= listed + 2).await,
        "two more polls"
    );
    app.wait_for_deliveries(DeliveryStatus::Delivered, before)
        .await;
    assert_eq!(receiver.received().len(), before, "no second delivery");
    let metrics = app.metrics().await;
    for vendor in VENDORS {
        assert!(
            metrics.contains(&format!(
                "sessiongate_recovered_total{{source=\"{vendor}\"}} 3"
            )) || (vendor == "twilio"
                && metrics.contains("sessiongate_recovered_total{source=\"twilio\"} 4")),
            "{vendor}: {metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "sessiongate_recovery_last_success_timestamp_seconds{{source=\"{vendor}\"}}"
            )),
            "{metrics}"
        );
    }
    app.stop().await;
}

/// Waits until `done` holds, polling; false if it did not within `patience`.
async fn wait_until(patience: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test]
async fn a_busy_vendor_api_is_asked_again_and_a_refused_key_stops_only_that_source() {
    let (api, stand_in) = stand_in();
    let receiver = TestReceiver::start().await;
    calls_happened(&stand_in, 2, 2_000);
    // Vapi is rate limited once (Retry-After: 1), Bland fails once with a 500, and
    // Retell's key is wrong.
    stand_in.fail("vapi", &[(429, Some(1))]);
    stand_in.fail("bland", &[(500, None)]);
    let started = Instant::now();
    let app = spawn_app_with(options(&receiver, &api, "1s", "key_wrong"), None).await;
    // Two calls each of Vapi, ElevenLabs, Bland and Twilio.
    let found = wait_for_finalized(&receiver, 8).await;
    assert!(
        !found.contains_key(&call_id("retell", 0)),
        "Retell recovers nothing"
    );
    // Vapi's list was asked twice, a second apart as its Retry-After said.
    let vapi = stand_in.requests("vapi");
    assert!(vapi.len() >= 2);
    let pause = vapi[1].1 - vapi[0].1;
    assert!(pause >= Duration::from_millis(950), "{pause:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    // Retell's recovery stopped after its one refused request; /readyz says so and stays 200.
    let deadline = Instant::now() + PATIENCE;
    let ready = loop {
        let ready = app.get("/readyz").await;
        assert_eq!(ready.status(), 200, "ingest is unaffected");
        let body: Value = ready.json().await.unwrap();
        if body["recovery"]["vapi"]["lastSuccess"].is_string() || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let retell = &ready["recovery"]["retell"];
    assert_eq!(retell["state"], "stopped", "{ready}");
    let error = retell["lastError"].as_str().unwrap();
    assert!(
        error.contains("source `retell`") && error.contains("401"),
        "{error}"
    );
    assert!(
        !error.contains("key_wrong"),
        "the key is never shown: {error}"
    );
    assert_eq!(ready["recovery"]["vapi"]["state"], "recovering");
    assert!(
        ready["recovery"]["vapi"]["lastSuccess"].is_string(),
        "{ready}"
    );
    // The console's health strip says the same.
    let strip = console_health(&app).await;
    assert!(
        strip.contains("retell</b> recovery stopped: source `retell`"),
        "{strip}"
    );
    assert!(strip.contains("vapi</b> recovered <time"), "{strip}");
    let asked = stand_in.requests("retell").len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        stand_in.requests("retell").len(),
        asked,
        "no more polls of Retell"
    );
    // Retell's webhooks are still taken.
    let body = fixture("retell", "call-ended.json");
    let headers = sessiongate::testing::retell_headers(RETELL_WEBHOOK_KEY, now_ms(), &body);
    assert_eq!(
        app.post("/ingest/retell", &body, &headers).await.status(),
        202
    );
    let metrics = app.metrics().await;
    for line in [
        "sessiongate_recovery_errors_total{source=\"retell\",reason=\"unauthorized\"} 1",
        "sessiongate_recovery_errors_total{source=\"vapi\",reason=\"rate_limited\"} 1",
        "sessiongate_recovery_errors_total{source=\"bland\",reason=\"server_error\"} 1",
        "sessiongate_recovered_total{source=\"vapi\"} 2",
        "sessiongate_recovered_total{source=\"bland\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    app.stop().await;
}

/// `POST path?query` on the admin API: the status and the JSON answer.
async fn admin_post(app: &TestApp, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
    let url =
        reqwest::Url::parse_with_params(&format!("{}{path}", app.admin_address), query).unwrap();
    let answer = app
        .client
        .post(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

#[tokio::test]
async fn an_operator_recovers_a_window_and_backfills_a_new_target_with_history() {
    let (api, stand_in) = stand_in();
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(options(&receiver, &api, "1h", RETELL_API_KEY), None).await;
    // The start-up poll has run (and found nothing); the next is an hour away.
    assert!(
        wait_until(PATIENCE, || !stand_in.requests("twilio").is_empty()).await,
        "the first poll"
    );
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let ready: Value = app.get("/readyz").await.json().await.unwrap();
        if ready["recovery"]
            .as_object()
            .unwrap()
            .values()
            .all(|s| s["lastSuccess"].is_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let since = iso(now_ms() - 60_000);
    // (Vapi's calls were last updated two seconds after their end: still inside the
    // window of the next start-up poll, which leaves a call a second.)
    calls_happened(&stand_in, 3, 5_000);
    let until = iso(now_ms());
    let window = [("since", since.as_str()), ("until", until.as_str())];
    let (status, answer) = admin_post(&app, "/admin/sources/retell/recover", &window).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"listed": 3, "recovered": 3}))
    );
    let (status, answer) = admin_post(&app, "/admin/sources/retell/recover", &window).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"listed": 3, "recovered": 0})),
        "already finalized"
    );
    let (_, answer) = admin_post(&app, "/admin/sources/twilio/recover", &window).await;
    assert_eq!(
        answer,
        json!({"listed": 4, "recovered": 4}),
        "three calls and a child leg"
    );
    for (query, status, words) in [
        (vec![("since", since.as_str())], 400, "until"),
        (
            vec![("since", "yesterday"), ("until", until.as_str())],
            400,
            "`since` must be an RFC 3339",
        ),
        (
            vec![("since", until.as_str()), ("until", since.as_str())],
            400,
            "must be after",
        ),
    ] {
        let (got, answer) = admin_post(&app, "/admin/sources/retell/recover", &query).await;
        let message = answer["error"]["message"].as_str().unwrap();
        assert_eq!(got, status, "{answer}");
        assert!(message.contains(words), "{message}");
    }
    let (status, _) = admin_post(&app, "/admin/sources/nope/recover", &window).await;
    assert_eq!(status, 404);
    let (status, answer) = admin_post(&app, "/admin/sources/pathors/recover", &window).await;
    assert_eq!(status, 409, "{answer}");
    // A vendor that refuses the key: 502, naming the source.
    stand_in.fail("vapi", &[(403, None)]);
    let (status, answer) = admin_post(&app, "/admin/sources/vapi/recover", &window).await;
    assert_eq!(status, 502, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("source `vapi`")
    );

    // Everything so far reached `crm`: Retell's three sessions and Twilio's. A target
    // added today gets the history.
    wait_for_finalized(&receiver, 6).await;
    let dir = app.stop().await;
    let late = TestReceiver::start().await;
    let mut with_late = options(&receiver, &api, "1h", RETELL_API_KEY);
    with_late.targets.push_str(&format!(
        "\n[[targets]]\nname = \"late\"\nurl = \"{}\"\nevents = [\"session.finalized\"]",
        late.url("/late")
    ));
    let app = spawn_app_with(with_late, Some(dir)).await;
    // Its start-up poll recovers the other vendors' calls: those reach `late` live.
    let crm = wait_for_finalized(&receiver, 15).await;
    let day = [
        ("since", &*iso(now_ms() - 86_400_000)),
        ("until", &*iso(now_ms() + 1_000)),
    ];
    let dry = [day[0], day[1], ("dry_run", "true")];
    let (status, answer) = admin_post(&app, "/admin/targets/late/backfill", &dry).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"queued": 6})),
        "Retell's and Twilio's sessions"
    );
    let (_, answer) = admin_post(&app, "/admin/targets/late/backfill", &day).await;
    assert_eq!(answer, json!({"queued": 6}));
    // `late` has every session.finalized `crm` has, under the same event ids.
    let ids = |found: &HashMap<String, Vec<Value>>| {
        let mut ids: Vec<String> = found
            .values()
            .flatten()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let late_got = wait_for_finalized(&late, 15).await;
    assert_eq!(ids(&late_got), ids(&crm));
    let (_, answer) = admin_post(&app, "/admin/targets/late/backfill", &day).await;
    assert_eq!(answer, json!({"queued": 0}), "delivered once");
    let (status, _) = admin_post(&app, "/admin/targets/nope/backfill", &day).await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(sg_postgres),
    ignore = "needs PostgreSQL: set SESSIONGATE_TEST_POSTGRES_URL"
)]
async fn two_replicas_on_one_postgres_recover_each_call_once() {
    let Some(url) = postgres_schema_url().await else {
        return;
    };
    let (api, stand_in) = stand_in();
    let receiver = TestReceiver::start().await;
    let sessions = calls_happened(&stand_in, 20, 2_000);
    let replica = || {
        let mut options = options(&receiver, &api, "1s", RETELL_API_KEY);
        options.storage_url = Some(url.clone());
        spawn_app_with(options, None)
    };
    let (a, b) = tokio::join!(replica(), replica());
    wait_for_finalized(&receiver, sessions).await;
    // Both poll every second for a while; each session is still finalized once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.wait_for_deliveries(DeliveryStatus::Delivered, receiver.received().len())
        .await;
    for (session, events) in finalized(&receiver) {
        assert_eq!(events.len(), 1, "{session}");
    }
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event delivered twice");
    // One poll at a time: a source's list requests never came from both at once. Each
    // replica's polls are a second apart; the lease makes the other skip its turn.
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let recovered = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("sessiongate_recovered_total{source=\"vapi\"}"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        recovered(&ma) + recovered(&mb),
        20,
        "vapi's calls recovered once between them"
    );
    a.stop().await;
    b.stop().await;
}

/// Recovers `n` calls of each vendor in `counts` from a fresh gateway: how long from its
/// start until every call was recovered (committed), and until the last
/// `session.finalized` reached the receiver.
async fn recover_many(counts: &[(&'static str, usize)]) -> (Duration, Duration) {
    let (api, stand_in) = stand_in();
    let ended = now_ms() - 5_000;
    let mut sessions = 0;
    for &(vendor, n) in counts {
        for i in 0..n {
            stand_in.add(vendor, call(vendor, &call_id(vendor, i), ended - i as i64));
        }
        sessions += n;
    }
    let receiver = TestReceiver::start().await;
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"session.finalized\"]",
        receiver.url("/crm")
    ));
    let recovering: Vec<&str> = counts.iter().map(|(v, _)| *v).collect();
    // Only the sources recovering here (the others' blocks are dropped).
    options.tables = sources(&api, "1h", RETELL_API_KEY)
        .split("[[sources]]")
        .filter(|block| {
            recovering
                .iter()
                .any(|v| block.contains(&format!("vendor = \"{v}\"")))
        })
        .map(|block| format!("[[sources]]{block}"))
        .collect();
    let started = Instant::now();
    let app = spawn_app_with(options, None).await;
    let recovered_total = |metrics: &str| -> usize {
        metrics
            .lines()
            .filter(|l| l.starts_with("sessiongate_recovered_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while recovered_total(&app.metrics().await) < sessions && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let committed = started.elapsed();
    let arrived = receiver
        .wait_until(Duration::from_secs(600), |r| r.received().len() >= sessions)
        .await;
    let delivered = started.elapsed();
    assert!(arrived, "{} of {sessions}", receiver.received().len());
    let found = finalized(&receiver);
    assert_eq!(found.len(), sessions, "every call, once");
    app.stop().await;
    (committed, delivered)
}

#[tokio::test]
async fn every_vendors_pages_are_followed_to_the_end() {
    // Past one page of each: Retell's and ElevenLabs' pages hold 100, Vapi's, Bland's and
    // Twilio's 1,000 (Vapi's newest first, with no cursor: its spans are halved).
    let (_, elapsed) = recover_many(&[
        ("retell", 230),
        ("elevenlabs", 230),
        ("vapi", 1100),
        ("bland", 1100),
        ("twilio", 1100),
    ])
    .await;
    eprintln!("3,760 calls of five vendors recovered in {elapsed:?}");
}

/// The benchmark behind the README's figure: recovers `SESSIONGATE_RECOVERY_CALLS` Retell
/// calls (default 500; a list page per 100, a get-call each, three webhooks' events each)
/// from the stand-in and prints calls per second. The figure:
/// `SESSIONGATE_RECOVERY_CALLS=10000 cargo test --release --test api recovery::throughput -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput() {
    let calls: usize = std::env::var("SESSIONGATE_RECOVERY_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let (committed, delivered) = recover_many(&[("retell", calls)]).await;
    println!(
        "recovered {calls} Retell calls: all committed {:.1} s after start ({:.0} calls/s); \
         the last session.finalized delivered at {:.1} s",
        committed.as_secs_f64(),
        calls as f64 / committed.as_secs_f64(),
        delivered.as_secs_f64()
    );
}

/// The console's health strip, logged in over plain HTTP.
async fn console_health(app: &TestApp) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .post(format!("{}/console/login", app.admin_address))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = client
        .get(format!("{}/console/sessions", app.admin_address))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let start = page
        .find("id=\"health\"")
        .expect("the page has its health strip");
    let end = page[start..].find("</aside>").unwrap();
    page[start..start + end].to_owned()
}
