//! DNS-01 in `run`: the solver for the certificate manager (the delegated zone and the RFC 2136
//! zones of `[dns]`) and, with `[dns] listen`, the delegated zone's listener.

use std::sync::Arc;

use anyhow::Context as _;
use dns::Records;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// For `run`: hand the DNS-01 solver to the certificate manager and, with `[dns] listen`, answer
/// for the zone until `shutdown`. Binds before returning, so a taken port fails the start.
pub async fn start(
    config: &Config,
    store: &Arc<dyn store::Storage>,
    manager: &certs::Manager,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(dns) = &config.dns else {
        return Ok(None);
    };
    let records = Records::new(Arc::clone(store));
    let mut solver = match &dns.zone {
        Some(zone) => certs::Dns01::delegated(records.clone(), zone.zone.apex()),
        None => certs::Dns01::default(),
    };
    for entry in &dns.rfc2136 {
        solver = solver.with_rfc2136(entry.client()?);
    }
    manager.set_dns01(Arc::new(solver));
    let (Some(listen), Some(zone)) = (dns.listen, &dns.zone) else {
        return Ok(None);
    };
    let server = dns::DnsServer::bind(listen, zone.zone.clone(), records)
        .await
        .with_context(|| format!("cannot listen on {listen} (dns.listen)"))?;
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = server.serve(shutdown.cancelled_owned()).await {
            tracing::error!(error = %e, "the DNS listener failed");
        }
    })))
}
