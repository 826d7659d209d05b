//! `GET /admin/deliveries` and `POST /admin/deliveries/{id}/retry`: the outbox, and
//! requeueing a dead delivery.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{AdminAuth, AdminState, cursor, limit, next_cursor};
use crate::error::ApiError;
use crate::store::{DeliveryFilter, DeliveryInfo, DeliveryStatus, RetryOutcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeliveriesQuery {
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

pub(super) async fn list_deliveries(
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

pub(super) async fn retry_delivery(
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
