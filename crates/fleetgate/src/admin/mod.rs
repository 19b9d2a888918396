//! The admin API (`[admin]`): JSON over HTTP/1.1 and HTTP/2 (h2c) on a loopback address or a
//! unix socket, bearer token when configured, RFC 9457 problem documents for every error.
//!
//! Layers: `serve`/`router` (this file) -> handlers (`sites_api`, `certs_api`, `nodes_api`) -> `catalog`
//! (file + registry sites, the operations the CLI shares) -> `view` (the JSON forms) and
//! `problem` (errors).
//!
//! ```text
//! GET    /v1/sites?limit=&cursor=   file and registry sites, paged by id
//! GET    /v1/sites/{id}
//! POST   /v1/sites                  201 + Location + ETag: the stored entry
//! PUT    /v1/sites/{id}             If-Match: <version> (optional); 412 when stale
//! DELETE /v1/sites/{id}             registry sites only (409 for a file site)
//! GET    /v1/certs                  what `fleetgate certs` shows
//! POST   /v1/certs/{id}/renew       202: renewed once for the fleet, under the lease
//! GET    /v1/nodes                  what `fleetgate status` shows
//! GET    /v1/events                 the last 100 events seen by this node (`events`)
//! GET    /metrics                   Prometheus text format (`crate::telemetry`)
//! POST   /v1/session                {"token"}: the dashboard's HttpOnly cookie (`session`)
//! DELETE /v1/session
//! GET    /v1/session                {"token_required": bool}
//! GET    /                          the dashboard (`dashboard`; no token needed for the page)
//! POST   /acme-dns/register|update  the acme-dns API (`acme_dns`): its own credentials, not the
//! GET    /acme-dns/health           token; also alone on `[dns] acme_dns_listen`
//! ```

pub mod acme_dns;
mod capped;
pub mod catalog;
mod certs_api;
mod dashboard;
mod events;
mod metrics_api;
mod nodes_api;
pub mod problem;
pub mod session;
mod sites_api;
pub mod view;

pub use sites_api::parse_spec;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{info, warn};

use crate::admin_config::{AdminConfig, AdminListen, AdminToken};
use crate::config::Config;
use problem::{Problem, kind};

/// How long requests in flight may finish after shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 1024 * 1024;

/// What the handlers share.
pub struct AdminState {
    /// Set by `fleetgate run` when the recorder is installed: `/metrics` renders it with the
    /// certificate manager's state (`manager`).
    metrics: Option<crate::telemetry::Telemetry>,
    /// What happened recently (`/v1/events`), followed while the API is served.
    events: Arc<events::EventLog>,
    pub node: String,
    pub store: Arc<dyn store::Storage>,
    pub registry: sites::Registry,
    token: Option<AdminToken>,
    /// The configuration file as last loaded (file sites, the ACME section).
    config: RwLock<Arc<Config>>,
    /// The registry as last listed, listed again only after it changed: listing reads every
    /// site from the store, and paging through thousands must not do that for every page.
    listing: tokio::sync::Mutex<Option<Arc<Vec<Arc<sites::Entry>>>>>,
    /// The registry as this node follows it (`fleetgate run`): listings come from there, not
    /// from the store, unless a write of this API is not in it yet (see [`AdminState::wrote`]).
    /// At 100,000 sites a listing read from the store took tens of seconds while the node was
    /// issuing certificates, and held a second copy of every site.
    view: Option<tokio::sync::watch::Receiver<Vec<Arc<sites::Entry>>>>,
    /// The node's certificate manager (`fleetgate run`): what it serves needs no new check in
    /// the certificate listings (see [`AdminState::cert_statuses`]), and `/metrics` shows it.
    manager: Option<Arc<certs::Manager>>,
    /// This API's writes (site id, version; `None`: removed) the view does not show yet.
    unseen: std::sync::Mutex<Vec<(String, Option<u64>)>>,
    /// Set by the store's change events under `sites/` (and lost events) and by this API's own
    /// writes; while nothing watches the store (`watching` false) every listing reads afresh.
    stale: Arc<AtomicBool>,
    watching: Arc<AtomicBool>,
    /// The acme-dns routes' state (their own credentials and rate limit).
    acme_dns: Arc<acme_dns::AcmeDnsState>,
}

