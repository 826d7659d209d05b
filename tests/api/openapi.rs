//! `GET /admin/openapi.json`: the document validates as OpenAPI 3.1, and live answers of
//! every documented operation match the schemas it gives them.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};
use sessiongate::store::DeliveryStatus;

use crate::helpers::*;

/// The document, with every object schema closed (`additionalProperties: false`), so that
/// an answer with a field the document does not declare fails as surely as one missing a
/// required field.
struct Document {
    doc: Value,
    checked: BTreeSet<(String, String)>,
}

fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

impl Document {
    fn new(mut doc: Value) -> Document {
        close_objects(&mut doc["components"]);
        Document {
            doc,
            checked: BTreeSet::new(),
        }
    }

    /// Checks `body`, answered with `status` to `method template`, against the document.
    fn check(&mut self, method: &Method, template: &str, status: u16, body: &Value) {
        let method = method.as_str().to_lowercase();
        let escaped = template.replace('~', "~0").replace('/', "~1");
        let content = format!("/paths/{escaped}/{method}/responses/{status}/content");
        let Some(content) = self.doc.pointer(&content) else {
            panic!(
                "{method} {template} answered {status}, which the document does not give: {body}"
            );
        };
        let media = content
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .replace('/', "~1");
        let mut schema = self.doc.clone();
        // A URI fragment: the path template's braces are percent-encoded.
        let fragment = escaped.replace('{', "%7B").replace('}', "%7D");
        schema["$ref"] = json!(format!(
            "#/paths/{fragment}/{method}/responses/{status}/content/{media}/schema"
        ));
        let validator = jsonschema::draft202012::new(&schema).expect("the schemas compile");
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status} does not match the document: {errors:?}\n{body:#}"
        );
        self.checked.insert((method, template.to_owned()));
    }

    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                all.insert((method.clone(), path.clone()));
            }
        }
        all
    }
}

async fn call(app: &TestApp, method: Method, path: &str) -> (u16, Value) {
    let response = app.admin(method, path).await;
    let status = response.status().as_u16();
    let body = if response
        .headers()
        .get("content-type")
        .is_some_and(|c| c.to_str().unwrap().contains("json"))
    {
        response.json().await.unwrap()
    } else {
        json!(null)
    };
    (status, body)
}

