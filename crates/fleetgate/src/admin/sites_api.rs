//! `/v1/sites`: list, show, create, replace and remove sites.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::info;

use super::AdminState;
use super::catalog::{Cursor, DEFAULT_PAGE, MAX_PAGE};
use super::problem::{Problem, kind};
use super::view::SiteView;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn list(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(|e| {
        Problem::new(
            kind::BAD_REQUEST,
            format!("{}; the parameters are limit and cursor", e.body_text()),
        )
    })?;
    let mut errors = Vec::new();
    let limit = match query.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                errors.push(super::problem::FieldProblem {
                    field: "limit".into(),
                    detail: format!("expected a number from 1 to {MAX_PAGE}, got {text:?}"),
                });
                0
            }
        },
    };
    let cursor = match query.cursor.as_deref() {
        None => None,
        Some(text) => match Cursor::parse(text) {
            Some(c) => Some(c),
            None => {
                errors.push(super::problem::FieldProblem {
                    field: "cursor".into(),
                    detail: "not a cursor this API returned (next_cursor)".into(),
                });
                None
            }
        },
    };
    if !errors.is_empty() {
        let detail = errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.detail))
            .collect::<Vec<_>>()
            .join("; ");
        let mut p = Problem::new(kind::BAD_REQUEST, detail);
        if errors.len() == 1 {
            p.field = Some(errors[0].field.clone());
        }
        p.errors = errors;
        return Err(p);
    }
    let entries = state.registry_entries().await?;
    let page = state.catalog().page(&entries, limit, cursor.as_ref());
    Ok(Json(page).into_response())
}

pub async fn show(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let view = state.catalog().get(&id).await?;
    Ok(site_response(StatusCode::OK, view))
}

pub async fn create(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let spec = spec_from(&headers, body)?;
    let view = state.catalog().create(spec).await;
    state.registry_changed();
    let view = view?;
    state.wrote(&view.id, view.version).await;
    info!(site = %view.id, version = ?view.version, "admin API: site added");
    let mut response = site_response(StatusCode::CREATED, view.clone());
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/sites/{}", view.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Replace a registry site. `If-Match: <version>` makes it conditional (412 when the site has
/// moved on); without it the write is unconditional (last writer wins).
pub async fn update(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let if_match = if_match(&headers)?;
    let spec = spec_from(&headers, body)?;
    let view = state.catalog().update(&id, spec, if_match).await;
    state.registry_changed();
    let view = view?;
    state.wrote(&view.id, view.version).await;
    info!(site = %view.id, version = ?view.version, "admin API: site changed");
    Ok(site_response(StatusCode::OK, view))
}

pub async fn remove(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let if_match = if_match(&headers)?;
    let removed = state.catalog().delete(&id, if_match).await;
    state.registry_changed();
    removed?;
    state.wrote(id.trim_end_matches('.'), None).await;
    info!(site = %id, "admin API: site removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The site as JSON, with its version as the ETag.
fn site_response(status: StatusCode, view: SiteView) -> Response {
    let etag = view
        .version
        .and_then(|v| HeaderValue::from_str(&format!("\"{v}\"")).ok());
    let mut response = (status, Json(view)).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// `If-Match: 3` or `If-Match: "3"` (the ETag as sent); absent or `*`: `None`.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        // Any current version: the site must exist, which PUT and DELETE require anyway.
        return Ok(None);
    }
    let unquoted = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    unquoted.parse::<u64>().map(Some).map_err(|_| {
        Problem::new(
            kind::BAD_REQUEST,
            format!("If-Match: expected a site version like \"3\" (its ETag), got {text:?}"),
        )
        .field("If-Match")
    })
}

/// The request body as a site spec: JSON media type (415), at most 1 MiB (413), known fields
/// only (400 naming the field), the right shapes (422 naming the field).
fn spec_from(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<sites::SiteSpec, Problem> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match media.as_deref() {
        Some("application/json") => {}
        Some(m) if m.starts_with("application/") && m.ends_with("+json") => {}
        other => {
            return Err(Problem::new(
                kind::MEDIA_TYPE,
                format!(
                    "send Content-Type: application/json (got {})",
                    other.unwrap_or("none")
                ),
            ));
        }
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                kind::TOO_LARGE,
                format!("the body is larger than {} bytes", super::MAX_BODY),
            )
        } else {
            Problem::new(kind::BAD_REQUEST, e.body_text())
        }
    })?;
    parse_spec(&body)
}

/// A site spec from JSON bytes, errors naming the field (shared with `fleetgate sites`).
pub fn parse_spec(body: &[u8]) -> Result<sites::SiteSpec, Problem> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let spec: sites::SiteSpec =
        serde_path_to_error::deserialize(&mut de).map_err(|e| super::problem::json_error(&e))?;
    de.end()
        .map_err(|e| Problem::new(kind::MALFORMED_JSON, format!("after the site object: {e}")))?;
    Ok(spec)
}
