//! fleetgate's listeners: HTTP and HTTPS for many sites.
//!
//! - [`Routes`] maps hostnames to [`Site`]s and their [`Action`] (redirect, fixed response or
//!   reverse [`Proxy`] to upstream web servers).
//! - [`CertMap`] maps SNI names to certificates; rustls consults it on every handshake, writers
//!   swap it atomically.
//! - [`Edge`] runs the accept loops: TLS with rustls (aws-lc-rs), TLS-ALPN-01 on the HTTPS
//!   listener, HTTP/1.1 and HTTP/2 with hyper, HTTP-01 and the https redirect on plain HTTP,
//!   [`Limits`] on everything a client can hold, graceful shutdown.
//! - [`ChallengeResponder`] is how the edge asks for ACME challenge answers.
//! - [`TicketKeys`] seal and open TLS session tickets; the keys are given (shared by a fleet, so
//!   a ticket from one node resumes on another) and swapped live.
//!
//! **Architecture invariant:** this crate knows nothing about ACME orders or storage: it is given
//! certificates and challenge answers through [`CertMap`] and [`ChallengeResponder`].

mod challenge;
mod error;
mod framing;
/// Entry points for fuzzing and its regression tests; not an API (see the module).
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod host;
mod http1;
mod http2;
mod idle;
mod limits;
mod names;
mod observe;
mod proxy;
mod proxy_protocol;
mod redirect;
mod resolver;
mod routes;
mod server;
mod shards;
mod signal;
mod tickets;
mod tls;
mod wire;

pub use challenge::{ChallengeResponder, NoChallenges};
pub use error::EdgeError;
pub use host::{Host, HostError};
pub use limits::Limits;
pub use observe::{
    ACME_SITE, Handshake, Listener, NoObserver, Observer, SiteObserver, UNKNOWN_SITE,
    UpstreamObserver,
};
pub use proxy::{HealthCheck, HostHeader, Policy, Proxy};
pub use proxy_protocol::ProxyProtocol;
pub use redirect::Redirect;
pub use resolver::{CertMap, CertUpdate, OnDemand};
pub use routes::{Action, Hsts, Routes, RoutesBuilder, Site};
pub use server::Edge;
pub use shards::Shards;
pub use tickets::{TICKET_KEY_ID_LEN, TICKET_SECRET_LEN, TicketKey, TicketKeys};
