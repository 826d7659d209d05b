//! `GET /admin/recordings/{vendor}/{session_id}`: the archived recording's bytes, streamed
//! from the store (file or S3) with their content type, as a download that never runs in
//! the browser (`attachment`, `nosniff`, a `sandbox` CSP).

use actix_web::body::SizedStream;
use actix_web::{HttpResponse, web};

use super::openapi::ErrorBody;
use super::{AdminAuth, AdminState};
use crate::error::ApiError;
use crate::event::ArchiveStatus;
use crate::store::StoreError;

/// The archived recording's bytes, with their content type.
#[utoipa::path(
    get,
    path = "/admin/recordings/{vendor}/{session_id}",
    tag = "sessions",
    params(
        ("vendor" = String, Path, description = "The session's vendor"),
        ("session_id" = String, Path, description = "The vendor's session id"),
    ),
    responses(
        (status = 200, description = "The recording", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 404, description = "No archived recording", body = ErrorBody),
        (status = 503, description = "The archive store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn get_recording(
    _: AdminAuth,
    path: web::Path<(String, String)>,
    state: web::Data<AdminState>,
) -> Result<HttpResponse, ApiError> {
    let (vendor, session_id) = path.into_inner();
    let none = || {
        ApiError::NotFound(format!(
            "no archived recording of session {session_id} from vendor `{vendor}`"
        ))
    };
    let archive_store = state.archive.as_ref().ok_or_else(none)?;
    let view = state
        .store
        .session(&vendor, &session_id)
        .await
        .map_err(ApiError::Unavailable)?
        .ok_or_else(none)?;
    let archive = view
        .session
        .recording
        .and_then(|r| r.archive)
        .filter(|a| a.status == ArchiveStatus::Archived)
        .ok_or_else(none)?;
    // Deleted by retention (or by hand) is not found; a store that fails is unavailable.
    let (size, stream) = archive_store
        .read(&vendor, &session_id)
        .await
        .map_err(|e| ApiError::Unavailable(StoreError::Backend(e.into())))?
        .ok_or_else(none)?;
    // The bytes are whatever a vendor's host sent: never rendered on the console's origin
    // (a downloaded HTML page would otherwise run there with the operator's session).
    Ok(HttpResponse::Ok()
        .insert_header(("Content-Disposition", "attachment"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Content-Security-Policy", "sandbox"))
        .content_type(
            archive
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
        )
        .body(SizedStream::new(size, stream)))
}
