//! imagewolf-bt: a BitTorrent engine tuned for fast LANs.
//!
//! (crate docs: written once the public API settles)

#![warn(missing_docs)]

mod config;
mod geometry;
mod id;
pub mod metainfo;
mod peer;
pub mod picker;
mod session;
pub mod storage;
mod torrent;
pub mod tracker;
pub mod wire;

pub use config::SessionConfig;
pub use peer::PeerError;
pub use session::{Session, SessionError};
pub use torrent::{
    AddTorrent, StartFrom, TorrentError, TorrentEvent, TorrentHandle, TorrentStats, TorrentStatus,
};

pub use geometry::{BlockRef, Lengths, LengthsError, PieceIndex, BLOCK_LEN, MAX_PIECE_LEN};
pub use id::{InfoHash, PeerId};
