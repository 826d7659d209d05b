//! `POST /admin/sources/{name}/recover` and `POST /admin/targets/{name}/backfill`: one
//! recovery over a window the operator names, and a target's deliveries of stored events.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::{AdminAuth, AdminState};
use crate::error::ApiError;
use crate::event::Timestamp;
use crate::recovery::Failure;
use crate::store::Backfill;

/// Backfilled deliveries fall due this many per second from now, behind the target's live
/// deliveries (due at once), so that a month of history does not hold up today's calls.
pub const BACKFILL_PER_SECOND: i64 = 200;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct WindowQuery {
    /// The window's start (RFC 3339).
    since: String,
    /// The window's end (RFC 3339), after `since`.
    until: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct BackfillQuery {
    /// Events received from (RFC 3339).
    since: String,
    /// Events received before (RFC 3339).
    until: String,
    /// Only count what would be queued.
    dry_run: Option<bool>,
}

/// The window of a query: both ends RFC 3339, the end after the start.
fn window(since: &str, until: &str) -> Result<(Timestamp, Timestamp), ApiError> {
    let parse = |key: &str, value: &str| {
        Timestamp::parse(value).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "`{key}` must be an RFC 3339 time such as 2026-12-07T02:10:00Z, got `{value}`"
            ))
        })
    };
    let (since, until) = (parse("since", since)?, parse("until", until)?);
    if until <= since {
        return Err(ApiError::InvalidRequest(format!(
            "`until` ({until}) must be after `since` ({since})"
        )));
    }
    Ok((since, until))
}

/// What a recovery over a window found.
#[derive(Serialize, ToSchema)]
pub(super) struct Recovered {
    /// Calls the vendor listed as ended in the window.
    listed: u64,
    /// Calls that produced events the gateway did not have.
    recovered: u64,
}

/// Recovers, now, the calls of a source's vendor that ended in a window (an outage the
/// operator knows of), from the vendor's list API, as the source's polls do.
#[utoipa::path(
    post,
    path = "/admin/sources/{name}/recover",
    tag = "recovery",
    params(("name" = String, Path, description = "A source with `recover`"), WindowQuery),
    responses(
        (status = 200, description = "The window was recovered", body = Recovered),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
        (status = 409, description = "The source has no `recover`", body = ErrorBody),
        (status = 502, description = "The vendor's API failed or refused the key", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn recover_source(
    _: AdminAuth,
    name: web::Path<String>,
    query: web::Query<WindowQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let (since, until) = window(&query.since, &query.until)?;
    if !state.sources.iter().any(|(n, _)| n == name.as_str()) {
        return Err(ApiError::NotFound(format!(
            "no source named `{}` is configured",
            crate::vendors::printable(&name, 64)
        )));
    }
    let Some(found) = state.recoverer.recover_window(&name, since, until).await else {
        return Err(ApiError::Conflict(format!(
            "source `{name}` has no `recover`: set recover = {{ api_key = \"env:…\" }} on it"
        )));
    };
    match found {
        Ok(found) => {
            tracing::info!(source = %name, %since, %until, listed = found.listed, recovered = found.recovered, "Recovered a window from the admin API");
            Ok(HttpResponse::Ok().json(Recovered {
                listed: found.listed,
                recovered: found.recovered,
            }))
        }
        Err(Failure::Store(e)) => Err(ApiError::Unavailable(e)),
        Err(Failure::Stopped) => Err(ApiError::ShuttingDown),
        Err(failure) => Err(ApiError::BadGateway(format!(
            "recovery of `{name}` failed: {failure}"
        ))),
    }
}

/// How many deliveries a backfill queued.
#[derive(Serialize, ToSchema)]
pub(super) struct Queued {
    /// Deliveries queued (with `dry_run`, that would be).
    queued: usize,
}

/// Queues every stored event received in a window that the target's filters take and that
/// it has not been delivered, as ordinary deliveries (same event ids), behind its live ones.
#[utoipa::path(
    post,
    path = "/admin/targets/{name}/backfill",
    tag = "deliveries",
    params(("name" = String, Path, description = "A configured target"), BackfillQuery),
    responses(
        (status = 200, description = "The deliveries were queued (or counted)", body = Queued),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn backfill_target(
    _: AdminAuth,
    name: web::Path<String>,
    query: web::Query<BackfillQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let (since, until) = window(&query.since, &query.until)?;
    let Some(target) = state.targets.iter().find(|t| t.name == name.as_str()) else {
        return Err(ApiError::NotFound(format!(
            "no target named `{}` is configured",
            crate::vendors::printable(&name, 64)
        )));
    };
    let dry_run = query.dry_run.unwrap_or(false);
    let queued = state
        .store
        .backfill(Backfill {
            target: target.name.clone(),
            since,
            until,
            sources: target.sources.clone(),
            event_types: target.events.clone(),
            dry_run,
            spacing_ms: 1000 / BACKFILL_PER_SECOND,
        })
        .await
        .map_err(ApiError::Unavailable)?;
    if !dry_run && queued > 0 {
        state.dispatcher.notify(&target.name);
    }
    tracing::info!(target_name = %target.name, %since, %until, dry_run, queued, "Backfill from the admin API");
    Ok(HttpResponse::Ok().json(Queued { queued }))
}
