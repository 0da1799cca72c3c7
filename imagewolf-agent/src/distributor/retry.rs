//! Retrying pulls and loads with bounded backoff.

use std::time::Duration;

use super::Distributor;

/// How failed pulls and loads are retried: pauses start at `first_delay` and double up to
/// `max_delay`. Pulls stop after `pull_attempts`; loads never stop (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Pause after the first failure.
    pub first_delay: Duration,
    /// Longest pause between two attempts.
    pub max_delay: Duration,
    /// Pull attempts before the distribution fails.
    pub pull_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            pull_attempts: 8,
        }
    }
}

/// Errors that say whether retrying can help.
pub trait Retryable {
    /// True if the same call may succeed later.
    fn retryable(&self) -> bool;
}

impl Retryable for crate::source::SourceError {
    fn retryable(&self) -> bool {
        self.retryable
    }
}

impl Retryable for crate::loader::LoaderError {
    fn retryable(&self) -> bool {
        true
    }
}

impl Distributor {
    /// Runs `op` until it succeeds, retrying retryable errors with the configured backoff,
    /// at most `max_attempts` times (`None`: until it succeeds); each error is visible in
    /// /stats meanwhile, and `attempts` counts every try.
    pub(super) async fn with_retries<T, E, F, Fut>(
        &self,
        key: &str,
        what: &str,
        max_attempts: Option<u32>,
        mut op: F,
    ) -> Result<T, String>
    where
        E: std::fmt::Display + Retryable,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let policy = self.config.retry;
        let mut delay = policy.first_delay;
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            self.update(key, |r| {
                r.stats.attempts = r.stats.attempts.saturating_add(1)
            });
            let e = match op().await {
                Ok(v) => {
                    self.update(key, |r| r.stats.error = None);
                    return Ok(v);
                }
                Err(e) => e,
            };
            if !e.retryable() {
                return Err(format!("{what}: {e}"));
            }
            if max_attempts.is_some_and(|max| attempt >= max) {
                return Err(format!("{what}: gave up after {attempt} attempts: {e}"));
            }
            tracing::warn!(
                key,
                "{what} failed (attempt {attempt}), retrying in {delay:?}: {e}"
            );
            self.update(key, |r| {
                r.stats.error = Some(format!(
                    "{what}: {e} (attempt {attempt}; retrying in {delay:?})"
                ))
            });
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2).min(policy.max_delay);
        }
    }
}
