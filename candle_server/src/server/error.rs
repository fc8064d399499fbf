//! The one error type of the request path: each variant is a status code of the contract and
//! renders as `{"error": "<message>"}`.

use std::fmt;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: malformed JSON, missing or mistyped field, value out of range, unreadable body.
    BadRequest(String),
    /// 401: an API key is configured and the request did not carry it.
    Unauthorized,
    /// 404: unknown path or unknown user.
    NotFound(String),
    /// 405: known path, wrong method; `allow` lists the accepted methods.
    MethodNotAllowed { path: String, allow: &'static str },
    /// 408: the request body did not arrive in time (the connection is then closed).
    RequestTimeout(String),
    /// 413: body over the limit.
    PayloadTooLarge { limit: usize },
    /// 431: request headers over the limit.
    HeadersTooLarge { limit: usize },
    /// 503: the database did not answer; the server keeps running and recovers.
    Unavailable(String),
    /// 500: a bug or corrupt data; never expected.
    Internal(String),
}

impl ApiError {
    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::RequestTimeout(m)
            | ApiError::Internal(m) => m.clone(),
            ApiError::Unavailable(m) => format!("database unavailable: {m}"),
            ApiError::Unauthorized => "missing or invalid API key".into(),
            ApiError::MethodNotAllowed { path, allow, .. } => {
                format!("method not allowed on {path}: use {allow}")
            }
            ApiError::PayloadTooLarge { limit } => format!("request body over {limit} bytes"),
            ApiError::HeadersTooLarge { limit } => format!("request headers over {limit} bytes"),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// `{"error": message}` as bytes; serde escapes whatever the message holds.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_else(|_| b"{}".to_vec())
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(message) = self {
            // A 500 is a bug by the contract's definition: leave a trace of it.
            eprintln!("candle_server: internal error: {message}");
        }
        let mut response = HttpResponse::build(self.status_code());
        response
            .insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/json")));
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
        }
        response.body(error_body(&self.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        let cases = [
            (
                ApiError::BadRequest("top_k must be an integer".into()),
                400,
                "top_k must be an integer",
            ),
            (ApiError::NotFound("user 123 not found".into()), 404, "user 123 not found"),
            (ApiError::PayloadTooLarge { limit: 65536 }, 413, "request body over 65536 bytes"),
            (ApiError::HeadersTooLarge { limit: 16384 }, 431, "request headers over 16384 bytes"),
            (
                ApiError::Unavailable("connection refused".into()),
                503,
                "database unavailable: connection refused",
            ),
        ];
        for (error, status, message) in cases {
            assert_eq!(error.status_code().as_u16(), status);
            assert_eq!(error.message(), message);
        }
    }

    #[test]
    fn body_is_escaped_json() {
        let body = error_body("bad \"quote\"\n");
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value, serde_json::json!({"error": "bad \"quote\"\n"}));
    }
}
