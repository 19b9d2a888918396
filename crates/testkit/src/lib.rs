//! Test support for fleetgate: starts real programs (Pebble, challtestsrv, the fleetgate binary)
//! on private loopback ports, kills them on drop, and talks to servers under test as a verifying
//! TLS / HTTP client.
//!
//! Everything binds loopback only. Nothing here sleeps for a fixed time: readiness is polled with
//! deadlines ([`wait_for`], [`wait_for_ok`]).

mod address;
mod bind;
mod dns;
mod haproxy;
mod http_client;
mod pebble;
mod pki;
mod poll;
mod postgres;
mod process;
mod redis_server;
mod tls_client;
mod upstream;

pub use address::{free_addr, free_port, loopback_ip};
pub use bind::{BIND_STARTUP_DEADLINE, Bind, BindBuilder};
pub use haproxy::Haproxy;
pub use http_client::{
    HttpResponse, REQUEST_TIMEOUT, http_get, http_request, https_get, https_request, raw_http,
};
pub use pebble::{Pebble, PebbleBuilder, STARTUP_DEADLINE};
pub use pki::{CertInfo, LeafKey, TestPki, ca_and_leaf, ca_and_leaf_with, cert_info, pem_certs};
pub use poll::{POLL_INTERVAL, wait_for, wait_for_ok};
pub use postgres::{POSTGRES_STARTUP_DEADLINE, Postgres};
pub use process::{ChildGuard, Signal};
pub use redis_server::{REDIS_STARTUP_DEADLINE, RedisServer, RedisServerBuilder};
pub use tls_client::{
    HANDSHAKE_TIMEOUT, TlsInfo, client_config, tls_connect, tls_connect_from, tls_handshake,
    tls_info,
};
pub use upstream::{
    Blackhole, ChannelBody, Echo, GeneratedBody, NGINX_STARTUP_DEADLINE, Nginx, Upstream, WsFrame,
    channel_body, chunk, proc_status_bytes, reset_peak_rss, ws_accept, ws_handshake, ws_read,
    ws_write,
};
