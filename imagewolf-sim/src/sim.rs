//! The discrete-event loop: nodes running the engine's `Picker` and `SeedSpreader` over the
//! link model of [`crate::net`]. See the crate docs for what is modelled and how.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use imagewolf_bt::picker::{
    BitSlice, Bitfield, PeerKey, Picker, PickerConfig, Received, SeedSpreader,
};
use imagewolf_bt::{BlockRef, Lengths, PieceIndex, BLOCK_LEN};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::config::SimConfig;
use crate::net::{secs, through_downlink, transfer_ns, Pipe, SEC};
use crate::queue::{EventQueue, Nanos};
use crate::report::{NodeResult, Outcome};
use crate::topology::Topology;

/// The seed's spreading tick (the torrent ticker's period).
const SEED_TICK: Nanos = SEC / 2;
/// A HAVE on a connection whose last refill came back short is acted on at once only if
/// no unit arrived at the node for this long (see `Sim::refill_on_have`).
const HAVE_GATE: Nanos = 20_000_000;
/// A peer alone with a spreading seed this long is shown everything (`torrent::state::ALONE`).
const ALONE: Nanos = 3 * SEC;

enum Ev {
    Start(u32),
    /// Connection: TCP and BitTorrent handshakes done.
    Dial(u32),
    /// Half: the sender's bitfield (or HaveNone / HaveAll) reaches the receiver.
    Hello(u32),
    /// Half: interested and unchoke have crossed; the receiver may request.
    Ready(u32),
    /// Half: requests reach the sender.
    Requests(u32, Box<[BlockRef]>),
    /// Half: a HAVE reaches the receiver.
    Have(u32, u32),
    /// Half: the seed's shown pieces (HAVEs sent together) reach the receiver.
    /// The seed's shown pieces on half `h`; `true`: also suggested (BEP 6), as a spreading
    /// seed suggests the pieces of a window.
    Haves(u32, Box<[u32]>, bool),
    /// Half: a cancel reaches the sender.
    Cancel(u32, BlockRef),
    /// Half, unit, when its last byte left the sender: the unit reaches the receiver.
    Deliver(u32, BlockRef, Nanos),
    /// A node's uplink finished a unit, or may send again to a backed-up receiver.
    UplinkFree(u32),
    /// Node, piece: the hash check is done.
    Verified(u32, u32),
    /// Connection, the node that left: the other end sees it close.
    Gone(u32, u32),
    /// A downloader's 1 s tick (rate samples, refills).
    Tick(u32),
    /// The seed's spreading tick.
    SeedTick(u32),
    /// A node leaves (fails).
    Leave(u32),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Waiting,
    Alive,
    Left,
}

struct Node {
    up_unit: Nanos,
    down_unit: Nanos,
    start: Nanos,
    status: Status,
    left_at: Nanos,
    /// `None` for the initial seed (it has everything from the start).
    picker: Option<Picker>,
    spread: Option<SeedSpreader>,
    peers_changed: Nanos,
    conns: Vec<u32>,
    /// Halves this node sends on that have queued units, in round-robin order.
    ring: VecDeque<u32>,
    up_busy_until: Nanos,
    wake_at: Nanos,
    /// When the downlink will have drained what it was given.
    dl_busy: Nanos,
    /// Halves whose last refill got fewer units than wanted, in the order they are retried.
    hungry: VecDeque<u32>,
    /// The last refill of any of its connections came back short.
    last_short: bool,
    /// When a unit last arrived.
    last_deliver: Nanos,
    /// Open connections whose peer has a piece this node lacks (the engine's
    /// `TorrentState::sources`, among which `Picker::request_share` divides the budget).
    sources: u32,
    done_at: Option<Nanos>,
    failed: bool,
    uploaded: u64,
    downloaded: u64,
    wasted: u64,
    ctrl: u64,
    connections: u32,
}

impl Node {
    fn complete(&self) -> bool {
        self.picker.as_ref().is_none_or(Picker::is_complete)
    }

    fn has(&self, piece: u32) -> bool {
        self.picker
            .as_ref()
            .is_none_or(|p| p.have()[piece as usize])
    }
}

struct Conn {
    a: u32,
    b: u32,
    lat: Nanos,
    open: bool,
    closing: bool,
}

