//! The public entry point: a [`Session`] listens for peers and runs any number of torrents.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitvec::prelude::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{broadcast, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::config::SessionConfig;
use crate::picker::Picker;
use crate::rate::UploadLimit;
use crate::torrent::state::TorrentState;
use crate::torrent::{
    AddTorrent, Counters, StartFrom, Torrent, TorrentError, TorrentHandle, TorrentStats,
    TorrentStatus, TorrentTable,
};
use crate::tracker::{TrackerConfig, TrackerServer};
use crate::wire::Handshake;
use crate::{InfoHash, PeerId};

/// Incoming connections allowed to sit in the handshake at once. When one more arrives, a
/// pending one is closed to make room at once (see [`PendingHandshakes`]): the oldest of the
/// source address holding the most. An honest peer sends its handshake right after
/// connecting, so it needs its slot only for a round trip, while connections that never
/// send one can neither pile up (their cost is bounded) nor keep honest peers out (the
/// listener never waits for a slot, so nothing queues behind them in the kernel's backlog).
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Connections the kernel queues for us to accept. We accept as fast as connections come, so
/// only a burst beyond this between two wake-ups of the accept task is dropped by the kernel
/// (those connections retry their SYN a second later).
const LISTEN_BACKLOG: u32 = 1024;

/// A BitTorrent session: one listening socket, one peer id, many torrents.
///
/// Cheap to clone (clones share the session); it runs until [`Session::shutdown`] or until
/// the last clone is dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), imagewolf_bt::Error> {
/// use std::sync::Arc;
/// use imagewolf_bt::{metainfo::TorrentBuilder, storage::MemoryStorage};
/// use imagewolf_bt::{AddTorrent, Session, StartFrom};
///
/// let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
/// let meta = TorrentBuilder::new("example.bin")
///     .build_from_reader(&payload[..], payload.len() as u64, std::io::sink())?;
///
/// // A seed holding the payload...
/// let seed = Session::builder().listen_addr("127.0.0.1:0".parse().unwrap()).build().await?;
/// let storage = Arc::new(MemoryStorage::from_vec(payload.clone()));
/// seed.add_torrent(AddTorrent::new(meta.clone(), storage, StartFrom::Complete)).await?;
///
/// // ...and a downloader pointed at it (each session makes its own peer id).
/// let leech = Session::builder().listen_addr("127.0.0.1:0".parse().unwrap()).build().await?;
/// assert_ne!(seed.peer_id(), leech.peer_id());
/// let out = Arc::new(MemoryStorage::new(meta.total_len()));
/// let add = AddTorrent::new(meta, out.clone(), StartFrom::Empty).with_peers([seed.listen_addr()]);
/// let torrent = leech.add_torrent(add).await?;
/// torrent.wait_complete().await?;
/// assert_eq!(out.to_vec(), payload);
///
/// leech.shutdown().await;
/// seed.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    /// Stops the listener when the last clone goes.
    _accept: Arc<AcceptTask>,
}

struct Inner {
    config: Arc<SessionConfig>,
    listen_addr: SocketAddr,
    torrents: TorrentTable,
    hashing: Arc<Semaphore>,
    /// Piece data every torrent's writers may send (unlimited unless set).
    upload_limit: Arc<UploadLimit>,
    /// Set by [`Session::shutdown`].
    closed: std::sync::atomic::AtomicBool,
    /// The in-memory tracker run with the session ([`SessionBuilder::tracker`]), if any.
    tracker: Option<TrackerServer>,
}

/// The accept loop's task, aborted (and every torrent told to stop) when the last
/// [`Session`] clone is dropped.
struct AcceptTask {
    task: JoinHandle<()>,
    inner: Arc<Inner>,
}

impl Drop for AcceptTask {
    fn drop(&mut self) {
        self.task.abort();
        // Without an async context we cannot wait for tasks; at least make them all end.
        for torrent in self.inner.table().values() {
            torrent.shutdown.send_replace(true);
        }
    }
}

/// Why a session could not start: now the crate's [`crate::Error`] (`Error::Bind`).
pub type SessionError = crate::Error;

/// Builds a [`Session`]: general-purpose defaults ([`SessionConfig::default`]), or a whole
/// config to start from ([`SessionBuilder::config`], e.g. [`SessionConfig::lan_cluster`]),
/// then the settings most programs change.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), imagewolf_bt::Error> {
/// use imagewolf_bt::{Session, SessionConfig};
/// let session = Session::builder()
///     .config(SessionConfig::lan_cluster())
///     .listen_addr("127.0.0.1:0".parse().unwrap())
///     .build()
///     .await?;
/// assert!(session.config().spread_initial_seed);
/// session.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct SessionBuilder {
    config: SessionConfig,
    tracker: Option<(SocketAddr, TrackerConfig)>,
}

