//! The torrent's side of its connections: [`PeerHandler`] for [`Torrent`]. Each hook takes
//! the torrent lock for a short synchronous section (never across an `.await`), then, if at
//! all, a peer link's lock: the lock order of the module docs.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, Notify};

use super::{verify, Counters, Torrent, TorrentEvent};
use crate::config::SessionConfig;
use crate::error::DisconnectReason;
use crate::peer::{AnnounceOutcome, Announced, Hello, PeerHandler, PeerLink, Refusal};
use crate::picker::PeerKey;
use crate::rate::UploadLimit;
use crate::storage::Storage;
use crate::wire::Message;
use crate::{BlockRef, InfoHash, Lengths, PieceIndex};

impl PeerHandler for Torrent {
    fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    fn lengths(&self) -> Lengths {
        self.lengths
    }

    fn config(&self) -> &SessionConfig {
        &self.config
    }

    fn listen_port(&self) -> u16 {
        self.listen_port
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn upload_limit(&self) -> &UploadLimit {
        &self.upload_limit
    }

    fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    fn metadata(&self) -> Option<&[u8]> {
        Some(self.metainfo.info_bytes())
    }

    fn verify_drained(&self) -> &Notify {
        &self.verify_drained
    }

    fn dial_finished(&self, addr: SocketAddr, connected: bool) {
        self.state().dial_finished(addr, connected, Instant::now());
    }

    fn join(&self, hello: Hello) -> Result<Arc<PeerLink>, Refusal> {
        let link = {
            let mut state = self.state();
            if state.checking {
                return Err(Refusal::NotReady);
            }
            state.admit(
                hello.addr,
                &hello.peer_id,
                &self.config.peer_id,
                hello.dial_addr.is_some(),
                self.config.max_peers_per_torrent,
            )?;
            let key = state.next_peer_key();
            let link = Arc::new(PeerLink::new(
                key,
                hello.addr,
                hello.peer_id,
                hello.dial_addr.is_some(),
                hello.fast,
            ));
            state.insert_peer(Arc::clone(&link));
            // The first messages, in the order the protocol wants: extension handshake, then
            // exactly one of Bitfield / HaveAll / HaveNone (fast), or a Bitfield if we have
            // any.
            if let Some(hs) = &hello.extension_handshake {
                link.send(hs);
            }
            // An initial seed starts by showing an ImageWolf peer nothing; the reader then
            // shows pieces a few at a time (see `SeedSpreader`). Other clients get the open
            // view at once: spreading only pays off between peers that trade as ours do.
            let ours = hello.peer_id.is_imagewolf();
            let spreading = state.spread.as_mut().is_some_and(|s| {
                s.peer_joined(key, Instant::now());
                if !ours {
                    let nothing = crate::picker::BitSlice::empty();
                    s.open_view(key, nothing, false, &mut Vec::new());
                }
                ours
            });
            let have = state.picker.have();
            let have_count = if spreading {
                0
            } else {
                state.picker.have_count()
            };
            let first = if hello.fast && have_count == self.lengths.num_pieces() {
                Some(Message::HaveAll)
            } else if hello.fast && have_count == 0 {
                Some(Message::HaveNone)
            } else if have_count > 0 {
                let mut bits = vec![0u8; self.lengths.bitfield_len()];
                for i in have.iter_ones() {
                    bits[i / 8] |= 0x80 >> (i % 8);
                }
                Some(Message::Bitfield(bits.into()))
            } else {
                None
            };
            if let Some(msg) = first {
                link.send(&msg);
            }
            link
        };
        self.emit(TorrentEvent::PeerConnected {
            addr: hello.addr,
            peer_id: hello.peer_id,
        });
        Ok(link)
    }

    fn left(&self, link: &PeerLink, dial_addr: Option<SocketAddr>, reason: DisconnectReason) {
        {
            let mut state = self.state();
            let entry = state.remove_peer(link.key);
            if let Some(dialled) = dial_addr {
                state.connection_lost(dialled, Instant::now());
            }
            if entry.is_some_and(|e| e.is_seed(self.lengths.num_pieces())) {
                state.seed_left(dial_addr.into_iter().chain(link.listen_addr()));
            }
        }
        self.emit(TorrentEvent::PeerDisconnected {
            addr: link.addr,
            reason,
        });
        self.wake_ticker.notify_one();
    }

    fn have(&self, key: PeerKey, piece: PieceIndex) -> bool {
        self.state().peer_has(key, piece)
    }

    fn suggested(&self, key: PeerKey, piece: PieceIndex) {
        self.state().peer_suggests(key, piece);
    }

    fn announced(&self, key: PeerKey, pieces: Announced<'_>) -> Option<AnnounceOutcome> {
        self.state().peer_announced(key, pieces)
    }

    /// Unchokes the peer if a slot is free (on a LAN there always is); otherwise the
    /// ticker's rotation will get to it.
    fn interested(&self, link: &PeerLink) {
        let mut state = self.state();
        if state.unchoked.contains(&link.key) {
            return;
        }
        if state.unchoked.len() < self.config.unchoke_slots {
            state.unchoked.insert(link.key);
            drop(state);
            link.set_choking(false);
        }
    }

    fn not_interested(&self, key: PeerKey) {
        self.state().unchoked.remove(&key);
    }

    fn request(&self, link: &PeerLink, block: BlockRef) -> bool {
        let mut state = self.state();
        let have = state.picker.have()[block.piece().as_usize()];
        let mut io = link.io();
        let refuse =
            io.am_choking || !have || io.serve.len() >= self.config.max_queued_peer_requests;
        if refuse {
            return false;
        }
        if let Some(spread) = &mut state.spread {
            spread.requested(link.key, block.piece(), Instant::now());
        }
        drop(state);
        io.serve.push_back(block);
        drop(io);
        link.writer_wake.notify_one();
        true
    }

    fn release(&self, key: PeerKey, blocks: &[BlockRef]) {
        let mut state = self.state();
        for block in blocks {
            state.picker.request_released(key, *block);
        }
    }

    fn block(&self, key: PeerKey, block: BlockRef, data: &[u8]) -> bool {
        let outcome = self.state().accept_block(key, block, data);
        for other in outcome.cancel_at {
            other.cancel(block);
        }
        if let Some(job) = outcome.complete {
            if let Some(torrent) = self.this.upgrade() {
                self.spawn(verify::verify_and_store(torrent, job));
            }
        }
        outcome.accepted
    }

    fn pick(
        &self,
        key: PeerKey,
        max: usize,
        outstanding: usize,
        out: &mut Vec<BlockRef>,
    ) -> Option<bool> {
        self.state().pick_for(key, max, outstanding, out)
    }

    fn requests_paused(&self) -> bool {
        self.verifying_bytes.load(Ordering::Relaxed) > self.piece_memory_limit()
    }

    fn spread_step(&self, key: PeerKey) {
        if self.spreading.load(Ordering::Relaxed) && !self.state().spread_step(key) {
            self.spreading.store(false, Ordering::Relaxed);
        }
    }

    fn count_received(&self, bytes: u64) {
        Counters::add(&self.counters.downloaded, bytes);
    }

    fn count_wasted(&self, bytes: u64) {
        Counters::add(&self.counters.wasted, bytes);
    }

    fn count_uploaded(&self, bytes: u64) {
        Counters::add(&self.counters.uploaded, bytes);
    }
}
