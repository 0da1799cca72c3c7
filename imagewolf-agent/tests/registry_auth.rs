//! The registry client against a real Debian `docker-registry` run as real registries are:
//! over TLS with a certificate from a CA made here (trusted through `--registry-ca`'s
//! loader), with htpasswd basic auth, and with token auth (a token service signing ES256
//! JWTs the registry verifies). The registry source pulls through each with no Docker
//! anywhere: manifests, configs and every blob are checked byte for byte (SHA-256 against
//! what was pushed), on both the tarball path (the archive) and the blob path
//! (`pull_plan` + `blob_stream`). Negative cases: wrong credentials are a clear error and
//! no blob leaves the registry; a TLS registry whose CA is not given is a certificate error,
//! and the registry never sees a plain-http request.
//!
//! Needs `docker-registry` (Debian); without it the tests fail with the install command,
//! they never skip.

use std::path::Path;

use imagewolf::oci::{Blob, Image};
use imagewolf::secure_registry::{
    push_image_to_storage, RegistryAuth, SecureOptions, SecureRegistry, TestCa,
};
use imagewolf::token_issuer::{IssuerConfig, TokenIssuer};
use imagewolf::TempDir;
use imagewolf_agent::image::ImageRef;
use imagewolf_agent::registry::auth::Credentials;
use imagewolf_agent::registry::client::sha256_digest;
use imagewolf_agent::registry::{
    ClientOptions, CredentialStore, HostPolicy, RegistryError, RegistryHttp, RegistrySource,
    TlsSettings,
};
use tokio::io::AsyncReadExt;

const REPO: &str = "team/secure";
const SERVICE: &str = "imagewolf-test-registry";
const ISSUER: &str = "imagewolf-test-issuer";

/// A two-layer image (distinct random layers).
fn test_image(seed: u64) -> Image {
    let arch = imagewolf_agent::registry::manifest::host_platform()
        .to_string()
        .split('/')
        .nth(1)
        .unwrap_or("amd64")
        .to_owned();
    Image::new(
        "linux",
        &arch,
        None,
        vec![
            Blob::layer("a.bin", 300 << 10, seed),
            Blob::layer("b.bin", 1 << 20, seed + 1),
        ],
    )
}

fn image_ref(registry: &str) -> ImageRef {
    ImageRef {
        registry: registry.into(),
        repository: REPO.into(),
        tag: Some("v1".into()),
        digest: None,
    }
}

struct Setup {
    /// Trust (`None`: the platform's roots only).
    ca_pem: Option<String>,
    /// Hosts on loopback the client may reach.
    named: Vec<String>,
    /// Credentials per registry.
    credentials: Vec<(String, Credentials)>,
}

fn source(setup: Setup) -> RegistrySource {
    let tls = match &setup.ca_pem {
        // As --registry-ca loads it: the platform's roots plus the file.
        Some(pem) => {
            let dir = TempDir::new("ca").unwrap();
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, pem).unwrap();
            TlsSettings::with_ca_file(&path).unwrap()
        }
        None => TlsSettings::platform(),
    };
    RegistrySource::new().with_client(RegistryHttp::with_options(ClientOptions {
        policy: HostPolicy::naming(&setup.named),
        tls,
        plain_http: Vec::new(),
        credentials: CredentialStore::from_entries(setup.credentials),
    }))
}

