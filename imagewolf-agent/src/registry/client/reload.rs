//! `--registry-auth-file` followed as it changes: Kubernetes updates a mounted pull secret in
//! place (an atomic symlink swap) when it is rotated, and an agent that kept the old
//! credentials would fail every pull until restarted.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::RegistryHttp;
use crate::registry::auth::CredentialStore;

/// How often the file is looked at (a `stat`; read again only when it changed).
pub const AUTH_FILE_CHECK: Duration = Duration::from_secs(10);

/// What identifies one version of the file: modification time, length, inode.
type Stamp = (Option<SystemTime>, u64, u64);

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len(), m.ino()))
}

/// Re-reads `path` into `http`'s credentials whenever it changes, checking every `every`,
/// until `shutdown` turns true. A file that cannot be read or parsed keeps the credentials
/// in use (and is logged); the new ones are used from the next request.
pub fn spawn_auth_file_reload(
    http: RegistryHttp,
    path: PathBuf,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // The version loaded at start (taken now: a change before the task first runs counts).
    let mut seen = stamp(&path);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            let read = path.clone();
            let parsed = tokio::task::spawn_blocking(move || CredentialStore::read_file(&read))
                .await
                .unwrap_or_else(|e| Err(format!("reading task: {e}")));
            match parsed {
                Ok((store, warnings)) => {
                    for w in warnings {
                        tracing::warn!("--registry-auth-file: {w}");
                    }
                    tracing::info!(registries = ?store.hosts(), "registry credentials reloaded (--registry-auth-file changed)");
                    http.replace_credentials(store);
                }
                Err(e) => tracing::warn!(
                    "--registry-auth-file changed but cannot be used ({e}); keeping the credentials loaded before"
                ),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_json(host: &str) -> String {
        // user:pass
        format!(r#"{{"auths": {{"{host}": {{"auth": "dXNlcjpwYXNz"}}}}}}"#)
    }

    async fn wait_hosts(http: &RegistryHttp, want: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let store = http.credentials();
            if store.hosts() == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "credentials for {:?}, want {want:?}",
                store.hosts()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_rotated_file_is_used_and_a_broken_one_keeps_the_last_good_credentials() {
        let dir = std::env::temp_dir().join(format!("iw-auth-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, auth_json("a.example")).unwrap();
        let (store, _) = CredentialStore::read_file(&path).unwrap();
        let http = RegistryHttp::with_options(super::super::ClientOptions {
            credentials: store,
            ..Default::default()
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        spawn_auth_file_reload(
            http.clone(),
            path.clone(),
            Duration::from_millis(20),
            stopped,
        );

        // Rotated the way Kubernetes does it: a new file renamed over the old one.
        let next = dir.join("config.json.new");
        std::fs::write(&next, auth_json("b.example:5000")).unwrap();
        std::fs::rename(&next, &path).unwrap();
        wait_hosts(&http, &["b.example:5000"]).await;

        // Broken: the credentials in use stay.
        std::fs::write(&next, "{not json").unwrap();
        std::fs::rename(&next, &path).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(http.credentials().hosts(), ["b.example:5000"]);

        // Fixed again: taken.
        std::fs::write(&next, auth_json("c.example")).unwrap();
        std::fs::rename(&next, &path).unwrap();
        wait_hosts(&http, &["c.example"]).await;
        stop.send_replace(true);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
