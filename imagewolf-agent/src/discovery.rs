//! Finding the other agents: `dns:NAME[:PORT]` re-resolved every few seconds (swarm's
//! `tasks.NAME`, a Kubernetes headless Service, or /etc/hosts in tests), or a static list.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::PeerSpec;

/// Resolves `spec` to the agents' HTTP API addresses, sorted and deduplicated. A name that
/// does not resolve contributes nothing (it may be a node that is not up yet).
pub async fn resolve(spec: &PeerSpec) -> Vec<SocketAddr> {
    let mut found = BTreeSet::new();
    match spec {
        PeerSpec::Dns { name, port } => {
            if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), *port)).await {
                found.extend(addrs);
            }
        }
        PeerSpec::Static(list) => {
            for entry in list {
                if let Ok(addrs) = tokio::net::lookup_host(entry.as_str()).await {
                    found.extend(addrs);
                }
            }
        }
    }
    found.into_iter().collect()
}

/// Resolves `spec` now and then every `interval` until `shutdown`; the receiver always holds
/// the latest set (changes only when the set changes).
pub async fn spawn(
    spec: PeerSpec,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<Vec<SocketAddr>> {
    let (tx, rx) = watch::channel(resolve(&spec).await);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let now = resolve(&spec).await;
            tx.send_if_modified(|old| {
                if *old != now {
                    tracing::info!(agents = now.len(), "peer agents changed: {now:?}");
                    *old = now;
                    true
                } else {
                    false
                }
            });
        }
    });
    rx
}

/// The local address other agents can reach us at: the source address the kernel picks for
/// a route to the first known agent, else for a route into 10.0.0.0/8, else loopback. Uses
/// an unconnected-then-connected UDP socket: `connect` on UDP sends no packet.
pub fn detect_advertise_addr(agents: &[SocketAddr]) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, UdpSocket};
    let probe = |target: SocketAddr| -> Option<IpAddr> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        socket.connect(target).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_unspecified()).then_some(ip)
    };
    agents
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .find_map(|a| probe(*a))
        .or_else(|| probe(SocketAddr::from(([10, 255, 255, 254], 9))))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_and_dns_specs_resolve() {
        let spec: PeerSpec = "static:127.0.0.1:8000,127.0.0.1:8001,127.0.0.1:8000"
            .parse()
            .unwrap();
        let addrs = resolve(&spec).await;
        assert_eq!(
            addrs,
            vec![
                "127.0.0.1:8000".parse().unwrap(),
                "127.0.0.1:8001".parse().unwrap()
            ]
        );
        let dns = PeerSpec::Dns {
            name: "localhost".into(),
            port: 8123,
        };
        assert!(resolve(&dns)
            .await
            .iter()
            .all(|a| a.port() == 8123 && a.ip().is_loopback()));
        let missing = PeerSpec::Dns {
            name: "no-such-host.invalid".into(),
            port: 1,
        };
        assert!(resolve(&missing).await.is_empty());
    }
}
