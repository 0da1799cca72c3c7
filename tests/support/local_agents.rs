//! Several real agents in one process on loopback, each with its own HTTP API, BitTorrent
//! port and data dir, finding each other through a static peer list (`--runtime none`: a
//! loaded image is a verified tarball in `DATA_DIR/loaded/`). For the demo and the agent
//! flow tests; the multi-node tests run agent processes in network namespaces instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imagewolf_agent::allowlist::Allowlist;
use imagewolf_agent::api::{self, AgentApi, ApiConfig};
use imagewolf_agent::config::PeerSpec;
use imagewolf_agent::discovery;
use imagewolf_agent::distributor::mirror::MirrorConfig;
use imagewolf_agent::distributor::{
    BlobPath, Distributor, DistributorApi, DistributorConfig, RetryPolicy, DEFAULT_STALL_TIMEOUT,
};
use imagewolf_agent::loader::{ImageLoader, KeepTarball};
use imagewolf_agent::registry::manifest::Platform;
use imagewolf_agent::registry::{HostPolicy, RegistrySource};
use imagewolf_agent::source::{ImageSource, NoSource};
use imagewolf_agent::store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The cluster secret of [`LocalAgents`] unless a test sets another (agents refuse to run
/// without one outside tests; tests run with one so the authenticated paths are the ones
/// exercised).
pub const TEST_CLUSTER_SECRET: &[u8] = b"imagewolf-local-agents-secret";

/// One in-process agent.
pub struct LocalAgent {
    /// Its HTTP API address.
    pub api: SocketAddr,
    /// Its distributor.
    pub distributor: Arc<Distributor>,
    /// Its data dir (`loaded/` holds what it "loaded").
    pub data_dir: PathBuf,
}

/// A set of in-process agents that know each other's API addresses.
pub struct LocalAgents {
    /// The agents, in order.
    pub agents: Vec<LocalAgent>,
    peers: PeerSpec,
    shutdown: watch::Sender<bool>,
    root: PathBuf,
    /// Cluster secret given to agents started from now on (signed announcements).
    pub cluster_secret: Option<Vec<u8>>,
    /// Webhook token required by agents started from now on.
    pub webhook_token: Option<String>,
    /// `--allow` of agents started from now on (default: everything).
    pub allow: Allowlist,
    /// `--max-torrents` of agents started from now on (default 16).
    pub max_torrents: usize,
    /// `--seed-seconds` of agents started from now on (default 600 s).
    pub seed_time: Duration,
    /// Pull and load retry backoff of agents started from now on.
    pub retry: RetryPolicy,
    /// Stall timeout of downloads of agents started from now on (default 120 s).
    pub stall_timeout: Duration,
    /// The hosts the registry sources of [`LocalAgents::enable_blobs`] may reach though
    /// their addresses would be refused (a test registry on 127.0.0.1), as `--allow` naming
    /// them does for the binary. Default: none (strict).
    pub registry_policy: HostPolicy,
}

impl LocalAgents {
    /// Starts `sources.len()` agents under `root` (one data dir each); agent `i` pulls with
    /// `sources[i]` (None: it cannot pull, it only receives). `extra_api_ports` reserves API
    /// addresses for agents started later with [`LocalAgents::start_late`], so the early
    /// ones list them as peers from the start, as DNS would.
    pub async fn start(
        root: PathBuf,
        sources: Vec<Option<Arc<dyn ImageSource>>>,
        extra: usize,
    ) -> std::io::Result<(Self, Vec<TcpListener>)> {
        let mut listeners = Vec::new();
        for _ in 0..sources.len() + extra {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let apis: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<_, _>>()?;
        let peers = PeerSpec::Static(apis.iter().map(|a| a.to_string()).collect());
        let (shutdown, _) = watch::channel(false);
        let mut this = Self {
            agents: Vec::new(),
            peers,
            shutdown,
            root,
            cluster_secret: Some(TEST_CLUSTER_SECRET.to_vec()),
            webhook_token: None,
            allow: Allowlist::allow_all(),
            max_torrents: 16,
            seed_time: Duration::from_secs(600),
            retry: RetryPolicy::default(),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            registry_policy: HostPolicy::strict(),
        };
        let late = listeners.split_off(sources.len());
        for (listener, source) in listeners.into_iter().zip(sources) {
            this.start_late(listener, source).await?;
        }
        Ok((this, late))
    }

    /// Like [`LocalAgents::start`], every agent sharing `secret` and requiring `token` on
    /// its webhooks.
    pub async fn start_secured(
        root: PathBuf,
        sources: Vec<Option<Arc<dyn ImageSource>>>,
        secret: &[u8],
        token: &str,
    ) -> std::io::Result<Self> {
        let (mut this, mut listeners) = Self::start(root, Vec::new(), sources.len()).await?;
        this.cluster_secret = Some(secret.to_vec());
        this.webhook_token = Some(token.to_owned());
        listeners.reverse();
        for source in sources {
            let listener = listeners.pop().expect("one listener per source");
            this.start_late(listener, source).await?;
        }
        Ok(this)
    }

    /// Two agents, an origin pulling with `source` and a node that only receives, both set
    /// up by `configure` before they start (secret, allowlist, slots...).
    pub async fn origin_and_node(
        root: PathBuf,
        source: Arc<dyn ImageSource>,
        configure: impl FnOnce(&mut LocalAgents),
    ) -> std::io::Result<Self> {
        let (mut agents, mut listeners) = Self::start(root, vec![], 2).await?;
        configure(&mut agents);
        listeners.reverse();
        for source in [Some(source), None] {
            let listener = listeners.pop().expect("two listeners reserved");
            agents.start_late(listener, source).await?;
        }
        Ok(agents)
    }

    /// Starts one more agent on a listener reserved by [`LocalAgents::start`].
    pub async fn start_late(
        &mut self,
        listener: TcpListener,
        source: Option<Arc<dyn ImageSource>>,
    ) -> std::io::Result<&LocalAgent> {
        self.start_late_with_loader(listener, source, None).await
    }

    /// Like [`LocalAgents::start_late`], loading into `loader` (e.g. a real dockerd) instead
    /// of keeping tarballs in `DATA_DIR/loaded/` (`None`).
    pub async fn start_late_with_loader(
        &mut self,
        listener: TcpListener,
        source: Option<Arc<dyn ImageSource>>,
        loader: Option<Arc<dyn ImageLoader>>,
    ) -> std::io::Result<&LocalAgent> {
        let api_addr = listener.local_addr()?;
        let data_dir = self.root.join(format!("agent-{}", api_addr.port()));
        let agents = discovery::spawn(
            self.peers.clone(),
            Duration::from_secs(5),
            self.shutdown.subscribe(),
        )
        .await;
        let loader: Arc<dyn ImageLoader> = match loader {
            Some(loader) => loader,
            None => Arc::new(KeepTarball::new(data_dir.join("loaded"))?),
        };
        let distributor = Distributor::start(
            DistributorConfig {
                data_dir: data_dir.clone(),
                advertise: api_addr.ip(),
                api_port: api_addr.port(),
                bt_listen: SocketAddr::new(api_addr.ip(), 0),
                seed_time: self.seed_time,
                cluster_secret: self.cluster_secret.clone(),
                allow: self.allow.clone(),
                max_torrents: self.max_torrents,
                retry: self.retry,
                stall_timeout: self.stall_timeout,
            },
            source.unwrap_or_else(|| Arc::new(NoSource)),
            loader,
            agents,
        )
        .await
        .map_err(std::io::Error::other)?;
        tokio::spawn(api::serve(
            listener,
            Arc::new(DistributorApi(Arc::clone(&distributor))) as Arc<dyn AgentApi>,
            ApiConfig {
                registry_override: None,
                hub_registry: "docker.io".into(),
                max_body: api::DEFAULT_MAX_BODY,
                webhook_token: self.webhook_token.clone(),
                cluster_key: self
                    .cluster_secret
                    .as_deref()
                    .map(imagewolf_agent::auth::ClusterKey::new),
            },
            self.shutdown.subscribe(),
        ));
        self.agents.push(LocalAgent {
            api: api_addr,
            distributor,
            data_dir,
        });
        Ok(self.agents.last().expect("just pushed"))
    }

    /// Turns on agent `i`'s registry-native path (`--distribution blobs`): a store in its
    /// data dir with `budget` bytes, an endpoint on a free loopback port (returned), this
    /// node's `platform` and, as an origin, `platforms` spread out of indexes.
    pub async fn enable_blobs(
        &self,
        i: usize,
        budget: u64,
        platform: Platform,
        platforms: &[Platform],
    ) -> std::io::Result<SocketAddr> {
        self.enable_store(i, budget, platform, platforms, None)
            .await
    }

    /// [`LocalAgents::enable_blobs`] in mirror mode: agent `i`'s endpoint also answers pulls
    /// nobody announced, Docker Hub being `hub_registry`.
    pub async fn enable_mirror(
        &self,
        i: usize,
        budget: u64,
        hub_registry: &str,
    ) -> std::io::Result<SocketAddr> {
        let platform = imagewolf_agent::registry::manifest::host_platform();
        let mirror = MirrorConfig {
            hub_registry: hub_registry.to_owned(),
        };
        self.enable_store(i, budget, platform, &[], Some(mirror))
            .await
    }

    async fn enable_store(
        &self,
        i: usize,
        budget: u64,
        platform: Platform,
        platforms: &[Platform],
        mirror: Option<MirrorConfig>,
    ) -> std::io::Result<SocketAddr> {
        let agent = &self.agents[i];
        let store =
            Store::open(&agent.data_dir.join("store"), budget).map_err(std::io::Error::other)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = listener.local_addr()?;
        let path = BlobPath::new(
            store,
            RegistrySource::for_platform(platform).with_policy(self.registry_policy.clone()),
            endpoint.to_string(),
        )
        .with_platforms(platform, platforms);
        let path = match mirror {
            Some(config) => path.with_mirror(config),
            None => path,
        };
        let content = agent.distributor.enable_blobs(path);
        tokio::spawn(imagewolf_agent::endpoint::serve(
            listener,
            content,
            imagewolf_agent::endpoint::EndpointConfig::default(),
            self.shutdown.subscribe(),
        ));
        Ok(endpoint)
    }

    /// Stops every agent's API and BitTorrent session.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        for agent in self.agents {
            agent.distributor.shutdown().await;
        }
    }
}

