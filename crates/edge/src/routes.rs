//! Sites and the hostname -> site table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderValue;

use crate::error::EdgeError;
use crate::names::{Pattern, lookup, parse_pattern};
use crate::observe::{NoObserver, Observer, SiteTally};
use crate::proxy::{Forwarder, Proxy};
use crate::redirect::{PreparedRedirect, Redirect};

/// One site: the hostnames it answers for and what it does with requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Hostnames (`example.com`) or one-label wildcards (`*.example.com`). Normalised
    /// (lower-cased, trailing dot removed) when the routes are built.
    pub names: Vec<String>,
    pub action: Action,
    /// Plain-HTTP requests get a 308 to the same URL on https (the default). When false, the
    /// action runs over plain HTTP too.
    pub https_redirect: bool,
    /// Strict-Transport-Security on HTTPS responses.
    pub hsts: Option<Hsts>,
    /// One structured `tracing` event (target `access`) per request the site's action
    /// handles. Default off.
    pub access_log: bool,
}

impl Site {
    /// A site with the defaults: plain HTTP redirects to https, no HSTS.
    pub fn new(names: Vec<String>, action: Action) -> Site {
        Site {
            names,
            action,
            https_redirect: true,
            hsts: None,
            access_log: false,
        }
    }
}

/// What a site does with a request.
// Built once per site from the configuration and turned into the routes' own form: the size
// of a proxy's settings costs nothing on a request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    Redirect(Redirect),
    /// A fixed response with a `text/plain; charset=utf-8` body.
    Respond {
        status: u16,
        body: Bytes,
    },
    /// Forward to the site's upstream web servers.
    Proxy(Proxy),
}

/// Strict-Transport-Security settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: Duration,
    pub include_subdomains: bool,
}

impl Hsts {
    fn header_value(&self) -> HeaderValue {
        let value = if self.include_subdomains {
            format!("max-age={}; includeSubDomains", self.max_age.as_secs())
        } else {
            format!("max-age={}", self.max_age.as_secs())
        };
        // Digits, letters, '=', ';' and spaces only: always a valid header value.
        HeaderValue::from_maybe_shared(Bytes::from(value))
            .unwrap_or_else(|_| HeaderValue::from_static("max-age=0"))
    }
}

/// An action with everything that does not depend on the request computed once.
#[derive(Debug)]
pub(crate) enum Prepared {
    Redirect(PreparedRedirect),
    Respond {
        status: StatusCode,
        body: Bytes,
    },
    /// Shared with the requests in flight; its health checks stop when the last holder goes.
    Proxy(Arc<Forwarder>),
}

/// A site as the request handler sees it.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) action: Prepared,
    pub(crate) https_redirect: bool,
    pub(crate) hsts: Option<HeaderValue>,
    pub(crate) access_log: bool,
    /// Where the site's requests are counted (made once, here).
    pub(crate) tally: SiteTally,
}

impl Route {
    fn new(site: &Site, id: &str, observer: &dyn Observer) -> Result<Route, EdgeError> {
        let action = match &site.action {
            Action::Redirect(redirect) => Prepared::Redirect(PreparedRedirect::new(redirect)?),
            Action::Respond { status, body } => {
                let status = StatusCode::from_u16(*status)
                    .ok()
                    .filter(|s| (200..=599).contains(&s.as_u16()))
                    .ok_or(EdgeError::InvalidStatus {
                        status: *status,
                        action: "a fixed response",
                        allowed: "200..=599",
                    })?;
                Prepared::Respond {
                    status,
                    body: body.clone(),
                }
            }
            Action::Proxy(proxy) => Prepared::Proxy(Arc::new(Forwarder::new(proxy, id, observer)?)),
        };
        Ok(Route {
            action,
            https_redirect: site.https_redirect,
            hsts: site.hsts.as_ref().map(Hsts::header_value),
            access_log: site.access_log,
            tally: observer.site(id),
        })
    }
}

/// The validated hostname -> site table. Lookups try the exact name first, then a wildcard
/// covering exactly one more label (`*.example.com` matches `a.example.com`, not
/// `example.com` nor `a.b.example.com`).
#[derive(Debug, Default)]
pub struct Routes {
    exact: HashMap<Arc<str>, Arc<Route>>,
    /// Keyed by the wildcard's suffix: `*.example.com` is stored as `example.com`.
    wildcard: HashMap<Arc<str>, Arc<Route>>,
}

impl Routes {
    /// Validates the sites: every hostname valid and in one site only, statuses allowed for the
    /// action, redirect targets absolute http(s) URLs.
    pub fn new(sites: Vec<Site>) -> Result<Routes, EdgeError> {
        let sites = sites
            .into_iter()
            .map(|site| (site.names.first().cloned().unwrap_or_default(), site))
            .collect();
        Routes::with_observer(sites, &NoObserver)
    }

    /// As [`Routes::new`], each site with its id (the `site` label of its metrics), reporting
    /// to `observer`: its recorders are asked for here, once per site and upstream.
    pub fn with_observer(
        sites: Vec<(String, Site)>,
        observer: &dyn Observer,
    ) -> Result<Routes, EdgeError> {
        let mut builder = Routes::builder(observer);
        for (id, site) in &sites {
            builder.add(id, site)?;
        }
        Ok(builder.finish())
    }

