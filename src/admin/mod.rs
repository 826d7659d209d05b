//! The admin API (README, "Admin API"): sessions, events and deliveries, behind a Bearer token.
//!
//! Mounted only when `server.admin_token` is set. Every handler takes [`AdminAuth`], so no
//! route can be added without the token check. Lists are newest first and paginate with an
//! opaque `cursor` (answered as `nextCursor` while more may follow). Handlers only read or
//! ask the store to change state; the store decides.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::constant_time_eq;
use crate::delivery::Dispatcher;
use crate::delivery::target::Target;
use crate::error::ApiError;
use crate::event::{EventType, with_raw};
use crate::store::{
    DeliveryFilter, DeliveryId, DeliveryInfo, DeliveryStatus, EventFilter, ReceiptFilter,
    RetryOutcome, Store,
};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

pub struct AdminState {
    pub token: SecretString,
    pub store: Arc<dyn Store>,
    pub dispatcher: Dispatcher,
    pub targets: Vec<Arc<Target>>,
}

/// Registers the admin routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/admin")
            .route(
                "/sessions/{vendor}/{session_id}",
                web::get().to(get_session),
            )
            .route("/events", web::get().to(list_events))
            .route("/receipts", web::get().to(list_receipts))
            .route("/events/{id}/replay", web::post().to(replay_event))
            .route("/deliveries", web::get().to(list_deliveries))
            .route("/deliveries/{id}/retry", web::post().to(retry_delivery)),
    );
}

/// Proof that the request carried the admin token. Compared in constant time.
pub struct AdminAuth;

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = std::future::Ready<Result<AdminAuth, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = request.app_data::<web::Data<AdminState>>() else {
            return std::future::ready(Err(ApiError::NotFound(
                "the admin API is not enabled".into(),
            )));
        };
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = state.token.expose_secret().as_bytes();
        let matches = constant_time_eq(presented.as_bytes(), expected);
        std::future::ready(if matches && !presented.is_empty() {
            Ok(AdminAuth)
        } else {
            Err(ApiError::AdminUnauthorized)
        })
    }
}

fn limit(requested: Option<usize>) -> Result<usize, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {n}"
        ))),
    }
}

fn cursor(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    raw.map(|c| {
        c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::InvalidRequest(format!("cursor `{c}` is not one this API gave out"))
        })
    })
    .transpose()
}

/// The cursor for the page after one that ended at `last_seq`, if the page was full.
fn next_cursor(len: usize, limit: usize, last_seq: Option<i64>) -> Option<String> {
    (len == limit)
        .then_some(last_seq)
        .flatten()
        .map(|s| s.to_string())
}

