//! `GET /admin/events` and `POST /admin/events/{id}/replay`: stored canonical events, and
//! sending one again.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{AdminAuth, AdminState, cursor, limit, next_cursor};
use crate::error::ApiError;
use crate::event::{EventType, with_raw};
use crate::store::{DeliveryId, EventFilter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
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

pub(super) async fn list_events(
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
pub(super) struct ReplayQuery {
    target: Option<String>,
}

pub(super) async fn replay_event(
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
