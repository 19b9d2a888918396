//! `/v1/certs`: every certificate's state (what `fleetgate certs` shows), and renew-now.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AdminState;
use super::problem::{Problem, kind};

/// One certificate.
#[derive(Debug, Serialize)]
pub struct CertView {
    pub id: String,
    pub domains: Vec<String>,
    /// `acme`, `internal` or `files`.
    pub source: String,
    pub issuer: Option<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    pub days_left: Option<f64>,
    /// `[start, end]`, Unix seconds: when renewal is due (ARI window, else one point twice).
    pub renewal_window: Option<(i64, i64)>,
    /// `pending`, `valid`, `renewing`, `failing` or `expired`.
    pub state: certs::CertState,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CertList {
    pub certs: Vec<CertView>,
}

pub async fn list(State(state): State<Arc<AdminState>>) -> Result<Response, Problem> {
    let entries = state.registry_entries().await?;
    let managed = state.catalog().managed_certs(&entries);
    let rows = state.cert_statuses(&managed).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let certs = rows
        .into_iter()
        .map(|row| CertView {
            id: row.id,
            domains: row.domains.iter().map(ToString::to_string).collect(),
            source: row.source.to_string(),
            issuer: row.issuer,
            not_after: row.not_after,
            days_left: row
                .not_after
                .map(|t| ((t - now) as f64 / 86_400.0 * 10.0).round() / 10.0),
            renewal_window: row.renewal_window,
            state: row.state,
            last_error: row.last_error,
        })
        .collect();
    Ok(Json(CertList { certs }).into_response())
}

#[derive(Debug, Serialize)]
struct RenewAccepted {
    id: String,
    /// The serial that will be replaced.
    replaces_serial: String,
    requested_at: i64,
    requested_by: String,
}

/// Renew one certificate now, once for the fleet: a renewal request in the store that the node
/// taking the certificate's lease honours (202; follow with `GET /v1/certs`).
pub async fn renew(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let entries = state.registry_entries().await?;
    let managed = state.catalog().managed_certs(&entries);
    let Some(cert) = managed.into_iter().find(|c| c.id == id) else {
        return Err(Problem::new(kind::NOT_FOUND, format!("no certificate {id}")).site(id));
    };
    match certs::Manager::request_renewal(state.store.as_ref(), &cert, &state.node).await {
        Ok(Some(request)) => Ok((
            StatusCode::ACCEPTED,
            Json(RenewAccepted {
                id,
                replaces_serial: request.serial,
                requested_at: request.requested_at,
                requested_by: request.requested_by,
            }),
        )
            .into_response()),
        Ok(None) => Err(Problem::new(
            kind::NOT_RENEWABLE,
            format!("{id} has no certificate yet; it is being obtained"),
        )
        .site(id)),
        Err(certs::Error::Store(e)) => Err(super::problem::store_unavailable(&e)),
        Err(certs::Error::Config(message)) => {
            Err(Problem::new(kind::NOT_RENEWABLE, message).site(id))
        }
        Err(e) => Err(Problem::new(kind::INTERNAL, e.to_string()).site(id)),
    }
}
