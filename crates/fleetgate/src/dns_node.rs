//! The delegated DNS-01 zone in `run`: the solver for the certificate manager and, with
//! `[dns] listen`, the listener.

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
    manager.set_dns01(Arc::new(certs::Dns01::delegated(
        records.clone(),
        dns.zone.apex(),
    )));
    let Some(listen) = dns.listen else {
        return Ok(None);
    };
    let server = dns::DnsServer::bind(listen, dns.zone.clone(), records)
        .await
        .with_context(|| format!("cannot listen on {listen} (dns.listen)"))?;
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = server.serve(shutdown.cancelled_owned()).await {
            tracing::error!(error = %e, "the DNS listener failed");
        }
    })))
}
