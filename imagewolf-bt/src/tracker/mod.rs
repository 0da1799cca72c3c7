//! HTTP tracker (BEP 3, 23): an in-memory tracker server for LAN swarms, an announce client,
//! and a re-announce loop.
//!
//! Layout, from pure logic to I/O:
//! - `query`: announce query strings, parsed by the tracker and rendered by the client
//!   (sans-IO). `info_hash`/`peer_id` are percent-decoded as raw bytes, never as text.
//! - `response`: bencoded replies, encoded by the tracker and decoded by the client
//!   (sans-IO). Compact (BEP 23) `peers`/`peers6` by default, a dict list on `compact=0`.
//! - `swarm`: [`Swarms`], the registry of who is in which torrent. Time is an argument
//!   (`now`), so expiry is tested without sleeping; all limits live here.
//! - `server`: [`TrackerServer`], hyper 1.x HTTP/1 glue around a locked [`Swarms`].
//! - `client`: [`announce`], one HTTP announce with hyper's low-level client.
//! - `announcer`: [`Announcer`], the per-torrent loop of `started`, periodic, `completed` and
//!   `stopped` announces.
//!
//! Design decisions:
//! - The tracker registers a peer at the address its announce came from (the TCP source
//!   address) and ignores `ip=`: a tracker that believed `ip=` would hand every peer
//!   whatever address an outsider named (169.254.169.254, a host's admin port, a flood
//!   victim). The source address cannot be forged over TCP. Clients make that address the
//!   one they want to be dialled on by connecting from it ([`AnnounceParams::ip`] is also
//!   the address the client binds its announce connection to). A tracker whose clients are
//!   all trusted and behind NAT can opt in with [`TrackerConfig::trust_ip_param`].
//! - Everything sized by a remote side is bounded: query length and parameter count,
//!   request head size, open connections and their lifetime, peers per torrent, torrents,
//!   peers per reply, and on the client side the reply body (checked while reading).
//! - Malformed input never panics; it becomes an error value (`failure reason` on the
//!   tracker, [`TrackerError`] on the client).
//! - Scrape is not implemented: nothing in ImageWolf needs it.

mod announcer;
mod client;
mod query;
mod response;
mod server;
mod swarm;

#[cfg(test)]
mod tests;

pub use announcer::{spawn_announcer, Announcer, AnnouncerHandle};
pub use client::{
    announce, announce_with_timeout, AnnounceParams, TrackerError, ANNOUNCE_TIMEOUT,
    MAX_RESPONSE_LEN,
};
pub use query::{AnnounceError, AnnounceRequest, Event, MAX_QUERY_LEN, MAX_QUERY_PARAMS};
pub use response::{
    decode_response, encode_failure, AnnounceReply, AnnounceResponse, ReplyPeer, ResponseError,
    DEFAULT_INTERVAL,
};
pub use server::{TrackerServer, MAX_CONNECTIONS};
pub use swarm::{SwarmError, Swarms, TrackerConfig, DEFAULT_NUMWANT, MAX_NUMWANT};
