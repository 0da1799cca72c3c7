//! Running `ctr`: every call with a deadline, its output bounded, its failures in its own
//! words.
//!
//! Design decisions:
//! - **Everything `ctr` prints is bounded** ([`MAX_OUTPUT`]) and every call has a deadline:
//!   a wedged containerd must not wedge the agent, and a node with a huge store must not blow
//!   up its memory. Failures carry `ctr`'s own stderr (clipped) so the operator sees
//!   containerd's words in /stats and the logs.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Containerd, ContainerdError, MAX_MESSAGE_LEN, MAX_OUTPUT};

/// Connecting to containerd, passed to `ctr --connect-timeout`.
const CONNECT_TIMEOUT: &str = "10s";

impl Containerd {
    /// Runs `ctr -a ADDRESS -n NAMESPACE ARGS`; returns its stdout.
    pub(super) async fn ctr(
        &self,
        what: &'static str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String, ContainerdError> {
        self.run_ctr(what, args, timeout, true).await
    }

    /// Runs `ctr -a ADDRESS -n NAMESPACE ARGS`; returns its stdout if `keep_stdout`, else
    /// discards it (a pull's progress display, which grows with its duration).
    pub(super) async fn run_ctr(
        &self,
        what: &'static str,
        args: &[&str],
        timeout: Duration,
        keep_stdout: bool,
    ) -> Result<String, ContainerdError> {
        let mut cmd = tokio::process::Command::new(&self.config.ctr);
        cmd.arg("--connect-timeout")
            .arg(CONNECT_TIMEOUT)
            .arg("--address")
            .arg(&self.config.address)
            .arg("--namespace")
            .arg(&self.config.namespace)
            .args(args)
            // The flags above decide; the environment must not.
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(if keep_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| ContainerdError::Spawn {
            ctr: self.config.ctr.display().to_string(),
            source,
        })?;
        let (stdout, Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ContainerdError::Io {
                what: format!("ctr {what}"),
                source: std::io::Error::other("stderr not captured"),
            });
        };
        if keep_stdout && stdout.is_none() {
            return Err(ContainerdError::Io {
                what: format!("ctr {what}"),
                source: std::io::Error::other("stdout not captured"),
            });
        }
        let run = async {
            // Both pipes are drained at once: a child blocked on a full stderr pipe would
            // otherwise never close stdout.
            let read_out = async {
                match stdout {
                    Some(stdout) => read_bounded(stdout).await,
                    None => Ok((Vec::new(), false)),
                }
            };
            let (out, err) = tokio::join!(read_out, read_bounded(stderr));
            let status = child.wait().await;
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            // Dropping `child` kills it (kill_on_drop).
            Err(_) => {
                return Err(ContainerdError::Timeout {
                    what,
                    after: timeout,
                })
            }
        };
        let io = |source| ContainerdError::Io {
            what: format!("ctr {what}"),
            source,
        };
        let status = status.map_err(io)?;
        let (out, out_truncated) = out.map_err(io)?;
        let (err, _) = err.map_err(io)?;
        if !status.success() {
            return Err(ContainerdError::Ctr {
                what,
                status: status.to_string(),
                message: clip(&String::from_utf8_lossy(&err)),
            });
        }
        if out_truncated {
            return Err(ContainerdError::TooMuchOutput { what });
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Reads at most [`MAX_OUTPUT`] bytes, then drains (and drops) the rest so the child is not
/// blocked on a full pipe. Returns the bytes and whether some were dropped.
pub(super) async fn read_bounded(
    mut reader: impl AsyncRead + Unpin,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    (&mut reader)
        .take(MAX_OUTPUT)
        .read_to_end(&mut kept)
        .await?;
    let dropped = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await?;
    Ok((kept, dropped > 0))
}

/// Clips `ctr`'s stderr for a message.
pub(super) fn clip(message: &str) -> String {
    let message = message.trim();
    if message.len() <= MAX_MESSAGE_LEN {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", message.get(..end).unwrap_or_default())
}