/// How long a write's answer waits for the node's registry to show it (see
/// [`AdminState::wrote`]); past that, listings read the store until it does.
const WRITE_SEEN_WAIT: Duration = Duration::from_secs(2);

/// Whether `entries` show the write `(id, version)`: the site at that version or later, or
/// gone when it was removed.
fn shows(entries: &[Arc<sites::Entry>], (id, version): &(String, Option<u64>)) -> bool {
    let found = entries.iter().find(|e| e.id.eq_ignore_ascii_case(id));
    match (found, version) {
        (Some(entry), Some(version)) => entry.version >= *version,
        (None, None) => true,
        _ => false,
    }
}

impl AdminState {
    /// The admin API of a node running `config`, with the node's store (sealed as the node's).
    pub fn new(config: &Config, store: Arc<dyn store::Storage>, node: String) -> AdminState {
        let token = config.admin.as_ref().and_then(|a| a.token.clone());
        let api = config
            .dns
            .as_ref()
            .and_then(|d| d.zone.as_ref())
            .map(|z| dns::AcmeDns::new(dns::Records::new(store.clone()), z.zone.apex()));
        let open = config
            .dns
            .as_ref()
            .is_some_and(|d| d.acme_dns_open_registration);
        AdminState {
            acme_dns: Arc::new(acme_dns::AcmeDnsState::new(api, open, token)),
            metrics: None,
            events: Arc::default(),
            registry: sites::Registry::new(store.clone(), node.clone()),
            token: config.admin.as_ref().and_then(|a| a.token.clone()),
            node,
            store,
            config: RwLock::new(Arc::new(config.clone())),
            listing: tokio::sync::Mutex::new(None),
            view: None,
            manager: None,
            unseen: std::sync::Mutex::new(Vec::new()),
            stale: Arc::new(AtomicBool::new(true)),
            watching: Arc::new(AtomicBool::new(false)),
        }
    }

    /// List the registry from `view`, the node's own (see the field).
    pub fn with_registry_view(
        mut self,
        view: tokio::sync::watch::Receiver<Vec<Arc<sites::Entry>>>,
    ) -> AdminState {
        self.view = Some(view);
        self
    }

    /// Take the certificates `manager` serves as checked (see the field).
    pub fn with_manager(mut self, manager: Arc<certs::Manager>) -> AdminState {
        self.manager = Some(manager);
        self
    }

    /// The status of each of `certs`, read from the store (and files).
    pub async fn cert_statuses(&self, certs: &[certs::ManagedCert]) -> Vec<certs::CertStatus> {
        match &self.manager {
            Some(manager) => manager.statuses_served(self.store.as_ref(), certs).await,
            None => certs::Manager::statuses(self.store.as_ref(), certs).await,
        }
    }

    /// Serve `/metrics` from `telemetry` (and the manager of [`AdminState::with_manager`]).
    pub fn with_metrics(mut self, telemetry: crate::telemetry::Telemetry) -> AdminState {
        self.metrics = Some(telemetry);
        self
    }