impl SessionBuilder {
    /// Starts from `config` instead of the defaults.
    pub fn config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// Where to accept peer connections (port 0: any free port).
    pub fn listen_addr(mut self, addr: SocketAddr) -> Self {
        self.config.listen_addr = addr;
        self
    }

    /// A fixed peer id (by default each session makes its own).
    pub fn peer_id(mut self, id: PeerId) -> Self {
        self.config.peer_id = id;
        self
    }

    /// The address to announce to trackers (see [`SessionConfig::announce_ip`]).
    pub fn announce_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.config.announce_ip = Some(ip);
        self
    }

    /// Changes any other setting.
    pub fn with(mut self, change: impl FnOnce(&mut SessionConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// Also runs an in-memory HTTP tracker on `addr` (port 0: any free port) for as long as
    /// the session runs, with [`TrackerConfig::default`]. Peers that know only a `.torrent`
    /// or a magnet link then find this session, and each other, through it: put
    /// [`Session::tracker_url`] in the torrents you make. The session lists its own torrents
    /// that name that URL in the tracker the moment they are added, so a peer that announces
    /// right after finds them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), imagewolf_bt::Error> {
    /// use std::sync::Arc;
    /// use imagewolf_bt::{metainfo::TorrentBuilder, storage::MemoryStorage};
    /// use imagewolf_bt::{AddTorrent, Session, StartFrom};
    ///
    /// let localhost = "127.0.0.1:0".parse().unwrap();
    /// let seed = Session::builder().listen_addr(localhost).tracker(localhost).build().await?;
    /// let payload = vec![7u8; 300_000];
    /// let meta = TorrentBuilder::new("shared.bin")
    ///     .announce(seed.tracker_url().unwrap())
    ///     .build_from_reader(&payload[..], payload.len() as u64, std::io::sink())?;
    /// let storage = Arc::new(MemoryStorage::from_vec(payload.clone()));
    /// seed.add_torrent(AddTorrent::new(meta.clone(), storage, StartFrom::Complete)).await?;
    ///
    /// // The downloader is given no peers: it asks the seed's tracker.
    /// let leech = Session::builder().listen_addr(localhost).build().await?;
    /// let out = Arc::new(MemoryStorage::new(meta.total_len()));
    /// let torrent = leech.add_torrent(AddTorrent::new(meta, out.clone(), StartFrom::Empty)).await?;
    /// torrent.wait_complete().await?;
    /// assert_eq!(out.to_vec(), payload);
    /// # leech.shutdown().await;
    /// # seed.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn tracker(self, addr: SocketAddr) -> Self {
        self.tracker_with(addr, TrackerConfig::default())
    }

    /// [`SessionBuilder::tracker`] with other tracker settings.
    pub fn tracker_with(mut self, addr: SocketAddr, config: TrackerConfig) -> Self {
        self.tracker = Some((addr, config));
        self
    }

    /// Binds the listen socket (and the tracker's, if asked for) and starts the session.
    pub async fn build(self) -> Result<Session, crate::Error> {
        let tracker = match self.tracker {
            Some((addr, config)) => Some(
                TrackerServer::bind(addr, config)
                    .await
                    .map_err(|source| crate::Error::Bind { addr, source })?,
            ),
            None => None,
        };
        Session::start(self.config, tracker).await
    }
}

impl Session {
    /// A [`SessionBuilder`] with the general-purpose defaults.
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    /// Binds the listen socket and starts accepting peers. A config whose peer id is
    /// [`PeerId::PER_SESSION`] (the default) gets a fresh one.
    pub async fn new(config: SessionConfig) -> Result<Session, crate::Error> {
        Session::start(config, None).await
    }

