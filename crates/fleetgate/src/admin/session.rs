//! The dashboard's session. `POST /v1/session` with `{"token": "..."}` answers with an HttpOnly,
//! SameSite=Strict cookie holding the token (hex), so the page never keeps the token in script,
//! storage or a URL. The API takes that cookie in place of `Authorization: Bearer`; a write
//! (anything but GET/HEAD) authenticated by the cookie must also carry `X-Fleetgate: 1`, a header
//! a cross-site form or image cannot send (CSRF). `DELETE /v1/session` forgets the cookie;
//! `GET /v1/session` says whether a token is needed at all.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::AdminState;
use super::problem::{Problem, kind};

/// The cookie's name.
pub const COOKIE: &str = "fleetgate_session";
/// The header a cookie-authenticated write must carry, with the value `1`.
pub const CSRF_HEADER: &str = "x-fleetgate";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// Lowercase hex (the stored form).
fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Hex of either case; `None` for anything else (odd length, other characters).
fn unhex(text: &str) -> Option<Vec<u8>> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .ok()
}

/// The token in the request's session cookie, if there is one.
pub fn cookie_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| unhex(value))
}

/// Whether a cookie-authenticated request may go on: reads always, writes with the CSRF header.
pub fn csrf_ok(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        || headers.get(CSRF_HEADER).map(HeaderValue::as_bytes) == Some(b"1")
}

/// `POST /v1/session`: 204 with the cookie when the token is right (204 without one when the
/// API has no token), 401 otherwise.
pub async fn create(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    if headers.get(CSRF_HEADER).map(HeaderValue::as_bytes) != Some(b"1") {
        return Err(Problem::new(
            kind::FORBIDDEN,
            "send X-Fleetgate: 1 with POST /v1/session",
        ));
    }
    let login: Login = serde_json::from_slice(&body).map_err(|e| {
        Problem::new(
            kind::MALFORMED_JSON,
            format!("expected {{\"token\": \"...\"}}: {e}"),
        )
    })?;
    let Some(token) = &state.token else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    if !bool::from(login.token.as_bytes().ct_eq(token.as_bytes())) {
        return Err(Problem::new(
            kind::UNAUTHORIZED,
            "that is not the token in admin.token_file",
        ));
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        hex(login.token.as_bytes())
    );
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[derive(serde::Serialize)]
pub struct SessionInfo {
    /// Whether the API needs a token (the page offers to forget it only then).
    token_required: bool,
}

/// `GET /v1/session`: whether a token is needed (no secret in the answer).
pub async fn show(State(state): State<Arc<AdminState>>) -> axum::Json<SessionInfo> {
    axum::Json(SessionInfo {
        token_required: state.token.is_some(),
    })
}

/// `DELETE /v1/session`: the cookie is cleared.
pub async fn remove() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "fleetgate_session=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_cookie_carries_the_token_in_hex() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={}", hex(b"s3cret; x"))).unwrap(),
        );
        assert_eq!(cookie_token(&headers).unwrap(), b"s3cret; x");
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("fleetgate_session=zz"),
        );
        assert_eq!(cookie_token(&headers), None);
    }

    #[test]
    fn cookie_writes_need_the_header() {
        let mut headers = HeaderMap::new();
        assert!(csrf_ok(&Method::GET, &headers));
        assert!(!csrf_ok(&Method::POST, &headers));
        headers.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        assert!(csrf_ok(&Method::DELETE, &headers));
    }
}