    /// The registry's sites: the node's view of it when it shows this API's writes, else the
    /// last listing from the store unless the registry changed since.
    pub async fn registry_entries(&self) -> Result<Arc<Vec<Arc<sites::Entry>>>, Problem> {
        if let Some(view) = &self.view {
            let entries = view.borrow().clone();
            let mut unseen = self.unseen.lock().unwrap_or_else(PoisonError::into_inner);
            unseen.retain(|write| !shows(&entries, write));
            if unseen.is_empty() {
                return Ok(Arc::new(entries));
            }
        }
        let mut listing = self.listing.lock().await;
        let stale = self.stale.swap(false, Ordering::AcqRel);
        if let Some(entries) = &*listing
            && !stale
            && self.watching.load(Ordering::Acquire)
        {
            return Ok(entries.clone());
        }
        match self.registry.list().await {
            Ok(entries) => {
                let entries = Arc::new(crate::node_sites::shared(entries));
                *listing = Some(entries.clone());
                Ok(entries)
            }
            Err(e) => {
                self.stale.store(true, Ordering::Release);
                Err(Problem::from(e))
            }
        }
    }

    /// This API wrote (or tried to write) the registry: the next listing reads it again.
    pub fn registry_changed(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// This API wrote site `id` (at `version`; `None`: removed), after
    /// [`AdminState::registry_changed`]. Listings read the store until the node's view shows
    /// the write, and the answer waits for that up to [`WRITE_SEEN_WAIT`] (milliseconds,
    /// usually), so what this API wrote, it lists.
    pub async fn wrote(&self, id: &str, version: Option<u64>) {
        let Some(view) = &self.view else {
            return;
        };
        let write = (id.to_owned(), version);
        self.unseen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(write.clone());
        let mut view = view.clone();
        let seen = view.wait_for(|entries| shows(entries, &write));
        let _ = tokio::time::timeout(WRITE_SEEN_WAIT, seen).await;
    }

    /// Mark the listing stale on every store change under `sites/` until `shutdown`.
    fn watch_registry(&self, shutdown: CancellationToken) {
        let mut events = self.store.subscribe();
        let (stale, watching) = (self.stale.clone(), self.watching.clone());
        let prefix = sites::Registry::prefix();
        self.watching.store(true, Ordering::Release);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = events.recv() => event,
                };
                match event {
                    Ok(store::Change::Put(key) | store::Change::Deleted(key)) => {
                        if key.starts_with(&prefix) {
                            stale.store(true, Ordering::Release);
                        }
                    }
                    Ok(store::Change::Missed)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        stale.store(true, Ordering::Release);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        // No more events: list afresh every time from now on.
                        watching.store(false, Ordering::Release);
                        return;
                    }
                }
            }
        });
    }

    fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_config(&self, mut config: Config) {
        // Kept as long as it serves: without the file's text (only `check` places findings).
        config.drop_text();
        let config = Arc::new(config);
        match self.config.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    pub fn catalog(&self) -> catalog::Catalog<'_> {
        catalog::Catalog::new(self.config(), &self.registry)
    }
}

/// The admin API's routes, with the token check in front of every one of them.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/v1/sites", get(sites_api::list).post(sites_api::create))
        .route(
            "/v1/sites/{id}",
            get(sites_api::show)
                .put(sites_api::update)
                .delete(sites_api::remove),
        )
        .route("/v1/certs", get(certs_api::list))
        .route("/v1/certs/{id}/renew", post(certs_api::renew))
        .route("/v1/nodes", get(nodes_api::list))
        .route("/v1/events", get(events::list))
        .route("/metrics", get(metrics_api::scrape))
        .route(
            "/v1/session",
            get(session::show)
                .post(session::create)
                .delete(session::remove),
        )
        .route("/", get(dashboard::page))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Beside the token check, not behind it: acme-dns clients authenticate themselves.
        .with_state(state.clone())
        .merge(acme_dns::router(state.acme_dns.clone()))
}

async fn not_found() -> Problem {
    Problem::new(
        kind::NOT_FOUND,
        "no such endpoint; see /v1/sites, /v1/certs, /v1/nodes, /v1/events, /metrics",
    )
}

async fn method_not_allowed() -> Problem {
    Problem::new(kind::METHOD, "this endpoint does not take that method")
}

/// Paths served without a token: the dashboard's page and assets (no data in them) and the
/// session endpoint that checks the token itself.
fn public(req: &Request) -> bool {
    matches!(
        req.uri().path(),
        "/" | "/dashboard.js" | "/dashboard.css" | "/v1/session"
    )
}

