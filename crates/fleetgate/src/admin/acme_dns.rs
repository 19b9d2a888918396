//! The acme-dns HTTP API (github.com/joohoi/acme-dns) over [`dns::AcmeDns`], so ACME clients
//! with an acme-dns provider (lego, certbot-dns-acmedns, cert-manager) can use the fleet's
//! delegated zone. Base URL: `http://NODE:PORT/acme-dns`.
//!
//! ```text
//! POST /acme-dns/register   {"allowfrom": [...]} (body optional) -> 201 {username, password, fulldomain, subdomain, allowfrom}
//!                           needs the admin token unless [dns] acme_dns_open_registration = true
//! POST /acme-dns/update     X-Api-User, X-Api-Key, {"subdomain", "txt"} -> 200 {"txt"}
//! GET  /acme-dns/health     200
//! ```
//!
//! Errors are acme-dns's `{"error": "..."}` bodies, which its clients read: 400 `malformed_json`,
//! `bad_subdomain`, `bad_txt`, `invalid_allowfrom_cidr`; 401 `forbidden` (wrong user or key,
//! another account's subdomain, a source outside `allowfrom`); 429 `too_many_requests`.
//! These routes do not take the admin bearer token (acme-dns clients cannot send one): they are
//! mounted beside the token check, not behind it. Unix-socket peers count as 127.0.0.1.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::admin_config::AdminToken;

/// Largest request body (acme-dns requests are a few hundred bytes).
const MAX_BODY: usize = 8 * 1024;
/// Update attempts per source address per window; PBKDF2 makes each one cost CPU on purpose.
const UPDATES_PER_WINDOW: u32 = 30;
const WINDOW: Duration = Duration::from_secs(60);
/// Source addresses tracked at once; past it, new addresses wait for the window to pass.
const TRACKED: usize = 10_000;
/// Password checks running at once, node-wide.
const CONCURRENT_CHECKS: usize = 2;

/// The connecting peer's address, for `allowfrom` (a unix socket: 127.0.0.1).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// What the acme-dns routes share.
pub struct AcmeDnsState {
    /// `None`: no `[dns] zone`, every route answers 404.
    api: Option<dns::AcmeDns>,
    open_registration: bool,
    token: Option<AdminToken>,
    checks: Semaphore,
    attempts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AcmeDnsState {
    pub fn new(
        api: Option<dns::AcmeDns>,
        open_registration: bool,
        token: Option<AdminToken>,
    ) -> AcmeDnsState {
        AcmeDnsState {
            api,
            open_registration,
            token,
            checks: Semaphore::new(CONCURRENT_CHECKS),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Count an update attempt from `ip`; false when over the limit.
    fn allow(&self, ip: IpAddr) -> bool {
        let mut attempts = match self.attempts.lock() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        attempts.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        if attempts.len() >= TRACKED && !attempts.contains_key(&ip) {
            return false;
        }
        let (_, count) = attempts.entry(ip).or_insert((now, 0));
        *count = count.saturating_add(1);
        *count <= UPDATES_PER_WINDOW
    }
}

/// The routes under `/acme-dns/`, with their own state and no admin token check.
pub fn router(state: Arc<AcmeDnsState>) -> Router {
    Router::new()
        .route("/acme-dns/register", post(register))
        .route("/acme-dns/update", post(update))
        .route("/acme-dns/health", get(health))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn error(status: StatusCode, code: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": code }))).into_response()
}

fn forbidden() -> Response {
    error(StatusCode::UNAUTHORIZED, "forbidden")
}

fn not_configured() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_configured: [dns] zone is not set",
    )
}

async fn health(State(state): State<Arc<AcmeDnsState>>) -> Response {
    if state.api.is_none() {
        return not_configured();
    }
    StatusCode::OK.into_response()
}

#[derive(Deserialize, Default)]
struct RegisterBody {
    #[serde(default)]
    allowfrom: Vec<String>,
}

async fn register(
    State(state): State<Arc<AcmeDnsState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(api) = &state.api else {
        return not_configured();
    };
    if !state.open_registration
        && let Some(token) = &state.token
    {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, rest)| rest.trim_start());
        if !given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes()))) {
            return error(
                StatusCode::UNAUTHORIZED,
                "forbidden: registration needs the admin bearer token (or [dns] acme_dns_open_registration = true)",
            );
        }
    }
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        RegisterBody::default()
    } else {
        match serde_json::from_slice::<RegisterBody>(&body) {
            Ok(b) => b,
            Err(_) => return error(StatusCode::BAD_REQUEST, "malformed_json"),
        }
    };
    match api.register(&parsed.allowfrom).await {
        Ok(reg) => (StatusCode::CREATED, axum::Json(reg)).into_response(),
        Err(dns::Error::Invalid(_)) => error(StatusCode::BAD_REQUEST, "invalid_allowfrom_cidr"),
        Err(e) => {
            tracing::warn!(error = %e, "acme-dns registration failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "db_error")
        }
    }
}

#[derive(Deserialize)]
struct UpdateBody {
    subdomain: String,
    txt: String,
}

async fn update(
    State(state): State<Arc<AcmeDnsState>>,
    ConnectInfo(Peer(client)): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(api) = &state.api else {
        return not_configured();
    };
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(user), Some(key)) = (header_text("x-api-user"), header_text("x-api-key")) else {
        return forbidden();
    };
    let Ok(body) = serde_json::from_slice::<UpdateBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "malformed_json");
    };
    if !state.allow(client) {
        return error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
    }
    // Invariant: the semaphore is never closed; were it, the check runs unbounded.
    let _permit = state.checks.acquire().await.ok();
    match api
        .update(user, key, &body.subdomain, &body.txt, client)
        .await
    {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "txt": body.txt })),
        )
            .into_response(),
        Err(dns::Error::Denied(reason)) => {
            tracing::info!(%client, user, %reason, "acme-dns update refused");
            forbidden()
        }
        // Another account's subdomain: acme-dns answers 401 forbidden.
        Err(dns::Error::Invalid(m)) if m.starts_with("bad_subdomain") => forbidden(),
        Err(dns::Error::Invalid(m)) if m.starts_with("bad_txt") => {
            error(StatusCode::BAD_REQUEST, "bad_txt")
        }
        Err(e) => {
            tracing::warn!(error = %e, "acme-dns update failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "db_error")
        }
    }
}
