//! The receiving half of a connection: decodes messages and acts on them, and keeps our
//! request pipeline to the peer full.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use super::pipeline::Pipeline;
use super::{Announced, PeerError, PeerHandler, PeerLink};
use crate::error::DisconnectReason;
use crate::wire::metadata::{self, MetadataMessage};
use crate::wire::{
    bitfield, DecoderLimits, ExtensionHandshake, Handshake, Message, MessageDecoder, RawBlock,
};
use crate::BlockRef;
use bitvec::{order::Msb0, slice::BitSlice};

/// Most bytes the read buffer asks the socket for at once: many blocks per system call on
/// a fast connection.
const READ_CHUNK: usize = 256 * 1024;
/// Fewest: a connection starts here, and one that never fills its buffer stays here. A
/// node with hundreds of connections (every torrent of every image, to every agent) would
/// otherwise hold 256 KiB per connection that sends much at once, whatever its rate.
const MIN_READ_CHUNK: usize = 32 * 1024;
/// A metadata request is rejected while more than this is queued for the peer already: with
/// the cap on pieces served per connection, what a peer can make us buffer by asking for
/// metadata stays below this plus one piece (16 KiB).
const MAX_QUEUED_BEFORE_METADATA: usize = 1 << 20;
/// How often timers (snub, idle, rate samples) are checked.
const TICK: Duration = Duration::from_secs(1);

pub(super) struct Reader<H> {
    handler: Arc<H>,
    link: Arc<PeerLink>,
    read: OwnedReadHalf,
    buf: BytesMut,
    /// What the next read asks for: doubled after a read that filled it, halved after one
    /// that used less than a quarter (see [`next_read_size`]).
    read_size: usize,
    decoder: MessageDecoder,
    extended: bool,
    /// The peer is choking us.
    peer_choking: bool,
    /// We told the peer we are interested.
    am_interested: bool,
    pipeline: Pipeline,
    last_received: Instant,
    /// The peer has sent at least one byte since the handshake.
    heard: bool,
    last_block: Instant,
    snubbed: bool,
    /// Scratch space for picks, reused.
    picks: Vec<BlockRef>,
    /// The id the peer receives `ut_metadata` messages under (BEP 9), if it has one.
    peer_ut_metadata: Option<u8>,
    /// Metadata pieces sent to this peer.
    metadata_served: u32,
}

impl<H: PeerHandler> Reader<H> {
    pub fn new(
        handler: Arc<H>,
        link: Arc<PeerLink>,
        read: OwnedReadHalf,
        theirs: Handshake,
    ) -> Self {
        let now = Instant::now();
        let decoder = MessageDecoder::new(DecoderLimits::for_torrent(&handler.lengths()));
        let pipeline = Pipeline::new(handler.config().max_outstanding_requests, now);
        Self {
            handler,
            link,
            read,
            buf: BytesMut::with_capacity(MIN_READ_CHUNK),
            read_size: MIN_READ_CHUNK,
            decoder,
            extended: theirs.supports_extended(),
            peer_choking: true,
            am_interested: false,
            pipeline,
            last_received: now,
            heard: false,
            last_block: now,
            snubbed: false,
            picks: Vec::new(),
            peer_ut_metadata: None,
            metadata_served: 0,
        }
    }

    pub async fn run(mut self) -> Result<(), PeerError> {
        let handler = Arc::clone(&self.handler);
        let mut shutdown = handler.shutdown();
        let mut closing = self.link.closing.subscribe();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.buf.is_empty() && self.buf.capacity() > 2 * self.read_size {
                // The connection slowed down: give the large buffer back.
                self.buf = BytesMut::with_capacity(self.read_size);
            }
            let want = self.decoder.bytes_needed(&self.buf).max(self.read_size);
            self.buf.reserve(want);
            let room = self.buf.capacity() - self.buf.len();
            tokio::select! {
                n = self.read.read_buf(&mut self.buf) => {
                    let n = n?;
                    if n == 0 {
                        return Err(PeerError::Closed(DisconnectReason::PeerClosed));
                    }
                    self.read_size = next_read_size(self.read_size, n, room);
                    self.last_received = Instant::now();
                    self.heard = true;
                    self.drain()?;
                }
                _ = tick.tick() => self.on_tick()?,
                _ = handler.verify_drained().notified() => self.refill(),
                r = closing.wait_for(Option::is_some) => {
                    let reason = r.ok().and_then(|r| r.clone()).unwrap_or(DisconnectReason::Closed);
                    return Err(PeerError::Closed(reason));
                }
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
        }
    }

