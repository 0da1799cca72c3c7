//! The torrent's mutable core, behind the torrent lock: picker, peer table, piece buffers,
//! ban evidence, addresses to connect to. Everything here is synchronous and quick; see the
//! locking rules in the parent module.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitvec::prelude::*;

use super::smart_ban::SmartBan;
use super::TorrentStatus;
use crate::peer::{AnnounceOutcome, Announced, PeerLink, Refusal};
use crate::picker::{PeerKey, Picker, Received, SeedSpreader};
use crate::{BlockRef, Lengths, PeerId, PieceIndex};

/// Bytes of piece buffers kept for reuse after their piece is stored (at least one buffer).
const SPARE_BUFFER_BYTES: usize = 4 << 20;

/// One connected peer, as the torrent sees it.
pub(crate) struct PeerEntry {
    /// The connection's shared half (outgoing queue, requests).
    pub link: Arc<PeerLink>,
    /// Pieces the peer has (meaningless while `has_all`).
    pub bitfield: BitVec<u8, Msb0>,
    /// The peer has every piece (HaveAll, or a full bitfield).
    pub has_all: bool,
    /// Pieces the peer announced; reaching `num_pieces` makes it a seed.
    pub have_count: u32,
    /// Pieces the peer announced that we lack (not kept while `has_all`): the peer can feed
    /// us iff this is above 0 (or it has all and we are not complete).
    pub wanted: u32,
}

impl PeerEntry {
    pub fn is_seed(&self, num_pieces: u32) -> bool {
        self.has_all || self.have_count == num_pieces
    }

    /// The peer has a piece we lack (`complete`: we have every piece).
    pub fn can_feed(&self, complete: bool) -> bool {
        if self.has_all {
            !complete
        } else {
            self.wanted > 0
        }
    }
}

/// A piece being assembled from blocks, in memory until it verifies.
pub(crate) struct PieceBuffer {
    pub data: Vec<u8>,
    /// Who sent each block so far (for the smart ban when the piece fails).
    pub senders: Vec<(BlockRef, PeerKey)>,
}

/// A complete piece, taken out of the state to be hashed and stored.
pub(crate) struct PieceJob {
    pub piece: PieceIndex,
    pub data: Vec<u8>,
    pub senders: Vec<(BlockRef, PeerKey)>,
    /// The piece failed before: compute per-block digests of the good data for the smart ban.
    pub suspect: bool,
}

/// What happened to a block a peer delivered.
pub(crate) struct BlockOutcome {
    /// Whether it was stored (false: a duplicate or no longer wanted).
    pub accepted: bool,
    /// Other peers that had the same block requested (endgame): send them a Cancel.
    pub cancel_at: Vec<Arc<PeerLink>>,
    /// The piece is complete and must be verified.
    pub complete: Option<PieceJob>,
}

/// A peer that has been the only one for this long while we spread is shown everything
/// ([`TorrentState::spread_tick`]). Long enough that the peers of a swarm starting together
/// have all connected.
const ALONE: Duration = Duration::from_secs(3);

/// Failed dials (or short-lived connections) in a row after which an address is given up.
/// The waits before them grow 1, 2, 4, ... 32 s: about a minute of trying in all.
const MAX_DIAL_ATTEMPTS: u32 = 7;
/// How long a given-up address is not dialled, even when a tracker or the caller names it
/// again (a tracker keeps handing out a peer that left without saying so for its whole
/// peer lifetime, two minutes by default).
const GIVE_UP_FOR: Duration = Duration::from_secs(600);
/// A connection that lasted this long was useful: its address starts over with no failures.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// What we know of an address we might connect to.
#[derive(Debug, Clone, Copy)]
enum AddrState {
    /// Queued in `candidates` or being dialled; `attempts` failures in a row before this.
    Pending { attempts: u32 },
    /// A connection to it is up, since `since`, after `attempts` failures in a row.
    Connected { attempts: u32, since: Instant },
    /// The last attempt failed, or the connection ended: `attempts` in a row; retry after
    /// `retry_at`.
    Failed { attempts: u32, retry_at: Instant },
    /// Too many failures in a row: not dialled again before `until`, and then only if
    /// named again.
    GaveUp { until: Instant },
    /// A seed whose connection ended while we were complete too (two seeds have nothing
    /// to say to each other). A complete torrent never dials it, however often a tracker
    /// names it; if it ever needs pieces, it dials us.
    Seed,
}