/// One direction of a connection: `sender` uploads to `receiver`.
struct Half {
    /// What the receiver knows the sender has.
    known: Bitfield,
    known_all: bool,
    /// Pieces in `known` the receiver lacks (not kept while `known_all`): the sender counts
    /// among the receiver's sources while this is above 0, or while `known_all`.
    wanted: u32,
    /// The receiver's request pipeline towards the sender.
    pipe: Pipe,
    ready: bool,
    hungry: bool,
    /// Units requested from the sender, not yet sent (the sender's serve queue).
    queue: VecDeque<BlockRef>,
    in_ring: bool,
}

/// A prepared run; [`Sim::run`] plays it.
pub struct Sim {
    cfg: SimConfig,
    /// When the origin's spreader finished (every piece gone out).
    spread_done: Option<Nanos>,
    /// Time the origin's uplink was sending, per second of the run.
    origin_busy: Vec<Nanos>,
    /// Payload bytes delivered to downloaders, per half second of the run.
    swarm_down: Vec<u64>,
    lengths: Lengths,
    unit_blocks: u32,
    hash_ns: Nanos,
    queue_ns: Nanos,
    /// CPU time per received byte divided by the cores (0: no CPU model), ns.
    cpu_ns_per_byte: f64,
    /// When the shared CPU will have processed every unit given to it.
    cpu_busy: Nanos,
    nodes: Vec<Node>,
    conns: Vec<Conn>,
    halves: Vec<Half>,
    q: EventQueue<Ev>,
    now: Nanos,
    epoch: Instant,
    picks: Vec<BlockRef>,
    shown: Vec<PieceIndex>,
    remaining: usize,
    events: u64,
    pick_calls: u64,
    progress: bool,
}

impl Sim {
    /// Builds the swarm: topology from the seed, a picker per downloader, a spreader for the
    /// seed if configured.
    pub fn new(cfg: SimConfig) -> Result<Self, String> {
        cfg.validate()?;
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let topo = Topology::build(&cfg, &mut rng);
        Ok(Self::with_topology(cfg, topo))
    }

