//! What a connection needs from the torrent it serves, as a trait the torrent implements
//! (as rqbit's `PeerConnectionHandler`). The peer module knows nothing of the torrent's
//! state, locks or tasks: it decodes, calls these hooks, and sends what the link queues.
//! So `peer` imports no `torrent` module, and a test or a simulator can run a connection
//! against a handler of its own.
//!
//! Every hook is synchronous and quick (the torrent takes its lock inside, never across an
//! `.await`); the lock order stays torrent state first, then a peer link.

use std::net::SocketAddr;
use std::sync::Arc;

use bitvec::{order::Msb0, slice::BitSlice};
use tokio::sync::{watch, Notify};

use super::PeerLink;
use crate::config::SessionConfig;
use crate::error::DisconnectReason;
use crate::picker::PeerKey;
use crate::rate::UploadLimit;
use crate::storage::Storage;
use crate::wire::Message;
use crate::{BlockRef, InfoHash, Lengths, PeerId, PieceIndex};

/// Pieces a peer announced in bulk (see [`PeerHandler::announced`]).
#[derive(Clone, Copy)]
pub(crate) enum Announced<'a> {
    /// A Bitfield, spare bits masked, one bit per piece.
    Bits(&'a BitSlice<u8, Msb0>),
    /// HaveAll.
    All,
}

/// What a bulk announcement changed for us.
pub(crate) struct AnnounceOutcome {
    /// The peer has a piece we lack.
    pub interesting: bool,
    /// The peer is a seed and so are we: the connection is of no use.
    pub both_seeds: bool,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Banned,
    TooManyPeers,
    AlreadyConnected,
    /// The torrent is checking its storage (or cannot take peers yet).
    NotReady,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Banned => "peer is banned",
            Refusal::TooManyPeers => "peer limit reached",
            Refusal::AlreadyConnected => "duplicate connection to the same peer",
            Refusal::NotReady => "torrent is not taking peers yet",
        })
    }
}

/// A connection after both handshakes, asking to join the torrent.
pub(crate) struct Hello {
    /// The remote address of the connection.
    pub addr: SocketAddr,
    /// The peer's id from its handshake.
    pub peer_id: PeerId,
    /// The address we dialled, or `None` for a connection we accepted.
    pub dial_addr: Option<SocketAddr>,
    /// Both sides support the BEP 6 fast extension.
    pub fast: bool,
    /// Our BEP 10 handshake, when the peer supports extensions: queued before anything
    /// else.
    pub extension_handshake: Option<Message>,
}

/// The torrent, as one of its connections sees it.
pub(crate) trait PeerHandler: Send + Sync + 'static {
    /// The torrent's info-hash.
    fn info_hash(&self) -> InfoHash;
    /// The torrent's geometry.
    fn lengths(&self) -> Lengths;
    /// The session's settings.
    fn config(&self) -> &SessionConfig;
    /// The port we accept connections on.
    fn listen_port(&self) -> u16;
    /// Where the payload lives (the writer serves blocks from it).
    fn storage(&self) -> &Arc<dyn Storage>;
    /// The session-wide cap on piece data sent.
    fn upload_limit(&self) -> &UploadLimit;
    /// Turns true once, when the torrent stops.
    fn shutdown(&self) -> watch::Receiver<bool>;
    /// The torrent's info dict, served to peers that ask for it (BEP 9).
    fn metadata(&self) -> Option<&[u8]>;
    /// Woken whenever a piece verification finishes (see [`PeerHandler::requests_paused`]).
    fn verify_drained(&self) -> &Notify;

    /// A dial ended, connected (handshakes done) or not.
    fn dial_finished(&self, addr: SocketAddr, connected: bool);
    /// Admits a connection: registers it and queues its first messages (our extension
    /// handshake, then what we have) atomically, so nothing the torrent sends to its peers
    /// can come between them.
    fn join(&self, hello: Hello) -> Result<Arc<PeerLink>, Refusal>;
    /// The connection ended, for `reason`.
    fn left(&self, link: &PeerLink, dial_addr: Option<SocketAddr>, reason: DisconnectReason);

    /// The peer announced `piece` (HAVE). Returns whether it is a piece we lack.
    fn have(&self, key: PeerKey, piece: PieceIndex) -> bool;
    /// The peer suggested `piece` (BEP 6 SuggestPiece; a spreading seed suggests the pieces
    /// it shows).
    fn suggested(&self, key: PeerKey, piece: PieceIndex);
    /// The peer announced pieces in bulk, at any point of the connection. `None` for a
    /// peer no longer in the torrent.
    fn announced(&self, key: PeerKey, pieces: Announced<'_>) -> Option<AnnounceOutcome>;
    /// The peer became interested: unchoke it if a slot is free.
    fn interested(&self, link: &PeerLink);
    /// The peer is no longer interested.
    fn not_interested(&self, key: PeerKey);
    /// The peer asks for `block`: queues it on the link for the writer if we have its piece,
    /// the peer is unchoked and its queue has room. Returns whether it was queued.
    fn request(&self, link: &PeerLink, block: BlockRef) -> bool;
    /// Our requests to the peer for `blocks` are void (rejected, choked, snubbed).
    fn release(&self, key: PeerKey, blocks: &[BlockRef]);
    /// A block we had requested from this peer arrived. Returns whether it was wanted.
    fn block(&self, key: PeerKey, block: BlockRef, data: &[u8]) -> bool;
    /// Picks up to `max` blocks to request from the peer into `out`. Returns whether we
    /// are still interested in it (`None`: the peer is no longer in the torrent).
    fn pick(
        &self,
        key: PeerKey,
        max: usize,
        outstanding: usize,
        out: &mut Vec<BlockRef>,
    ) -> Option<bool>;
    /// Requests pause while this is true (hashing or the disk is behind).
    fn requests_paused(&self) -> bool;
    /// An initial seed's spreading step for this peer: shows it more pieces as its window
    /// frees up.
    fn spread_step(&self, key: PeerKey);

    /// Payload bytes received in a Piece message (wanted or not).
    fn count_received(&self, bytes: u64);
    /// Received bytes thrown away (unrequested or duplicate).
    fn count_wasted(&self, bytes: u64);
    /// Payload bytes sent in Piece messages.
    fn count_uploaded(&self, bytes: u64);
}
