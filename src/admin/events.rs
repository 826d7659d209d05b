//! `GET /admin/events` and `POST /admin/events/{id}/replay`: stored canonical events, and
//! sending one again.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::{AdminAuth, AdminState, cursor, limit, page};
use crate::error::ApiError;
use crate::event::{EventType, with_raw};
use crate::store::{DeliveryId, EventFilter};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only events from this source.
    source: Option<String>,
    /// Only this session's events.
    session: Option<String>,
    /// Only events of this type (e.g. `session.finalized`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// A page of canonical events, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventsPage {
    /// Canonical events as delivered (schema/session-event.v3.json), `raw` included.
    #[schema(value_type = Vec<Object>)]
    events: Vec<Box<RawValue>>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// Stored canonical events, newest first.
#[utoipa::path(
    get,
    path = "/admin/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of events", body = EventsPage),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
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
    let mut events = state
        .store
        .events(EventFilter {
            source: query.source,
            session_id: query.session,
            event_type: query.event_type,
            before: cursor(query.cursor.as_deref())?,
            limit: limit + 1,
        })
        .await
        .map_err(ApiError::Unavailable)?;
    let next_cursor = page(&mut events, limit, |e| e.seq.to_string());
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ReplayQuery {
    /// Send to this target only, whatever its filters say; else to every target that
    /// takes the event.
    target: Option<String>,
}

/// The answer to a replay.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Replaying {
    /// Always `replaying`.
    status: &'static str,
    event_id: String,
    /// The new deliveries' ids, one per target.
    deliveries: Vec<String>,
}

/// Sends a stored event again (same event id) as new deliveries.
#[utoipa::path(
    post,
    path = "/admin/events/{id}/replay",
    tag = "events",
    params(("id" = String, Path, description = "The event id (`evt_…`)"), ReplayQuery),
    responses(
        (status = 202, description = "New deliveries made", body = Replaying),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such event or target", body = ErrorBody),
        (status = 409, description = "No configured target takes the event", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn replay_event(
    _: AdminAuth,
    id: web::Path<String>,
    query: web::Query<ReplayQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let created = replay(&state, &id, query.into_inner().target).await?;
    Ok(HttpResponse::Accepted().json(Replaying {
        status: "replaying",
        event_id: id.into_inner(),
        deliveries: created.iter().map(|d| d.as_str().to_owned()).collect(),
    }))
}

/// Makes new deliveries of a stored event: to `target` when named (the operator's choice,
/// whatever the target's filters say), else to every target that takes it. For the API and
/// the console alike.
pub(crate) async fn replay(
    state: &AdminState,
    id: &str,
    target: Option<String>,
) -> Result<Vec<DeliveryId>, ApiError> {
    let Some(event) = state.store.event(id).await.map_err(ApiError::Unavailable)? else {
        return Err(ApiError::NotFound(format!("no event {id}")));
    };
    let targets: Vec<String> = match &target {
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
        .replay(id, targets.clone())
        .await
        .map_err(ApiError::Unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("no event {id}")))?;
    for target in &targets {
        state.dispatcher.notify(target);
    }
    tracing::info!(event_id = %id, targets = ?targets, "Event replayed from the admin API");
    Ok(created)
}