    async fn start(
        mut config: SessionConfig,
        tracker: Option<TrackerServer>,
    ) -> Result<Session, crate::Error> {
        if config.peer_id == PeerId::PER_SESSION {
            config.peer_id = PeerId::generate();
        }
        let addr = config.listen_addr;
        let listener = listen(addr).map_err(|source| crate::Error::Bind { addr, source })?;
        let listen_addr = listener
            .local_addr()
            .map_err(|source| crate::Error::Bind { addr, source })?;
        let inner = Arc::new(Inner {
            hashing: Arc::new(Semaphore::new(config.hashing_threads.max(1))),
            config: Arc::new(config),
            listen_addr,
            torrents: Mutex::new(HashMap::new()),
            upload_limit: Arc::default(),
            closed: Default::default(),
            tracker,
        });
        let task = tokio::spawn(accept_loop(Arc::clone(&inner), listener));
        let accept = Arc::new(AcceptTask {
            task,
            inner: Arc::clone(&inner),
        });
        Ok(Session {
            inner,
            _accept: accept,
        })
    }

    /// The address peers connect to (with the real port when 0 was asked for).
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen_addr
    }

    /// Our peer id (made for this session unless the config fixed one).
    pub fn peer_id(&self) -> PeerId {
        self.inner.config.peer_id
    }

    /// The session's settings.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The tracker the session runs ([`SessionBuilder::tracker`]), if any: its address and
    /// how many peers it lists per torrent.
    pub fn tracker(&self) -> Option<&TrackerServer> {
        self.inner.tracker.as_ref()
    }

    /// `http://HOST:PORT/announce` of the session's tracker, as others should reach it: a
    /// tracker on a wildcard address is named by [`SessionConfig::announce_ip`], else by the
    /// session's listen address, else by loopback (set `announce_ip` when peers on other
    /// hosts must use it). `None` when the session runs no tracker.
    pub fn tracker_url(&self) -> Option<String> {
        let tracker = self.inner.tracker.as_ref()?;
        let mut addr = tracker.local_addr();
        if addr.ip().is_unspecified() {
            addr.set_ip(self.reachable_ip(addr.is_ipv4()));
        }
        Some(format!("http://{addr}/announce"))
    }

    /// The address this session is dialled on, for the tracker's own listing: the announce
    /// address, the listen address, or loopback, in that order.
    fn reachable_ip(&self, v4: bool) -> std::net::IpAddr {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let listen = self.inner.listen_addr.ip();
        self.inner
            .config
            .announce_ip
            .unwrap_or(if !listen.is_unspecified() {
                listen
            } else if v4 {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            })
    }

    /// Lists a torrent just added in the session's own tracker at once, when the torrent
    /// names it (its announcer would get there a moment later; a peer announcing in that
    /// moment would find nobody and wait a whole interval).
    fn list_in_own_tracker(&self, torrent: &Torrent) {
        let (Some(tracker), Some(url)) = (&self.inner.tracker, self.tracker_url()) else {
            return;
        };
        if !torrent.metainfo.announce_urls().contains(&url) {
            return;
        }
        let left = torrent.lengths.total_len() - torrent.stats_tx.borrow().have_bytes;
        let ip = self.reachable_ip(tracker.local_addr().is_ipv4());
        tracker.list_local(
            torrent.info_hash,
            self.peer_id(),
            ip,
            torrent.listen_port,
            left,
        );
    }

    /// Caps the piece data all torrents of this session upload together, in bytes per
    /// second (`None` lifts the cap; unlimited is the default). Takes effect at once, also
    /// for connections already open; see [`crate::rate`] for when a cap helps.
    pub fn set_upload_rate(&self, bytes_per_sec: Option<u64>) {
        self.inner.upload_limit.set_rate(bytes_per_sec);
    }

    /// The cap set by [`Session::set_upload_rate`], if any.
    pub fn upload_rate(&self) -> Option<u64> {
        self.inner.upload_limit.rate()
    }

    /// Adds a torrent and starts it: downloading, seeding, or checking first, as
    /// `add.start_from` says. Returns once it runs (a check continues in the background;
    /// follow it with [`TorrentHandle::progress`]).
    pub async fn add_torrent(&self, add: AddTorrent) -> Result<TorrentHandle, crate::Error> {
        let AddTorrent {
            metainfo,
            storage,
            start_from,
            peers,
            use_trackers,
            hold_spread,
        } = add;
        let lengths = metainfo.lengths();
        if storage.len() != lengths.total_len() {
            return Err(TorrentError::StorageSize {
                expected: lengths.total_len(),
                actual: storage.len(),
            });
        }
        let info_hash = metainfo.info_hash();
        let mut picker = match start_from {
            StartFrom::Complete => Picker::with_have(
                lengths,
                &bitvec![u8, Msb0; 1; lengths.num_pieces() as usize],
            ),
            StartFrom::Empty | StartFrom::Check => Picker::new(lengths),
        };
        let budget = crate::torrent::piece_memory_limit(&self.inner.config, lengths);
        picker.set_max_active(
            u32::try_from(budget / u64::from(lengths.piece_len())).unwrap_or(u32::MAX),
        );
        let status = match start_from {
            StartFrom::Complete => TorrentStatus::Seeding,
            StartFrom::Empty => TorrentStatus::Downloading,
            StartFrom::Check => TorrentStatus::Checking,
        };
        let mut state = TorrentState::new(lengths, picker, status.clone());
        state.checking = start_from == StartFrom::Check;
        let spreading = start_from == StartFrom::Complete && self.inner.config.spread_initial_seed;
        if spreading {
            state.spread = Some(crate::picker::SeedSpreader::new(lengths));
            state.spread_held = hold_spread;
        }
        let initial = TorrentStats {
            status,
            num_pieces: lengths.num_pieces(),
            have_pieces: state.picker.have_count(),
            total_len: lengths.total_len(),
            have_bytes: state.have_bytes(),
            downloaded: 0,
            uploaded: 0,
            wasted: 0,
            download_rate: 0.0,
            upload_rate: 0.0,
            peers: 0,
            hash_failures: 0,
        };
        let torrent = Arc::new_cyclic(|this| Torrent {
            info_hash,
            lengths,
            metainfo: Arc::new(metainfo),
            storage,
            config: Arc::clone(&self.inner.config),
            listen_port: self.inner.listen_addr.port(),
            state: Mutex::new(state),
            counters: Counters::default(),
            hashing: Arc::clone(&self.inner.hashing),
            upload_limit: Arc::clone(&self.inner.upload_limit),
            verifying_bytes: Default::default(),
            verify_drained: Notify::new(),
            stats_tx: watch::Sender::new(initial),
            events_tx: broadcast::channel(1024).0,
            shutdown: watch::Sender::new(false),
            wake_ticker: Notify::new(),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
            announcer: Mutex::new(None),
            spreading: spreading.into(),
            this: this.clone(),
        });
        {
            let mut table = self.inner.table();
            if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::Error::SessionClosed);
            }
            if table.contains_key(&info_hash) {
                return Err(TorrentError::Duplicate(info_hash));
            }
            table.insert(info_hash, Arc::clone(&torrent));
        }
        crate::torrent::add_candidates(&torrent, peers);
        torrent.spawn(crate::torrent::ticker_task(Arc::clone(&torrent)));
        if start_from == StartFrom::Check {
            torrent.spawn(crate::torrent::check_task(Arc::clone(&torrent)));
        }
        if use_trackers {
            self.list_in_own_tracker(&torrent);
            crate::torrent::start_trackers(&torrent, self.inner.config.announce_ip);
        }
        Ok(TorrentHandle { torrent })
    }

    /// Fetches the info dict of the torrent a magnet link names from its peers (`x.pe`)
    /// and those its trackers (`tr`) return (BEP 9), checks it against the info-hash, and
    /// returns the torrent, with the link's trackers. Several peers are asked at once;
    /// each is given up after its handshake timeout or 20 s of silence, so this ends.
    pub async fn fetch_metadata(
        &self,
        magnet: &crate::Magnet,
    ) -> Result<crate::metainfo::Metainfo, crate::Error> {
        crate::metadata_fetch::fetch(&self.inner.config, self.inner.listen_addr.port(), magnet)
            .await
    }

    /// Adds a torrent from a magnet link (`magnet:?xt=urn:btih:<hex or base32>&tr=...&x.pe=host:port`):
    /// fetches its info dict from peers ([`Session::fetch_metadata`]), then downloads it
    /// into `dir` as [`AddTorrent::download_to`] does, from the link's peers and trackers.
    ///
    /// ```no_run
    /// # async fn f(session: imagewolf_bt::Session) -> Result<(), imagewolf_bt::Error> {
    /// let link = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&x.pe=10.0.0.2:6881";
    /// let torrent = session.add_magnet(link, "downloads").await?;
    /// torrent.wait_complete().await?;
    /// # Ok(()) }
    /// ```
    pub async fn add_magnet(
        &self,
        link: &str,
        dir: impl AsRef<std::path::Path>,
    ) -> Result<TorrentHandle, crate::Error> {
        let magnet = crate::Magnet::parse(link)?;
        let meta = self.fetch_metadata(&magnet).await?;
        let add = AddTorrent::download_to(meta, dir)?.with_peers(magnet.peers);
        self.add_torrent(add).await
    }

    /// The torrent with this info-hash, if the session runs it.
    pub fn torrent(&self, info_hash: &InfoHash) -> Option<TorrentHandle> {
        self.inner.table().get(info_hash).map(|t| TorrentHandle {
            torrent: Arc::clone(t),
        })
    }

    /// Every torrent in the session.
    pub fn torrents(&self) -> Vec<TorrentHandle> {
        self.inner
            .table()
            .values()
            .map(|t| TorrentHandle {
                torrent: Arc::clone(t),
            })
            .collect()
    }

    /// Stops a torrent and removes it from the session. Its data stays in its storage.
    pub async fn remove_torrent(&self, info_hash: &InfoHash) -> bool {
        let torrent = self.inner.table().remove(info_hash);
        match torrent {
            Some(torrent) => {
                TorrentHandle { torrent }.stop().await;
                true
            }
            None => false,
        }
    }

    /// Stops every torrent (announcing `stopped` to trackers) and the listener, for every
    /// clone of this session. Torrents added afterwards are refused
    /// ([`crate::Error::SessionClosed`]).
    pub async fn shutdown(&self) {
        self._accept.task.abort();
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let torrents: Vec<_> = self.inner.table().drain().map(|(_, t)| t).collect();
        let stops = torrents.into_iter().map(|torrent| async move {
            TorrentHandle { torrent }.stop().await;
        });
        futures::future::join_all(stops).await;
        // After the torrents' `stopped` announces, which may be to this tracker.
        if let Some(tracker) = &self.inner.tracker {
            tracker.shutdown();
        }
    }
}

