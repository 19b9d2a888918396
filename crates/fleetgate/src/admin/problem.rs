//! Problem documents (RFC 9457, `application/problem+json`): every error the admin API answers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One problem document, boxed (handlers return it as their error, which should stay small).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Problem(Box<ProblemDoc>);

impl std::ops::Deref for Problem {
    type Target = ProblemDoc;
    fn deref(&self) -> &ProblemDoc {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDoc {
        &mut self.0
    }
}

/// The members of a problem document. `kind` is a URN naming the kind of problem (`type` in the document);
/// `field` is a JSON pointer into the request body when one field is at fault; `errors` lists
/// several faults at once (each with its own `field`).
#[derive(Debug, Clone, Serialize)]
pub struct ProblemDoc {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// The site or certificate the problem is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The current version, for a stale `If-Match` (412).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    #[serde(skip)]
    pub www_authenticate: Option<&'static str>,
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

/// One fault among several (`errors`).
#[derive(Debug, Clone, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub detail: String,
}

/// The kinds of problem the API answers: (type URN, title, status).
pub mod kind {
    use axum::http::StatusCode;

    pub type Kind = (&'static str, &'static str, StatusCode);

    pub const INVALID_SITE: Kind = (
        "urn:fleetgate:problem:invalid-site",
        "The site is not valid",
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    pub const MALFORMED_JSON: Kind = (
        "urn:fleetgate:problem:malformed-json",
        "The body is not the expected JSON",
        StatusCode::BAD_REQUEST,
    );
    pub const UNKNOWN_FIELD: Kind = (
        "urn:fleetgate:problem:unknown-field",
        "The body has a field that does not exist",
        StatusCode::BAD_REQUEST,
    );
    pub const BAD_REQUEST: Kind = (
        "urn:fleetgate:problem:bad-request",
        "The request is not valid",
        StatusCode::BAD_REQUEST,
    );
    pub const DOMAIN_TAKEN: Kind = (
        "urn:fleetgate:problem:domain-taken",
        "A domain belongs to another site",
        StatusCode::CONFLICT,
    );
    pub const ID_TAKEN: Kind = (
        "urn:fleetgate:problem:site-exists",
        "A site with this id exists",
        StatusCode::CONFLICT,
    );
    pub const FILE_SITE: Kind = (
        "urn:fleetgate:problem:file-site",
        "The site comes from a node's configuration file",
        StatusCode::CONFLICT,
    );
    pub const NOT_FOUND: Kind = (
        "urn:fleetgate:problem:not-found",
        "No such resource",
        StatusCode::NOT_FOUND,
    );
    pub const STALE_VERSION: Kind = (
        "urn:fleetgate:problem:version-mismatch",
        "The site changed since the version given in If-Match",
        StatusCode::PRECONDITION_FAILED,
    );
    pub const TOO_LARGE: Kind = (
        "urn:fleetgate:problem:body-too-large",
        "The request body is too large",
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    pub const MEDIA_TYPE: Kind = (
        "urn:fleetgate:problem:unsupported-media-type",
        "The body must be application/json",
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    );
    pub const UNAUTHORIZED: Kind = (
        "urn:fleetgate:problem:unauthorized",
        "A valid bearer token is required",
        StatusCode::UNAUTHORIZED,
    );
    pub const FORBIDDEN: Kind = (
        "urn:fleetgate:problem:forbidden",
        "The request is not allowed with a session cookie",
        StatusCode::FORBIDDEN,
    );
    pub const METHOD: Kind = (
        "urn:fleetgate:problem:method-not-allowed",
        "The method is not allowed here",
        StatusCode::METHOD_NOT_ALLOWED,
    );
    pub const NOT_RENEWABLE: Kind = (
        "urn:fleetgate:problem:not-renewable",
        "This certificate is not renewed by fleetgate",
        StatusCode::CONFLICT,
    );
    pub const STORE_UNAVAILABLE: Kind = (
        "urn:fleetgate:problem:store-unavailable",
        "The shared store is not answering",
        StatusCode::SERVICE_UNAVAILABLE,
    );
    pub const INTERNAL: Kind = (
        "urn:fleetgate:problem:internal",
        "Internal error",
        StatusCode::INTERNAL_SERVER_ERROR,
    );
}

impl Problem {
    pub fn new(kind: kind::Kind, detail: impl Into<String>) -> Problem {
        Problem(Box::new(ProblemDoc {
            kind: kind.0,
            title: kind.1,
            status: kind.2.as_u16(),
            detail: detail.into(),
            field: None,
            errors: Vec::new(),
            site: None,
            current_version: None,
            www_authenticate: None,
            retry_after: None,
        }))
    }

    /// The JSON pointer of the field at fault.
    pub fn field(mut self, pointer: impl Into<String>) -> Problem {
        self.field = Some(pointer.into());
        self
    }

    pub fn site(mut self, id: impl Into<String>) -> Problem {
        self.site = Some(id.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(challenge) = self.www_authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A registry error as the API answers it.
impl From<sites::RegistryError> for Problem {
    fn from(e: sites::RegistryError) -> Problem {
        use sites::RegistryError as E;
        match e {
            E::Invalid(field) => invalid_field(&field),
            E::DomainTaken {
                domain,
                site,
                source,
            } => {
                let from = match source {
                    sites::Source::File => "the configuration file's site",
                    sites::Source::Registry => "the registry's site",
                };
                Problem::new(
                    kind::DOMAIN_TAKEN,
                    format!("{domain} belongs to {from} {site}"),
                )
                .field("/domains")
                .site(site)
            }
            E::DomainRepeated { domain, site } => Problem::new(
                kind::DOMAIN_TAKEN,
                format!("{domain} is also a domain of {site}, earlier in the same batch"),
            )
            .field("/domains")
            .site(site),
            E::NotFound { id } => {
                Problem::new(kind::NOT_FOUND, format!("no registry site {id}")).site(id)
            }
            E::VersionMismatch { id, current } => {
                let mut p = Problem::new(
                    kind::STALE_VERSION,
                    format!("site {id} is at version {current}"),
                )
                .site(id);
                p.current_version = Some(current);
                p
            }
            E::IdTaken { id } => Problem::new(
                kind::ID_TAKEN,
                format!("site {id} exists; change it with PUT /v1/sites/{id}"),
            )
            .site(id),
            E::Store(e) => store_unavailable(&e),
            other => Problem::new(kind::INTERNAL, other.to_string()),
        }
    }
}

/// A site that fails validation: 422 naming the field.
pub fn invalid_field(field: &sites::FieldError) -> Problem {
    Problem::new(
        kind::INVALID_SITE,
        format!("{}: {}", field.path.dotted(), field.message),
    )
    .field(field.path.json_pointer())
}

pub fn store_unavailable(e: &store::Error) -> Problem {
    let mut p = Problem::new(kind::STORE_UNAVAILABLE, e.to_string());
    p.retry_after = Some(1);
    p
}

/// A JSON body that does not deserialize: the pointer of the field at fault (unknown fields
/// included), from the path `serde_path_to_error` tracked.
pub fn json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let mut pointer = String::new();
    for segment in e.path().iter() {
        use serde_path_to_error::Segment;
        match segment {
            Segment::Seq { index } => {
                pointer.push('/');
                pointer.push_str(&index.to_string());
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => pointer.push_str("/?"),
        }
    }
    let inner = e.inner();
    let message = inner.to_string();
    // serde's wording: "unknown field `x`, expected one of ...".
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((name, _)) = rest.split_once('`')
    {
        // The path ends at the object holding the unknown key, or at the key itself.
        let escaped = name.replace('~', "~0").replace('/', "~1");
        if !pointer.ends_with(&format!("/{escaped}")) {
            pointer.push('/');
            pointer.push_str(&escaped);
        }
        return Problem::new(kind::UNKNOWN_FIELD, without_position(&message)).field(pointer);
    }
    let kind = if inner.is_syntax() || inner.is_eof() {
        kind::MALFORMED_JSON
    } else {
        kind::INVALID_SITE
    };
    let detail = if inner.is_data() {
        without_position(&message)
    } else {
        message
    };
    let p = Problem::new(kind, detail);
    if pointer.is_empty() {
        p
    } else {
        p.field(pointer)
    }
}

/// serde_json's message without " at line 1 column 42" (the pointer says where).
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
