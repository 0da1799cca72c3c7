//! The crate's error type, and why a peer connection ended.

use std::net::SocketAddr;

use crate::InfoHash;

/// Everything that can go wrong in a [`crate::Session`] call: starting a session, adding,
/// running or waiting for a torrent, creating or loading a `.torrent`, resolving a magnet
/// link. The sans-IO modules keep their own precise error types ([`crate::metainfo::MetainfoError`],
/// [`crate::LengthsError`], ...), which convert into this one with `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The payload's storage failed (fatal for the torrent), or a file could not be read
    /// or written.
    #[error("storage: {0}")]
    Storage(#[from] std::io::Error),
    /// The storage's size does not match the torrent.
    #[error("storage holds {actual} bytes, the torrent needs {expected}")]
    StorageSize {
        /// Bytes the torrent describes.
        expected: u64,
        /// Bytes the storage holds.
        actual: u64,
    },
    /// A torrent with this info-hash is already in the session.
    #[error("torrent {0} is already in the session")]
    Duplicate(InfoHash),
    /// The torrent was stopped before it completed.
    #[error("torrent stopped")]
    Stopped,
    /// The torrent stopped on an error (its storage failed); the message says what.
    #[error("torrent failed: {0}")]
    Failed(String),
    /// The session is shutting down.
    #[error("session is shut down")]
    SessionClosed,
    /// A wait with a deadline ran out (see [`crate::TorrentHandle::wait_complete_within`]).
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A `.torrent` (or an info dict fetched from peers) is invalid, or could not be built.
    #[error("metainfo: {0}")]
    Metainfo(#[from] crate::metainfo::MetainfoError),
    /// A magnet link could not be parsed.
    #[error("magnet link: {0}")]
    Magnet(String),
    /// No peer gave us a torrent's info dict (BEP 9) that matches its info-hash; the text
    /// says what each peer did.
    #[error("metadata: {0}")]
    Metadata(String),
    /// A tracker could not be reached or refused us.
    #[error("tracker: {0}")]
    Tracker(#[from] crate::tracker::TrackerError),
}

/// Why a peer connection ended (in [`crate::TorrentEvent::PeerDisconnected`]). Every
/// reason ends that one connection only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed the connection.
    PeerClosed,
    /// A socket error.
    Io(std::io::ErrorKind),
    /// The peer broke the protocol (bad framing, sizes, a message not allowed here); the
    /// text says what.
    Protocol(String),
    /// The peer went silent (nothing after its handshake, or nothing for the idle timeout).
    Timeout(&'static str),
    /// Both sides are seeds: the connection has no use.
    BothSeeds,
    /// The peer sent data that failed verification and was banned.
    Banned,
    /// Another connection to the same peer replaced this one (both sides dialled).
    Replaced,
    /// The torrent stopped (or the session shut down).
    TorrentStopped,
    /// Ended normally.
    Closed,
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DisconnectReason::PeerClosed => f.write_str("peer closed the connection"),
            DisconnectReason::Io(kind) => write!(f, "i/o: {kind}"),
            DisconnectReason::Protocol(what) => write!(f, "protocol: {what}"),
            DisconnectReason::Timeout(what) => write!(f, "timed out: {what}"),
            DisconnectReason::BothSeeds => f.write_str("both sides are seeds"),
            DisconnectReason::Banned => f.write_str("sent data that failed verification"),
            DisconnectReason::Replaced => f.write_str("replaced by a connection to the same peer"),
            DisconnectReason::TorrentStopped => f.write_str("torrent stopped"),
            DisconnectReason::Closed => f.write_str("closed"),
        }
    }
}