/// Pulls `registry/REPO:v1` through `source` on both paths and checks every byte against
/// `image`: the manifest's digest, the config (image id), each blob streamed, and the
/// archive's length and layer contents.
async fn pull_and_check(source: &RegistrySource, registry: &str, image: &Image) {
    let r = image_ref(registry);
    // Blob path: the pushed manifest, then each blob, SHA-256 and length checked.
    let plan = source
        .pull_plan(&r)
        .await
        .unwrap_or_else(|e| panic!("pull_plan from {registry}: {e}"));
    assert_eq!(plan.pushed, image.digest, "manifest digest");
    assert_eq!(plan.manifests[0].bytes, image.manifest, "manifest bytes");
    let blobs = plan.blobs();
    assert_eq!(blobs.len(), 3, "config + 2 layers");
    for blob in &blobs {
        let mut stream = source
            .blob_stream(&r, blob)
            .await
            .unwrap_or_else(|e| panic!("blob {}: {e}", blob.digest));
        let mut bytes = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(bytes.len() as u64, blob.size);
        assert_eq!(sha256_digest(&bytes), blob.digest);
        let pushed = image
            .blobs()
            .into_iter()
            .find(|b| b.digest == blob.digest)
            .expect("a pushed blob");
        assert!(bytes == pushed.bytes, "blob {} differs", blob.digest);
    }
    // Tarball path: the archive streamed from the registry's blobs.
    let pulled = source
        .pull_image(&r)
        .await
        .unwrap_or_else(|e| panic!("pull from {registry}: {e}"));
    assert_eq!(pulled.image_id, image.config.digest);
    let mut archive = Vec::new();
    source
        .export_image(&pulled)
        .unwrap()
        .read_to_end(&mut archive)
        .await
        .unwrap();
    assert_eq!(archive.len() as u64, pulled.size_hint);
    let mut found = 0;
    for entry in tar::Archive::new(&archive[..]).entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        if image.layers.iter().any(|l| l.bytes == bytes) {
            found += 1;
        }
    }
    assert_eq!(found, 2, "both layers in the archive, byte for byte");
}

async fn storage_with_image(seed: u64) -> (TempDir, Image) {
    let storage = TempDir::new("secure-storage").unwrap();
    let image = test_image(seed);
    push_image_to_storage(storage.path(), REPO, "v1", &image)
        .await
        .unwrap_or_else(|e| panic!("push: {e}"));
    (storage, image)
}

fn tls_registry(ca: &TestCa, storage: &Path, auth: RegistryAuth) -> SecureRegistry {
    SecureRegistry::start(
        storage,
        &SecureOptions {
            tls: Some(ca.issue(&["127.0.0.1", "localhost"]).unwrap()),
            auth,
        },
    )
    .unwrap_or_else(|e| panic!("registry: {e}"))
}

/// (a) TLS: with the CA, pulled over https; without it, a certificate error, and the
/// registry never sees a request (no plain-http attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_and_without_its_ca() {
    let (storage, image) = storage_with_image(11).await;
    let ca = TestCa::new("ImageWolf test CA").unwrap();
    let registry = tls_registry(&ca, storage.path(), RegistryAuth::None);
    let addr = registry.addr().to_owned();

    // Without the CA first: the client has seen nothing of this host.
    let untrusting = source(Setup {
        ca_pem: None,
        named: vec![addr.clone()],
        credentials: Vec::new(),
    });
    let err = untrusting.pull_image(&image_ref(&addr)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("TLS") && text.contains("certificate") && text.contains("--registry-ca"),
        "{text}"
    );
    assert!(!err.retryable(), "{err:?}");
    let plan_err = untrusting.pull_plan(&image_ref(&addr)).await.unwrap_err();
    assert!(plan_err.to_string().contains("certificate"), "{plan_err}");
    assert_eq!(
        registry.requests_logged(),
        0,
        "the registry answered a request (a plain-http fallback?):\n{}",
        registry.log_text()
    );

    // With the CA: everything arrives, byte for byte.
    let trusting = source(Setup {
        ca_pem: Some(ca.pem()),
        named: vec![addr.clone()],
        credentials: Vec::new(),
    });
    pull_and_check(&trusting, &addr, &image).await;
    assert!(registry.blobs_served() >= 3, "{}", registry.log_text());
}

