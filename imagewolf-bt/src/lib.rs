//! imagewolf-bt: a BitTorrent engine tuned for fast LANs.
//!
//! It is the engine under [ImageWolf](https://github.com/imagewolf/imagewolf), which spreads
//! container images to every node of a cluster, and it stands alone: seed and download
//! torrents, run an in-memory tracker, interoperate with standard clients (libtorrent,
//! transmission, aria2).
//!
//! # Quick start
//! Make a torrent of a file, seed it from one session and download it with another:
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), imagewolf_bt::Error> {
//! use futures::StreamExt;
//! use imagewolf_bt::{metainfo::Metainfo, AddTorrent, Session, TorrentEvent};
//!
//! let dir = std::env::temp_dir().join(format!("iw-quickstart-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let file = dir.join("image.tar");
//! std::fs::write(&file, vec![42u8; 3 << 20])?;
//! let meta = Metainfo::create(&file).await?; // hashed on the blocking pool
//! meta.save(dir.join("image.torrent"))?;
//!
//! let localhost = "127.0.0.1:0".parse().unwrap();
//! let seed = Session::builder().listen_addr(localhost).build().await?;
//! seed.add_torrent(AddTorrent::seed_file(meta.clone(), &file)?).await?;
//!
//! let node = Session::builder().listen_addr(localhost).build().await?;
//! let out = dir.join("downloads");
//! let torrent = node
//!     .add_torrent(AddTorrent::download_to(meta, &out)?.with_peers([seed.listen_addr()]))
//!     .await?;
//! let mut events = torrent.events();
//! let mut progress = std::pin::pin!(torrent.progress_stream());
//! while let Some(stats) = progress.next().await {
//!     if stats.is_complete() {
//!         break;
//!     }
//! }
//! assert_eq!(std::fs::read(out.join("image.tar"))?, std::fs::read(&file)?);
//! assert!(matches!(events.try_recv(), Ok(TorrentEvent::PeerConnected { .. })));
//! node.shutdown().await;
//! seed.shutdown().await;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! [`SessionConfig::default()`] is a general-purpose client;
//! [`SessionConfig::lan_cluster()`] is the tuning ImageWolf runs with (first-seed piece
//! spreading, bulk traffic marking). Every fallible call returns the crate's [`Error`].
//!
//! # Layout
//! The documented surface is what programs need: [`Session`] / [`SessionBuilder`] /
//! [`SessionConfig`], [`AddTorrent`], [`TorrentHandle`] with its stats and events,
//! [`metainfo`] (`.torrent` files), [`storage`] (where payloads live) and [`tracker`] (an
//! in-memory HTTP tracker and a client). The engine's inner floors (`wire`, `picker`,
//! `rate`) stay public for benchmarks, fuzzers and simulators but are hidden from the
//! docs and outside the semver promise; see ARCHITECTURE.md in the repository for data
//! flow, invariants and locking rules.

#![warn(missing_docs)]

mod config;
mod error;
mod geometry;
mod id;
mod magnet;
mod metadata_fetch;
pub mod metainfo;
mod peer;
#[doc(hidden)]
pub mod picker;
#[doc(hidden)]
pub mod rate;
mod session;
pub mod storage;
mod torrent;
pub mod tracker;
#[doc(hidden)]
pub mod wire;

pub use config::SessionConfig;
pub use error::{DisconnectReason, Error};
pub use magnet::Magnet;
pub use session::{Session, SessionBuilder, SessionError};
pub use torrent::{
    AddTorrent, StartFrom, TorrentError, TorrentEvent, TorrentHandle, TorrentStats, TorrentStatus,
};

#[doc(hidden)]
pub use geometry::{BlockRef, BLOCK_LEN};
pub use geometry::{Lengths, LengthsError, PieceIndex, MAX_PIECE_LEN};
pub use id::{InfoHash, PeerId};
