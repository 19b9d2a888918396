//! Active health checks: one task per proxy site probes every upstream each interval.
//!
//! The task lives as long as the site's routes: it stops when its [`CancellationToken`] is
//! cancelled, which the [`super::Forwarder`] does when it is dropped (the routes were replaced
//! and the last request using them finished).

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::BodyExt as _;
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::proxy::HostHeader;
use crate::proxy::balancer::Balancer;
use crate::proxy::config::HealthCheck;
use crate::proxy::pool::{UpstreamClient, UpstreamError};
use crate::proxy::request_body::RequestBody;

/// Most of a health response body that is read (so the connection can be reused); a longer
/// body is dropped with its connection.
const MAX_HEALTH_BODY: usize = 64 * 1024;

pub(crate) struct Checker {
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) client: UpstreamClient,
    pub(crate) check: HealthCheck,
    pub(crate) host_header: HostHeader,
}

impl Checker {
    /// Probes every upstream each interval until `stop` is cancelled.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let mut ticks = interval(this.check.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // Dropping the set (on cancellation) aborts probes still running.
            let mut probes = JoinSet::new();
            for index in 0..this.balancer.len() {
                let this = Arc::clone(&this);
                probes.spawn(async move {
                    let ok = this.probe(index).await;
                    (index, ok)
                });
            }
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    joined = probes.join_next() => match joined {
                        Some(Ok((index, ok))) => this.balancer.checked(index, ok),
                        Some(Err(_)) => {}
                        None => break,
                    },
                }
            }
        }
    }

    /// One `GET` of the health path: a 2xx or 3xx answer within the timeout passes.
    async fn probe(&self, index: usize) -> bool {
        let upstream = self.balancer.get(index);
        let Ok(uri) = Uri::try_from(self.check.path.as_str()) else {
            return false;
        };
        let host = match &self.host_header {
            HostHeader::Literal(value) => {
                HeaderValue::from_str(value).unwrap_or_else(|_| upstream.host_value.clone())
            }
            HostHeader::Pass | HostHeader::Upstream => upstream.host_value.clone(),
        };
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(header::HOST, host)
            .header(header::USER_AGENT, "fleetgate-health-check")
            .body(RequestBody::empty());
        let Ok(req) = req else {
            return false;
        };
        let deadline = self.check.timeout.min(self.check.interval);
        let by = tokio::time::Instant::now() + deadline;
        let outcome = timeout(deadline, async {
            let resp = self
                .client
                .send(index, upstream, req, &[], true, false, by)
                .await?;
            let status = resp.status();
            let _ = http_body_util::Limited::new(resp.into_body(), MAX_HEALTH_BODY)
                .collect()
                .await;
            Ok::<_, UpstreamError>(status)
        })
        .await;
        match outcome {
            Ok(Ok(status)) => {
                let ok = status.is_success() || status.is_redirection();
                if !ok {
                    debug!(upstream = %upstream.name, %status, "health check answered");
                }
                ok
            }
            Ok(Err(error)) => {
                debug!(upstream = %upstream.name, error = %super::ErrorChain(&error), "health check failed");
                false
            }
            Err(_) => {
                debug!(upstream = %upstream.name, ?deadline, "health check timed out");
                false
            }
        }
    }
}
