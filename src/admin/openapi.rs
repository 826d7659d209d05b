//! `GET /admin/openapi.json`: the admin API's OpenAPI 3.1 document, generated from the
//! handlers' own annotations and types (utoipa), so it cannot drift from them; a test checks
//! live answers against it.

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::AdminAuth;

/// Every error's body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// A stable code: `invalid_request`, `unauthorized`, `too_many_requests`, `not_found`,
    /// `conflict`, `bad_gateway`, `unavailable`.
    code: String,
    /// What is wrong, for people.
    message: String,
}

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`server.admin_token`"))
                    .build(),
            ),
        );
    }
}

/// The answers every operation of a kind can give, added where a handler's annotation
/// leaves them out, so the document lists every status the API answers: 401 and 429 (with
/// `Retry-After`) behind the token, 400 for a query string that is not the operation's
/// (an unknown key, a malformed value).
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, header::HeaderBuilder};
        let error = |description: &str, retry_after: bool| {
            let mut response = ResponseBuilder::new().description(description).content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            );
            if retry_after {
                response = response.header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(utoipa::openapi::schema::Object::with_type(
                            utoipa::openapi::schema::Type::Integer,
                        ))
                        .description(Some("Seconds to wait before the next try"))
                        .build(),
                );
            }
            RefOr::T(response.build())
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut operation.responses.responses;
                if operation.security.is_some() {
                    responses
                        .entry("401".into())
                        .or_insert_with(|| error("No or a wrong admin token", false));
                    responses.entry("429".into()).or_insert_with(|| {
                        error(
                            "Too many wrong admin tokens from this address: wait Retry-After seconds",
                            true,
                        )
                    });
                }
                let takes_a_query = operation
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Query));
                if takes_a_query {
                    responses.entry("400".into()).or_insert_with(|| {
                        error("A query parameter is unknown or malformed", false)
                    });
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessiongate admin API",
        description = "Sessions, events, receipts and deliveries of a sessiongate gateway, \
                       behind `server.admin_token` (README, \"Admin API\")."
    ),
    paths(
        super::sessions::list_sessions,
        super::sessions::get_session,
        super::recordings::get_recording,
        super::events::list_events,
        super::events::replay_event,
        super::receipts::list_receipts,
        super::deliveries::list_deliveries,
        super::deliveries::retry_delivery,
        super::deliveries::retry_deliveries,
        super::recovery::recover_source,
        super::recovery::backfill_target,
        document,
    ),
    modifiers(&BearerToken, &CommonAnswers)
)]
pub struct AdminApi;

/// The document, as JSON.
pub fn json() -> String {
    let mut doc = AdminApi::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.to_json().expect("the OpenAPI document serialises")
}

/// This document.
#[utoipa::path(
    get,
    path = "/admin/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object),
        (status = 401, description = "No or a wrong admin token", body = ErrorBody),
    ),
    security(("admin_token" = []))
)]
pub(super) async fn document(_: AdminAuth) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}
