//! The redirect action: configuration, validation and Location building.
//!
//! Everything that does not depend on the request (status, a fixed Location, the prefix) is
//! prepared once when the routes are built; per request only the Location string is assembled.

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{StatusCode, Uri};

use crate::error::EdgeError;
use crate::host::Host;

/// Send visitors elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Absolute `http://` or `https://` URL, optionally with a path prefix
    /// (`https://example.com`, `https://example.com/blog`). A query is allowed only without
    /// `keep_path`; a fragment never.
    pub to: String,
    /// 301, 302, 307 or 308.
    pub status: u16,
    /// Append the request's path and query to `to` (its trailing slash removed); otherwise the
    /// Location is exactly `to`.
    pub keep_path: bool,
}

#[derive(Debug)]
enum Target {
    Fixed(HeaderValue),
    /// `to` without its trailing slash.
    Prefix(String),
}

/// A validated redirect, ready to answer requests.
#[derive(Debug)]
pub(crate) struct PreparedRedirect {
    status: StatusCode,
    target: Target,
}

impl PreparedRedirect {
    pub(crate) fn new(redirect: &Redirect) -> Result<Self, EdgeError> {
        let status = match redirect.status {
            301 | 302 | 307 | 308 => StatusCode::from_u16(redirect.status).ok(),
            _ => None,
        }
        .ok_or(EdgeError::InvalidStatus {
            status: redirect.status,
            action: "a redirect",
            allowed: "301, 302, 307, 308",
        })?;
        let to = redirect.to.as_str();
        let invalid = |reason| EdgeError::InvalidRedirect {
            to: to.to_owned(),
            reason,
        };
        if to.contains('#') {
            return Err(invalid("a fragment is not allowed"));
        }
        let uri: Uri = to
            .parse()
            .map_err(|_| invalid("not a valid absolute URL"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(invalid("the scheme must be http or https"));
        }
        let authority = uri.authority().ok_or(invalid("the URL needs a host"))?;
        if Host::parse(authority.as_str().as_bytes()).is_err() {
            return Err(invalid("the URL's host is not a valid hostname"));
        }
        let target = if redirect.keep_path {
            if uri.query().is_some() {
                return Err(invalid("a query is not allowed with keep_path"));
            }
            Target::Prefix(to.trim_end_matches('/').to_owned())
        } else {
            Target::Fixed(
                HeaderValue::from_str(to).map_err(|_| invalid("not a valid header value"))?,
            )
        };
        Ok(PreparedRedirect { status, target })
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The Location for a request to `uri`; `None` only if the result is not a valid header
    /// value, which a URI that hyper parsed cannot produce.
    pub(crate) fn location(&self, uri: &Uri) -> Option<HeaderValue> {
        match &self.target {
            Target::Fixed(value) => Some(value.clone()),
            Target::Prefix(prefix) => join(prefix, uri),
        }
    }
}

/// `https://HOST[:PORT]/path?query` for the plain-HTTP to HTTPS redirect; the port is left out
/// when it is 443.
pub(crate) fn https_location(host: &Host, https_port: u16, uri: &Uri) -> Option<HeaderValue> {
    let path = request_path(uri);
    let mut location = String::with_capacity(8 + host.as_str().len() + 6 + path.len());
    location.push_str("https://");
    location.push_str(host.as_str());
    if https_port != 443 {
        // Writing to a String cannot fail.
        let _ = write!(location, ":{https_port}");
    }
    location.push_str(path);
    HeaderValue::from_maybe_shared(Bytes::from(location)).ok()
}

/// `prefix` + the request's path and query.
fn join(prefix: &str, uri: &Uri) -> Option<HeaderValue> {
    let path = request_path(uri);
    let mut location = String::with_capacity(prefix.len() + path.len());
    location.push_str(prefix);
    location.push_str(path);
    HeaderValue::from_maybe_shared(Bytes::from(location)).ok()
}

/// The request's path and query; a target that is not origin-form (`OPTIONS *`) counts as `/`.
fn request_path(uri: &Uri) -> &str {
    uri.path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(to: &str, status: u16, keep_path: bool) -> Result<PreparedRedirect, EdgeError> {
        PreparedRedirect::new(&Redirect {
            to: to.to_owned(),
            status,
            keep_path,
        })
    }

    fn location(to: &str, keep_path: bool, request: &str) -> String {
        let redirect = match prepared(to, 301, keep_path) {
            Ok(r) => r,
            Err(e) => panic!("{to}: {e}"),
        };
        let uri: Uri = match request.parse() {
            Ok(u) => u,
            Err(e) => panic!("{request}: {e}"),
        };
        let value = redirect.location(&uri);
        value
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<none>")
            .to_owned()
    }

    #[test]
    fn location_building() {
        assert_eq!(
            location("https://example.com", true, "/a/b?x=1"),
            "https://example.com/a/b?x=1"
        );
        assert_eq!(
            location("https://example.com/", true, "/a"),
            "https://example.com/a"
        );
        assert_eq!(
            location("https://example.com/blog/", true, "/a?q"),
            "https://example.com/blog/a?q"
        );
        assert_eq!(
            location("https://example.com", true, "/"),
            "https://example.com/"
        );
        assert_eq!(
            location("https://example.com", true, "*"),
            "https://example.com/"
        );
        assert_eq!(
            location("https://example.com", true, "http://old.example/p?q=1"),
            "https://example.com/p?q=1"
        );
        assert_eq!(
            location("https://example.com", false, "/a/b?x=1"),
            "https://example.com"
        );
        assert_eq!(
            location("https://example.com/", false, "/a"),
            "https://example.com/"
        );
        assert_eq!(
            location("https://example.com/?utm=x", false, "/a"),
            "https://example.com/?utm=x"
        );
        assert_eq!(
            location("http://example.com:8080/x", true, "/y"),
            "http://example.com:8080/x/y"
        );
    }

    #[test]
    fn https_redirect_location() {
        let host = Host::parse(b"Old.Example:80").ok();
        let uri: Option<Uri> = "/p?q=1".parse().ok();
        let (Some(host), Some(uri)) = (host, uri) else {
            panic!("test input")
        };
        let at = |port| {
            https_location(&host, port, &uri).and_then(|v| v.to_str().ok().map(str::to_owned))
        };
        assert_eq!(at(443).as_deref(), Some("https://old.example/p?q=1"));
        assert_eq!(at(8443).as_deref(), Some("https://old.example:8443/p?q=1"));
    }

    #[test]
    fn bad_redirects_are_rejected() {
        for status in [200, 300, 303, 304, 399, 0] {
            assert!(matches!(
                prepared("https://example.com", status, true),
                Err(EdgeError::InvalidStatus { .. })
            ));
        }
        for to in [
            "example.com",
            "/relative",
            "ftp://example.com",
            "https://",
            "https://exa mple.com",
            "https://example.com/#top",
            "https://user@example.com/",
            "",
        ] {
            assert!(
                matches!(
                    prepared(to, 301, false),
                    Err(EdgeError::InvalidRedirect { .. })
                ),
                "{to:?} accepted"
            );
        }
        assert!(matches!(
            prepared("https://example.com/?a=b", 301, true),
            Err(EdgeError::InvalidRedirect { .. })
        ));
    }
}