/// 401 unless the request carries `Authorization: Bearer <token>` or the dashboard's session
/// cookie (compared in constant time); 403 for a cookie-authenticated write without
/// `X-Fleetgate: 1` (see `session`).
async fn require_token(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    if public(&req) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim_start())
        });
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => next.run(req).await,
        Some(_) => {
            let mut p = Problem::new(
                kind::UNAUTHORIZED,
                "the bearer token is not the one configured",
            );
            p.www_authenticate = Some("Bearer realm=\"fleetgate\", error=\"invalid_token\"");
            p.into_response()
        }
        None => match session::cookie_token(req.headers()) {
            Some(cookie) if bool::from(cookie.as_slice().ct_eq(token.as_bytes())) => {
                if session::csrf_ok(req.method(), req.headers()) {
                    next.run(req).await
                } else {
                    Problem::new(
                        kind::FORBIDDEN,
                        "a write authenticated by the session cookie needs X-Fleetgate: 1",
                    )
                    .into_response()
                }
            }
            _ => {
                let mut p = Problem::new(
                    kind::UNAUTHORIZED,
                    "send Authorization: Bearer <token> (the token in admin.token_file)",
                );
                p.www_authenticate = Some("Bearer realm=\"fleetgate\"");
                p.into_response()
            }
        },
    }
}

/// A bound admin listener: TCP or a unix socket.
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Bind `[admin] listen`. A unix socket's stale file is replaced; the socket is made 0600.
pub async fn bind(listen: &AdminListen) -> anyhow::Result<AdminListener> {
    match listen {
        AdminListen::Tcp(addr) => Ok(AdminListener::Tcp(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin.listen)"))?,
        )),
        AdminListen::Unix(path) => {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            if let Ok(meta) = std::fs::symlink_metadata(path)
                && meta.file_type().is_socket()
            {
                // A socket left by a previous run (a live one would fail below too: the bind
                // of a second node on one path is a configuration mistake either way).
                let _ = std::fs::remove_file(path);
            }
            let listener = UnixListener::bind(path).with_context(|| {
                format!("cannot listen on unix:{} (admin.listen)", path.display())
            })?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
            Ok(AdminListener::Unix(listener))
        }
    }
}

/// How long an admin client may stay silent; `fleetgate run` takes both from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From accept (or the last response on a keep-alive HTTP/1.1 connection) to a whole
    /// request head: hyper's header read timeout.
    pub header_read: Duration,
    /// Without a byte read or written (HTTP/2 connections, request bodies).
    pub idle: Duration,
}

impl Timeouts {
    pub fn from_limits(limits: &edge::Limits) -> Timeouts {
        Timeouts {
            header_read: limits.header_read_timeout,
            idle: limits.idle_timeout,
        }
    }
}

/// Serve `router` on `listener` (HTTP/1.1 and HTTP/2, at most [`capped::MAX_CONNECTIONS`]
/// connections at once, each closed when silent past `timeouts`) until `shutdown`, then let
/// requests in flight finish.
pub async fn serve(
    listener: AdminListener,
    router: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match listener {
        AdminListener::Tcp(l) => {
            let l = capped::Capped::new(l, timeouts.idle);
            serve_on(l, router, timeouts, shutdown, |addr: &SocketAddr| {
                acme_dns::Peer(addr.ip())
            })
            .await
        }
        AdminListener::Unix(l) => {
            let l = capped::Capped::new(l, timeouts.idle);
            serve_on(l, router, timeouts, shutdown, |_| {
                acme_dns::Peer(IpAddr::V4(Ipv4Addr::LOCALHOST))
            })
            .await
        }
    }
}