    /// Handles every complete message in the buffer, then tops up our requests once.
    fn drain(&mut self) -> Result<(), PeerError> {
        while let Some(msg) = self.decoder.decode(&mut self.buf)? {
            self.handle(msg)?;
        }
        self.handler.spread_step(self.link.key);
        self.refill();
        Ok(())
    }

    fn handle(&mut self, msg: Message) -> Result<(), PeerError> {
        match msg {
            Message::KeepAlive => {}
            Message::Choke => {
                self.peer_choking = true;
                if !self.link.fast {
                    // Without the fast extension a choke silently drops our requests.
                    self.release_requests(false);
                }
            }
            Message::Unchoke => self.peer_choking = false,
            Message::Interested => {
                self.link.io().peer_interested = true;
                self.handler.interested(&self.link);
            }
            Message::NotInterested => {
                self.link.io().peer_interested = false;
                self.handler.not_interested(self.link.key);
            }
            Message::Have(index) => {
                let piece = self
                    .handler
                    .lengths()
                    .piece(index)
                    .ok_or_else(|| bad("HAVE for a piece that does not exist"))?;
                if self.handler.have(self.link.key, piece) {
                    self.set_interested(true);
                }
            }
            Message::Bitfield(bits) => {
                // Accepted whenever it comes, as libtorrent does: aria2 sends its extension
                // handshake first and a Bitfield again mid-connection in place of HAVEs.
                let lengths = self.handler.lengths();
                let num_pieces = lengths.num_pieces();
                if bits.len() != lengths.bitfield_len() {
                    return Err(bad("BITFIELD of the wrong length"));
                }
                let bits = bitfield::masked(bits, num_pieces);
                let bits = BitSlice::<u8, Msb0>::from_slice(&bits);
                let bits = &bits[..(num_pieces as usize).min(bits.len())];
                self.announced(Announced::Bits(bits))?;
            }
            Message::HaveAll => {
                self.require_fast()?;
                self.announced(Announced::All)?;
            }
            // Says nothing we did not assume (a peer has nothing until it tells us).
            Message::HaveNone => self.require_fast()?,
            Message::Request(raw) => self.on_request(raw)?,
            Message::Cancel(raw) => {
                let block = self.check_block(raw)?;
                let mut io = self.link.io();
                if let Some(pos) = io.serve.iter().position(|b| *b == block) {
                    io.serve.remove(pos);
                    if self.link.fast {
                        // BEP 6: every request gets exactly one Piece or Reject, even after Cancel.
                        Message::Reject(raw).encode(&mut io.out);
                        drop(io);
                        self.link.writer_wake.notify_one();
                    }
                }
            }
            Message::Piece { index, begin, data } => {
                let len = u32::try_from(data.len()).map_err(|_| bad("oversized block"))?;
                let block = self
                    .handler
                    .lengths()
                    .block_at(index, begin, len)
                    .ok_or_else(|| bad("PIECE outside the torrent"))?;
                self.on_block(block, &data);
            }
            Message::Reject(raw) => {
                self.require_fast()?;
                let block = self.check_block(raw)?;
                if self.link.io().requested.remove(&block) {
                    self.handler.release(self.link.key, &[block]);
                }
            }
            Message::Suggest(index) => {
                self.require_fast()?;
                let piece = self
                    .handler
                    .lengths()
                    .piece(index)
                    .ok_or_else(|| bad("SUGGEST for a piece that does not exist"))?;
                self.handler.suggested(self.link.key, piece);
            }
            Message::AllowedFast(index) => {
                self.require_fast()?;
                // Valid but unused: we unchoke every peer on a LAN.
                self.handler
                    .lengths()
                    .piece(index)
                    .ok_or_else(|| bad("ALLOWED_FAST for a piece that does not exist"))?;
            }
            Message::Port(_) => {}
            Message::Extended { id, payload } => {
                if !self.extended {
                    return Err(bad("extended message without BEP 10 support"));
                }
                if id == crate::wire::EXTENDED_HANDSHAKE_ID {
                    let hs = ExtensionHandshake::decode(&payload)?;
                    self.peer_ut_metadata = hs.extension_id(metadata::UT_METADATA);
                    if let Some(port) = hs.p {
                        self.link.listen_port.store(port, Ordering::Relaxed);
                    }
                    if let Some(reqq) = hs.reqq {
                        let ours = self.handler.config().max_outstanding_requests;
                        self.pipeline.set_max(reqq.clamp(1, ours));
                    }
                }
                if id == metadata::OUR_UT_METADATA_ID {
                    self.on_metadata_message(&payload)?;
                }
                // Other extension messages: we advertised none, so ignore whatever comes.
            }
        }
        Ok(())
    }

