//! The one API error type: status codes and the JSON error body.
//!
//! Every error answer is `{"error": {"code": "...", "message": "..."}}`. 4xx messages say
//! what to fix; 5xx messages say nothing internal, while the log gets the cause chain.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::AuthFailure;
use crate::store::StoreError;
use crate::vendors::PayloadError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no source named `{0}` is configured")]
    UnknownSource(String),
    #[error("{0}")]
    Unauthorized(#[from] AuthFailure),
    #[error("{0}")]
    InvalidPayload(#[from] PayloadError),
    #[error("could not read the request body: {0}")]
    UnreadableBody(String),
    #[error("the request body did not arrive within {0} ms")]
    BodyTimeout(u64),
    #[error("request body is larger than the {limit} bytes allowed")]
    PayloadTooLarge { limit: usize },
    #[error("the gateway cannot store events right now; retry later")]
    Unavailable(#[source] StoreError),
    #[error("the gateway is reading as many request bodies as it may hold at once; retry later")]
    Overloaded,
    #[error("{0}")]
    NotFound(String),
    #[error("missing or wrong admin token: send Authorization: Bearer <server.admin_token>")]
    AdminUnauthorized,
    /// Too many wrong admin tokens from this address: wait this many seconds.
    #[error("too many wrong admin tokens from this address; retry after {0} s")]
    TooManyAttempts(u64),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the gateway is shutting down; ask again once it is back")]
    ShuttingDown,
    /// A vendor's API that the gateway called for the request failed.
    #[error("{0}")]
    BadGateway(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::UnknownSource(_) => "unknown_source",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::InvalidPayload(_) | ApiError::UnreadableBody(_) => "invalid_payload",
            ApiError::BodyTimeout(_) => "request_timeout",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::Unavailable(_) | ApiError::Overloaded | ApiError::ShuttingDown => {
                "unavailable"
            }
            ApiError::NotFound(_) => "not_found",
            ApiError::AdminUnauthorized => "unauthorized",
            ApiError::TooManyAttempts(_) => "too_many_requests",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Conflict(_) => "conflict",
            ApiError::BadGateway(_) => "bad_gateway",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

/// Builds the JSON error body for any status; used for errors outside [`ApiError`] too.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: ErrorDetail { code, message },
    })
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::UnknownSource(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) | ApiError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::InvalidPayload(_) | ApiError::UnreadableBody(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) | ApiError::Overloaded | ApiError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = error_response(self.status_code(), self.code(), &self.to_string());
        let retry_after = match self {
            ApiError::Unavailable(_) | ApiError::Overloaded => Some(5),
            ApiError::TooManyAttempts(seconds) => Some(*seconds),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                actix_web::http::header::HeaderValue::from(seconds),
            );
        }
        response
    }
}
