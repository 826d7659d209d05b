//! `GET /admin/deliveries`, `POST /admin/deliveries/{id}/retry` and
//! `POST /admin/deliveries/retry`: the outbox, and requeueing dead deliveries.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::{AdminAuth, AdminState, cursor, limit, page};
use crate::error::ApiError;
use crate::store::{DeliveryFilter, DeliveryInfo, DeliveryStatus, Retried, RetryOutcome};

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DeliveriesQuery {
    /// `pending`, `failed` (pending after a failed attempt), `dead` or `delivered`.
    status: Option<String>,
    /// Only this target's deliveries.
    target: Option<String>,
    /// Only this event's deliveries.
    event: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// A page of deliveries, newest first, each with every attempt.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeliveriesPage {
    deliveries: Vec<DeliveryInfo>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// Deliveries, newest first, with their attempts.
#[utoipa::path(
    get,
    path = "/admin/deliveries",
    tag = "deliveries",
    params(DeliveriesQuery),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveriesPage),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
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
    let mut deliveries = state
        .store
        .deliveries(DeliveryFilter {
            status,
            failing,
            target: query.target,
            event_id: query.event,
            before: cursor(query.cursor.as_deref())?,
            limit: limit + 1,
            with_attempts: true,
        })
        .await
        .map_err(ApiError::Unavailable)?;
    let next_cursor = page(&mut deliveries, limit, |d| d.seq.to_string());
    Ok(HttpResponse::Ok().json(DeliveriesPage {
        deliveries,
        next_cursor,
    }))
}

/// The answer to a retry of one delivery.
#[derive(Serialize, ToSchema)]
pub(super) struct Requeued {
    /// Always `requeued`.
    status: &'static str,
    id: String,
}

/// Puts one dead delivery back in the queue with a fresh attempt budget.
#[utoipa::path(
    post,
    path = "/admin/deliveries/{id}/retry",
    tag = "deliveries",
    params(("id" = String, Path, description = "The delivery id (`dlv_…`)")),
    responses(
        (status = 202, description = "Re-queued", body = Requeued),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
        (status = 409, description = "The delivery is not dead", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn retry_delivery(
    _: AdminAuth,
    id: web::Path<String>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    retry_one(&state, &id).await?;
    Ok(HttpResponse::Accepted().json(Requeued {
        status: "requeued",
        id: id.into_inner(),
    }))
}

/// Re-queues one dead delivery, for the API and the console alike.
pub(crate) async fn retry_one(state: &AdminState, id: &str) -> Result<(), ApiError> {
    match state
        .store
        .retry_delivery(id)
        .await
        .map_err(ApiError::Unavailable)?
    {
        RetryOutcome::Requeued { target } => {
            state.dispatcher.notify(&target);
            tracing::info!(delivery_id = %id, "Dead delivery re-queued from the admin API");
            Ok(())
        }
        RetryOutcome::NotDead(status) => Err(ApiError::Conflict(format!(
            "delivery {id} is {}; only dead deliveries can be retried",
            status.as_str()
        ))),
        RetryOutcome::NotFound => Err(ApiError::NotFound(format!("no delivery {id}"))),
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RetryQuery {
    /// Must be `dead`: only dead deliveries are retried.
    status: Option<String>,
    /// Only this target's dead deliveries.
    target: Option<String>,
}

/// Re-queues every dead delivery (of one target, when given), each with a fresh attempt
/// budget, in one transaction.
#[utoipa::path(
    post,
    path = "/admin/deliveries/retry",
    tag = "deliveries",
    params(RetryQuery),
    responses(
        (status = 200, description = "How many were re-queued", body = Retried),
        (status = 400, description = "`status` is not `dead`", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such target is configured", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn retry_deliveries(
    _: AdminAuth,
    query: web::Query<RetryQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let retried = retry_dead(&state, query.status.as_deref(), query.target).await?;
    Ok(HttpResponse::Ok().json(retried))
}

/// The bulk retry, for the API and the console alike.
pub(crate) async fn retry_dead(
    state: &AdminState,
    status: Option<&str>,
    target: Option<String>,
) -> Result<Retried, ApiError> {
    if status != Some("dead") {
        return Err(ApiError::InvalidRequest(
            "give status=dead: only dead deliveries can be retried".into(),
        ));
    }
    if let Some(name) = &target
        && !state.targets.iter().any(|t| &t.name == name)
    {
        return Err(ApiError::NotFound(format!(
            "no target named `{name}` is configured"
        )));
    }
    let retried = state
        .store
        .retry_dead(target.clone())
        .await
        .map_err(ApiError::Unavailable)?;
    for target in &retried.targets {
        state.dispatcher.notify(target);
    }
    tracing::info!(
        retried = retried.retried,
        target = target.as_deref().unwrap_or("*"),
        "Dead deliveries re-queued from the admin API"
    );
    Ok(retried)
}