/// A registry (distribution 2.8) notification envelope for a manifest push, as the real
/// registry sends it.
pub fn registry_push_envelope(
    registry: &str,
    repository: &str,
    tag: Option<&str>,
    digest: &str,
    event_id: &str,
) -> String {
    let mut target = serde_json::json!({
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "digest": digest, "size": 1234, "length": 1234,
        "repository": repository,
        "url": format!("http://{registry}/v2/{repository}/manifests/{digest}"),
    });
    if let Some(tag) = tag {
        target["tag"] = serde_json::Value::from(tag);
    }
    serde_json::json!({"events": [{
        "id": event_id, "timestamp": "2026-11-27T00:00:00Z", "action": "push",
        "target": target,
        "request": {"id": "r1", "addr": "127.0.0.1:40000", "host": registry, "method": "PUT", "useragent": "docker/28"},
        "actor": {}, "source": {"addr": "registry:5000", "instanceID": "test"},
    }]})
    .to_string()
}

/// The digests (`sha256:...`) of the committed blobs in the store of the agent with data dir
/// `data_dir` (`--distribution blobs`), sorted; empty when it has no store.
pub fn stored_blobs(data_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(data_dir.join("store/blobs/sha256"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The port of an agent that has not started yet, kept: every connection to it is closed at
/// once (as to a node that is down), and no other socket can take the port meanwhile (an
/// outgoing connection's ephemeral source port could, were it free).
pub struct HeldPort {
    release: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<TcpListener>,
}

impl HeldPort {
    /// Starts closing connections to `listener`.
    pub fn hold(listener: TcpListener) -> HeldPort {
        let (release, mut released) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut released => return listener,
                    accepted = listener.accept() => drop(accepted),
                }
            }
        });
        HeldPort { release, task }
    }

    /// The listener back, for the agent that starts now.
    pub async fn release(self) -> TcpListener {
        let _ = self.release.send(());
        self.task.await.expect("the port holder panicked")
    }
}