async fn get_session(
    _: AdminAuth,
    path: web::Path<(String, String)>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let (vendor, session_id) = path.into_inner();
    match state
        .store
        .session(&vendor, &session_id)
        .await
        .map_err(ApiError::Unavailable)?
    {
        Some(view) => Ok(HttpResponse::Ok().json(view)),
        None => Err(ApiError::NotFound(format!(
            "no session {session_id} from vendor `{vendor}`"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    source: Option<String>,
    session: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventsPage {
    events: Vec<Box<RawValue>>,
    next_cursor: Option<String>,
}

async fn list_events(
    _: AdminAuth,
    query: web::Query<EventsQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    if let Some(t) = &query.event_type
        && EventType::parse(t).is_none()
    {
        return Err(ApiError::InvalidRequest(format!(
            "unknown event type `{t}`"
        )));
    }
    let limit = limit(query.limit)?;
    let events = state
        .store
        .events(EventFilter {
            source: query.source,
            session_id: query.session,
            event_type: query.event_type,
            before: cursor(query.cursor.as_deref())?,
            limit,
        })
        .await
        .map_err(ApiError::Unavailable)?;
    let next_cursor = next_cursor(events.len(), limit, events.last().map(|e| e.seq));
    let events = events
        .iter()
        .map(|e| {
            let json =
                String::from_utf8(with_raw(&e.body, &e.raw)).expect("stored events are UTF-8 JSON");
            RawValue::from_string(json).expect("stored events are JSON")
        })
        .collect();
    Ok(HttpResponse::Ok().json(EventsPage {
        events,
        next_cursor,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptsQuery {
    source: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReceiptView {
    source: String,
    status: String,
    vendor_event_type: Option<String>,
    message_id: Option<String>,
    received_at: String,
    /// The body as received: JSON when it is JSON (every body a vendor adapter took is),
    /// else its text.
    raw: Box<RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReceiptsPage {
    receipts: Vec<ReceiptView>,
    next_cursor: Option<String>,
}

/// What vendors sent, newest first: accepted, duplicate and ignored requests alike, so a
/// request that produced no event can still be found.
async fn list_receipts(
    _: AdminAuth,
    query: web::Query<ReceiptsQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    if let Some(status) = &query.status
        && !["accepted", "duplicate", "ignored"].contains(&status.as_str())
    {
        return Err(ApiError::InvalidRequest(format!(
            "unknown status `{status}` (one of accepted, duplicate, ignored)"
        )));
    }
    let limit = limit(query.limit)?;
    let receipts = state
        .store
        .receipts(ReceiptFilter {
            source: query.source,
            outcome: query.status,
            before: cursor(query.cursor.as_deref())?,
            limit,
        })
        .await
        .map_err(ApiError::Unavailable)?;
    let next_cursor = next_cursor(receipts.len(), limit, receipts.last().map(|r| r.seq));
    let receipts = receipts
        .into_iter()
        .map(|r| {
            let raw = std::str::from_utf8(&r.raw)
                .ok()
                .and_then(|text| RawValue::from_string(text.to_owned()).ok())
                .unwrap_or_else(|| {
                    let text = String::from_utf8_lossy(&r.raw);
                    serde_json::value::to_raw_value(&text).expect("a string serialises")
                });
            ReceiptView {
                source: r.source,
                status: r.outcome,
                vendor_event_type: r.vendor_event_type,
                message_id: r.message_id,
                received_at: r.received_at,
                raw,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(ReceiptsPage {
        receipts,
        next_cursor,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    status: Option<String>,
    target: Option<String>,
    event: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeliveriesPage {
    deliveries: Vec<DeliveryInfo>,
    next_cursor: Option<String>,
}

async fn list_deliveries(
    _: AdminAuth,
    query: web::Query<DeliveriesQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    // `failed`: still pending, but at least one attempt failed.
    let (status, failing) = match query.status.as_deref() {
        None => (None, false),
        Some("failed") => (Some(DeliveryStatus::Pending), true),
        Some(s) => match DeliveryStatus::parse(s) {
            Some(status) => (Some(status), false),
            None => {
                return Err(ApiError::InvalidRequest(format!(
                    "unknown status `{s}` (one of pending, failed, dead, delivered)"
                )));
            }
        },
    };
    let limit = limit(query.limit)?;
    let deliveries = state
        .store
        .deliveries(DeliveryFilter {
            status,
            failing,
            target: query.target,
            event_id: query.event,
            before: cursor(query.cursor.as_deref())?,
            limit,
            with_attempts: true,
        })
        .await
        .map_err(ApiError::Unavailable)?;
    let next_cursor = next_cursor(deliveries.len(), limit, deliveries.last().map(|d| d.seq));
    Ok(HttpResponse::Ok().json(DeliveriesPage {
        deliveries,
        next_cursor,
    }))
}

async fn retry_delivery(
    _: AdminAuth,
    id: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    match state
        .store
        .retry_delivery(&id)
        .await
        .map_err(ApiError::Unavailable)?
    {
        RetryOutcome::Requeued { target } => {
            state.dispatcher.notify(&target);
            tracing::info!(delivery_id = %id, "Dead delivery re-queued from the admin API");
            Ok(HttpResponse::Accepted()
                .json(serde_json::json!({"status": "requeued", "id": id.as_str()})))
        }
        RetryOutcome::NotDead(status) => Err(ApiError::Conflict(format!(
            "delivery {id} is {}; only dead deliveries can be retried",
            status.as_str()
        ))),
        RetryOutcome::NotFound => Err(ApiError::NotFound(format!("no delivery {id}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayQuery {
    target: Option<String>,
}

async fn replay_event(
    _: AdminAuth,
    id: web::Path<String>,
    query: web::Query<ReplayQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let Some(event) = state
        .store
        .event(&id)
        .await
        .map_err(ApiError::Unavailable)?
    else {
        return Err(ApiError::NotFound(format!("no event {id}")));
    };
    let targets: Vec<String> = match &query.target {
        // Named explicitly: the operator's choice, whatever the target's filters say.
        Some(name) => match state.targets.iter().find(|t| &t.name == name) {
            Some(t) => vec![t.name.clone()],
            None => {
                return Err(ApiError::NotFound(format!(
                    "no target named `{name}` is configured"
                )));
            }
        },
        None => {
            let event_type = EventType::parse(&event.event_type);
            state
                .targets
                .iter()
                .filter(|t| event_type.is_some_and(|et| t.accepts(&event.source, et)))
                .map(|t| t.name.clone())
                .collect()
        }
    };
    if targets.is_empty() {
        return Err(ApiError::Conflict(format!(
            "no configured target takes {} events from `{}`; name one with ?target=",
            event.event_type, event.source
        )));
    }
    let created: Vec<DeliveryId> = state
        .store
        .replay(&id, targets.clone())
        .await
        .map_err(ApiError::Unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("no event {id}")))?;
    for target in &targets {
        state.dispatcher.notify(target);
    }
    tracing::info!(event_id = %id, targets = ?targets, "Event replayed from the admin API");
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "status": "replaying",
        "eventId": id.as_str(),
        "deliveries": created,
    })))
}
