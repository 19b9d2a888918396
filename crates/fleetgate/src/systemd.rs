//! systemd's notify protocol (`Type=notify` in dist/fleetgate.service): READY once the listeners
//! are bound, STOPPING when the drain starts, WATCHDOG pings at half of `WatchdogSec`. Every call
//! is a no-op without `$NOTIFY_SOCKET` (not started by systemd).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The listeners (HTTP, HTTPS and the admin API's) are bound: systemd may start what
/// depends on fleetgate.
pub fn ready(sites: usize) {
    let status = format!("serving {sites} sites");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Shutdown began: listeners stop accepting, requests in flight drain.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// When systemd asks for a watchdog (`WatchdogSec`), ping at half its interval until
/// `shutdown`. The pings run on the main runtime, so a runtime that stops making progress
/// stops them and systemd restarts the node.
pub fn spawn_watchdog(shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(?interval, "systemd watchdog on");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}