/// The wait before the next dial after `attempts` failures in a row: 1, 2, 4 ... 60 s.
fn dial_backoff(attempts: u32) -> Duration {
    Duration::from_secs(1 << attempts.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

pub(crate) struct TorrentState {
    pub lengths: Lengths,
    pub picker: Picker,
    pub peers: HashMap<PeerKey, PeerEntry>,
    next_key: u64,
    buffers: HashMap<PieceIndex, PieceBuffer>,
    /// Piece buffers kept for reuse (see [`SPARE_BUFFER_BYTES`]).
    spare_buffers: Vec<Vec<u8>>,
    pub ban: SmartBan,
    banned_ids: HashSet<PeerId>,
    banned_ips: HashSet<IpAddr>,
    addrs: HashMap<SocketAddr, AddrState>,
    candidates: VecDeque<SocketAddr>,
    pub half_open: usize,
    pub unchoked: HashSet<PeerKey>,
    pub status: TorrentStatus,
    pub hash_failures: u32,
    /// Set while storage is being checked; no peers are taken until it is done.
    pub checking: bool,
    /// While an initial seed spreads its pieces: which pieces each peer has been shown
    /// (see [`SeedSpreader`]). `None` once every piece has gone out, and for any torrent
    /// that did not start as a complete seed.
    pub spread: Option<SeedSpreader>,
    /// Spreading stays on after every piece has gone out (`AddTorrent::holding_spread`).
    pub spread_held: bool,
    /// When a peer last joined or left.
    peers_changed: Instant,
}

impl TorrentState {
    pub fn new(lengths: Lengths, picker: Picker, status: TorrentStatus) -> Self {
        Self {
            lengths,
            picker,
            peers: HashMap::new(),
            next_key: 0,
            buffers: HashMap::new(),
            spare_buffers: Vec::new(),
            ban: SmartBan::default(),
            banned_ids: HashSet::new(),
            banned_ips: HashSet::new(),
            addrs: HashMap::new(),
            candidates: VecDeque::new(),
            half_open: 0,
            unchoked: HashSet::new(),
            status,
            hash_failures: 0,
            checking: false,
            spread: None,
            spread_held: false,
            peers_changed: Instant::now(),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.picker.is_complete()
    }

    /// Queues addresses we have not seen; returns whether any was new. An address that
    /// failed keeps its back-off (a tracker names a peer that left for minutes after), and
    /// one given up is taken again only once [`GIVE_UP_FOR`] has passed.
    pub fn add_candidates(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> bool {
        self.add_candidates_at(addrs, Instant::now())
    }

    fn add_candidates_at(
        &mut self,
        addrs: impl IntoIterator<Item = SocketAddr>,
        now: Instant,
    ) -> bool {
        let mut added = false;
        for addr in addrs {
            if addr.port() == 0 || self.banned_ips.contains(&addr.ip()) {
                continue;
            }
            let fresh = match self.addrs.get(&addr) {
                None => true,
                Some(AddrState::GaveUp { until }) => *until <= now,
                // Kept whoever names it: a tracker lists every seed of the swarm.
                Some(AddrState::Seed) => !self.is_complete(),
                Some(_) => false,
            };
            if fresh {
                self.addrs.insert(addr, AddrState::Pending { attempts: 0 });
                self.candidates.push_back(addr);
                added = true;
            }
        }
        added
    }

    /// The next address to dial, if the limits allow one more attempt now.
    pub fn next_dial(
        &mut self,
        max_peers: usize,
        max_half_open: usize,
        now: Instant,
    ) -> Option<SocketAddr> {
        if self.checking
            || self.half_open >= max_half_open
            || self.peers.len() + self.half_open >= max_peers
        {
            return None;
        }
        // Failed addresses whose back-off expired go back in the queue.
        for (addr, state) in self.addrs.iter_mut() {
            if let AddrState::Failed { attempts, retry_at } = *state {
                if retry_at <= now {
                    *state = AddrState::Pending { attempts };
                    self.candidates.push_back(*addr);
                }
            }
        }
        let complete = self.is_complete();
        let addr = loop {
            let addr = self.candidates.pop_front()?;
            // Queued before we learnt it is a seed (or before we completed).
            if !(complete && matches!(self.addrs.get(&addr), Some(AddrState::Seed))) {
                break addr;
            }
        };
        self.half_open += 1;
        Some(addr)
    }

    /// A dial ended (connected or not).
    pub fn dial_finished(&mut self, addr: SocketAddr, connected: bool, now: Instant) {
        self.half_open = self.half_open.saturating_sub(1);
        let attempts = match self.addrs.get(&addr) {
            Some(AddrState::Pending { attempts } | AddrState::Failed { attempts, .. }) => *attempts,
            _ => 0,
        };
        let state = if connected {
            AddrState::Connected {
                attempts,
                since: now,
            }
        } else {
            // Refused or unreachable: 1 s, 2 s, 4 s ... (a LAN peer that is starting up
            // comes soon), then give up.
            self.failed(attempts + 1, Duration::ZERO, now)
        };
        self.addrs.insert(addr, state);
    }

    /// `attempts` failures in a row: retry after the back-off (at least `min_wait`), or
    /// give up.
    fn failed(&self, attempts: u32, min_wait: Duration, now: Instant) -> AddrState {
        if attempts >= MAX_DIAL_ATTEMPTS {
            AddrState::GaveUp {
                until: now + GIVE_UP_FOR,
            }
        } else {
            AddrState::Failed {
                attempts,
                retry_at: now + dial_backoff(attempts).max(min_wait),
            }
        }
    }

    /// A connection that was up went down: its address may be dialled again later. Soon
    /// while we still need pieces; after a minute once we are a seed (peers that need us
    /// dial us, and two seeds would otherwise redial each other every second only to hang
    /// up again). A connection that ended within [`STABLE_CONNECTION`] counts as a failure,
    /// so a peer that keeps hanging up (or left for good) is redialled less and less often,
    /// then given up.
    pub fn connection_lost(&mut self, dial_addr: SocketAddr, now: Instant) {
        let min_wait = if self.is_complete() {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(1)
        };
        let attempts = match self.addrs.get(&dial_addr) {
            Some(AddrState::Connected { attempts, since }) => {
                if now.saturating_duration_since(*since) >= STABLE_CONNECTION {
                    1
                } else {
                    attempts + 1
                }
            }
            _ => return,
        };
        let state = self.failed(attempts, min_wait, now);
        self.addrs.insert(dial_addr, state);
    }

    /// A connection to a seed ended while we are complete too: its addresses (the one we
    /// dialled, and the listen address it told us in its extension handshake) are never
    /// dialled again by this complete torrent (see [`AddrState::Seed`]).
    pub fn seed_left(&mut self, addrs: impl IntoIterator<Item = SocketAddr>) {
        if !self.is_complete() {
            return;
        }
        for addr in addrs {
            if addr.port() != 0 {
                self.addrs.insert(addr, AddrState::Seed);
            }
        }
    }

    pub fn is_banned(&self, addr: SocketAddr, peer_id: &PeerId) -> bool {
        self.banned_ids.contains(peer_id) || self.banned_ips.contains(&addr.ip())
    }

    /// Checks whether a freshly handshaken connection may join. `we_initiated` tells which
    /// side dialled, for the tie-break between two connections to the same peer.
    pub fn admit(
        &self,
        addr: SocketAddr,
        peer_id: &PeerId,
        our_id: &PeerId,
        we_initiated: bool,
        max_peers: usize,
    ) -> Result<(), Refusal> {
        if self.is_banned(addr, peer_id) {
            return Err(Refusal::Banned);
        }
        if let Some(existing) = self.peers.values().find(|p| &p.link.peer_id == peer_id) {
            // Both sides may dial each other at once. Each side keeps the connection dialled by
            // the lower peer id, so both keep the same one.
            let keep_new = existing.link.outgoing != we_initiated && {
                let new_dialler = if we_initiated { our_id } else { peer_id };
                let lower = if our_id < peer_id { our_id } else { peer_id };
                new_dialler == lower
            };
            if !keep_new {
                return Err(Refusal::AlreadyConnected);
            }
            existing.link.close(crate::DisconnectReason::Replaced);
        }
        if self.peers.len() >= max_peers {
            return Err(Refusal::TooManyPeers);
        }
        Ok(())
    }

    pub fn next_peer_key(&mut self) -> PeerKey {
        self.next_key += 1;
        PeerKey(self.next_key)
    }

    pub fn insert_peer(&mut self, link: Arc<PeerLink>) {
        let entry = PeerEntry {
            link: Arc::clone(&link),
            bitfield: bitvec![u8, Msb0; 0; self.lengths.num_pieces() as usize],
            has_all: false,
            have_count: 0,
            wanted: 0,
        };
        self.peers.insert(link.key, entry);
        self.peers_changed = Instant::now();
    }

    /// A peer announced pieces in bulk: a Bitfield, or every piece (HaveAll). At the start of
    /// a connection or at any later point (aria2 sends a Bitfield again mid-connection, in
    /// place of HAVEs, when 20 or more pieces finished since it last checked). Bits already
    /// known are kept (a peer never loses pieces; a later Bitfield only adds to what it
    /// has), new ones are counted once each in the picker's availability, so the picker's
    /// one-report-per-piece contract holds whenever the message comes. Returns `None` for an
    /// unknown peer.
    pub fn peer_announced(
        &mut self,
        key: PeerKey,
        pieces: Announced<'_>,
    ) -> Option<AnnounceOutcome> {
        let lengths = self.lengths;
        let num_pieces = lengths.num_pieces();
        let TorrentState {
            picker,
            peers,
            spread,
            ..
        } = self;
        let entry = peers.get_mut(&key)?;
        if !entry.has_all {
            let full = match pieces {
                Announced::All => true,
                Announced::Bits(bits) => bits.count_ones() >= num_pieces as usize,
            };
            if full && entry.have_count == 0 {
                // Nothing counted yet: a seed, counted apart in O(1).
                entry.has_all = true;
                picker.peer_has_all();
            } else {
                let gained: Vec<usize> = match pieces {
                    Announced::All => entry.bitfield.iter_zeros().collect(),
                    Announced::Bits(bits) => bits
                        .iter_ones()
                        .filter(|&i| entry.bitfield.get(i).is_some_and(|b| !*b))
                        .collect(),
                };
                for i in gained {
                    if let Some(piece) = lengths.piece(i as u32) {
                        entry.bitfield.set(i, true);
                        entry.have_count += 1;
                        entry.wanted += u32::from(!picker.have()[i]);
                        picker.peer_has(piece);
                    }
                }
            }
            if let Some(spread) = spread {
                match pieces {
                    Announced::All => spread.peer_has_all(key),
                    Announced::Bits(bits) => spread.peer_bitfield(key, bits),
                }
            }
        }
        Some(AnnounceOutcome {
            interesting: entry.can_feed(picker.is_complete()),
            both_seeds: entry.is_seed(num_pieces) && picker.is_complete(),
        })
    }

    /// A peer announced one piece (HAVE). Returns whether it is new from this peer and a
    /// piece we lack.
    pub fn peer_has(&mut self, key: PeerKey, piece: PieceIndex) -> bool {
        let TorrentState {
            picker,
            peers,
            spread,
            ..
        } = self;
        let Some(entry) = peers.get_mut(&key) else {
            return false;
        };
        if let Some(spread) = spread {
            spread.peer_has(key, piece);
        }
        if entry.has_all || entry.bitfield[piece.as_usize()] {
            return false;
        }
        entry.bitfield.set(piece.as_usize(), true);
        entry.have_count += 1;
        picker.peer_has(piece);
        let wanted = !picker.have()[piece.as_usize()];
        entry.wanted += u32::from(wanted);
        wanted
    }

    /// A piece of ours passed its hash check: the picker marks it, and the peers that have
    /// it have one piece fewer that we lack.
    pub fn piece_verified(&mut self, piece: PieceIndex) {
        let i = piece.as_usize();
        if self.picker.have().get(i).is_none_or(|b| *b) {
            return;
        }
        self.picker.piece_verified(piece);
        for entry in self.peers.values_mut() {
            if !entry.has_all && entry.bitfield.get(i).is_some_and(|b| *b) {
                entry.wanted = entry.wanted.saturating_sub(1);
            }
        }
    }

    /// Connected peers that have a piece we lack: the sources among which
    /// [`Picker::request_share`] divides the piece-memory budget.
    pub fn sources(&self) -> usize {
        let complete = self.picker.is_complete();
        self.peers.values().filter(|e| e.can_feed(complete)).count()
    }

    /// Peer `key` suggested `piece` (BEP 6): passed to the picker (which may start it past
    /// the piece-memory cap, see [`Picker::suggested`]) if the peer has it; a suggestion
    /// for a piece the peer lacks is ignored.
    pub fn peer_suggests(&mut self, key: PeerKey, piece: PieceIndex) {
        let Some(entry) = self.peers.get(&key) else {
            return;
        };
        if entry.has_all || entry.bitfield[piece.as_usize()] {
            self.picker.suggested(piece);
        }
    }

    /// Picks up to `max` blocks to request from peer `key` into `out`. Returns whether we
    /// are still interested in it, `None` for an unknown peer.
    pub fn pick_for(
        &mut self,
        key: PeerKey,
        max: usize,
        outstanding: usize,
        out: &mut Vec<BlockRef>,
    ) -> Option<bool> {
        // An equal share of the piece-memory budget among the peers that can feed us
        // (`Picker::request_share`).
        let max = max.min(
            self.picker
                .request_share(self.sources())
                .saturating_sub(outstanding),
        );
        let entry = self.peers.get(&key)?;
        if max > 0 {
            self.picker
                .pick(key, &entry.bitfield, entry.has_all, max, out);
        }
        Some(!out.is_empty() || outstanding > 0 || entry.can_feed(self.picker.is_complete()))
    }

    /// Removes a peer: its availability and outstanding requests go back to the picker.
    pub fn remove_peer(&mut self, key: PeerKey) -> Option<PeerEntry> {
        let entry = self.peers.remove(&key)?;
        self.peers_changed = Instant::now();
        self.picker.peer_left(key, &entry.bitfield, entry.has_all);
        if let Some(spread) = &mut self.spread {
            spread.peer_left(key);
        }
        self.unchoked.remove(&key);
        self.ban.forget_peer(key);
        Some(entry)
    }

    /// Bans a peer by id, and by IP unless it is a loopback address (on loopback every peer
    /// shares one IP: tests and single-host demos).
    pub fn ban(&mut self, key: PeerKey) -> Option<Arc<PeerLink>> {
        let entry = self.peers.get(&key)?;
        let link = Arc::clone(&entry.link);
        self.banned_ids.insert(link.peer_id);
        if !link.addr.ip().is_loopback() {
            self.banned_ips.insert(link.addr.ip());
        }
        Some(link)
    }

    /// A block arrived from `key`, which had requested it. Marks it in the picker and copies
    /// it into its piece buffer.
    pub fn accept_block(&mut self, key: PeerKey, block: BlockRef, data: &[u8]) -> BlockOutcome {
        let mut outcome = BlockOutcome {
            accepted: false,
            cancel_at: Vec::new(),
            complete: None,
        };
        let Received::Accepted { cancel, piece_done } = self.picker.block_received(key, block)
        else {
            return outcome;
        };
        outcome.accepted = true;
        outcome.cancel_at = cancel
            .iter()
            .filter_map(|k| self.peers.get(k).map(|p| Arc::clone(&p.link)))
            .collect();
        let piece = block.piece();
        let size = self.lengths.piece_size(piece) as usize;
        let spare = &mut self.spare_buffers;
        let buffer = self.buffers.entry(piece).or_insert_with(|| {
            // Every block is written before the piece completes, so a reused buffer's old
            // bytes never survive into a verified piece.
            let mut data = spare.pop().unwrap_or_default();
            data.resize(size, 0);
            PieceBuffer {
                data,
                senders: Vec::new(),
            }
        });
        let start = block.offset() as usize;
        buffer.data[start..start + data.len()].copy_from_slice(data);
        buffer.senders.push((block, key));
        if piece_done {
            if let Some(buffer) = self.buffers.remove(&piece) {
                outcome.complete = Some(PieceJob {
                    piece,
                    data: buffer.data,
                    senders: buffer.senders,
                    suspect: self.ban.is_suspect(piece),
                });
            }
        }
        outcome
    }

    /// Drops the buffer of a piece whose blocks all went back to the picker (hash failure).
    pub fn drop_buffer(&mut self, piece: PieceIndex) {
        if let Some(buffer) = self.buffers.remove(&piece) {
            self.recycle_buffer(buffer.data);
        }
    }

    /// Frees the spare piece buffers (the torrent is complete).
    pub fn release_spare_buffers(&mut self) {
        self.spare_buffers = Vec::new();
    }

    /// Keeps a finished piece buffer for the next piece: fresh allocations of this size are
    /// fresh pages from the kernel (a page fault and a zeroing per 4 KiB), reuse is free.
    pub fn recycle_buffer(&mut self, data: Vec<u8>) {
        if self.is_complete() {
            return;
        }
        let max = (SPARE_BUFFER_BYTES / self.lengths.piece_len() as usize).max(1);
        if self.spare_buffers.len() < max {
            self.spare_buffers.push(data);
        }
    }

    /// Initial seeding: shows peer `key` more pieces (HAVE) as its window frees up; once
    /// every piece has gone out (and unless held), shows every peer everything and stops
    /// spreading. Returns whether spreading is still going on.
    pub fn spread_step(&mut self, key: PeerKey) -> bool {
        let Some(spread) = &mut self.spread else {
            return false;
        };
        let mut pieces = Vec::new();
        if !spread.is_done() {
            if let Some(entry) = self.peers.get(&key) {
                spread.top_up(
                    key,
                    &entry.bitfield,
                    entry.has_all,
                    Instant::now(),
                    &mut pieces,
                );
                entry.link.send_shown(&pieces);
            }
            return true;
        }
        if self.spread_held {
            return true;
        }
        self.finish_spreading();
        false
    }

    /// The spreader's tick (see [`SeedSpreader::tick`]); and a peer that has been alone with
    /// the seed for [`ALONE`] is shown everything: there is nobody it could trade with, so
    /// windows would only cost it round trips. Not while spreading is held (an origin that
    /// pulls shows nothing more once every piece is out, whoever is left).
    pub fn spread_tick(&mut self, now: Instant) {
        let Some(spread) = &mut self.spread else {
            return;
        };
        spread.tick(now);
        if self.spread_held
            || self.peers.len() != 1
            || now.saturating_duration_since(self.peers_changed) < ALONE
        {
            return;
        }
        if let Some((&key, entry)) = self.peers.iter().next() {
            let mut pieces = Vec::new();
            if spread.open_view(key, &entry.bitfield, entry.has_all, &mut pieces) {
                tracing::debug!(addr = %entry.link.addr, "alone with the seed: shown everything");
                entry.link.send_haves(&pieces);
            }
        }
    }

    /// Ends spreading: shows every peer every piece it was not shown and does not have.
    pub fn finish_spreading(&mut self) {
        let Some(spread) = &mut self.spread else {
            return;
        };
        let mut pieces = Vec::new();
        for (&key, entry) in &self.peers {
            pieces.clear();
            spread.unshown(key, &entry.bitfield, entry.has_all, &mut pieces);
            entry.link.send_haves(&pieces);
        }
        tracing::debug!("every piece has left the seed: seeding normally");
        self.spread = None;
    }

    /// Bytes of verified pieces.
    pub fn have_bytes(&self) -> u64 {
        let have = self.picker.have_count();
        if have == 0 {
            return 0;
        }
        let last = self.lengths.piece(self.lengths.num_pieces() - 1);
        let mut bytes = u64::from(have) * u64::from(self.lengths.piece_len());
        if let Some(last) = last {
            if self.picker.have()[last.as_usize()] {
                bytes -= u64::from(self.lengths.piece_len() - self.lengths.piece_size(last));
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(complete: bool) -> TorrentState {
        let lengths = Lengths::new(4 * 1024, 1024).unwrap();
        let have = bitvec![u8, Msb0; u8::from(complete); 4];
        TorrentState::new(
            lengths,
            Picker::with_have(lengths, &have),
            TorrentStatus::Downloading,
        )
    }

    #[test]
    fn a_seed_waits_a_minute_before_redialling_a_lost_peer() {
        let addr: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let now = Instant::now();
        for (complete, redial_after) in [(false, 1), (true, 60)] {
            let mut s = state(complete);
            s.add_candidates([addr]);
            assert_eq!(s.next_dial(10, 10, now), Some(addr));
            s.dial_finished(addr, true, now);
            let now = now + STABLE_CONNECTION;
            s.connection_lost(addr, now);
            let just_before = now + Duration::from_secs(redial_after) - Duration::from_millis(1);
            assert_eq!(s.next_dial(10, 10, just_before), None);
            let at = now + Duration::from_secs(redial_after);
            assert_eq!(s.next_dial(10, 10, at), Some(addr), "complete = {complete}");
        }
    }

    #[test]
    fn a_peer_that_left_is_redialled_less_and_less_then_given_up() {
        let addr: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let t0 = Instant::now();
        let mut s = state(false);
        s.add_candidates_at([addr], t0);
        assert_eq!(s.next_dial(10, 10, t0), Some(addr));
        s.dial_finished(addr, true, t0);
        // A useful connection ends; then the peer is gone (refused), while a tracker keeps
        // naming it every 2 s: it is dialled only when its back-off allows.
        let mut now = t0 + STABLE_CONNECTION;
        s.connection_lost(addr, now);
        let mut dials = Vec::new();
        let end = now + Duration::from_secs(300);
        while now < end {
            s.add_candidates_at([addr], now);
            if let Some(a) = s.next_dial(10, 10, now) {
                assert_eq!(a, addr);
                dials.push(now);
                s.dial_finished(addr, false, now);
            }
            now += Duration::from_millis(500);
        }
        let gaps: Vec<u64> = dials.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(gaps, [2, 4, 8, 16, 32], "{gaps:?}");
        assert_eq!(dials.len() as u32, MAX_DIAL_ATTEMPTS - 1);
        // Given up: named again only after GIVE_UP_FOR is it dialled again, once.
        let last = *dials.last().unwrap();
        s.add_candidates_at([addr], last + GIVE_UP_FOR - Duration::from_secs(1));
        assert_eq!(s.next_dial(10, 10, last + GIVE_UP_FOR), None);
        assert!(s.add_candidates_at([addr], last + GIVE_UP_FOR));
        assert_eq!(s.next_dial(10, 10, last + GIVE_UP_FOR), Some(addr));
    }

    /// Dials of `addr` over half an hour while a tracker names it every 10 s and every
    /// connection ends at once because both sides are seeds.
    fn dials_of_a_seed(complete: bool) -> usize {
        let addr: SocketAddr = "10.0.0.3:6881".parse().unwrap();
        let mut now = Instant::now();
        let end = now + Duration::from_secs(1800);
        let mut s = state(complete);
        let mut dials = 0;
        while now < end {
            s.add_candidates_at([addr], now);
            while let Some(a) = s.next_dial(10, 10, now) {
                dials += 1;
                s.dial_finished(a, true, now);
                let lost = now + Duration::from_millis(50);
                s.connection_lost(a, lost);
                s.seed_left([a]);
            }
            now += Duration::from_secs(10);
        }
        dials
    }

    #[test]
    fn a_complete_torrent_never_redials_a_seed() {
        assert_eq!(dials_of_a_seed(true), 1);
        // A torrent that still needs pieces keeps coming back to a seed (backing off).
        assert!(dials_of_a_seed(false) > 7, "{}", dials_of_a_seed(false));
    }

    #[test]
    fn a_peer_that_keeps_hanging_up_is_given_up() {
        let addr: SocketAddr = "10.0.0.2:6881".parse().unwrap();
        let mut now = Instant::now();
        let mut s = state(false);
        s.add_candidates_at([addr], now);
        let mut connections = 0;
        for _ in 0..1000 {
            if s.next_dial(10, 10, now).is_some() {
                connections += 1;
                s.dial_finished(addr, true, now);
                s.connection_lost(addr, now + Duration::from_millis(100));
            }
            now += Duration::from_millis(500);
        }
        assert_eq!(connections, MAX_DIAL_ATTEMPTS);
    }

    #[test]
    fn a_peer_alone_with_a_spreading_seed_is_shown_everything() {
        // 64 pieces of 64 KiB: a window is 8 of them.
        let lengths = Lengths::new(64 << 16, 1 << 16).unwrap();
        let spreading = |held: bool| {
            let mut s = TorrentState::new(
                lengths,
                Picker::with_have(lengths, &bitvec![u8, Msb0; 1; 64]),
                TorrentStatus::Seeding,
            );
            s.spread = Some(SeedSpreader::with_rng_seed(lengths, 3));
            s.spread_held = held;
            s
        };
        // HAVEs queued on the link (a shown piece is also suggested: HAVE, then SUGGEST).
        let haves = |s: &TorrentState, key: PeerKey| {
            let io = s.peers[&key].link.io();
            io.out.chunks(9).filter(|m| m[4] == 4).count()
        };
        for held in [false, true] {
            let mut s = spreading(held);
            let a = join(&mut s, 1);
            s.spread.as_mut().unwrap().peer_joined(a, Instant::now());
            assert!(s.spread_step(a));
            let window = haves(&s, a);
            assert!(window > 0 && window < 64, "{window}");
            let suggests = s.peers[&a]
                .link
                .io()
                .out
                .chunks(9)
                .filter(|m| m[4] == 13)
                .count();
            assert_eq!(
                suggests, window,
                "a fast-extension peer is suggested what it is shown"
            );
            s.spread_tick(Instant::now());
            assert_eq!(haves(&s, a), window, "not alone for long yet");
            s.spread_tick(Instant::now() + ALONE);
            if held {
                assert_eq!(haves(&s, a), window, "a held seed keeps spreading");
            } else {
                assert_eq!(haves(&s, a), 64, "alone: shown every piece once");
                assert!(s.spread.as_ref().unwrap().is_open(a));
            }
        }
        // Two peers: they can trade, so both keep spreading.
        let mut s = spreading(false);
        let (a, b) = (join(&mut s, 1), join(&mut s, 2));
        for key in [a, b] {
            s.spread.as_mut().unwrap().peer_joined(key, Instant::now());
            s.spread_step(key);
        }
        let window = haves(&s, a);
        s.spread_tick(Instant::now() + ALONE);
        assert_eq!(haves(&s, a), window);
        assert!(!s.spread.as_ref().unwrap().is_open(a));
        // Once b leaves, a is alone.
        s.remove_peer(b);
        s.spread_tick(Instant::now() + ALONE);
        assert!(s.spread.as_ref().unwrap().is_open(a));
    }

    fn join(s: &mut TorrentState, n: u8) -> PeerKey {
        let key = s.next_peer_key();
        let addr: SocketAddr = ([10, 0, 0, n], 6881).into();
        let link = PeerLink::new(key, addr, PeerId([n; 20]), false, true);
        s.insert_peer(Arc::new(link));
        key
    }

    fn check(s: &TorrentState) {
        s.picker.check_invariants().unwrap();
        for (key, e) in &s.peers {
            if !e.has_all {
                let lacking = e
                    .bitfield
                    .iter_ones()
                    .filter(|&i| !s.picker.have()[i])
                    .count();
                assert_eq!(e.wanted as usize, lacking, "peer {key:?}: pieces we lack");
            }
        }
        s.picker
            .check_availability(s.peers.values().map(|p| (&p.bitfield[..], p.has_all)))
            .unwrap();
    }

    fn bits(n: usize, ones: &[usize]) -> BitVec<u8, Msb0> {
        let mut b = bitvec![u8, Msb0; 0; n];
        for &i in ones {
            b.set(i, true);
        }
        b
    }

    #[test]
    fn at_the_piece_memory_cap_each_source_gets_an_equal_share_of_requests() {
        // 64 pieces of 64 KiB (4 blocks each); a budget of 8 pieces is 32 blocks.
        let lengths = Lengths::new(64 << 16, 1 << 16).unwrap();
        let mut picker = Picker::new(lengths);
        picker.set_max_active(8);
        let mut s = TorrentState::new(lengths, picker, TorrentStatus::Downloading);
        let keys: Vec<PeerKey> = (1..=4).map(|n| join(&mut s, n)).collect();
        // A peer with nothing does not count: one seed gets the whole budget.
        s.peer_announced(keys[0], Announced::All).unwrap();
        let mut picks = Vec::new();
        assert_eq!(s.pick_for(keys[0], 500, 0, &mut picks), Some(true));
        assert_eq!(picks.len(), 32, "alone, a source may use the whole budget");
        s.picker.release_peer(keys[0]);
        // Four sources: 8 blocks each, whatever their pipelines ask for.
        for &k in &keys[1..] {
            s.peer_announced(k, Announced::All).unwrap();
        }
        let mut total = 0;
        for &k in &keys {
            picks.clear();
            assert_eq!(s.pick_for(k, 500, 0, &mut picks), Some(true));
            assert_eq!(picks.len(), 8, "an equal share of 32 blocks among 4");
            total += picks.len();
        }
        assert_eq!(total, 32);
        // A connection at its share gets nothing more, and is still interested.
        picks.clear();
        assert_eq!(s.pick_for(keys[0], 500, 8, &mut picks), Some(true));
        assert!(picks.is_empty());
        check(&s);
    }

    #[test]
    fn a_peer_with_only_pieces_we_have_is_not_a_source() {
        let lengths = Lengths::new(16 << 16, 1 << 16).unwrap();
        let mut s = TorrentState::new(lengths, Picker::new(lengths), TorrentStatus::Downloading);
        let (a, b) = (join(&mut s, 1), join(&mut s, 2));
        assert_eq!(s.sources(), 0);
        s.peer_announced(a, Announced::Bits(&bits(16, &[0, 1])))
            .unwrap();
        assert!(s.peer_has(b, lengths.piece(1).unwrap()));
        assert_eq!(s.sources(), 2);
        check(&s);
        // We verify piece 1: b has nothing we lack any more, a still has piece 0.
        s.piece_verified(lengths.piece(1).unwrap());
        s.piece_verified(lengths.piece(1).unwrap()); // twice changes nothing
        assert_eq!(s.sources(), 1);
        check(&s);
        // A HAVE of a piece we have does not make b a source; one we lack does.
        s.peer_has(b, lengths.piece(1).unwrap());
        assert_eq!(s.sources(), 1);
        s.peer_has(b, lengths.piece(5).unwrap());
        assert_eq!(s.sources(), 2);
        check(&s);
        s.remove_peer(a);
        assert_eq!(s.sources(), 1);
        check(&s);
    }

    #[test]
    fn bitfields_and_have_all_count_once_whenever_they_come() {
        let lengths = Lengths::new(16 * 1024, 1024).unwrap();
        let mut have = bitvec![u8, Msb0; 0; 16];
        have.set(0, true);
        let mut s = TorrentState::new(
            lengths,
            Picker::with_have(lengths, &have),
            TorrentStatus::Downloading,
        );
        let (a, b) = (join(&mut s, 1), join(&mut s, 2));
        // a: a Bitfield holding only what we have, then (aria2-style) a later one with
        // more, leaving out a piece it announced before, then HaveAll.
        let out = s
            .peer_announced(a, Announced::Bits(&bits(16, &[0])))
            .unwrap();
        assert!(!out.interesting && !out.both_seeds);
        check(&s);
        let out = s
            .peer_announced(a, Announced::Bits(&bits(16, &[1, 2, 3])))
            .unwrap();
        assert!(out.interesting);
        assert_eq!(s.peers[&a].have_count, 4, "a peer never loses pieces");
        check(&s);
        assert_eq!(s.picker.availability(lengths.piece(0).unwrap()), 1);
        assert_eq!(s.picker.availability(lengths.piece(2).unwrap()), 1);
        s.peer_announced(a, Announced::All).unwrap();
        assert!(s.peers[&a].is_seed(16));
        check(&s);
        assert_eq!(s.picker.availability(lengths.piece(9).unwrap()), 1);
        // b: HaveAll first (counted as a seed), then a Bitfield that changes nothing.
        s.peer_announced(b, Announced::All).unwrap();
        s.peer_announced(b, Announced::Bits(&bits(16, &[5])))
            .unwrap();
        check(&s);
        assert_eq!(s.picker.availability(lengths.piece(5).unwrap()), 2);
        // Requests and departures keep the picker consistent.
        let mut picks = Vec::new();
        let entry = &s.peers[&a];
        s.picker
            .pick(a, &entry.bitfield, entry.has_all, 8, &mut picks);
        assert!(!picks.is_empty());
        s.remove_peer(a);
        check(&s);
        s.remove_peer(b);
        check(&s);
        assert_eq!(s.picker.availability(lengths.piece(5).unwrap()), 0);
        assert!(s.peer_announced(a, Announced::All).is_none());
    }

    #[test]
    fn a_complete_peer_and_a_complete_us_have_nothing_to_say() {
        let lengths = Lengths::new(4 * 1024, 1024).unwrap();
        let mut s = TorrentState::new(
            lengths,
            Picker::with_have(lengths, &bitvec![u8, Msb0; 1; 4]),
            TorrentStatus::Seeding,
        );
        let a = join(&mut s, 1);
        let out = s
            .peer_announced(a, Announced::Bits(&bits(4, &[0, 1])))
            .unwrap();
        assert!(!out.both_seeds && !out.interesting);
        let out = s
            .peer_announced(a, Announced::Bits(&bits(4, &[2, 3])))
            .unwrap();
        assert!(out.both_seeds);
        check(&s);
    }
}
