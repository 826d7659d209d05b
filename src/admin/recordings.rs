//! `GET /admin/recordings/{vendor}/{session_id}`: the archived recording's bytes, streamed
//! from the store with their content type.

use actix_web::body::SizedStream;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use tokio::io::AsyncReadExt;

use super::{AdminAuth, AdminState};
use crate::error::ApiError;
use crate::event::ArchiveStatus;

/// Bytes read from the store per chunk of the answer.
const CHUNK: usize = 64 * 1024;

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
    let path = archive
        .url
        .as_deref()
        .and_then(|u| u.strip_prefix("file://"))
        .ok_or_else(none)?
        .to_owned();
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        // Deleted by retention, or by hand.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(none()),
        Err(e) => {
            return Err(ApiError::Unavailable(crate::store::StoreError::Backend(
                Box::new(e),
            )));
        }
    };
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::Unavailable(crate::store::StoreError::Backend(Box::new(e))))?
        .len();
    let stream = futures_util::stream::unfold(file, |mut file| async move {
        let mut buffer = vec![0; CHUNK];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buffer)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type(
            archive
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
        )
        .body(SizedStream::new(size, stream)))
}
