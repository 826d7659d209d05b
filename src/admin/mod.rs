//! The admin API (README, "Admin API"): sessions, events and deliveries, behind a Bearer token.
//!
//! Mounted only when `server.admin_token` is set. Every handler takes [`AdminAuth`], so no
//! route can be added without the token check. Lists are newest first and paginate with an
//! opaque `cursor` (answered as `nextCursor` while more may follow). Handlers only read or
//! ask the store to change state; the store decides.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpRequest, web};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::constant_time_eq;
use crate::delivery::Dispatcher;
use crate::delivery::target::Target;
use crate::error::ApiError;
use crate::store::Store;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

pub struct AdminState {
    pub token: SecretString,
    pub store: Arc<dyn Store>,
    pub dispatcher: Dispatcher,
    pub targets: Vec<Arc<Target>>,
    /// Each configured source's name and vendor (a session's events are stored by source).
    pub sources: Vec<(String, crate::vendors::Vendor)>,
    /// Where recordings are archived (`[recordings]`), to serve them back.
    pub archive: Option<crate::enrich::recordings::ArchiveStore>,
    /// Wrong tokens per peer, for the API and the console's login.
    pub guard: guard::Guard,
    /// Recovery from the vendors' list APIs, for `POST /admin/sources/{name}/recover`.
    pub recoverer: Arc<crate::recovery::Recoverer>,
}

mod deliveries;
mod events;
pub mod guard;
pub(crate) use deliveries::{retry_dead, retry_one};
pub(crate) use events::replay;
pub(crate) use sessions::SessionsQuery;
pub mod openapi;
mod receipts;
mod recordings;
mod recovery;
mod sessions;

/// Registers the admin routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/admin")
            .route("/openapi.json", web::get().to(openapi::document))
            .route("/sessions", web::get().to(sessions::list_sessions))
            .route(
                "/sessions/{vendor}/{session_id}",
                web::get().to(sessions::get_session),
            )
            .route(
                "/recordings/{vendor}/{session_id}",
                web::get().to(recordings::get_recording),
            )
            .route("/events", web::get().to(events::list_events))
            .route("/receipts", web::get().to(receipts::list_receipts))
            .route("/events/{id}/replay", web::post().to(events::replay_event))
            .route("/deliveries", web::get().to(deliveries::list_deliveries))
            .route(
                "/deliveries/retry",
                web::post().to(deliveries::retry_deliveries),
            )
            .route(
                "/deliveries/{id}/retry",
                web::post().to(deliveries::retry_delivery),
            )
            .route(
                "/sources/{name}/recover",
                web::post().to(recovery::recover_source),
            )
            .route(
                "/targets/{name}/backfill",
                web::post().to(recovery::backfill_target),
            ),
    );
}

/// Proof that the request carried the admin token. Compared in constant time.
pub struct AdminAuth;

impl AdminState {
    /// The names of the sources that speak for `vendor`.
    pub fn sources_of(&self, vendor: &str) -> Vec<String> {
        self.sources
            .iter()
            .filter(|(_, v)| v.as_str() == vendor)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = std::future::Ready<Result<AdminAuth, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = request.app_data::<web::Data<AdminState>>() else {
            return std::future::ready(Err(ApiError::NotFound(
                "the admin API is not enabled".into(),
            )));
        };
        let peer = request.peer_addr().map(|a| a.ip());
        if let Err(wait) = state.guard.admit(peer, "admin API") {
            return std::future::ready(Err(ApiError::TooManyAttempts(wait.seconds())));
        }
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = state.token.expose_secret().as_bytes();
        let matches = constant_time_eq(presented.as_bytes(), expected);
        std::future::ready(if matches && !presented.is_empty() {
            state.guard.succeeded(peer);
            Ok(AdminAuth)
        } else {
            match state.guard.failed(peer, "admin API") {
                Some(wait) => Err(ApiError::TooManyAttempts(wait.seconds())),
                None => Err(ApiError::AdminUnauthorized),
            }
        })
    }
}

fn limit(requested: Option<usize>) -> Result<usize, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {n}"
        ))),
    }
}

fn cursor(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    raw.map(|c| {
        c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::InvalidRequest(format!("cursor `{c}` is not one this API gave out"))
        })
    })
    .transpose()
}

/// Cuts a page read with `limit + 1` rows to `limit`, and answers the cursor of the next
/// page only when that extra row showed one follows.
fn page<T>(rows: &mut Vec<T>, limit: usize, cursor: impl Fn(&T) -> String) -> Option<String> {
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(cursor)
}
