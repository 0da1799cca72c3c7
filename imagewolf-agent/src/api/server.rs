//! The accept loop and connection slots: who gets a connection when all are taken.
//!
//! Every connection is tracked with its source address and [`Phase`]. When all
//! [`MAX_CONNECTIONS`](super::MAX_CONNECTIONS) slots are taken, a newcomer gets the slot of
//! a connection that is doing nothing useful: idle (waiting for a request head, be it a new
//! connection or a keep-alive one between requests, for at least [`MIN_IDLE_AGE`]) or
//! stalled in a request body (for at least [`MIN_BODY_STALL`]). The victim comes from the
//! source address holding the most connections, and never from a source holding no more
//! than its fair share (slots / sources) while another holds more: one host opening
//! hundreds of connections only ever displaces its own, so it cannot keep the registry or
//! the other agents out. A connection busy handling a request is never closed for room.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Method;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::body::BodyBudget;
use super::{handle, AgentApi, ApiConfig, Ctx};
use super::{
    BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, MAX_BODY_BYTES_IN_FLIGHT, MAX_BODY_BYTES_PER_SOURCE,
    MAX_CONNECTIONS, MAX_CONNECTION_AGE, MAX_HEADERS, MAX_HEAD_LEN, SHUTDOWN_GRACE,
};
use crate::stats::HttpCounters;

/// When every connection slot is taken, an idle connection (no request in progress) is
/// closed to make room once it has idled this long (younger ones may be about to send).
pub const MIN_IDLE_AGE: Duration = Duration::from_millis(500);
/// When every connection slot is taken, a connection whose request body has made no
/// progress for this long may be closed to make room.
pub const MIN_BODY_STALL: Duration = Duration::from_millis(500);
/// Pause after a failed `accept` (typically out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Time and connection limits, separate from [`ApiConfig`] so tests can shrink them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) body_bytes_in_flight: usize,
    pub(crate) body_bytes_per_source: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
    pub(crate) max_connection_age: Duration,
    pub(crate) grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            body_bytes_in_flight: MAX_BODY_BYTES_IN_FLIGHT,
            body_bytes_per_source: MAX_BODY_BYTES_PER_SOURCE,
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            max_connection_age: MAX_CONNECTION_AGE,
            grace: SHUTDOWN_GRACE,
        }
    }
}

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    /// Waiting for a request head: new, or a keep-alive connection between requests.
    Idle = 0,
    /// Reading a request body.
    Body = 1,
    /// Handling a request (routing, answering).
    Busy = 2,
}

/// A connection's source and phase, shared by its task and the accept loop.
pub(super) struct ConnState {
    ip: IpAddr,
    phase: AtomicU8,
    /// When the phase began (or the body last made progress), in ms since `epoch`.
    since_ms: AtomicU64,
    epoch: Instant,
    /// Some request has been received on it.
    served: AtomicBool,
}

impl ConnState {
    fn new(ip: IpAddr, epoch: Instant) -> Self {
        let state = ConnState {
            ip,
            phase: AtomicU8::new(Phase::Idle as u8),
            since_ms: AtomicU64::new(0),
            epoch,
            served: AtomicBool::new(false),
        };
        state.touch();
        state
    }

    /// Enters `phase` now.
    pub(super) fn enter(&self, phase: Phase) {
        self.touch();
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Progress in the current phase (a body frame arrived).
    pub(super) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.since_ms.store(ms, Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Idle,
            1 => Phase::Body,
            _ => Phase::Busy,
        }
    }

    fn since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.since_ms.load(Ordering::Relaxed))
    }

    /// When it may be closed to make room, if ever in its current phase.
    fn evictable_at(&self) -> Option<Instant> {
        match self.phase() {
            Phase::Idle => Some(self.since() + MIN_IDLE_AGE),
            Phase::Body => Some(self.since() + MIN_BODY_STALL),
            Phase::Busy => None,
        }
    }
}

struct Tracked {
    state: Arc<ConnState>,
    task: AbortHandle,
}

