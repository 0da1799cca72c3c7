//! A running agent seen through its HTTP API, for tests: its `/stats` records, waiting for an
//! image to reach a state, posting a registry's push notification. All it needs is the API
//! address, so it serves in-process agents ([`crate::local_agents`]) and agent processes in
//! network namespaces alike. Every helper panics on an unexpected answer (a test helper).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::http;
use crate::local_agents::registry_push_envelope;

/// The content type of a registry's notification envelopes.
pub const REGISTRY_EVENTS: &str = "application/vnd.docker.distribution.events.v1+json";

/// An agent-to-agent call (`/v1/...`) as another agent of a cluster sharing `secret` makes
/// it: signed with the request key ([`imagewolf_agent::auth`]); `None` sends it unsigned, as
/// an outsider (or an agent of a cluster run without a secret) would.
pub async fn agent_call(
    api: SocketAddr,
    method: &str,
    path: &str,
    secret: Option<&[u8]>,
    body: &[u8],
) -> http::Reply {
    let header =
        secret.map(|s| imagewolf_agent::auth::ClusterKey::new(s).sign_request(method, path, body));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(header) = &header {
        headers.push((imagewolf_agent::auth::AUTH_HEADER, header.as_str()));
    }
    http::request(api, method, path, &headers, body)
        .await
        .unwrap()
}

/// `GET /stats`: one record per image the agent knows. Panics unless it answers 200 with a
/// JSON list.
pub async fn stats(api: SocketAddr) -> Vec<Value> {
    let reply = http::request(api, "GET", "/stats", &[], b"").await.unwrap();
    assert_eq!(reply.status, 200, "{api}: GET /stats: {}", reply.text());
    serde_json::from_slice(&reply.body).unwrap()
}

/// The `/stats` record of the image pushed as `reference` (the first whose reference starts
/// with it), if the agent has one.
pub async fn image_record(api: SocketAddr, reference: &str) -> Option<Value> {
    stats(api).await.into_iter().find(|i| {
        i["reference"]
            .as_str()
            .is_some_and(|r| r.starts_with(reference))
    })
}

/// Waits (polling `/stats` every 50 ms, up to `timeout`) until `api` reports the image pushed
/// as `reference` in `state`; returns its record. Reaching "failed" on the way fails the test
/// unless `state` is "failed".
pub async fn wait_for_state(
    api: SocketAddr,
    reference: &str,
    state: &str,
    timeout: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = image_record(api, reference).await;
        if let Some(img) = &found {
            if img["state"] == state {
                return img.clone();
            }
            assert!(
                img["state"] != "failed",
                "{api}: {reference} failed: {}",
                img["error"]
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{api}: {reference} not {state} in {timeout:?}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs to `api`'s `/registryNotifications` what `registry` sends when `repository:tag` is
/// pushed with manifest `digest` (a [`registry_push_envelope`] with event id `event_id`).
/// Panics unless the agent answers 200.
pub async fn notify_push(
    api: SocketAddr,
    registry: &str,
    repository: &str,
    tag: &str,
    digest: &str,
    event_id: &str,
) {
    let envelope = registry_push_envelope(registry, repository, Some(tag), digest, event_id);
    let reply = http::request(
        api,
        "POST",
        "/registryNotifications",
        &[("Content-Type", REGISTRY_EVENTS)],
        envelope.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
}
