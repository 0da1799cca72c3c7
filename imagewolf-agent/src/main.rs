//! `imagewolf-agent`: the node agent binary. See `imagewolf-agent --help`.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use imagewolf_agent::allowlist::Allowlist;
use imagewolf_agent::api::{self, AgentApi, ApiConfig, PushOutcome};
use imagewolf_agent::config::{AgentConfig, LogFormat, Runtime};
use imagewolf_agent::distributor::{
    mirror::MirrorConfig, BlobPath, Distributor, DistributorApi, DistributorConfig, RetryPolicy,
    DEFAULT_STALL_TIMEOUT,
};
use imagewolf_agent::loader::{ImageLoader, KeepTarball};
use imagewolf_agent::notification::PushEvent;
use imagewolf_agent::registry::{
    ClientOptions, CredentialStore, FallbackSource, HostPolicy, RegistryHttp, RegistrySource,
    TlsSettings,
};
use imagewolf_agent::source::ImageSource;
use imagewolf_agent::{containerd, discovery, docker, endpoint, poll, store};

/// Pause before a polled push the distributor was too busy for is offered again.
const POLLED_BUSY_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    imagewolf_agent::memory::tune_allocator();
    let config = AgentConfig::parse();
    init_logging(config.log_format);
    if let Err(e) = config.validate() {
        tracing::error!("{e}");
        anyhow::bail!(e);
    }
    if config.insecure_no_cluster_secret {
        tracing::warn!(
            "INSECURE: running without a cluster secret (--insecure-no-cluster-secret): any \
             host that reaches the API port can make this node download and load images"
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data dir {}", config.data_dir.display()))?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);

    let agents = discovery::spawn(
        config.peers.clone(),
        config.resolve_interval(),
        shutdown_rx.clone(),
    )
    .await;
    let advertise = config
        .advertise_addr
        .unwrap_or_else(|| discovery::detect_advertise_addr(&agents.borrow()));
    // One registry client for every source and the poller: connections, the scheme each
    // host speaks and tokens are shared.
    let http = registry_client(&config)?;
    if let Some(path) = &config.registry_auth_file {
        imagewolf_agent::registry::client::spawn_auth_file_reload(
            http.clone(),
            path.clone(),
            imagewolf_agent::registry::client::AUTH_FILE_CHECK,
            shutdown_rx.clone(),
        );
    }
    let (source, loader): (Arc<dyn ImageSource>, Arc<dyn ImageLoader>) = match config.runtime {
        Runtime::Docker => {
            let docker = Arc::new(
                docker::Docker::connect(&config.docker_host)
                    .await
                    .with_context(|| format!("connecting to Docker at {}", config.docker_host))?,
            );
            // The registry API first (seeding starts while blobs arrive); Docker for what
            // it cannot do (credentials or a CA only Docker has, unsupported media types).
            let source = FallbackSource::new(
                RegistrySource::new().with_client(http.clone()),
                docker.clone(),
            );
            (Arc::new(source), docker)
        }
        Runtime::Containerd => {
            let containerd = containerd::Containerd::connect(containerd::ContainerdConfig {
                ctr: config.containerd_ctr.clone(),
                address: config.containerd_address.clone(),
                namespace: config.containerd_namespace.clone(),
            })
            .await
            .with_context(|| {
                format!(
                    "connecting to containerd at {}",
                    config.containerd_address.display()
                )
            })?
            // The hosts.toml files that make containerd pull through this agent's endpoint.
            .with_hosts_dir(config.data_dir.join("containerd-hosts"));
            // Originates through the registry API (https, credentials): no Docker needed.
            let source = RegistrySource::new().with_client(http.clone());
            (Arc::new(source), Arc::new(containerd))
        }
        Runtime::None => (
            // No runtime, yet this node can originate: the registry API needs none.
            Arc::new(RegistrySource::new().with_client(http.clone())),
            Arc::new(KeepTarball::new(config.data_dir.join("loaded"))?),
        ),
    };
    let allow = Allowlist::new(config.allow.clone());
    if allow.is_restricted() {
        let patterns: Vec<String> = allow.patterns().iter().map(ToString::to_string).collect();
        tracing::info!(?patterns, "only these images are distributed (--allow)");
        for target in &config.poll {
            if !allow.allows_name(&target.registry, &target.repository) {
                tracing::warn!(%target, "--poll target matches no --allow pattern: its pushes will be refused");
            }
        }
    } else {
        tracing::warn!("no --allow: images from any registry and repository are distributed; set --allow in production");
    }
    let listener =
        api::bind(config.listen).with_context(|| format!("listening on {}", config.listen))?;
    let distributor = Distributor::start(
        DistributorConfig {
            data_dir: config.data_dir.clone(),
            advertise,
            api_port: listener.local_addr()?.port(),
            bt_listen: config.bt_listen,
            seed_time: config.seed_time(),
            cluster_secret: config.cluster_secret.clone().map(String::into_bytes),
            allow: allow.clone(),
            max_torrents: usize::from(config.max_torrents),
            retry: RetryPolicy::default(),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        },
        source,
        loader,
        agents.clone(),
    )
    .await?;
    if config.blobs() {
        start_blob_path(&config, &distributor, http.clone(), shutdown_rx.clone()).await?;
    }
    tracing::info!(
        api = %config.listen,
        bittorrent = %config.bt_listen,
        %advertise,
        agents = agents.borrow().len(),
        "imagewolf-agent ready"
    );
    let api_config = ApiConfig {
        registry_override: config.registry.clone(),
        hub_registry: config.hub_registry.clone(),
        max_body: api::DEFAULT_MAX_BODY,
        webhook_token: config.webhook_token.clone(),
        cluster_key: config
            .cluster_secret
            .as_deref()
            .map(|s| imagewolf_agent::auth::ClusterKey::new(s.as_bytes())),
    };
    if !config.poll.is_empty() {
        spawn_poller(
            &config,
            http.clone(),
            advertise,
            agents.clone(),
            Arc::clone(&distributor),
            shutdown_rx.clone(),
        );
    }
    let server = tokio::spawn(api::serve(
        listener,
        Arc::new(DistributorApi(Arc::clone(&distributor))) as Arc<dyn AgentApi>,
        api_config,
        shutdown_rx,
    ));

    // Freed memory goes back to the system (see `memory`): RSS follows what is in use.
    let trimmer = imagewolf_agent::memory::spawn_trimmer();

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown_tx.send_replace(true);
    trimmer.abort();
    let _ = server.await;
    distributor.shutdown().await;
    Ok(())
}

/// The hosts the registry client reaches whatever their addresses: those `--allow` names
/// literally and those the operator configured (`--registry`, `--hub-registry`, `--poll`).
/// Any other registry named by a notification may not be loopback, link-local, metadata...
fn host_policy(config: &AgentConfig) -> HostPolicy {
    HostPolicy::from_allowlist(&Allowlist::new(config.allow.clone())).and_naming(
        config
            .registry
            .iter()
            .chain([&config.hub_registry])
            .chain(config.poll.iter().map(|t| &t.registry)),
    )
}

/// The agent's registry client: the host policy, the TLS roots (`--registry-ca`), the
/// plain-http hosts (`--insecure-registry`, `http://` poll targets; logged loudly) and the
/// credentials (`--registry-auth-file`; hosts logged, never secrets). A bad CA or
/// credentials file stops the agent at start.
fn registry_client(config: &AgentConfig) -> anyhow::Result<RegistryHttp> {
    let tls = match &config.registry_ca {
        Some(path) => {
            TlsSettings::with_ca_file(path).map_err(|e| anyhow::anyhow!("--registry-ca: {e}"))?
        }
        None => TlsSettings::platform(),
    };
    let roots = tls.summary();
    tracing::info!(
        platform = roots.platform,
        builtin = roots.builtin,
        registry_ca = roots.extra,
        "registry TLS roots"
    );
    let credentials = match &config.registry_auth_file {
        Some(path) => {
            let (store, warnings) = CredentialStore::read_file(path)
                .map_err(|e| anyhow::anyhow!("--registry-auth-file: {e}"))?;
            for w in warnings {
                tracing::warn!("--registry-auth-file: {w}");
            }
            tracing::info!(registries = ?store.hosts(), "registry credentials loaded");
            store
        }
        None => CredentialStore::empty(),
    };
    let mut plain_http = Vec::new();
    for host in &config.insecure_registry {
        let host = host.trim();
        if host.is_empty() {
            continue;
        }
        if host.contains(['/', '@', ' ']) {
            anyhow::bail!("--insecure-registry {host:?}: expected HOST[:PORT], as in image names");
        }
        plain_http.push(host.to_owned());
    }
    plain_http.extend(poll::plain_http_hosts(&config.poll));
    if !plain_http.is_empty() {
        tracing::warn!(hosts = ?plain_http, "INSECURE: these registries are read over plain http, without TLS (--insecure-registry, http:// --poll targets): credentials and images cross the network unencrypted");
    }
    Ok(RegistryHttp::with_options(ClientOptions {
        policy: host_policy(config),
        tls,
        plain_http,
        credentials,
    }))
}

/// `--distribution blobs`: the node's store and its registry endpoint.
async fn start_blob_path(
    config: &AgentConfig,
    distributor: &Arc<Distributor>,
    http: RegistryHttp,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let dir = config.data_dir.join("store");
    let store = store::Store::open(&dir, config.cache_size)
        .with_context(|| format!("opening the blob store in {}", dir.display()))?;
    let listener = tokio::net::TcpListener::bind(config.endpoint_listen)
        .await
        .with_context(|| format!("endpoint: listening on {}", config.endpoint_listen))?;
    let bound = listener.local_addr()?;
    let address = config.endpoint_address.clone().unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            format!("127.0.0.1:{}", bound.port())
        } else {
            bound.to_string()
        }
    });
    if config.runtime == Runtime::None {
        tracing::warn!("--distribution blobs with --runtime none: images stay in the store and its endpoint; nothing loads them");
    }
    if !bound.ip().is_loopback() {
        tracing::warn!(%bound, "the registry endpoint listens beyond loopback: anyone who reaches it can read every image in this node's store");
    }
    let platform = config
        .platform
        .unwrap_or_else(imagewolf_agent::registry::manifest::host_platform);
    let path = BlobPath::new(
        store,
        RegistrySource::for_platform(platform).with_client(http),
        address.clone(),
    )
    .with_platforms(platform, &config.platforms);
    let path = if config.mirror {
        tracing::info!(hub_registry = %config.hub_registry, "mirror mode: the endpoint also answers pulls nobody announced (--mirror off to stop it)");
        path.with_mirror(MirrorConfig {
            hub_registry: config.hub_registry.clone(),
        })
    } else {
        path
    };
    let content = distributor.enable_blobs(path);
    tracing::info!(%bound, runtime_pulls_from = %address, cache_size = config.cache_size, "registry-native distribution: store and endpoint ready");
    tokio::spawn(endpoint::serve(
        listener,
        content,
        endpoint::EndpointConfig::default(),
        shutdown,
    ));
    Ok(())
}