pub(crate) async fn serve_with_limits(
    listener: TcpListener,
    api: Arc<dyn AgentApi>,
    config: ApiConfig,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    // Never smaller than one largest body, or such a body could never be read.
    let body_budget = BodyBudget::new(
        limits.body_bytes_in_flight.max(config.max_body),
        limits.body_bytes_per_source.max(config.max_body),
    );
    let auth = config
        .cluster_key
        .clone()
        .map(crate::auth::RequestAuth::new);
    let ctx = Arc::new(Ctx {
        api,
        config,
        limits,
        counters: HttpCounters::new(),
        body_budget,
        auth,
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_LEN)
        .max_headers(MAX_HEADERS);
    let builder = Arc::new(builder);
    let max_connections = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    let mut tracked: Vec<Tracked> = Vec::new();
    let mut waiting: Vec<Waiting> = Vec::new();
    let epoch = Instant::now();
    let conn_shutdown = shutdown.clone();
    let spawn = |connections: &mut JoinSet<()>, w: Waiting, permit| {
        let state = Arc::new(ConnState::new(w.ip, epoch));
        let task = connections.spawn(connection(
            Arc::clone(&builder),
            w.stream,
            w.remote,
            Arc::clone(&ctx),
            conn_shutdown.clone(),
            Arc::clone(&state),
            permit,
        ));
        Tracked { state, task }
    };
    loop {
        while connections.try_join_next().is_some() {}
        tracked.retain(|t| !t.task.is_finished());
        // Free slots go to waiting newcomers, the host holding the fewest connections first.
        while !waiting.is_empty() {
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                break;
            };
            let next = fewest_held(&waiting, &tracked);
            let w = waiting.swap_remove(next);
            tracked.push(spawn(&mut connections, w, permit));
        }
        ctx.counters.set_connections(tracked.len() + waiting.len());
        let give_up = limits.header_read_timeout;
        waiting.retain(|w| w.since.elapsed() < give_up);
        // Room for those still waiting: close one victim per newcomer not already covered
        // by a closing connection (an aborted task holds its slot until it is dropped).
        let closing = (max_connections - permits.available_permits()).saturating_sub(tracked.len());
        let mut wake = None;
        for _ in closing..waiting.len() {
            match pick_victim(&tracked, max_connections, Instant::now()) {
                Victim::Now(i) => {
                    let victim = tracked.swap_remove(i);
                    victim.task.abort();
                    ctx.counters.record_closed_for_room();
                    tracing::debug!(
                        source = %victim.state.ip,
                        phase = ?victim.state.phase(),
                        "API connections exhausted: closed an idle or stalled connection of the largest host"
                    );
                }
                Victim::At(at) => {
                    wake = Some(at);
                    break;
                }
                Victim::None => break,
            }
        }
        let wake_up = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    ctx.counters.record_accepted();
                    // `[::]` shows IPv4 clients as `::ffff:a.b.c.d`; the tracker wants a.b.c.d.
                    let ip = remote.ip().to_canonical();
                    let w = Waiting { stream, remote, ip, since: Instant::now() };
                    match Arc::clone(&permits).try_acquire_owned() {
                        Ok(permit) if waiting.is_empty() => tracked.push(spawn(&mut connections, w, permit)),
                        _ => {
                            if let Some(why) = turn_away(&tracked, &waiting, max_connections, ip) {
                                ctx.counters.record_closed_for_room();
                                tracing::debug!(source = %ip, "API connections exhausted: {why}");
                            } else {
                                waiting.push(w);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("API accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            permit = Arc::clone(&permits).acquire_owned(), if !waiting.is_empty() => {
                let Ok(permit) = permit else { break };
                let next = fewest_held(&waiting, &tracked);
                let w = waiting.swap_remove(next);
                tracked.push(spawn(&mut connections, w, permit));
            }
            () = wake_up => {}
            () = shutdown_requested(&mut shutdown) => break,
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.grace, drain).await.is_err() {
        tracing::debug!("API shutdown: aborting {} connections", connections.len());
        connections.shutdown().await;
    }
    Ok(())
}

/// Accepted connections waiting for a slot: at most this many (each holds a descriptor) ...
const MAX_WAITING: usize = 64;
/// ... and this many from one host.
const MAX_WAITING_PER_HOST: usize = 8;

/// An accepted connection waiting for a slot.
struct Waiting {
    stream: TcpStream,
    remote: SocketAddr,
    ip: IpAddr,
    since: Instant,
}

/// The waiting newcomer whose host holds the fewest connections (the earliest among equals).
fn fewest_held(waiting: &[Waiting], tracked: &[Tracked]) -> usize {
    let held = |ip: IpAddr| tracked.iter().filter(|t| t.state.ip == ip).count();
    let mut best = 0;
    let mut best_key = (usize::MAX, Instant::now());
    for (i, w) in waiting.iter().enumerate() {
        let key = (held(w.ip), w.since);
        if key < best_key {
            best = i;
            best_key = key;
        }
    }
    best
}

/// Why a newcomer from `ip` is closed at once rather than waiting for a slot, if it is: its
/// host already holds at least its fair share (slots / hosts, the newcomer's counted) while
/// another host holds connections too, or has enough newcomers waiting already, or too
/// many are waiting. A lone host (many agents on one address, as on a test machine) waits
/// for its own idle connections to make room.
fn turn_away(
    tracked: &[Tracked],
    waiting: &[Waiting],
    max_connections: usize,
    ip: IpAddr,
) -> Option<&'static str> {
    let mut hosts: Vec<IpAddr> = tracked.iter().map(|t| t.state.ip).collect();
    let held = hosts.iter().filter(|&&h| h == ip).count();
    let queued = waiting.iter().filter(|w| w.ip == ip).count();
    hosts.push(ip);
    hosts.sort_unstable();
    hosts.dedup();
    if hosts.len() >= 2 && held + queued >= max_connections / hosts.len() {
        Some("refused a connection of a host over its share")
    } else if queued >= MAX_WAITING_PER_HOST {
        Some("refused a connection of a host with enough waiting")
    } else if waiting.len() >= MAX_WAITING {
        Some("refused a connection: too many waiting")
    } else {
        None
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Victim {
    /// Close this one (an index into the tracked connections).
    Now(usize),
    /// None yet; look again then (phases change meanwhile, so looking again is cheap insurance).
    At(Instant),
    /// Every connection is busy with a request: wait for one to finish.
    None,
}

/// Which connection gives up its slot: an evictable one (idle for [`MIN_IDLE_AGE`], or
/// stalled in a body for [`MIN_BODY_STALL`]) of the source holding the most connections,
/// the longest evictable first. Sources holding no more than their fair share
/// (`max_connections` / sources) are spared while any source holds more.
fn pick_victim(tracked: &[Tracked], max_connections: usize, now: Instant) -> Victim {
    let mut held: HashMap<IpAddr, usize> = HashMap::new();
    for t in tracked {
        *held.entry(t.state.ip).or_default() += 1;
    }
    let fair = max_connections / held.len().max(1);
    let anyone_over = held.values().any(|&n| n > fair);
    let mut best: Option<(usize, Instant, usize)> = None; // (held, evictable_at, index)
    let mut soonest: Option<Instant> = None;
    for (i, t) in tracked.iter().enumerate() {
        let count = held[&t.state.ip];
        if anyone_over && count <= fair {
            continue;
        }
        let Some(at) = t.state.evictable_at() else {
            continue;
        };
        if at > now {
            soonest = Some(soonest.map_or(at, |s| s.min(at)));
            continue;
        }
        let better = match best {
            None => true,
            Some((n, when, _)) => count > n || (count == n && at < when),
        };
        if better {
            best = Some((count, at, i));
        }
    }
    match (best, soonest) {
        (Some((_, _, i)), _) => Victim::Now(i),
        (None, Some(at)) => Victim::At(at),
        (None, None) => Victim::None,
    }
}

/// Resolves once shutdown is requested: the value is `true` or the sender is gone.
pub(super) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

async fn connection(
    builder: Arc<http1::Builder>,
    stream: TcpStream,
    remote: SocketAddr,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
    state: Arc<ConnState>,
    _permit: OwnedSemaphorePermit,
) {
    let service_ctx = Arc::clone(&ctx);
    let service_state = Arc::clone(&state);
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let ctx = Arc::clone(&service_ctx);
        let state = Arc::clone(&service_state);
        state.served.store(true, Ordering::Relaxed);
        let reads_body = req.method() == Method::POST;
        state.enter(if reads_body { Phase::Body } else { Phase::Busy });
        async move {
            let response = handle(&ctx, req, &state).await;
            // The answer is written next; a client that does not read it is idle to us.
            state.enter(Phase::Idle);
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        result = conn.as_mut() => Some(result),
        () = shutdown_requested(&mut shutdown) => None,
        () = tokio::time::sleep(ctx.limits.max_connection_age) => None,
    };
    let result = match ended {
        Some(result) => result,
        None => {
            // Finish the current request (if any), then close; idle connections close at once.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(ctx.limits.grace, conn.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    match result {
        Ok(()) => {}
        Err(e) if e.is_parse() || e.is_parse_too_large() => {
            ctx.counters.record_rejected();
            tracing::warn!(%remote, "API connection refused: {e}");
        }
        // The header timeout also ends idle keep-alive connections: only a connection that
        // never got a request in is a slow or silent client.
        Err(e) if e.is_timeout() && !state.served.load(Ordering::Relaxed) => {
            ctx.counters.record_rejected();
            tracing::debug!(%remote, "API connection timed out before a request: {e}");
        }
        Err(e) => tracing::debug!(%remote, "API connection ended: {e}"),
    }
}

impl ConnState {
    /// The connection's source address (canonical: IPv4 clients of a `[::]` listener as
    /// IPv4).
    pub(super) fn ip(&self) -> IpAddr {
        self.ip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(ip: [u8; 4], phase: Phase, age: Duration, epoch: Instant) -> Arc<ConnState> {
        let state = Arc::new(ConnState::new(IpAddr::from(ip), epoch));
        state.phase.store(phase as u8, Ordering::Relaxed);
        let since = (Duration::from_secs(60).saturating_sub(age)).as_millis() as u64;
        state.since_ms.store(since, Ordering::Relaxed);
        state
    }

    async fn tracked(states: Vec<Arc<ConnState>>) -> (Vec<Tracked>, JoinSet<()>) {
        let mut set = JoinSet::new();
        let tracked = states
            .into_iter()
            .map(|state| Tracked {
                state,
                task: set.spawn(std::future::pending()),
            })
            .collect();
        (tracked, set)
    }

    #[tokio::test]
    async fn the_largest_sources_idle_connections_go_first_and_fair_shares_are_spared() {
        let now = Instant::now();
        let epoch = now
            .checked_sub(Duration::from_secs(60))
            .expect("the clock has run for a minute");
        let old = Duration::from_secs(5);
        let attacker = [10, 0, 0, 66];
        let mut states = vec![
            // A legitimate client's long idle keep-alive: spared, its source is under its share.
            conn([10, 0, 0, 1], Phase::Idle, Duration::from_secs(50), epoch),
            conn([10, 0, 0, 2], Phase::Body, old, epoch),
        ];
        for _ in 0..6 {
            states.push(conn(attacker, Phase::Body, old, epoch));
        }
        states.push(conn(attacker, Phase::Idle, Duration::from_secs(9), epoch));
        let (t, _set) = tracked(states).await;
        // 9 connections, 3 sources, 9 slots: fair share 3, the attacker holds 7.
        assert_eq!(
            pick_victim(&t, 9, now),
            Victim::Now(8),
            "the attacker's oldest"
        );

        // The attacker's connections are all fresh or busy: wait for them, don't touch others.
        let states = vec![
            conn([10, 0, 0, 1], Phase::Idle, Duration::from_secs(50), epoch),
            conn(attacker, Phase::Idle, Duration::from_millis(100), epoch),
            conn(attacker, Phase::Busy, old, epoch),
            conn(attacker, Phase::Idle, Duration::from_millis(200), epoch),
        ];
        let (t, _set) = tracked(states).await;
        assert_eq!(
            pick_victim(&t, 4, now),
            Victim::At(now - Duration::from_millis(200) + MIN_IDLE_AGE)
        );

        // Everyone within their share: the longest idle, wherever it comes from.
        let states = vec![
            conn([10, 0, 0, 1], Phase::Idle, Duration::from_secs(50), epoch),
            conn([10, 0, 0, 2], Phase::Idle, Duration::from_secs(2), epoch),
            conn([10, 0, 0, 3], Phase::Busy, old, epoch),
        ];
        let (t, _set) = tracked(states).await;
        assert_eq!(pick_victim(&t, 3, now), Victim::Now(0));

        // With every slot taken, a newcomer of a host at or over its share is turned away;
        // another host's is not; a lone host's never is.
        let states = vec![
            conn([10, 0, 0, 1], Phase::Busy, old, epoch),
            conn(attacker, Phase::Busy, old, epoch),
            conn(attacker, Phase::Busy, old, epoch),
            conn(attacker, Phase::Busy, old, epoch),
        ];
        let (t, _set) = tracked(states).await;
        assert!(turn_away(&t, &[], 4, IpAddr::from(attacker)).is_some());
        assert!(turn_away(&t, &[], 4, IpAddr::from([10, 0, 0, 1])).is_none());
        assert!(turn_away(&t, &[], 4, IpAddr::from([10, 0, 0, 9])).is_none());
        assert!(turn_away(&t[1..], &[], 3, IpAddr::from(attacker)).is_none());

        // Busy everywhere: nothing to close, wait for a slot.
        let states = vec![conn(attacker, Phase::Busy, old, epoch)];
        let (t, _set) = tracked(states).await;
        assert_eq!(pick_victim(&t, 1, now), Victim::None);
    }
}
