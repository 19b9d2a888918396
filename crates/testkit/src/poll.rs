//! Waiting for a condition with a deadline, instead of sleeping.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::time::{Instant, sleep_until, timeout_at};

/// How often [`wait_for`] and [`wait_for_ok`] ask again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` every [`POLL_INTERVAL`] until it returns `Some`, or fails once `deadline` has passed.
///
/// One call of `f` that is still running at the deadline is cancelled. The error names `what`.
pub async fn wait_for<F, Fut, T>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_ok(what, deadline, move || {
        let fut = f();
        async move { fut.await.ok_or_else(|| anyhow!("not yet")) }
    })
    .await
}

/// Like [`wait_for`], but `f` returns `anyhow::Result<T>` and every `Err` means "not yet"; the last
/// error is kept as the cause of the timeout error, so `?` inside the closure explains failures.
pub async fn wait_for_ok<F, Fut, T>(what: &str, deadline: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    let end = started + deadline;
    let mut attempts = 0u32;
    let mut last_err = None;
    loop {
        attempts += 1;
        let next = Instant::now() + POLL_INTERVAL;
        match timeout_at(end, f()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => last_err = Some(err),
            Err(_elapsed) => {}
        }
        if Instant::now() >= end {
            let msg = format!(
                "timed out after {:?} ({attempts} attempts) waiting for {what}",
                started.elapsed()
            );
            return Err(match last_err {
                Some(err) => err.context(msg),
                None => anyhow!(msg),
            });
        }
        sleep_until(next.min(end)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_once_condition_holds() {
        let mut n = 0;
        let got = wait_for("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            let v = n;
            async move { (v >= 3).then_some(v) }
        })
        .await
        .unwrap();
        assert_eq!(got, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_naming_what_and_last_error() {
        let err = wait_for_ok("the moon", Duration::from_millis(300), || async {
            Err::<(), _>(anyhow!("still cheese"))
        })
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("the moon"), "{text}");
        assert!(text.contains("still cheese"), "{text}");
    }
}
