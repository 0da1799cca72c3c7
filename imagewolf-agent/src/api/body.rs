//! Reading request bodies within a byte budget shared by all connections and bounded per
//! source address.
//!
//! A body's bytes are reserved as they arrive, not up front: a client that declares a large
//! body (or none) and then dribbles holds only what it sent. All bodies being read together
//! hold at most [`MAX_BODY_BYTES_IN_FLIGHT`](super::MAX_BODY_BYTES_IN_FLIGHT), and those
//! from one source address at most
//! [`MAX_BODY_BYTES_PER_SOURCE`](super::MAX_BODY_BYTES_PER_SOURCE), so one host stalling
//! bodies cannot make the registry's notifications or the other agents' announcements wait.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, StatusCode};

use super::server::{ConnState, Phase};
use super::{ApiError, Ctx};

/// Body bytes being received, in all and per source address.
pub(super) struct BodyBudget {
    total: usize,
    per_source: usize,
    used: Mutex<Used>,
}

#[derive(Default)]
struct Used {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

impl BodyBudget {
    pub(super) fn new(total: usize, per_source: usize) -> Self {
        BodyBudget {
            total,
            per_source: per_source.min(total),
            used: Mutex::new(Used::default()),
        }
    }

    fn reserve(&self, ip: IpAddr) -> Reservation<'_> {
        Reservation {
            budget: self,
            ip,
            held: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bytes one body holds; given back when dropped.
struct Reservation<'a> {
    budget: &'a BodyBudget,
    ip: IpAddr,
    held: usize,
}

impl Reservation<'_> {
    /// Holds `n` more bytes, if both the total and this source's share allow.
    fn grow(&mut self, n: usize) -> Result<(), Exhausted> {
        let mut used = self.budget.lock();
        let source = used.by_source.get(&self.ip).copied().unwrap_or(0);
        if source + n > self.budget.per_source {
            return Err(Exhausted::Source);
        }
        if used.total + n > self.budget.total {
            return Err(Exhausted::Total);
        }
        used.total += n;
        used.by_source.insert(self.ip, source + n);
        self.held += n;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.held == 0 {
            return;
        }
        let mut used = self.budget.lock();
        used.total -= self.held;
        let left = used.by_source.get(&self.ip).copied().unwrap_or(0) - self.held;
        if left == 0 {
            used.by_source.remove(&self.ip);
        } else {
            used.by_source.insert(self.ip, left);
        }
    }
}

enum Exhausted {
    Source,
    Total,
}

/// Reads the whole body, refusing more than `max_body` bytes (a declared `Content-Length`
/// over it before reading a byte), bodies that do not arrive within the body timeout, and
/// bytes past the budgets (503: retry).
pub(super) async fn read_body(
    req: Request<Incoming>,
    ctx: &Ctx,
    conn: &ConnState,
) -> Result<Bytes, ApiError> {
    let max = ctx.config.max_body;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the {max}-byte limit"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let mut reservation = ctx.body_budget.reserve(conn.ip());
    let mut body = req.into_body();
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + ctx.limits.body_read_timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body not received in time",
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body failed: {e}"),
                ))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > max {
            return Err(too_large());
        }
        reservation.grow(data.len()).map_err(|which| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                match which {
                    Exhausted::Source => {
                        "too many request bodies being received from your address; retry shortly"
                    }
                    Exhausted::Total => "too many request bodies being received; retry shortly",
                },
            )
        })?;
        conn.touch();
        buf.extend_from_slice(&data);
    }
    conn.enter(Phase::Busy);
    Ok(buf.freeze())
}