#[tokio::test]
async fn live_answers_match_the_openapi_document() {
    let receiver = TestReceiver::start().await;
    receiver.answer(Reply::status(500));
    let mut options = Options::with_targets(format!(
        "[[targets]]\nname = \"crm\"\nurl = \"{}\"\n",
        receiver.url("/crm")
    ));
    options.max_attempts = 1;
    // A source that recovers, from a stand-in for its vendor's API.
    let (api, _stand_in) = crate::recovery::stand_in();
    let bland = crate::recovery::sources(&api, "1h", crate::recovery::RETELL_API_KEY)
        .split("[[sources]]")
        .find(|block| block.contains("vendor = \"bland\""))
        .unwrap()
        .to_owned();
    options.tables = format!("[[sources]]{bland}");
    let app = spawn_app_with(options, None).await;

    let (status, raw) = call(&app, Method::GET, "/admin/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(raw["openapi"], "3.1.0");
    let mut doc = Document::new(raw.clone());
    doc.check(&Method::GET, "/admin/openapi.json", 200, &raw);

    let (_, accepted) = {
        let r = app
            .post_pathors(&fixture("pathors", "call-ended.json"))
            .await;
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let event_id = accepted["id"].as_str().unwrap().to_owned();
    app.post_agntix(&fixture("agntix", "session-created.json"))
        .await;
    let dead = app.wait_for_deliveries(DeliveryStatus::Dead, 2).await;
    // From here the target accepts: a delivery the retry below requeues is pending or
    // delivered when the second retry asks, never dead again (with one attempt allowed, a
    // failing target could kill it in between, and the second retry would be accepted).
    receiver.answer(Reply::status(200));
    let session_id = "2c4f9a13-7e6b-4d8a-9f25-c81e3a7b6d04";

    let get = Method::GET;
    let post = Method::POST;
    let window = "since=2026-12-01T00:00:00Z&until=2026-12-02T00:00:00Z";
    // (method, the documented path, the path called, the status expected)
    let session_path = "/admin/sessions/{vendor}/{session_id}";
    let cases: Vec<(Method, &str, String, u16)> = vec![
        (
            get.clone(),
            "/admin/sessions",
            "/admin/sessions".into(),
            200,
        ),
        (
            get.clone(),
            "/admin/sessions",
            "/admin/sessions?vendor=pathors&limit=1".into(),
            200,
        ),
        (
            get.clone(),
            "/admin/sessions",
            "/admin/sessions?vendor=nope".into(),
            400,
        ),
        (
            get.clone(),
            "/admin/sessions",
            "/admin/sessions?since=yesterday".into(),
            400,
        ),
        (
            get.clone(),
            "/admin/sessions",
            "/admin/sessions?cursor=x".into(),
            400,
        ),
        (
            get.clone(),
            session_path,
            format!("/admin/sessions/pathors/{session_id}"),
            200,
        ),
        (
            get.clone(),
            session_path,
            "/admin/sessions/pathors/ghost".into(),
            404,
        ),
        (
            get.clone(),
            "/admin/recordings/{vendor}/{session_id}",
            "/admin/recordings/pathors/ghost".into(),
            404,
        ),
        (
            get.clone(),
            "/admin/events",
            "/admin/events?limit=1".into(),
            200,
        ),
        (
            get.clone(),
            "/admin/events",
            "/admin/events?type=nope".into(),
            400,
        ),
        (
            get.clone(),
            "/admin/receipts",
            "/admin/receipts".into(),
            200,
        ),
        (
            get.clone(),
            "/admin/receipts",
            "/admin/receipts?status=nope".into(),
            400,
        ),
        (
            get.clone(),
            "/admin/deliveries",
            "/admin/deliveries?status=dead".into(),
            200,
        ),
        (
            get.clone(),
            "/admin/deliveries",
            "/admin/deliveries?limit=0".into(),
            400,
        ),
        (
            post.clone(),
            "/admin/deliveries/{id}/retry",
            format!("/admin/deliveries/{}/retry", dead[0].id),
            202,
        ),
        (
            post.clone(),
            "/admin/deliveries/{id}/retry",
            format!("/admin/deliveries/{}/retry", dead[0].id),
            409,
        ),
        (
            post.clone(),
            "/admin/deliveries/{id}/retry",
            "/admin/deliveries/dlv_nope/retry".into(),
            404,
        ),
        (
            post.clone(),
            "/admin/deliveries/retry",
            "/admin/deliveries/retry?status=dead&target=crm".into(),
            200,
        ),
        (
            post.clone(),
            "/admin/deliveries/retry",
            "/admin/deliveries/retry".into(),
            400,
        ),
        (
            post.clone(),
            "/admin/deliveries/retry",
            "/admin/deliveries/retry?status=dead&target=ghost".into(),
            404,
        ),
        (
            post.clone(),
            "/admin/events/{id}/replay",
            format!("/admin/events/{event_id}/replay"),
            202,
        ),
        (
            post.clone(),
            "/admin/events/{id}/replay",
            "/admin/events/evt_nope/replay".into(),
            404,
        ),
        (
            post.clone(),
            "/admin/sources/{name}/recover",
            format!("/admin/sources/bland/recover?{window}"),
            200,
        ),
        (
            post.clone(),
            "/admin/sources/{name}/recover",
            format!("/admin/sources/pathors/recover?{window}"),
            409,
        ),
        (
            post.clone(),
            "/admin/sources/{name}/recover",
            format!("/admin/sources/ghost/recover?{window}"),
            404,
        ),
        (
            post.clone(),
            "/admin/sources/{name}/recover",
            "/admin/sources/bland/recover?since=yesterday&until=today".into(),
            400,
        ),
        (
            post.clone(),
            "/admin/targets/{name}/backfill",
            format!("/admin/targets/crm/backfill?{window}&dry_run=true"),
            200,
        ),
        (
            post.clone(),
            "/admin/targets/{name}/backfill",
            format!("/admin/targets/ghost/backfill?{window}"),
            404,
        ),
    ];
    for (method, template, path, expected) in cases {
        let (status, body) = call(&app, method.clone(), &path).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        doc.check(&method, template, status, &body);
    }
    // An unknown query key, with the token: whatever each operation answers is documented.
    for (method, path) in doc.operations() {
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let concrete = path
            .replace("{vendor}", "pathors")
            .replace("{session_id}", "x")
            .replace("{name}", "x")
            .replace("{id}", "x");
        let (status, body) = call(&app, method.clone(), &format!("{concrete}?no_such_key=1")).await;
        if body.is_object() {
            doc.check(&method, &path, status, &body);
        }
    }
    // One answer per documented operation without the token.
    for (method, path) in doc.operations() {
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let concrete = path
            .replace("{vendor}", "pathors")
            .replace("{session_id}", "x")
            .replace("{name}", "x")
            .replace("{id}", "x");
        let response = app
            .client
            .request(method.clone(), format!("{}{concrete}", app.admin_address))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        // Past ten wrong tokens from one address the answer is 429: documented as well.
        assert!(matches!(status, 401 | 429), "{method} {path}: {status}");
        doc.check(&method, &path, status, &response.json().await.unwrap());
    }
    for _ in 0..12 {
        let response = app
            .client
            .get(format!("{}/admin/events", app.admin_address))
            .bearer_auth("a-wrong-token")
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            doc.check(
                &Method::GET,
                "/admin/events",
                429,
                &response.json().await.unwrap(),
            );
            break;
        }
    }
    assert_eq!(
        doc.checked,
        doc.operations(),
        "every documented operation was called"
    );
}

/// The document against the OpenAPI 3.1 specification's own schema, by
/// `openapi-spec-validator` (PyPI; `.ci/run` installs it and names it in
/// `SESSIONGATE_TEST_OPENAPI_VALIDATOR`).
#[test]
#[cfg_attr(
    not(sg_openapi_validator),
    ignore = "needs openapi-spec-validator: set SESSIONGATE_TEST_OPENAPI_VALIDATOR to it"
)]
fn the_document_passes_an_openapi_3_1_validator() {
    let validator = std::env::var("SESSIONGATE_TEST_OPENAPI_VALIDATOR")
        .expect("SESSIONGATE_TEST_OPENAPI_VALIDATOR names an openapi-spec-validator executable");
    let doc: Value = serde_json::from_str(&sessiongate::admin::openapi::json()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("running {validator}: {e}"));
    assert!(
        out.status.success(),
        "the OpenAPI document does not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
