//! Protocol switches (WebSocket and other HTTP/1.1 `Upgrade`s): once both sides have switched,
//! bytes are copied both ways until either side closes.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::copy_bidirectional;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::proxy::balancer::InFlight;

/// Joins the client's and the upstream's switched connections in a task of its own. The
/// upstream counts the tunnel as a request in flight until it closes. At shutdown a tunnel
/// gets `drain` to end by itself, then it is closed.
pub(crate) fn spawn(
    client: OnUpgrade,
    upstream: OnUpgrade,
    in_flight: InFlight,
    shutdown: CancellationToken,
    drain: Duration,
) {
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                debug!(%error, "protocol switch did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::select! {
            copied = copy_bidirectional(&mut client, &mut upstream) => match copied {
                Ok((up, down)) => debug!(up, down, "tunnel closed"),
                Err(error) => debug!(%error, "tunnel failed"),
            },
            () = async {
                shutdown.cancelled().await;
                sleep(drain).await;
            } => debug!("tunnel closed at shutdown"),
        }
    });
}
