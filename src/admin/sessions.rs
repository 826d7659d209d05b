//! `GET /admin/sessions/{vendor}/{session_id}`: one session record, merged.

use actix_web::{HttpResponse, web};

use super::{AdminAuth, AdminState};
use crate::error::ApiError;

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