impl Inner {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<InfoHash, Arc<Torrent>>> {
        self.torrents.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Binds `addr` with a listen backlog of [`LISTEN_BACKLOG`] (tokio's default is 128).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Who an incoming connection is "from" for fairness: its IPv4 address, or the /64 prefix
/// of its IPv6 address (one host usually holds a whole /64, so counting single IPv6
/// addresses would let one host pose as billions of sources).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(std::net::Ipv4Addr),
    V6Prefix(u64),
}

impl Source {
    fn of(addr: SocketAddr) -> Source {
        match addr.ip().to_canonical() {
            std::net::IpAddr::V4(ip) => Source::V4(ip),
            std::net::IpAddr::V6(ip) => Source::V6Prefix((ip.to_bits() >> 64) as u64),
        }
    }
}

/// Incoming connections that have not completed their handshake, by source, oldest first.
///
/// Fair eviction rather than a per-source cap: when [`MAX_PENDING_HANDSHAKES`] are pending
/// and another connection arrives, the oldest pending connection *of the source holding
/// the most* is closed. A flood from one address therefore only ever evicts itself once it
/// holds more slots than anybody else, while many honest peers sharing one address (NAT, or
/// every agent of a loopback test on 127.0.0.1) are not limited at all unless they alone
/// fill every slot, and then the longest-waiting of them, the likeliest to be silent, goes.
#[derive(Debug, Default)]
struct PendingHandshakes {
    by_source: HashMap<Source, VecDeque<tokio::task::AbortHandle>>,
    len: usize,
}

impl PendingHandshakes {
    /// Forgets connections whose handshake task has ended (handed on, failed, timed out).
    fn forget_finished(&mut self) {
        let mut len = 0;
        self.by_source.retain(|_, tasks| {
            tasks.retain(|t| !t.is_finished());
            len += tasks.len();
            !tasks.is_empty()
        });
        self.len = len;
    }

