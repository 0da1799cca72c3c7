//! The half of a peer connection that others touch: what to send it, what it asked us for,
//! what we asked it for. The torrent (choker, HAVE broadcast, endgame cancels) and both halves
//! of the connection share it through an `Arc`.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::BytesMut;
use tokio::sync::{watch, Notify};

use crate::error::DisconnectReason;
use crate::picker::PeerKey;
use crate::wire::{Message, RawBlock};
use crate::{BlockRef, PeerId};

/// Mutable per-connection state shared between the connection's reader and writer and the
/// torrent. Lock order: the torrent lock (if needed) first, then this.
#[derive(Default)]
pub(crate) struct LinkIo {
    /// Encoded messages waiting for the writer, in order.
    pub out: BytesMut,
    /// The peer's requests we will serve, oldest first.
    pub serve: VecDeque<BlockRef>,
    /// Our requests to the peer not yet answered.
    pub requested: HashSet<BlockRef>,
    /// We are choking the peer (true until the choker unchokes it).
    pub am_choking: bool,
    /// The peer is interested in our pieces.
    pub peer_interested: bool,
}

/// The shared half of one peer connection.
pub(crate) struct PeerLink {
    /// The torrent's name for this connection.
    pub key: PeerKey,
    /// The remote address of the connection.
    pub addr: SocketAddr,
    /// The peer's id from its handshake.
    pub peer_id: PeerId,
    /// We dialled (true) or accepted (false) the connection.
    pub outgoing: bool,
    /// Both sides support the BEP 6 fast extension.
    pub fast: bool,
    io: Mutex<LinkIo>,
    /// Wakes the writer when `out` or `serve` gained something.
    pub writer_wake: Notify,
    /// `Some(reason)` once the connection should close; both halves watch it.
    pub closing: watch::Sender<Option<DisconnectReason>>,
    /// Payload bytes received from this peer.
    pub downloaded: AtomicU64,
    /// Payload bytes sent to this peer.
    pub uploaded: AtomicU64,
    /// Payload bytes received since the choker last looked (see [`PeerLink::take_rechoke_bytes`]).
    rechoke_bytes: AtomicU64,
    /// The port the peer accepts connections on, from its extension handshake (0: unknown).
    pub listen_port: AtomicU16,
}

impl PeerLink {
    pub fn new(
        key: PeerKey,
        addr: SocketAddr,
        peer_id: PeerId,
        outgoing: bool,
        fast: bool,
    ) -> Self {
        Self {
            key,
            addr,
            peer_id,
            outgoing,
            fast,
            io: Mutex::new(LinkIo {
                am_choking: true,
                ..LinkIo::default()
            }),
            writer_wake: Notify::new(),
            closing: watch::Sender::new(None),
            downloaded: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            rechoke_bytes: AtomicU64::new(0),
            listen_port: AtomicU16::new(0),
        }
    }

    pub fn io(&self) -> MutexGuard<'_, LinkIo> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one message for the writer.
    pub fn send(&self, msg: &Message) {
        msg.encode(&mut self.io().out);
        self.writer_wake.notify_one();
    }

    /// Queues a HAVE for each of `pieces`.
    pub fn send_haves(&self, pieces: &[crate::PieceIndex]) {
        self.send_have_messages(pieces, false);
    }

    /// An initial seed shows `pieces`: a HAVE for each and, when both sides support the
    /// fast extension, a SuggestPiece (BEP 6), so a peer at its piece-memory cap still
    /// starts them (see [`crate::picker::Picker::suggested`]).
    pub fn send_shown(&self, pieces: &[crate::PieceIndex]) {
        self.send_have_messages(pieces, self.fast);
    }

    fn send_have_messages(&self, pieces: &[crate::PieceIndex], suggest: bool) {
        if pieces.is_empty() {
            return;
        }
        let mut io = self.io();
        for piece in pieces {
            Message::Have(piece.get()).encode(&mut io.out);
            if suggest {
                Message::Suggest(piece.get()).encode(&mut io.out);
            }
        }
        drop(io);
        self.writer_wake.notify_one();
    }

    /// Asks both halves to close; the first reason given wins.
    pub fn close(&self, reason: DisconnectReason) {
        self.closing.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
        self.writer_wake.notify_one();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.borrow().is_some()
    }

    /// Chokes or unchokes the peer. Choking drops the requests we had queued from it; with
    /// the fast extension each gets a Reject, as BEP 6 requires.
    pub fn set_choking(&self, choking: bool) {
        let mut io = self.io();
        if io.am_choking == choking {
            return;
        }
        io.am_choking = choking;
        let io = &mut *io;
        if choking {
            Message::Choke.encode(&mut io.out);
            for block in io.serve.drain(..) {
                if self.fast {
                    Message::Reject(raw(block)).encode(&mut io.out);
                }
            }
        } else {
            Message::Unchoke.encode(&mut io.out);
        }
        self.writer_wake.notify_one();
    }

    /// Sends Request messages for `blocks` and records them as outstanding.
    pub fn request(&self, blocks: &[BlockRef]) {
        if blocks.is_empty() {
            return;
        }
        let mut io = self.io();
        let io = &mut *io;
        for block in blocks {
            if io.requested.insert(*block) {
                Message::Request(raw(*block)).encode(&mut io.out);
            }
        }
        self.writer_wake.notify_one();
    }

    /// Withdraws one outstanding request (another peer delivered the block first).
    pub fn cancel(&self, block: BlockRef) {
        let mut io = self.io();
        if io.requested.remove(&block) {
            Message::Cancel(raw(block)).encode(&mut io.out);
            drop(io);
            self.writer_wake.notify_one();
        }
    }

    /// Withdraws every outstanding request (the peer is snubbed), returning them.
    pub fn cancel_all(&self) -> Vec<BlockRef> {
        let mut io = self.io();
        let io = &mut *io;
        let blocks: Vec<BlockRef> = io.requested.drain().collect();
        for block in &blocks {
            Message::Cancel(raw(*block)).encode(&mut io.out);
        }
        self.writer_wake.notify_one();
        blocks
    }

    pub fn count_received(&self, bytes: u64) {
        self.downloaded.fetch_add(bytes, Ordering::Relaxed);
        self.rechoke_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Where the peer accepts connections: the dialled address for a connection we made,
    /// else the address with the port of its extension handshake, if it gave one.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        if self.outgoing {
            return Some(self.addr);
        }
        match self.listen_port.load(Ordering::Relaxed) {
            0 => None,
            port => Some(SocketAddr::new(self.addr.ip(), port)),
        }
    }

    /// Bytes received since the last call: the choker's measure of what a peer gives us.
    pub fn take_rechoke_bytes(&self) -> u64 {
        self.rechoke_bytes.swap(0, Ordering::Relaxed)
    }
}

/// A validated block as the wire triple.
pub(crate) fn raw(block: BlockRef) -> RawBlock {
    RawBlock {
        index: block.piece().get(),
        begin: block.offset(),
        length: block.len(),
    }
}