/// The accept loop: one task per connection, each request told its peer (`ConnectInfo`, for
/// acme-dns's `allowfrom`); on `shutdown` accepting stops and every connection is asked to
/// close once its requests in flight are answered.
async fn serve_on<L>(
    mut listener: capped::Capped<L>,
    router: Router,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
    peer_of: impl Fn(&L::Addr) -> acme_dns::Peer,
) -> std::io::Result<()>
where
    L: Listener,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let peer = ConnectInfo(peer_of(&addr));
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(peer);
            // Invariant: a Router is always ready (axum documents poll_ready as always
            // Ready), so calling a clone without polling readiness first is sound.
            let mut router = router.clone();
            router.call(request.map(Body::new))
        });
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let stop = stop.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Bind and start the admin API for `fleetgate run`. The file sites it checks domains against
/// follow SIGHUP reloads (a reload that fails keeps the last good file, as the node does).
pub async fn spawn(
    admin: &AdminConfig,
    state: AdminState,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = bind(&admin.listen).await?;
    // Read once: a SIGHUP reload does not change the limits of the admin listener.
    let timeouts = Timeouts::from_limits(&state.config().limits);
    state.watch_registry(shutdown.clone());
    state
        .events
        .clone()
        .spawn(state.store.clone(), shutdown.clone());
    let state = Arc::new(state);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the admin API's SIGHUP handler")?;
    let reload_state = state.clone();
    let reload_shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = reload_shutdown.cancelled() => return,
                _ = hup.recv() => {
                    let path = reload_state.config().file.clone();
                    if let Ok(config) = Config::load(&path) {
                        reload_state.set_config(config);
                    }
                }
            }
        }
    });
    info!(listen = %admin.listen, token = admin.token.is_some(), "admin API listening");
    if let Some(addr) = state.config().dns.as_ref().and_then(|d| d.acme_dns_listen) {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (dns.acme_dns_listen)"))?;
        info!(listen = %addr, "acme-dns API listening");
        let only = acme_dns::router(state.acme_dns.clone()).fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({"error": "not_found: see /acme-dns/register, /acme-dns/update, /acme-dns/health"})),
            )
        });
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = serve(AdminListener::Tcp(listener), only, timeouts, async move {
                stop.cancelled().await
            });
            if let Err(e) = served.await {
                warn!(error = %e, "the acme-dns API stopped");
            }
        });
    }
    let router = router(state);
    let unix_path = match &admin.listen {
        AdminListen::Unix(path) => Some(path.clone()),
        AdminListen::Tcp(_) => None,
    };
    Ok(tokio::spawn(async move {
        let stop = shutdown.clone();
        let served = serve(
            listener,
            router,
            timeouts,
            async move { stop.cancelled().await },
        );
        // Requests in flight get DRAIN after shutdown; a client holding its connection longer
        // does not hold up the node's exit.
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN).await;
        };
        tokio::select! {
            result = served => {
                if let Err(e) = result {
                    warn!(error = %e, "the admin API stopped");
                }
            }
            _ = deadline => warn!("admin API connections still open after the drain; closed"),
        }
        if let Some(path) = unix_path {
            let _ = std::fs::remove_file(path);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, version: u64) -> Arc<sites::Entry> {
        Arc::new(sites::Entry {
            id: id.into(),
            version,
            spec: sites::SiteSpec::new(vec![id.to_owned()]),
            updated_at: 0,
            updated_by: "test".into(),
            on_demand: None,
        })
    }

    #[test]
    fn a_write_is_shown_at_its_version_or_later_and_a_removal_once_gone() {
        let entries = [entry("a.example", 2), entry("b.example", 1)];
        let write = |id: &str, version| (id.to_owned(), version);
        assert!(shows(&entries, &write("a.example", Some(2))));
        assert!(shows(&entries, &write("A.Example", Some(1))));
        assert!(!shows(&entries, &write("a.example", Some(3))));
        assert!(!shows(&entries, &write("c.example", Some(1))));
        assert!(shows(&entries, &write("c.example", None)));
        assert!(!shows(&entries, &write("b.example", None)));
    }
}
