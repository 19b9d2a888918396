//! `GET /metrics`: the Prometheus text format (see `crate::telemetry`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AdminState;
use super::problem::{Problem, kind};

/// The exposition format's content type (text format 0.0.4).
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn scrape(State(state): State<Arc<AdminState>>) -> Result<Response, Problem> {
    let (Some(telemetry), Some(manager)) = (&state.metrics, &state.manager) else {
        return Err(Problem::new(
            kind::NOT_FOUND,
            "metrics are recorded by `fleetgate run` only",
        ));
    };
    let text = telemetry
        .render(manager, state.store.as_ref(), &state.node)
        .await;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}
