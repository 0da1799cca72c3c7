//! imagewolf-bt: a BitTorrent engine tuned for fast LANs.
//!
//! It is the engine under [ImageWolf](https://github.com/imagewolf/imagewolf), which spreads
//! container images to every node of a cluster, and it stands alone: seed and download
//! torrents, run an in-memory tracker, interoperate with standard clients (libtorrent,
//! transmission, aria2).
//!
//! # Quick start
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use imagewolf_bt::{metainfo::TorrentBuilder, storage::MemoryStorage};
//! use imagewolf_bt::{AddTorrent, PeerId, Session, SessionConfig, StartFrom, TorrentEvent};
//!
//! let payload = vec![42u8; 3 << 20];
//! let meta = TorrentBuilder::new("image.tar")
//!     .build_from_reader(&payload[..], payload.len() as u64, std::io::sink())?;
//!
//! let config = |_| SessionConfig {
//!     listen_addr: "127.0.0.1:0".parse().unwrap(),
//!     peer_id: PeerId::generate(),
//!     ..SessionConfig::default()
//! };
//! let seed = Session::new(config(())).await?;
//! seed.add_torrent(AddTorrent::new(
//!     meta.clone(),
//!     Arc::new(MemoryStorage::from_vec(payload.clone())),
//!     StartFrom::Complete,
//! )).await?;
//!
//! let node = Session::new(config(())).await?;
//! let out = Arc::new(MemoryStorage::new(meta.total_len()));
//! let torrent = node
//!     .add_torrent(AddTorrent::new(meta, out.clone(), StartFrom::Empty).with_peers([seed.listen_addr()]))
//!     .await?;
//! let mut events = torrent.events();
//! torrent.wait_complete().await?;
//! assert_eq!(out.to_vec(), payload);
//! // Every verified piece was announced as an event.
//! assert!(matches!(events.try_recv(), Ok(TorrentEvent::PeerConnected { .. })));
//! node.shutdown().await;
//! seed.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! Bottom floor first; the first five are sans-IO (no sockets, no clocks) so property tests
//! and fuzzers drive them directly:
//! - [`Lengths`], [`PieceIndex`], [`BlockRef`]: validated geometry; wire integers are checked
//!   once and never reach the picker unchecked.
//! - [`metainfo`]: `.torrent` read/write, single-pass builder, piece hashing.
//! - [`wire`]: the peer wire codec (BEP 3, 6, 10) with a hard memory bound.
//! - [`picker`]: rarest-first piece picker with strict endgame.
//! - [`tracker`]: announce parsing and replies, plus an HTTP tracker server and client.
//! - [`storage`]: where payloads live (files or memory), positioned I/O.
//! - [`rate`]: the session-wide upload cap ([`Session::set_upload_rate`]).
//! - [`Session`] / [`TorrentHandle`]: connections, choking, verification, progress.
//!
//! See ARCHITECTURE.md in the repository for data flow, invariants and locking rules.

#![warn(missing_docs)]

mod config;
mod geometry;
mod id;
pub mod metainfo;
mod peer;
pub mod picker;
pub mod rate;
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