/// `--poll`: new digests go through the same path as registry notifications. Only the agent
/// with the lowest address among those it knows polls (see [`poll`]).
fn spawn_poller(
    config: &AgentConfig,
    http: RegistryHttp,
    advertise: std::net::IpAddr,
    agents: tokio::sync::watch::Receiver<Vec<std::net::SocketAddr>>,
    distributor: Arc<Distributor>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let targets: Vec<String> = config.poll.iter().map(ToString::to_string).collect();
    tracing::info!(?targets, every = ?config.poll_interval(), "polling mode");
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let should_poll = move || agents.borrow().iter().all(|a| advertise <= a.ip());
    tokio::spawn(poll::run(
        poll::Poller::with_client(config.poll.clone(), http),
        config.poll_interval(),
        should_poll,
        tx,
        shutdown,
    ));
    let api = DistributorApi(distributor);
    tokio::spawn(async move {
        while let Some(image) = rx.recv().await {
            loop {
                let outcome = api.on_push(PushEvent {
                    image: image.clone(),
                    event_id: None,
                });
                // Too busy: keep the push (as a registry would) and try again shortly; the
                // poller waits meanwhile once its channel is full.
                if matches!(outcome, PushOutcome::Busy(_)) {
                    tracing::warn!(%image, ?outcome, "polled push deferred");
                    tokio::time::sleep(POLLED_BUSY_RETRY).await;
                    continue;
                }
                tracing::info!(%image, ?outcome, "polled push");
                break;
            }
        }
    });
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,imagewolf_bt=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
