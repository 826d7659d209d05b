//! `GET /admin/receipts`: what vendors sent, whatever became of it.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::{AdminAuth, AdminState, cursor, limit, page};
use crate::error::ApiError;
use crate::store::ReceiptFilter;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ReceiptsQuery {
    /// Only requests to this source.
    source: Option<String>,
    /// `accepted`, `duplicate` or `ignored`.
    status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// One request a vendor sent, as received.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReceiptView {
    source: String,
    /// `accepted`, `duplicate` or `ignored`.
    status: String,
    vendor_event_type: Option<String>,
    message_id: Option<String>,
    #[schema(format = DateTime)]
    received_at: String,
    /// The body as received: JSON when it is JSON (every body a vendor adapter took is),
    /// else its text.
    #[schema(value_type = Value)]
    raw: Box<RawValue>,
}

/// A page of receipts, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReceiptsPage {
    receipts: Vec<ReceiptView>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// What vendors sent, newest first: accepted, duplicate and ignored requests alike, so a
/// request that produced no event can still be found.
#[utoipa::path(
    get,
    path = "/admin/receipts",
    tag = "receipts",
    params(ReceiptsQuery),
    responses(
        (status = 200, description = "A page of receipts", body = ReceiptsPage),
        (status = 400, description = "A parameter is wrong", body = ErrorBody),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
        (status = 503, description = "The store is unavailable", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn list_receipts(
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
    let mut receipts = state
        .store
        .receipts(ReceiptFilter {
            source: query.source,
            outcome: query.status,
            before: cursor(query.cursor.as_deref())?,
            limit: limit + 1,
        })
        .await
        .map_err(ApiError::Unavailable)?;
    let next_cursor = page(&mut receipts, limit, |r| r.seq.to_string());
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
