//! `GET /admin/receipts`: what vendors sent, whatever became of it.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{AdminAuth, AdminState, cursor, limit, next_cursor};
use crate::error::ApiError;
use crate::store::ReceiptFilter;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReceiptsQuery {
    source: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReceiptView {
    source: String,
    status: String,
    vendor_event_type: Option<String>,
    message_id: Option<String>,
    received_at: String,
    /// The body as received: JSON when it is JSON (every body a vendor adapter took is),
    /// else its text.
    raw: Box<RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReceiptsPage {
    receipts: Vec<ReceiptView>,
    next_cursor: Option<String>,
}

/// What vendors sent, newest first: accepted, duplicate and ignored requests alike, so a
/// request that produced no event can still be found.
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
    let receipts = state
        .store
        .receipts(ReceiptFilter {
            source: query.source,
            outcome: query.status,
            before: cursor(query.cursor.as_deref())?,
            limit,
        })
        .await
        .map_err(ApiError::Unavailable)?;
    let next_cursor = next_cursor(receipts.len(), limit, receipts.last().map(|r| r.seq));
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