    /// Closes the oldest pending connection of the source holding the most, if every slot
    /// is taken; returns that source.
    fn make_room(&mut self) -> Option<Source> {
        if self.len < MAX_PENDING_HANDSHAKES {
            return None;
        }
        let (&source, tasks) = self.by_source.iter_mut().max_by_key(|(_, t)| t.len())?;
        // Dropping its stream closes the connection. A task past its handshake has no await
        // left before it hands the stream on, so this never cuts a peer.
        tasks.pop_front()?.abort();
        self.len -= 1;
        if tasks.is_empty() {
            self.by_source.remove(&source);
        }
        Some(source)
    }

    fn push(&mut self, source: Source, task: tokio::task::AbortHandle) {
        self.by_source.entry(source).or_default().push_back(task);
        self.len += 1;
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let mut pending = PendingHandshakes::default();
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        pending.forget_finished();
        if let Some(evicted) = pending.make_room() {
            tracing::debug!(%addr, "too many pending handshakes: closed the oldest of {evicted:?}");
        }
        let inner = Arc::clone(&inner);
        let task = tokio::spawn(async move {
            let handshake = read_handshake(stream, inner.config.handshake_timeout).await;
            let (stream, theirs) = match handshake {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::debug!(%addr, "incoming handshake failed: {e}");
                    return;
                }
            };
            let torrent = inner.table().get(&theirs.info_hash).cloned();
            match torrent {
                Some(torrent) if !torrent.is_shutting_down() => {
                    let t = Arc::clone(&torrent);
                    torrent.spawn(crate::peer::accepted(t, stream, theirs));
                }
                _ => {
                    tracing::debug!(%addr, "incoming connection for unknown torrent {}", theirs.info_hash)
                }
            }
        });
        pending.push(Source::of(addr), task.abort_handle());
    }
}

async fn read_handshake(
    mut stream: TcpStream,
    timeout: Duration,
) -> Result<(TcpStream, Handshake), crate::peer::PeerError> {
    let mut buf = [0u8; Handshake::LEN];
    tokio::time::timeout(timeout, async {
        // The first byte tells a plaintext handshake (19, the protocol string's length) from
        // an encrypted one (MSE/PE: a random Diffie-Hellman key), which we do not speak:
        // close at once, so the client retries in plaintext right away.
        stream.read_exact(&mut buf[..1]).await?;
        if buf[0] != Handshake::PROTOCOL_LEN {
            return Err(crate::wire::WireError::BadProtocol.into());
        }
        stream.read_exact(&mut buf[1..]).await?;
        Ok::<_, crate::peer::PeerError>(())
    })
    .await
    .map_err(|_| crate::peer::PeerError::Timeout("handshake"))??;
    Ok((stream, Handshake::decode(&buf)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ip: [u8; 4]) -> Source {
        Source::of(SocketAddr::from((ip, 6881)))
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_oldest_of_the_biggest_source() {
        let (flooder, honest) = (source([127, 0, 0, 2]), source([127, 0, 0, 1]));
        let mut table = PendingHandshakes::default();
        let mut tasks = Vec::new();
        let mut spawn = |table: &mut PendingHandshakes, from: Source| {
            let task = tokio::spawn(futures::future::pending::<()>());
            table.push(from, task.abort_handle());
            tasks.push((from, task));
        };
        spawn(&mut table, honest);
        for _ in 1..MAX_PENDING_HANDSHAKES {
            spawn(&mut table, flooder);
        }
        // Full: the flooder holds the most, so its oldest goes, not the older honest one.
        assert_eq!(table.make_room(), Some(flooder));
        assert_eq!(table.len, MAX_PENDING_HANDSHAKES - 1);
        spawn(&mut table, honest);
        assert_eq!(table.make_room(), Some(flooder));
        spawn(&mut table, flooder);
        // The flooder's first two connections (tasks 1 and 2) were closed, nothing else.
        for (_, task) in &mut tasks[1..3] {
            let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
            assert!(ended
                .expect("an evicted task still runs")
                .is_err_and(|e| e.is_cancelled()));
        }
        assert!(!tasks[0].1.is_finished() && tasks[3..].iter().all(|(_, t)| !t.is_finished()));
        table.forget_finished();
        assert_eq!(table.len, MAX_PENDING_HANDSHAKES);
        // Under the limit nothing is closed.
        tasks[0].1.abort();
        let _ = (&mut tasks[0].1).await;
        table.forget_finished();
        assert_eq!(table.make_room(), None);
        // IPv6 sources are counted by /64, IPv4-mapped addresses as IPv4.
        let a: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8::ffff:2]:2".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        let mapped: SocketAddr = "[::ffff:127.0.0.2]:3".parse().unwrap();
        assert_eq!(Source::of(mapped), flooder);
    }

    #[tokio::test]
    async fn an_encrypted_handshake_is_refused_at_its_first_byte() {
        use tokio::io::AsyncWriteExt;
        let session = Session::new(SessionConfig {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            ..SessionConfig::default()
        })
        .await
        .unwrap();
        let mut stream = TcpStream::connect(session.listen_addr()).await.unwrap();
        // The first byte of an MSE key; a client waiting for our key would sit out the whole
        // handshake timeout if we waited for 68 bytes.
        stream.write_all(&[0x8f]).await.unwrap();
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte))
            .await
            .expect("the connection was not closed at once");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        session.shutdown().await;
    }
}