    /// Routes added one site at a time, so that a caller converting 100,000 sites need not
    /// hold them all in edge form at once ([`RoutesBuilder::add`]).
    pub fn builder(observer: &dyn Observer) -> RoutesBuilder<'_> {
        RoutesBuilder {
            routes: Routes::default(),
            observer,
        }
    }

    /// Whether `host` (a normalised hostname) belongs to a site.
    pub fn contains(&self, host: &str) -> bool {
        self.lookup(host).is_some()
    }

    pub(crate) fn lookup(&self, host: &str) -> Option<&Route> {
        lookup(&self.exact, &self.wildcard, host).map(Arc::as_ref)
    }
}

/// [`Routes`] in the making; the same checks as [`Routes::with_observer`], site by site.
pub struct RoutesBuilder<'o> {
    routes: Routes,
    observer: &'o dyn Observer,
}

impl RoutesBuilder<'_> {
    /// Adds `site` under `id` (the `site` label of its metrics): every hostname valid and in
    /// no site added before, status and redirect target allowed for the action.
    pub fn add(&mut self, id: &str, site: &Site) -> Result<(), EdgeError> {
        if site.names.is_empty() {
            return Err(EdgeError::NoNames);
        }
        let route = Arc::new(Route::new(site, id, self.observer)?);
        for name in &site.names {
            let (table, key) = match parse_pattern(name)? {
                Pattern::Exact(key) => (&mut self.routes.exact, key),
                Pattern::Wildcard(suffix) => (&mut self.routes.wildcard, suffix),
            };
            if table.insert(key, Arc::clone(&route)).is_some() {
                return Err(EdgeError::DuplicateName { name: name.clone() });
            }
        }
        Ok(())
    }

    pub fn finish(self) -> Routes {
        self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(names: &[&str]) -> Site {
        Site::new(
            names.iter().map(|n| (*n).to_owned()).collect(),
            Action::Respond {
                status: 200,
                body: Bytes::from_static(b"ok"),
            },
        )
    }

    #[test]
    fn exact_then_wildcard() {
        let routes = Routes::new(vec![
            respond(&["Example.com.", "*.example.com"]),
            Site {
                https_redirect: false,
                ..respond(&["www.example.com"])
            },
        ]);
        let Ok(routes) = routes else {
            panic!("{routes:?}")
        };
        assert!(routes.contains("example.com"));
        assert!(routes.contains("a.example.com"));
        assert!(!routes.contains("a.b.example.com"));
        assert!(!routes.contains("example.org"));
        assert!(!routes.contains("com"));
        let www = routes.lookup("www.example.com").map(|r| r.https_redirect);
        assert_eq!(www, Some(false));
        let other = routes.lookup("other.example.com").map(|r| r.https_redirect);
        assert_eq!(other, Some(true));
    }

    #[test]
    fn rejects_bad_sites() {
        let dup = Routes::new(vec![respond(&["a.example"]), respond(&["A.example."])]);
        assert!(
            matches!(dup, Err(EdgeError::DuplicateName { .. })),
            "{dup:?}"
        );
        let dup = Routes::new(vec![respond(&["*.example", "*.example"])]);
        assert!(
            matches!(dup, Err(EdgeError::DuplicateName { .. })),
            "{dup:?}"
        );
        let none = Routes::new(vec![respond(&[])]);
        assert!(matches!(none, Err(EdgeError::NoNames)), "{none:?}");
        for bad in [
            "exa mple.com",
            "a.*.example",
            "*",
            "*.",
            "**.example",
            "example.com:80",
            "",
        ] {
            let r = Routes::new(vec![respond(&[bad])]);
            assert!(
                matches!(r, Err(EdgeError::InvalidName { .. })),
                "{bad:?}: {r:?}"
            );
        }
        for status in [0, 100, 199, 600, 1000] {
            let site = Site::new(
                vec!["a.example".to_owned()],
                Action::Respond {
                    status,
                    body: Bytes::new(),
                },
            );
            let r = Routes::new(vec![site]);
            assert!(
                matches!(r, Err(EdgeError::InvalidStatus { .. })),
                "{status}: {r:?}"
            );
        }
        let site = Site::new(
            vec!["a.example".to_owned()],
            Action::Redirect(Redirect {
                to: "example.com".to_owned(),
                status: 301,
                keep_path: true,
            }),
        );
        let r = Routes::new(vec![site]);
        assert!(matches!(r, Err(EdgeError::InvalidRedirect { .. })), "{r:?}");
    }

    #[test]
    fn hsts_value() {
        let hsts = Hsts {
            max_age: Duration::from_secs(31_536_000),
            include_subdomains: true,
        };
        assert_eq!(hsts.header_value(), "max-age=31536000; includeSubDomains");
        let hsts = Hsts {
            max_age: Duration::from_secs(60),
            include_subdomains: false,
        };
        assert_eq!(hsts.header_value(), "max-age=60");
    }
}