    /// BEP 9: serves a piece of our info dict, or rejects the request (out of range, or
    /// more than the peer could need, or while much is queued for it already: what a peer
    /// can make us buffer stays bounded). Data and rejects are for fetchers; we never ask a
    /// peer of a running torrent, so those are ignored.
    fn on_metadata_message(&mut self, payload: &bytes::Bytes) -> Result<(), PeerError> {
        let MetadataMessage::Request { piece } = MetadataMessage::decode(payload)? else {
            return Ok(());
        };
        let Some(their_id) = self.peer_ut_metadata else {
            return Ok(()); // It never told us where to send the answer.
        };
        let Some(info) = self.handler.metadata() else {
            return Ok(());
        };
        let limit = 2 * metadata::metadata_pieces(info.len()) + 8;
        let busy = self.link.io().out.len() > MAX_QUEUED_BEFORE_METADATA;
        let answer = if self.metadata_served >= limit || busy {
            MetadataMessage::Reject { piece }
        } else {
            self.metadata_served += 1;
            metadata::serve_metadata(info, piece)
        };
        self.link.send(&Message::Extended {
            id: their_id,
            payload: answer.encode(),
        });
        Ok(())
    }

    /// The peer announced pieces in bulk (Bitfield or HaveAll), first or later on.
    fn announced(&mut self, pieces: Announced<'_>) -> Result<(), PeerError> {
        let outcome = self.handler.announced(self.link.key, pieces);
        let Some(outcome) = outcome else {
            return Ok(());
        };
        if outcome.both_seeds {
            return Err(PeerError::Closed(DisconnectReason::BothSeeds));
        }
        if outcome.interesting {
            self.set_interested(true);
        }
        Ok(())
    }

    fn require_fast(&self) -> Result<(), PeerError> {
        if self.link.fast {
            Ok(())
        } else {
            Err(bad("fast-extension message without BEP 6 support"))
        }
    }

    fn check_block(&self, raw: RawBlock) -> Result<BlockRef, PeerError> {
        self.handler
            .lengths()
            .block_at(raw.index, raw.begin, raw.length)
            .ok_or_else(|| bad("block outside the torrent"))
    }

    /// The peer asks for a block: queue it for the writer, or reject it (fast) / ignore it.
    fn on_request(&mut self, raw: RawBlock) -> Result<(), PeerError> {
        let block = self.check_block(raw)?;
        if !self.handler.request(&self.link, block) && self.link.fast {
            self.link.send(&Message::Reject(raw));
        }
        Ok(())
    }

    /// A block arrived: keep it if we asked this peer for it and still want it.
    fn on_block(&mut self, block: BlockRef, data: &[u8]) {
        let len = u64::from(block.len());
        self.handler.count_received(len);
        self.link.count_received(len);
        if !self.link.io().requested.remove(&block) {
            // Unrequested, or cancelled after the peer had sent it.
            self.handler.count_wasted(len);
            return;
        }
        self.pipeline.on_block(block.len());
        self.last_block = Instant::now();
        if self.snubbed {
            self.snubbed = false;
            self.pipeline
                .set_max(self.handler.config().max_outstanding_requests);
        }
        if !self.handler.block(self.link.key, block, data) {
            self.handler.count_wasted(len);
        }
    }

