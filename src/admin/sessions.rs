//! `GET /admin/sessions`: the session search; `GET /admin/sessions/{vendor}/{session_id}`:
//! one session record, merged.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::{AdminAuth, AdminState, limit, page};
use crate::error::ApiError;
use crate::event::Timestamp;
use crate::store::{SessionFilter, SessionView};
use crate::vendors::Vendor;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SessionsQuery {
    /// Only this vendor's sessions (`pathors`, `agntix`).
    pub(crate) vendor: Option<String>,
    /// An exact session id.
    pub(crate) session: Option<String>,
    /// First seen at or after this time (RFC 3339).
    pub(crate) since: Option<String>,
    /// First seen before this time (RFC 3339).
    pub(crate) until: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub(crate) limit: Option<usize>,
    /// `nextCursor` of the previous page.
    pub(crate) cursor: Option<String>,
}

/// A page of sessions, newest first by when first seen.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionsPage {
    sessions: Vec<SessionView>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

impl SessionsQuery {
    /// The store's filter, or an error naming the parameter that is wrong.
    pub(crate) fn filter(self) -> Result<SessionFilter, ApiError> {
        if let Some(vendor) = &self.vendor
            && !Vendor::ALL.iter().any(|v| v.as_str() == vendor)
        {
            return Err(ApiError::InvalidRequest(format!(
                "unknown vendor `{vendor}` (one of {})",
                Vendor::ALL.map(Vendor::as_str).join(", ")
            )));
        }
        let time = |name: &str, raw: Option<String>| {
            raw.map(|t| {
                Timestamp::parse(&t)
                    .map(Timestamp::unix_millis)
                    .ok_or_else(|| {
                        ApiError::InvalidRequest(format!(
                            "{name} `{t}` is not an RFC 3339 time (e.g. 2026-12-01T09:30:00Z)"
                        ))
                    })
            })
            .transpose()
        };
        Ok(SessionFilter {
            since: time("since", self.since)?,
            until: time("until", self.until)?,
            before: self.cursor.as_deref().map(parse_cursor).transpose()?,
            vendor: self.vendor,
            session_id: self.session.filter(|s| !s.is_empty()),
            vendors: Vendor::ALL.map(|v| v.as_str().to_owned()).to_vec(),
            limit: limit(self.limit)?,
        })
    }
}

/// A session page cursor, `first-seen-ms:seq`.
fn parse_cursor(raw: &str) -> Result<(i64, i64), ApiError> {
    raw.split_once(':')
        .and_then(|(at, seq)| Some((at.parse().ok()?, seq.parse().ok()?)))
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!("cursor `{raw}` is not one this API gave out"))
        })
}

/// Sessions, newest first by when first seen; by id, vendor and time.
#[utoipa::path(
    get,
    path = "/admin/sessions",
    tag = "sessions",
    params(SessionsQuery),
    responses(
        (status = 200, description = "A page of sessions", body = SessionsPage),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn list_sessions(
    _: AdminAuth,
    query: web::Query<SessionsQuery>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let mut filter = query.into_inner().filter()?;
    let limit = filter.limit;
    filter.limit += 1;
    let mut found = state
        .store
        .sessions(filter)
        .await
        .map_err(ApiError::Unavailable)?;
    let next_cursor = page(&mut found, limit, |l| l.cursor());
    Ok(HttpResponse::Ok().json(SessionsPage {
        sessions: found.into_iter().map(|l| l.view).collect(),
        next_cursor,
    }))
}

/// One session record: every event of the session merged.
#[utoipa::path(
    get,
    path = "/admin/sessions/{vendor}/{session_id}",
    tag = "sessions",
    params(
        ("vendor" = String, Path, description = "The session's vendor"),
        ("session_id" = String, Path, description = "The vendor's session id"),
    ),
    responses(
        (status = 200, description = "The merged session", body = SessionView),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn get_session(
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
