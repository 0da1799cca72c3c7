//! `imagewolf-agent`: the node agent binary. See `imagewolf-agent --help`.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use imagewolf_agent::api::{self, AgentApi, ApiConfig};
use imagewolf_agent::config::{AgentConfig, LogFormat, Runtime};
use imagewolf_agent::distributor::{Distributor, DistributorApi, DistributorConfig};
use imagewolf_agent::loader::{ImageLoader, KeepTarball};
use imagewolf_agent::source::{ImageSource, NoSource};
use imagewolf_agent::{discovery, docker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = AgentConfig::parse();
    init_logging(config.log_format);
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
    let (source, loader): (Arc<dyn ImageSource>, Arc<dyn ImageLoader>) = match config.runtime {
        Runtime::Docker => {
            let docker = Arc::new(
                docker::Docker::connect(&config.docker_host)
                    .await
                    .with_context(|| format!("connecting to Docker at {}", config.docker_host))?,
            );
            (docker.clone(), docker)
        }
        Runtime::None => (
            Arc::new(NoSource),
            Arc::new(KeepTarball::new(config.data_dir.join("loaded"))?),
        ),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let distributor = Distributor::start(
        DistributorConfig {
            data_dir: config.data_dir.clone(),
            advertise,
            api_port: listener.local_addr()?.port(),
            bt_listen: config.bt_listen,
            seed_time: config.seed_time(),
            cluster_secret: config.cluster_secret.clone().map(String::into_bytes),
        },
        source,
        loader,
        agents.clone(),
    )
    .await?;
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
    };
    let server = tokio::spawn(api::serve(
        listener,
        Arc::new(DistributorApi(Arc::clone(&distributor))) as Arc<dyn AgentApi>,
        api_config,
        shutdown_rx,
    ));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown_tx.send_replace(true);
    let _ = server.await;
    distributor.shutdown().await;
    Ok(())
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