    /// Keeps `pipeline.target()` requests outstanding while the peer lets us.
    fn refill(&mut self) {
        if self.peer_choking || !self.am_interested || self.link.is_closing() {
            return;
        }
        if self.handler.requests_paused() {
            return; // Hashing or the disk is behind; resume when it drains.
        }
        let outstanding = self.link.io().requested.len();
        let target = self.pipeline.target() as usize;
        if outstanding >= target {
            return;
        }
        self.picks.clear();
        let picked = self.handler.pick(
            self.link.key,
            target - outstanding,
            outstanding,
            &mut self.picks,
        );
        match picked {
            None => {}
            Some(false) => self.set_interested(false),
            Some(true) => self.link.request(&self.picks),
        }
    }

    fn set_interested(&mut self, interested: bool) {
        if self.am_interested != interested {
            self.am_interested = interested;
            self.link.send(if interested {
                &Message::Interested
            } else {
                &Message::NotInterested
            });
        }
    }

    /// Gives all our outstanding requests at this peer back to the picker; with `cancel`,
    /// also tells the peer (snub), otherwise they are already void (choke).
    fn release_requests(&mut self, cancel: bool) {
        let blocks: Vec<BlockRef> = if cancel {
            self.link.cancel_all()
        } else {
            self.link.io().requested.drain().collect()
        };
        if !blocks.is_empty() {
            self.handler.release(self.link.key, &blocks);
        }
    }

    fn on_tick(&mut self) -> Result<(), PeerError> {
        let now = Instant::now();
        let handler = Arc::clone(&self.handler);
        let config = handler.config();
        // A peer speaks as soon as it is connected (an extension handshake, what it has, or
        // that it is interested); one that stays silent after its handshake only holds one of
        // the torrent's peer slots, so it gets the handshake's time, not the idle timeout.
        if !self.heard && now.duration_since(self.last_received) > config.handshake_timeout {
            return Err(PeerError::Timeout("peer sent nothing after its handshake"));
        }
        if now.duration_since(self.last_received) > config.idle_timeout {
            return Err(PeerError::Timeout("peer sent nothing"));
        }
        self.pipeline.tick(now, TICK);
        let waiting = !self.link.io().requested.is_empty();
        if waiting && !self.snubbed && now.duration_since(self.last_block) > config.snub_timeout {
            // It holds requests and delivers nothing: let other peers have those blocks, and
            // ask it for one block at a time until it proves itself again.
            tracing::debug!(addr = %self.link.addr, "snubbed");
            self.snubbed = true;
            self.release_requests(true);
            self.pipeline.reset();
            self.pipeline.set_max(1);
        }
        if !waiting {
            self.last_block = now;
        }
        self.handler.spread_step(self.link.key);
        self.refill();
        Ok(())
    }
}

fn bad(what: &str) -> PeerError {
    PeerError::Protocol(what.to_owned())
}

/// The read size after a read of `n` bytes into `room` free bytes, asked for `current`:
/// doubled (to [`READ_CHUNK`]) when the read filled the room, since more was waiting;
/// halved (to [`MIN_READ_CHUNK`]) when it used under a quarter of `current`.
fn next_read_size(current: usize, n: usize, room: usize) -> usize {
    if n >= room {
        (current * 2).min(READ_CHUNK)
    } else if n < current / 4 {
        (current / 2).max(MIN_READ_CHUNK)
    } else {
        current
    }
}

#[cfg(test)]
mod read_size_tests {
    use super::*;

    #[test]
    fn the_read_size_follows_what_the_socket_had() {
        // Full reads double it up to the cap.
        let mut size = MIN_READ_CHUNK;
        for _ in 0..10 {
            size = next_read_size(size, size, size);
        }
        assert_eq!(size, READ_CHUNK);
        // A read of a few requests halves it, down to the floor.
        for _ in 0..10 {
            size = next_read_size(size, 100, size);
        }
        assert_eq!(size, MIN_READ_CHUNK);
        // A read between a quarter and all of it keeps it.
        assert_eq!(next_read_size(64 << 10, 20 << 10, 64 << 10), 64 << 10);
    }
}