/// (b) htpasswd (bcrypt) basic auth over TLS: the right credentials pull; wrong ones and
/// none are clear errors, and no blob is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_right_wrong_and_no_credentials() {
    let (storage, image) = storage_with_image(21).await;
    let ca = TestCa::new("ImageWolf test CA").unwrap();
    let registry = tls_registry(
        &ca,
        storage.path(),
        RegistryAuth::Htpasswd(vec![("alice".into(), "correct horse".into())]),
    );
    let addr = registry.addr().to_owned();
    let with = |user: &str, password: &str| {
        source(Setup {
            ca_pem: Some(ca.pem()),
            named: vec![addr.clone()],
            credentials: vec![(addr.clone(), Credentials::new(user, password))],
        })
    };

    let wrong = with("alice", "battery staple");
    let err = wrong.pull_image(&image_ref(&addr)).await.unwrap_err();
    assert!(matches!(err, RegistryError::Failed(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("refused the credentials for") && text.contains(&addr),
        "{text}"
    );
    assert!(
        !text.contains("battery") && !text.contains("alice:"),
        "{text}"
    );
    let err = wrong.pull_plan(&image_ref(&addr)).await.unwrap_err();
    assert!(err.to_string().contains("refused the credentials"), "{err}");

    let anonymous = source(Setup {
        ca_pem: Some(ca.pem()),
        named: vec![addr.clone()],
        credentials: Vec::new(),
    });
    let err = anonymous.pull_image(&image_ref(&addr)).await.unwrap_err();
    // Docker might have credentials of its own: the Docker node's fallback may try.
    assert!(err.wants_fallback(), "{err:?}");
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(registry.blobs_served(), 0, "a blob left the registry");

    pull_and_check(&with("alice", "correct horse"), &addr, &image).await;
    assert!(registry.blobs_served() >= 3);
}

/// (c) Token auth over TLS: the registry's 401 names the realm (the token service, https,
/// same CA); the client gets a JWT with the registry's credentials and pulls; the token is
/// reused (one token request per pull sequence, not one per blob); wrong credentials are a
/// clear error from the token service; none get the registry's 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_registry_right_wrong_and_no_credentials() {
    let (storage, image) = storage_with_image(31).await;
    let ca = TestCa::new("ImageWolf test CA").unwrap();
    let issuer = TokenIssuer::start(
        &ca,
        IssuerConfig {
            issuer: ISSUER.into(),
            users: vec![("bob".into(), "tok-pass".into())],
            anonymous: false,
            lifetime: 300,
        },
    )
    .await
    .unwrap();
    let registry = tls_registry(
        &ca,
        storage.path(),
        RegistryAuth::Token {
            realm: issuer.realm(),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            root_bundle_pem: issuer.root_bundle_pem().to_owned(),
        },
    );
    let addr = registry.addr().to_owned();
    let with = |user: &str, password: &str| {
        source(Setup {
            ca_pem: Some(ca.pem()),
            // The realm is on loopback too: it must be named like any registry host.
            named: vec![addr.clone(), issuer.addr()],
            credentials: vec![(addr.clone(), Credentials::new(user, password))],
        })
    };

    let wrong = with("bob", "not-it");
    let err = wrong.pull_image(&image_ref(&addr)).await.unwrap_err();
    assert!(matches!(err, RegistryError::Failed(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("token service") && text.contains("refused the credentials"),
        "{text}"
    );
    assert!(!text.contains("not-it"), "{text}");

    let anonymous = source(Setup {
        ca_pem: Some(ca.pem()),
        named: vec![addr.clone(), issuer.addr()],
        credentials: Vec::new(),
    });
    let err = anonymous.pull_image(&image_ref(&addr)).await.unwrap_err();
    assert!(
        err.wants_fallback() && err.to_string().contains("401"),
        "{err:?}"
    );
    assert_eq!(registry.blobs_served(), 0, "a blob left the registry");

    // A realm on loopback not named: refused, never asked.
    let before = issuer.requests().len();
    let unnamed_realm = source(Setup {
        ca_pem: Some(ca.pem()),
        named: vec![addr.clone()],
        credentials: vec![(addr.clone(), Credentials::new("bob", "tok-pass"))],
    });
    let err = unnamed_realm
        .pull_image(&image_ref(&addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(
        issuer.requests().len(),
        before,
        "the unnamed realm was asked"
    );

    let right = with("bob", "tok-pass");
    let before = issuer.requests().len();
    pull_and_check(&right, &addr, &image).await;
    let asked: Vec<_> = issuer.requests()[before..].to_vec();
    assert_eq!(asked.len(), 1, "one token for the whole pull: {asked:?}");
    assert_eq!(asked[0].service.as_deref(), Some(SERVICE));
    assert_eq!(asked[0].scopes, vec![format!("repository:{REPO}:pull")]);
    assert_eq!(asked[0].user.as_deref(), Some("bob"));
    assert!(asked[0].granted);
    assert_eq!(right.client().cached_tokens(&addr), 1);
    assert!(registry.blobs_served() >= 3);
}