    /// Builds the swarm over a given topology (tests use hand-made ones).
    pub fn with_topology(cfg: SimConfig, topo: Topology) -> Self {
        let unit_blocks = cfg.unit_blocks();
        let unit_bytes = u64::from(unit_blocks) * u64::from(BLOCK_LEN);
        let piece_len = cfg.piece_len();
        let units_per_piece = (piece_len / (unit_blocks * BLOCK_LEN)).max(1);
        let units = cfg.size_bytes.div_ceil(unit_bytes);
        // The picker's geometry, scaled so that one of its 16 KiB blocks is one unit.
        let lengths = Lengths::new(units * u64::from(BLOCK_LEN), units_per_piece * BLOCK_LEN)
            .expect("a non-empty torrent");
        let max_active = (cfg.piece_memory.max(4 * u64::from(piece_len)) / u64::from(piece_len))
            .min(u64::from(u32::MAX)) as u32;
        let n = cfg.nodes;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let (picker, spread) = if i == 0 {
                let spread = cfg
                    .spread
                    .then(|| SeedSpreader::with_rng_seed(lengths, cfg.seed ^ 0x5eed));
                (None, spread)
            } else {
                let config = PickerConfig {
                    rng_seed: Some(cfg.seed.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64)),
                    ..PickerConfig::default()
                };
                let mut p = Picker::with_config(lengths, BitSlice::empty(), config);
                p.set_max_active(max_active);
                (Some(p), None)
            };
            nodes.push(Node {
                up_unit: transfer_ns(unit_bytes, topo.up[i]),
                down_unit: transfer_ns(unit_bytes, topo.down[i]),
                start: topo.start[i],
                status: Status::Waiting,
                left_at: Nanos::MAX,
                picker,
                spread,
                peers_changed: 0,
                conns: Vec::new(),
                ring: VecDeque::new(),
                up_busy_until: 0,
                wake_at: Nanos::MAX,
                dl_busy: 0,
                hungry: VecDeque::new(),
                last_short: false,
                last_deliver: 0,
                sources: 0,
                done_at: None,
                failed: false,
                uploaded: 0,
                downloaded: 0,
                wasted: 0,
                ctrl: 0,
                connections: 0,
            });
        }
        let pieces = lengths.num_pieces() as usize;
        let mut conns = Vec::with_capacity(topo.edges.len());
        let mut halves = Vec::with_capacity(2 * topo.edges.len());
        for (c, &(a, b)) in topo.edges.iter().enumerate() {
            nodes[a as usize].conns.push(c as u32);
            nodes[b as usize].conns.push(c as u32);
            conns.push(Conn {
                a,
                b,
                lat: topo.access[a as usize] + topo.access[b as usize],
                open: false,
                closing: false,
            });
            for _ in 0..2 {
                halves.push(Half {
                    known: Bitfield::repeat(false, pieces),
                    known_all: false,
                    wanted: 0,
                    pipe: Pipe::new(0),
                    ready: false,
                    hungry: false,
                    queue: VecDeque::new(),
                    in_ring: false,
                });
            }
        }
        let mut q = EventQueue::default();
        for (i, node) in nodes.iter().enumerate() {
            q.push(node.start, Ev::Start(i as u32));
            if let Some(t) = topo.fail[i] {
                q.push(t, Ev::Leave(i as u32));
            }
        }
        let hash_ns = secs(f64::from(piece_len) / cfg.hash_bytes_per_s);
        let queue_ns = secs(cfg.queue_ms / 1000.0);
        let cpu_ns_per_byte = if cfg.cpu_cores > 0.0 {
            cfg.cpu_s_per_gib * 1e9 / f64::from(1u32 << 30) / cfg.cpu_cores
        } else {
            0.0
        };
        Self {
            spread_done: None,
            origin_busy: Vec::new(),
            swarm_down: Vec::new(),
            remaining: n - 1,
            cfg,
            lengths,
            unit_blocks,
            hash_ns,
            queue_ns,
            cpu_ns_per_byte,
            cpu_busy: 0,
            nodes,
            conns,
            halves,
            q,
            now: 0,
            epoch: Instant::now(),
            picks: Vec::new(),
            shown: Vec::new(),
            events: 0,
            pick_calls: 0,
            progress: false,
        }
    }

    /// Prints a progress line to stderr every 16 M events.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Plays the run to the end (every downloader complete or gone, or the time limit).
    pub fn run(mut self) -> Outcome {
        let wall = Instant::now();
        let limit = secs(self.cfg.max_time_s);
        while self.remaining > 0 {
            let Some((at, ev)) = self.q.pop() else { break };
            if at > limit {
                break;
            }
            self.now = at;
            self.events += 1;
            self.handle(ev);
            if self.progress && self.events % (1 << 24) == 0 {
                eprintln!(
                    "  t = {:.2} s simulated, {} of {} downloaders to go, {} M events, {:.0} s wall",
                    crate::net::to_secs(self.now),
                    self.remaining,
                    self.nodes.len() - 1,
                    self.events >> 20,
                    wall.elapsed().as_secs_f64()
                );
            }
        }
        self.outcome(wall.elapsed().as_secs_f64())
    }

    fn outcome(self, wall_s: f64) -> Outcome {
        let nodes = self
            .nodes
            .iter()
            .map(|n| NodeResult {
                start_s: crate::net::to_secs(n.start),
                done_s: n.done_at.map(crate::net::to_secs),
                failed: n.failed,
                uploaded: n.uploaded,
                downloaded: n.downloaded,
                wasted: n.wasted,
                control_messages: n.ctrl,
                connections: n.connections,
            })
            .collect();
        Outcome {
            config: self.cfg.clone(),
            unit_blocks: self.unit_blocks,
            pieces: self.lengths.num_pieces(),
            nodes,
            end_s: crate::net::to_secs(self.now),
            events: self.events,
            pick_calls: self.pick_calls,
            wall_s,
            spread_done_s: self.spread_done.map(crate::net::to_secs),
            origin_busy: self
                .origin_busy
                .iter()
                .map(|&b| crate::net::to_secs(b))
                .collect(),
            swarm_down: {
                // What every downloader's downlink could take in half a second.
                let cap: f64 = self
                    .nodes
                    .iter()
                    .skip(1)
                    .map(|n| {
                        (u64::from(self.unit_blocks) * u64::from(BLOCK_LEN)) as f64 * 0.5e9
                            / n.down_unit as f64
                    })
                    .sum();
                self.swarm_down.iter().map(|&b| b as f64 / cap).collect()
            },
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Start(n) => self.start(n),
            Ev::Dial(c) => self.dial(c),
            Ev::Hello(h) => self.hello(h),
            Ev::Ready(h) => {
                if self.conns[(h / 2) as usize].open {
                    self.halves[h as usize].ready = true;
                    let (s, r) = self.ends(h);
                    self.nodes[r as usize].ctrl += 1; // interested
                    self.nodes[s as usize].ctrl += 1; // unchoke
                    self.refill(h);
                }
            }
            Ev::Requests(h, blocks) => self.requests(h, &blocks),
            Ev::Have(h, p) => {
                if self.on_have(h, p) {
                    self.refill_on_have(h);
                }
            }
            Ev::Haves(h, ps, suggest) => {
                let mut any = false;
                for &p in ps.iter() {
                    any |= self.on_have(h, p);
                }
                if suggest && any && self.cfg.suggest {
                    let (_, r) = self.ends(h);
                    if let Some(picker) = &mut self.nodes[r as usize].picker {
                        for &p in ps.iter() {
                            if let Some(piece) = self.lengths.piece(p) {
                                picker.suggested(piece);
                            }
                        }
                    }
                }
                if any {
                    self.refill_on_have(h);
                }
            }
            Ev::Cancel(h, b) => {
                let queue = &mut self.halves[h as usize].queue;
                if let Some(i) = queue.iter().position(|&x| x == b) {
                    queue.remove(i);
                }
            }
            Ev::Deliver(h, b, sent) => self.deliver(h, b, sent),
            Ev::UplinkFree(n) => {
                let node = &mut self.nodes[n as usize];
                if self.now >= node.wake_at {
                    node.wake_at = Nanos::MAX;
                }
                self.kick(n);
            }
            Ev::Verified(n, p) => self.verified(n, p),
            Ev::Gone(c, x) => self.gone(c, x),
            Ev::Tick(n) => self.tick(n),
            Ev::SeedTick(n) => self.seed_tick(n),
            Ev::Leave(n) => self.leave(n),
        }
    }

    /// (sender, receiver) of a half.
    fn ends(&self, h: u32) -> (u32, u32) {
        let c = &self.conns[(h / 2) as usize];
        if h % 2 == 0 {
            (c.a, c.b)
        } else {
            (c.b, c.a)
        }
    }

    /// The half of connection `c` on which `sender` sends.
    fn half_from(&self, c: u32, sender: u32) -> u32 {
        c * 2 + u32::from(self.conns[c as usize].a != sender)
    }

    fn instant(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.now)
    }

    /// When a control message `from` sends on connection `c` arrives: the link's latency,
    /// plus the queue ahead of it while `from`'s uplink is busy.
    fn ctrl_at(&self, from: u32, c: u32) -> Nanos {
        let busy = self.nodes[from as usize].up_busy_until > self.now;
        self.now + self.conns[c as usize].lat + if busy { self.queue_ns } else { 0 }
    }

    fn start(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        if node.status != Status::Waiting {
            return;
        }
        node.status = Status::Alive;
        node.ctrl += 1; // tracker announce
        for i in 0..self.nodes[n as usize].conns.len() {
            let c = self.nodes[n as usize].conns[i];
            let conn = &self.conns[c as usize];
            let other = if conn.a == n { conn.b } else { conn.a };
            if self.nodes[other as usize].status == Status::Alive {
                // SYN, SYN-ACK + handshake, handshake back.
                self.q.push(self.now + 3 * conn.lat, Ev::Dial(c));
            }
        }
        if self.nodes[n as usize].picker.is_some() {
            self.q.push(self.now + SEC, Ev::Tick(n));
        } else if self.nodes[n as usize].spread.is_some() {
            self.q.push(self.now + SEED_TICK, Ev::SeedTick(n));
        }
    }

    fn dial(&mut self, c: u32) {
        let (a, b) = (self.conns[c as usize].a, self.conns[c as usize].b);
        if self.nodes[a as usize].status != Status::Alive
            || self.nodes[b as usize].status != Status::Alive
        {
            return;
        }
        self.conns[c as usize].open = true;
        let lat = self.conns[c as usize].lat;
        for (s, h) in [(a, c * 2), (b, c * 2 + 1)] {
            let node = &mut self.nodes[s as usize];
            node.connections += 1;
            node.ctrl += 3; // handshake, extension handshake, bitfield
            self.halves[h as usize].pipe = Pipe::new(self.now);
            self.q.push(self.now + lat, Ev::Hello(h));
            let now = self.instant();
            if let Some(spread) = &mut self.nodes[s as usize].spread {
                spread.peer_joined(PeerKey(u64::from(h)), now);
                self.nodes[s as usize].peers_changed = self.now;
                self.spread_step(s, h);
            }
        }
    }

    fn hello(&mut self, h: u32) {
        let c = h / 2;
        if !self.conns[c as usize].open {
            return;
        }
        let (s, r) = self.ends(h);
        let sender = &self.nodes[s as usize];
        let bits = if sender.spread.is_some() {
            None // HaveNone: the spreading seed shows pieces one by one.
        } else if sender.complete() {
            self.halves[h as usize].known_all = true;
            None
        } else {
            sender.picker.as_ref().map(|p| p.have().to_bitvec())
        };
        let known_all = self.halves[h as usize].known_all;
        if let Some(bits) = &bits {
            self.halves[h as usize].known.copy_from_bitslice(bits);
        }
        let wanted = match (&bits, &self.nodes[r as usize].picker) {
            (Some(bits), Some(p)) => (bits.clone() & !p.have().to_bitvec()).count_ones() as u32,
            _ => 0,
        };
        self.halves[h as usize].wanted = wanted;
        if known_all || wanted > 0 {
            self.nodes[r as usize].sources += 1;
        }
        let receiver = &mut self.nodes[r as usize];
        if let Some(picker) = &mut receiver.picker {
            if known_all {
                picker.peer_has_all();
            } else if let Some(bits) = &bits {
                picker.peer_bitfield(bits);
            }
        }
        if let Some(spread) = &mut receiver.spread {
            let key = PeerKey(u64::from(h ^ 1));
            if known_all {
                spread.peer_has_all(key);
            } else if let Some(bits) = &bits {
                spread.peer_bitfield(key, bits);
            }
            self.spread_step(r, h ^ 1);
        }
        // Interested out, unchoke back.
        let lat = self.conns[c as usize].lat;
        self.q.push(self.now + 2 * lat, Ev::Ready(h));
    }

    /// A HAVE for `p` on half `h` reached its receiver. Returns whether the connection is
    /// open (so a refill may follow).
    fn on_have(&mut self, h: u32, p: u32) -> bool {
        if !self.conns[(h / 2) as usize].open {
            return false;
        }
        let (_, r) = self.ends(h);
        let half = &mut self.halves[h as usize];
        let node = &mut self.nodes[r as usize];
        if !half.known_all && !half.known[p as usize] {
            half.known.set(p as usize, true);
            if node.picker.as_ref().is_some_and(|k| !k.have()[p as usize]) {
                half.wanted += 1;
                if half.wanted == 1 {
                    node.sources += 1;
                }
            }
            if let Some(picker) = &mut node.picker {
                if let Some(piece) = self.lengths.piece(p) {
                    picker.peer_has(piece);
                }
            }
        }
        if let Some(spread) = &mut node.spread {
            if let Some(piece) = self.lengths.piece(p) {
                spread.peer_has(PeerKey(u64::from(h ^ 1)), piece);
            }
            self.spread_step(r, h ^ 1);
        }
        true
    }

    /// A HAVE arrived on half `h`. The engine refills after every batch of messages; here a
    /// half whose last refill came back short is skipped while the node's last refill on
    /// any connection came back short too and units are arriving: the piece-memory cap is
    /// reached, and the next verification (due within milliseconds) retries the hungry
    /// connections in turn. Such picks find nothing, and they were most of the
    /// simulator's time.
    fn refill_on_have(&mut self, h: u32) {
        let (_, r) = self.ends(h);
        let half = &self.halves[h as usize];
        let node = &self.nodes[r as usize];
        if half.hungry && node.last_short && self.now.saturating_sub(node.last_deliver) < HAVE_GATE
        {
            return;
        }
        self.refill(h);
    }

    /// Tops up the receiver's requests on half `h` to its pipeline's target. Returns how
    /// many units were requested.
    fn refill(&mut self, h: u32) -> usize {
        let (_, r) = self.ends(h);
        let c = h / 2;
        let half = &mut self.halves[h as usize];
        let node = &mut self.nodes[r as usize];
        if !half.ready || node.status != Status::Alive || !self.conns[c as usize].open {
            return 0;
        }
        let Some(picker) = &mut node.picker else {
            return 0;
        };
        if picker.is_complete() {
            return 0;
        }
        let key = PeerKey(u64::from(h));
        // The engine clamps the pipeline to an equal share of the piece-memory budget among
        // the peers that have a piece we lack (`TorrentState::pick_for`).
        let mut target = half.pipe.target_units(self.unit_blocks) as usize;
        if self.cfg.request_share {
            target = target.min(picker.request_share(node.sources as usize));
        }
        let outstanding = picker.outstanding(key);
        if outstanding >= target {
            return 0;
        }
        self.picks.clear();
        self.pick_calls += 1;
        let want = target - outstanding;
        let got = picker.pick(key, &half.known, half.known_all, want, &mut self.picks);
        node.last_short = got < want;
        if got < want && !half.hungry {
            half.hungry = true;
            node.hungry.push_back(h);
        }
        if got > 0 {
            node.ctrl += got as u64 * u64::from(self.unit_blocks);
            let at = self.ctrl_at(r, c);
            self.q
                .push(at, Ev::Requests(h, self.picks.as_slice().into()));
        }
        got
    }

    fn requests(&mut self, h: u32, blocks: &[BlockRef]) {
        let (s, _) = self.ends(h);
        if self.nodes[s as usize].status != Status::Alive || !self.conns[(h / 2) as usize].open {
            return;
        }
        let now = self.instant();
        let node = &mut self.nodes[s as usize];
        let half = &mut self.halves[h as usize];
        for &b in blocks {
            if let Some(spread) = &mut node.spread {
                spread.requested(PeerKey(u64::from(h)), b.piece(), now);
            }
            half.queue.push_back(b);
        }
        if !half.in_ring {
            half.in_ring = true;
            node.ring.push_back(h);
        }
        self.kick(s);
        self.spread_step(s, h);
    }

    /// Starts the next unit on `n`'s uplink if it is idle: round robin over the halves with
    /// queued units, skipping a receiver whose downlink is backed up (as TCP's congestion
    /// control would slow that flow and let the others have the uplink).
    fn kick(&mut self, n: u32) {
        let ni = n as usize;
        if self.nodes[ni].status != Status::Alive || self.nodes[ni].up_busy_until > self.now {
            return;
        }
        let mut unblock = Nanos::MAX;
        for _ in 0..self.nodes[ni].ring.len() {
            let Some(h) = self.nodes[ni].ring.pop_front() else {
                break;
            };
            let c = h / 2;
            let (_, r) = self.ends(h);
            let half = &mut self.halves[h as usize];
            if half.queue.is_empty()
                || !self.conns[c as usize].open
                || self.conns[c as usize].closing
            {
                half.in_ring = false;
                half.queue.clear();
                continue;
            }
            let rn = &self.nodes[r as usize];
            let slack = self.queue_ns.max(2 * rn.down_unit);
            if rn.dl_busy > self.now + slack {
                unblock = unblock.min(rn.dl_busy - slack);
                self.nodes[ni].ring.push_back(h);
                continue;
            }
            let b = half.queue.pop_front().expect("not empty");
            if half.queue.is_empty() {
                half.in_ring = false;
            } else {
                self.nodes[ni].ring.push_back(h);
            }
            // Real bytes of this unit (the last one may be short).
            let scale = u64::from(b.len()) * u64::from(self.unit_blocks);
            let full = u64::from(BLOCK_LEN) * u64::from(self.unit_blocks);
            let up_ns = self.nodes[ni].up_unit * scale / full;
            let rn = &mut self.nodes[r as usize];
            let down_ns = (rn.down_unit * scale / full).max(1);
            let mut arrive = through_downlink(self.now, up_ns.max(1), down_ns, &mut rn.dl_busy);
            if self.cpu_ns_per_byte > 0.0 {
                // One machine's cores process every unit of the swarm, in turn.
                let cpu = (scale as f64 * self.cpu_ns_per_byte).ceil() as Nanos;
                self.cpu_busy = self.cpu_busy.max(self.now) + cpu;
                arrive = arrive.max(self.cpu_busy);
            }
            let sent = self.now + up_ns.max(1);
            if n == 0 {
                let second = (self.now / SEC) as usize;
                if self.origin_busy.len() <= second {
                    self.origin_busy.resize(second + 1, 0);
                }
                self.origin_busy[second] += up_ns;
            }
            let node = &mut self.nodes[ni];
            node.up_busy_until = sent;
            node.uploaded += scale;
            self.q.push(sent, Ev::UplinkFree(n));
            self.q
                .push(arrive + self.conns[c as usize].lat, Ev::Deliver(h, b, sent));
            return;
        }
        let node = &mut self.nodes[ni];
        if unblock < node.wake_at {
            node.wake_at = unblock;
            self.q.push(unblock, Ev::UplinkFree(n));
        }
    }

    fn deliver(&mut self, h: u32, b: BlockRef, sent: Nanos) {
        let (s, r) = self.ends(h);
        let c = h / 2;
        if self.nodes[r as usize].status != Status::Alive
            || !self.conns[c as usize].open
            || self.nodes[s as usize].left_at < sent
        {
            return;
        }
        let bytes = u64::from(b.len()) * u64::from(self.unit_blocks);
        let slot = (self.now / (SEC / 2)) as usize;
        if self.swarm_down.len() <= slot {
            self.swarm_down.resize(slot + 1, 0);
        }
        self.swarm_down[slot] += bytes;
        let node = &mut self.nodes[r as usize];
        node.downloaded += bytes;
        node.last_deliver = self.now;
        let Some(picker) = &mut node.picker else {
            return;
        };
        match picker.block_received(PeerKey(u64::from(h)), b) {
            Received::Unwanted => node.wasted += bytes,
            Received::Accepted { cancel, piece_done } => {
                for other in cancel {
                    let oh = other.0 as u32;
                    self.nodes[r as usize].ctrl += u64::from(self.unit_blocks);
                    let at = self.ctrl_at(r, oh / 2);
                    self.q.push(at, Ev::Cancel(oh, b));
                }
                if piece_done {
                    self.q
                        .push(self.now + self.hash_ns, Ev::Verified(r, b.piece().get()));
                }
            }
        }
        let blocks = (bytes / u64::from(BLOCK_LEN)).max(1) as u32;
        self.halves[h as usize].pipe.on_blocks(blocks);
        self.refill(h);
    }

    fn verified(&mut self, n: u32, p: u32) {
        let ni = n as usize;
        if self.nodes[ni].status != Status::Alive {
            return;
        }
        let Some(piece) = self.lengths.piece(p) else {
            return;
        };
        let Some(picker) = &mut self.nodes[ni].picker else {
            return;
        };
        picker.piece_verified(piece);
        let complete = picker.is_complete();
        for i in 0..self.nodes[ni].conns.len() {
            let c = self.nodes[ni].conns[i];
            let conn = &self.conns[c as usize];
            if !conn.open || conn.closing {
                continue;
            }
            let other = if conn.a == n { conn.b } else { conn.a };
            // The peer has one piece fewer that we lack.
            let h_in = self.half_from(c, other);
            let half = &mut self.halves[h_in as usize];
            if !half.known_all && half.known[p as usize] {
                half.wanted -= 1;
                if half.wanted == 0 {
                    self.nodes[ni].sources -= 1;
                }
            }
            self.nodes[ni].ctrl += 1;
            let o = &self.nodes[other as usize];
            // A HAVE for a piece the peer has changes nothing there but a spreading seed's
            // view: counted, not simulated.
            if o.status == Status::Alive && (o.spread.is_some() || !o.has(p)) {
                let h = self.half_from(c, n);
                let at = self.ctrl_at(n, c);
                self.q.push(at, Ev::Have(h, p));
            }
        }
        if complete {
            self.nodes[ni].done_at = Some(self.now);
            self.remaining -= 1;
            if self.cfg.leave_on_complete {
                self.leave(n);
            }
            return;
        }
        // A slot under the piece-memory cap is free: hungry connections are retried in
        // turn until one gets nothing (the others would get nothing either, or little).
        for _ in 0..self.nodes[ni].hungry.len() {
            let Some(h) = self.nodes[ni].hungry.pop_front() else {
                break;
            };
            self.halves[h as usize].hungry = false;
            if self.refill(h) == 0 && self.halves[h as usize].hungry {
                break;
            }
        }
    }

    fn leave(&mut self, n: u32) {
        let ni = n as usize;
        if self.nodes[ni].status == Status::Left {
            return;
        }
        let was_alive = self.nodes[ni].status == Status::Alive;
        if self.nodes[ni].done_at.is_none() {
            self.nodes[ni].failed = true;
            self.remaining -= 1;
        }
        if was_alive {
            for i in 0..self.nodes[ni].conns.len() {
                let c = self.nodes[ni].conns[i];
                if self.conns[c as usize].open && !self.conns[c as usize].closing {
                    self.conns[c as usize].closing = true;
                    let at = self.ctrl_at(n, c);
                    self.q.push(at, Ev::Gone(c, n));
                }
            }
        }
        let node = &mut self.nodes[ni];
        node.status = Status::Left;
        node.left_at = self.now;
        node.ring.clear();
    }

    fn gone(&mut self, c: u32, x: u32) {
        if !self.conns[c as usize].open {
            return;
        }
        self.conns[c as usize].open = false;
        let conn = &self.conns[c as usize];
        let y = if conn.a == x { conn.b } else { conn.a };
        let h_in = self.half_from(c, x);
        let h_out = h_in ^ 1;
        self.halves[h_out as usize].queue.clear();
        let half = &self.halves[h_in as usize];
        let node = &mut self.nodes[y as usize];
        if half.known_all || half.wanted > 0 {
            node.sources -= 1;
        }
        if let Some(picker) = &mut node.picker {
            picker.peer_left(PeerKey(u64::from(h_in)), &half.known, half.known_all);
        }
        if let Some(spread) = &mut node.spread {
            spread.peer_left(PeerKey(u64::from(h_out)));
            node.peers_changed = self.now;
        }
        if node.status != Status::Alive {
            return;
        }
        // Its requests went back to the picker: the other connections may take them.
        for i in 0..self.nodes[y as usize].conns.len() {
            let oc = self.nodes[y as usize].conns[i];
            if self.conns[oc as usize].open {
                let other = {
                    let k = &self.conns[oc as usize];
                    if k.a == y {
                        k.b
                    } else {
                        k.a
                    }
                };
                let h = self.half_from(oc, other);
                self.refill(h);
            }
        }
    }

    fn tick(&mut self, n: u32) {
        let ni = n as usize;
        if self.nodes[ni].status != Status::Alive || self.nodes[ni].complete() {
            return;
        }
        for i in 0..self.nodes[ni].conns.len() {
            let c = self.nodes[ni].conns[i];
            if !self.conns[c as usize].open {
                continue;
            }
            let other = {
                let k = &self.conns[c as usize];
                if k.a == n {
                    k.b
                } else {
                    k.a
                }
            };
            let h = self.half_from(c, other);
            self.halves[h as usize].pipe.tick(self.now);
            self.refill(h);
        }
        self.q.push(self.now + SEC, Ev::Tick(n));
    }

    /// The seed's ticker: the spreader's stall check, the alone rule, and (every second,
    /// as each connection's reader tick does) a spreading step per peer.
    fn seed_tick(&mut self, n: u32) {
        let ni = n as usize;
        if self.nodes[ni].status != Status::Alive {
            return;
        }
        let now = self.instant();
        let Some(spread) = &mut self.nodes[ni].spread else {
            return;
        };
        spread.tick(now);
        let open: Vec<u32> = self.nodes[ni]
            .conns
            .iter()
            .copied()
            .filter(|&c| self.conns[c as usize].open)
            .collect();
        if open.len() == 1 && self.now.saturating_sub(self.nodes[ni].peers_changed) >= ALONE {
            let h = self.half_from(open[0], n);
            let peer = &self.halves[(h ^ 1) as usize];
            self.shown.clear();
            let spread = self.nodes[ni].spread.as_mut().expect("checked");
            if spread.open_view(
                PeerKey(u64::from(h)),
                &peer.known,
                peer.known_all,
                &mut self.shown,
            ) {
                self.send_shown(n, h, false);
            }
        }
        if (self.now / SEED_TICK) % 2 == 0 {
            for c in open {
                let h = self.half_from(c, n);
                self.spread_step(n, h);
            }
        }
        if self.nodes[ni].spread.is_some() {
            self.q.push(self.now + SEED_TICK, Ev::SeedTick(n));
        }
    }

    /// The engine's `spread_step`: show peer `h`'s receiver more pieces, or, once every piece
    /// has gone out, show everyone everything and stop spreading.
    fn spread_step(&mut self, s: u32, h: u32) {
        let now = self.instant();
        let si = s as usize;
        let Some(spread) = &mut self.nodes[si].spread else {
            return;
        };
        if !spread.is_done() {
            let peer = &self.halves[(h ^ 1) as usize];
            self.shown.clear();
            spread.top_up(
                PeerKey(u64::from(h)),
                &peer.known,
                peer.known_all,
                now,
                &mut self.shown,
            );
            if !self.shown.is_empty() {
                self.send_shown(s, h, true);
            }
            return;
        }
        for i in 0..self.nodes[si].conns.len() {
            let c = self.nodes[si].conns[i];
            if !self.conns[c as usize].open {
                continue;
            }
            let hh = self.half_from(c, s);
            let peer = &self.halves[(hh ^ 1) as usize];
            self.shown.clear();
            if let Some(spread) = &mut self.nodes[si].spread {
                spread.unshown(
                    PeerKey(u64::from(hh)),
                    &peer.known,
                    peer.known_all,
                    &mut self.shown,
                );
            }
            if !self.shown.is_empty() {
                self.send_shown(s, hh, false);
            }
        }
        self.spread_done = Some(self.now);
        self.nodes[si].spread = None;
    }

    /// Sends the pieces in `self.shown` as HAVEs from `s` on half `h`.
    fn send_shown(&mut self, s: u32, h: u32, suggest: bool) {
        self.nodes[s as usize].ctrl += self.shown.len() as u64;
        let at = self.ctrl_at(s, h / 2);
        let pieces: Box<[u32]> = self.shown.iter().map(|p| p.get()).collect();
        self.q.push(at, Ev::Haves(h, pieces, suggest));
    }
}
