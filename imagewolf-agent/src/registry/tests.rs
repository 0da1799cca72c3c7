//! Unit tests of the registry source against a small in-process HTTP registry double (for
//! the cases distribution 2.8 cannot be made to produce: oversized manifests and configs,
//! 401s, https answers, redirects). The real registry and dockerd are in
//! `tests/registry_source.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// path -> (status line, extra headers, body).
type Routes = Arc<Mutex<HashMap<String, (String, String, Vec<u8>)>>>;
/// path -> (the `Authorization` value required, the `WWW-Authenticate` sent without it).
type Guards = Arc<Mutex<HashMap<String, (String, String)>>>;
/// Every request head received.
type Heads = Arc<Mutex<Vec<String>>>;

async fn serve(routes: Routes) -> String {
    serve_guarded(routes, Guards::default(), Heads::default()).await
}

/// The double: answers `routes`; a guarded path answers 401 with its challenge unless the
/// request carries the required `Authorization`; a TLS ClientHello gets a plain-HTTP 400, as
/// real plain-http servers answer it (so the client reads this host over plain http).
async fn serve_guarded(routes: Routes, guards: Guards, heads: Heads) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let routes = Arc::clone(&routes);
            let guards = Arc::clone(&guards);
            let heads = Arc::clone(&heads);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                    if buf[0] == 0x16 {
                        let _ = conn
                            .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]).into_owned();
                heads.lock().unwrap().push(head.clone());
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let authorization = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                let guard = guards.lock().unwrap().get(&path).cloned();
                let found = match guard {
                    Some((needed, challenge)) if needed != authorization => Some((
                        "401 Unauthorized".into(),
                        format!("WWW-Authenticate: {challenge}\r\n"),
                        Vec::new(),
                    )),
                    _ => routes.lock().unwrap().get(&path).cloned(),
                };
                let (status, headers, body) =
                    found.unwrap_or_else(|| ("404 Not Found".into(), String::new(), Vec::new()));
                let mut reply = format!(
                    "HTTP/1.1 {status}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                reply.extend_from_slice(&body);
                let _ = conn.write_all(&reply).await;
            });
        }
    });
    addr
}

fn ok(routes: &Routes, path: &str, headers: &str, body: Vec<u8>) {
    routes
        .lock()
        .unwrap()
        .insert(path.into(), ("200 OK".into(), headers.into(), body));
}

/// A source that may reach the doubles on 127.0.0.1 at `hosts`, as `--allow` naming them
/// would let it (loopback is refused otherwise).
fn named(hosts: &[&str]) -> RegistrySource {
    RegistrySource::new().with_policy(HostPolicy::naming(hosts))
}

fn image(registry: &str, tag: &str) -> ImageRef {
    ImageRef {
        registry: registry.into(),
        repository: "team/app".into(),
        tag: Some(tag.into()),
        digest: None,
    }
}

fn config_json(layers: usize) -> Vec<u8> {
    let ids: Vec<String> = (0..layers).map(|i| format!("sha256:{i:064x}")).collect();
    serde_json::json!({"architecture": "amd64", "os": "linux",
                       "rootfs": {"type": "layers", "diff_ids": ids}})
    .to_string()
    .into_bytes()
}

fn manifest_json(config: &[u8], layers: &[&[u8]], layer_type: &str) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": layer_type, "digest": sha256_digest(l), "size": l.len()}))
        .collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": sha256_digest(config), "size": config.len()},
        "layers": layers,
    })
    .to_string()
    .into_bytes()
}

const GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// A registry double with `team/app:v1` (two layers, one of them twice) and its blobs.
async fn fake_registry() -> (Routes, String, Vec<u8>) {
    let routes: Routes = Arc::default();
    let addr = serve(Arc::clone(&routes)).await;
    let config = config_json(3);
    let (l1, l2) = (vec![1u8; 1000], vec![2u8; 70_000]);
    let manifest = manifest_json(&config, &[&l1, &l2, &l1], GZIP);
    ok(&routes, "/v2/team/app/manifests/v1", "", manifest.clone());
    for blob in [&config, &l1, &l2] {
        ok(
            &routes,
            &format!("/v2/team/app/blobs/{}", sha256_digest(blob)),
            "",
            blob.clone(),
        );
    }
    (routes, addr, manifest)
}

#[tokio::test]
async fn pull_and_export_against_a_double_with_a_redirect() {
    let (routes, addr, manifest) = fake_registry().await;
    // The second layer's blob is redirected, as storage backends do.
    let l2 = sha256_digest(&[2u8; 70_000]);
    let blob_path = format!("/v2/team/app/blobs/{l2}");
    let body = routes.lock().unwrap().remove(&blob_path).unwrap();
    routes.lock().unwrap().insert("/storage/l2".into(), body);
    routes.lock().unwrap().insert(
        blob_path,
        (
            "307 Temporary Redirect".into(),
            "Location: /storage/l2\r\n".into(),
            Vec::new(),
        ),
    );
    let source = named(&[&addr]);
    let pulled = source.pull_image(&image(&addr, "v1")).await.unwrap();
    assert_eq!(pulled.image_id, sha256_digest(&config_json(3)));
    assert_eq!(pulled.reference, format!("{addr}/team/app:v1"));
    let mut out = Vec::new();
    let mut tar = source.export_image(&pulled).unwrap();
    tar.read_to_end(&mut out).await.unwrap();
    assert_eq!(out.len() as u64, pulled.size_hint);
    let plan = pulled.archive.as_ref().unwrap();
    assert_eq!(plan.layers.len(), 2, "the repeated layer is written once");
    let names: Vec<String> = tar::Archive::new(&out[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1 + 2 * 2 + 1, "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("manifest.json"));
    let _ = manifest;
}

#[tokio::test]
async fn manifest_by_digest_is_verified() {
    let (routes, addr, manifest) = fake_registry().await;
    let digest = sha256_digest(&manifest);
    let mut by_digest = image(&addr, "v1");
    by_digest.digest = Some(digest.clone());
    // Served under its digest but with one byte changed.
    let mut tampered = manifest.clone();
    tampered.push(b' ');
    ok(
        &routes,
        &format!("/v2/team/app/manifests/{digest}"),
        "",
        tampered,
    );
    let err = named(&[&addr]).pull_image(&by_digest).await.unwrap_err();
    assert!(matches!(err, RegistryError::Failed(_)), "{err:?}");
    assert!(err.to_string().contains("expected"), "{err}");
    ok(
        &routes,
        &format!("/v2/team/app/manifests/{digest}"),
        "",
        manifest,
    );
    named(&[&addr]).pull_image(&by_digest).await.unwrap();
}

#[tokio::test]
async fn oversized_manifest_and_config_are_refused() {
    let (routes, addr, _) = fake_registry().await;
    // A manifest body past the limit: refused while reading, not buffered whole.
    ok(
        &routes,
        "/v2/team/app/manifests/big",
        "",
        vec![b' '; MAX_MANIFEST + 1],
    );
    let err = named(&[&addr])
        .pull_image(&image(&addr, "big"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    // A config whose descriptor says more than MAX_CONFIG: refused before the request.
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": sha256_digest(b"x"), "size": MAX_CONFIG + 1},
        "layers": [],
    })
    .to_string()
    .into_bytes();
    ok(&routes, "/v2/team/app/manifests/bigconfig", "", manifest);
    let err = named(&[&addr])
        .pull_image(&image(&addr, "bigconfig"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Failed(_)), "{err:?}");
    assert!(err.to_string().contains("limit"), "{err}");
    // A config longer than its descriptor says.
    let config = config_json(0);
    let mut longer = config.clone();
    longer.extend_from_slice(b"   ");
    let m = manifest_json(&config, &[], GZIP);
    ok(&routes, "/v2/team/app/manifests/liar", "", m);
    ok(
        &routes,
        &format!("/v2/team/app/blobs/{}", sha256_digest(&config)),
        "",
        longer,
    );
    let err = named(&[&addr])
        .pull_image(&image(&addr, "liar"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Failed(_)), "{err:?}");
}

#[tokio::test]
async fn what_docker_could_do_is_marked_for_fallback() {
    let (routes, addr, _) = fake_registry().await;
    let set = |path: &str, status: &str, headers: &str, body: &str| {
        routes.lock().unwrap().insert(
            path.into(),
            (status.into(), headers.into(), body.as_bytes().to_vec()),
        );
    };
    // A token service (on the registry's own host) that refuses anonymous tokens.
    set(
        "/v2/team/app/manifests/auth",
        "401 Unauthorized",
        &format!("WWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"reg\"\r\n"),
        "{\"errors\":[]}",
    );
    set(
        "/token?service=reg&scope=repository%3Ateam%2Fapp%3Apull",
        "401 Unauthorized",
        "",
        "",
    );
    set(
        "/v2/team/app/manifests/basic",
        "401 Unauthorized",
        "WWW-Authenticate: Basic realm=\"reg\"\r\n",
        "",
    );
    set(
        "/v2/team/app/manifests/tls",
        "400 Bad Request",
        "",
        "Client sent an HTTP request to an HTTPS server.",
    );
    set(
        "/v2/team/app/manifests/zstd",
        "200 OK",
        "",
        std::str::from_utf8(&manifest_json(
            b"c",
            &[b"l"],
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ))
        .unwrap(),
    );
    let source = named(&[&addr]);
    // Credentials this agent was not given, a registry named insecure that speaks https, a
    // media type docker load cannot take: Docker may manage.
    for tag in ["auth", "basic", "tls", "zstd"] {
        let err = source.pull_image(&image(&addr, tag)).await.unwrap_err();
        assert!(err.wants_fallback() && !err.retryable(), "{tag}: {err:?}");
    }
    // Not for Docker either: missing, or the registry failing (retryable).
    let err = source.pull_image(&image(&addr, "nope")).await.unwrap_err();
    assert!(matches!(err, RegistryError::Failed(_)), "{err:?}");
    set(
        "/v2/team/app/manifests/down",
        "503 Service Unavailable",
        "",
        "",
    );
    let err = source.pull_image(&image(&addr, "down")).await.unwrap_err();
    assert!(err.retryable() && !err.wants_fallback(), "{err:?}");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let err = named(&[&dead])
        .pull_image(&image(&dead, "v1"))
        .await
        .unwrap_err();
    assert!(err.retryable(), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    let e: SourceError = err.into();
    assert!(e.retryable);
}

/// A source standing in for Docker: counts pulls, answers with a marker.
struct Counting(std::sync::atomic::AtomicUsize);

impl ImageSource for Counting {
    fn pull<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            Ok(PulledImage {
                image_id: "sha256:docker".into(),
                reference: image.pull_reference(),
                size_hint: 3,
                archive: None,
            })
        })
    }

    fn export<'a>(&'a self, _: &'a PulledImage) -> BoxFuture<'a, Result<Tarball, SourceError>> {
        Box::pin(async move { Ok(Box::pin(&b"abc"[..]) as Tarball) })
    }
}

#[tokio::test]
async fn fallback_source_dispatches() {
    let (routes, addr, _) = fake_registry().await;
    routes.lock().unwrap().insert(
        "/v2/team/app/manifests/auth".into(),
        ("401 Unauthorized".into(), String::new(), Vec::new()),
    );
    let docker = Arc::new(Counting(Default::default()));
    let both = FallbackSource::new(named(&[&addr]), docker.clone());
    // The registry can: no Docker pull; export streams the archive.
    let pulled = both.pull(&image(&addr, "v1")).await.unwrap();
    assert!(pulled.archive.is_some());
    let mut out = Vec::new();
    both.export(&pulled)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_eq!(out.len() as u64, pulled.size_hint);
    assert_eq!(docker.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Credentials needed: Docker pulls and exports.
    let pulled = both.pull(&image(&addr, "auth")).await.unwrap();
    assert_eq!(pulled.image_id, "sha256:docker");
    let mut out = Vec::new();
    both.export(&pulled)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_eq!(out, b"abc");
    assert_eq!(docker.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Missing: not Docker's business either.
    let err = both.pull(&image(&addr, "missing")).await.unwrap_err();
    assert!(!err.retryable, "{err}");
    assert_eq!(docker.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn error_answers_are_reported_by_status_never_by_body() {
    let (routes, addr, _) = fake_registry().await;
    let secret = "root:x:0:0:internal-secret-4711";
    for (tag, status) in [
        ("gone", "404 Not Found"),
        ("teapot", "418 I'm a teapot"),
        ("down", "503 Service Unavailable"),
        ("auth", "401 Unauthorized"),
    ] {
        routes.lock().unwrap().insert(
            format!("/v2/team/app/manifests/{tag}"),
            (status.into(), String::new(), secret.as_bytes().to_vec()),
        );
        let err = named(&[&addr])
            .pull_image(&image(&addr, tag))
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.contains("internal-secret"), "{tag}: {err}");
        assert!(
            err.starts_with(&format!(
                "registry answered {status} for manifest {addr}/team/app:{tag}"
            )),
            "{tag}: {err}"
        );
    }
    // A 200 that is no manifest: serde's text would quote it.
    ok(
        &routes,
        "/v2/team/app/manifests/json",
        "",
        format!("{{\"schemaVersion\": \"{secret}\"}}").into_bytes(),
    );
    let err = named(&[&addr])
        .pull_image(&image(&addr, "json"))
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("internal-secret"), "{err}");
    assert!(
        err.contains("not a manifest: JSON of the wrong shape"),
        "{err}"
    );
    // A blob answer (streamed path) likewise.
    let l1 = sha256_digest(&[1u8; 1000]);
    routes.lock().unwrap().insert(
        format!("/v2/team/app/blobs/{l1}"),
        (
            "404 Not Found".into(),
            String::new(),
            secret.as_bytes().to_vec(),
        ),
    );
    let source = named(&[&addr]);
    let pulled = source.pull_image(&image(&addr, "v1")).await.unwrap();
    let mut out = Vec::new();
    let err = source
        .export_image(&pulled)
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains("internal-secret"), "{err}");
    assert!(err.contains("404"), "{err}");
}

#[tokio::test]
async fn a_refused_registry_host_is_never_contacted_nor_handed_to_docker() {
    let (_routes, addr, _) = fake_registry().await;
    let docker = Arc::new(Counting(Default::default()));
    let both = FallbackSource::new(RegistrySource::new(), docker.clone());
    // Named by a notification only: loopback, refused. On port 443 (and as "localhost") the
    // registry source would otherwise say "https, ask Docker".
    let port = addr.rsplit_once(':').unwrap().1;
    for registry in [
        addr.clone(),
        "127.0.0.1:443".to_owned(),
        "localhost:443".to_owned(),
        format!("localhost:{port}"),
        "169.254.169.254".to_owned(),
    ] {
        let err = both.pull(&image(&registry, "v1")).await.unwrap_err();
        assert!(!err.retryable, "{registry}: {err}");
        assert!(
            err.message
                .contains(&format!("registry host {registry} refused"))
                && err.message.contains("--allow"),
            "{registry}: {err}"
        );
        let plan = RegistrySource::new()
            .pull_plan(&image(&registry, "v1"))
            .await
            .unwrap_err();
        assert!(plan.to_string().contains("refused"), "{registry}: {plan}");
    }
    assert_eq!(
        docker.0.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "Docker was never asked"
    );
}

/// A runtime source whose pull fails as dockerd does when a registry answers HTML.
struct QuotingDocker;

impl ImageSource for QuotingDocker {
    fn pull<'a>(&'a self, _: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        Box::pin(async move {
            Err(SourceError {
                message: "error parsing HTTP 404 response body: invalid character '<' looking \
                          for beginning of value: \"<html>internal-secret-4711</html>\""
                    .into(),
                retryable: false,
            })
        })
    }

    fn export<'a>(&'a self, _: &'a PulledImage) -> BoxFuture<'a, Result<Tarball, SourceError>> {
        Box::pin(async move { Ok(Box::pin(&b""[..]) as Tarball) })
    }
}

#[tokio::test]
async fn the_runtimes_quote_of_a_registry_answer_is_cut_from_its_error() {
    let (routes, addr, _) = fake_registry().await;
    routes.lock().unwrap().insert(
        "/v2/team/app/manifests/auth".into(),
        ("401 Unauthorized".into(), String::new(), Vec::new()),
    );
    let both = FallbackSource::new(named(&[&addr]), Arc::new(QuotingDocker));
    let err = both.pull(&image(&addr, "auth")).await.unwrap_err();
    assert!(!err.message.contains("internal-secret"), "{err}");
    assert!(
        err.message
            .starts_with("error parsing HTTP 404 response body (not shown)"),
        "{err}"
    );
    assert_eq!(
        fallback::without_quoted_body("no body here"),
        "no body here"
    );
}

/// The registry double, its guarded paths and the heads it received.
async fn guarded_registry() -> (Routes, Guards, Heads, String) {
    let (routes, guards, heads) = (Routes::default(), Guards::default(), Heads::default());
    let addr = serve_guarded(Arc::clone(&routes), Arc::clone(&guards), Arc::clone(&heads)).await;
    (routes, guards, heads, addr)
}

/// A source reading through a client with `credentials` for `registry`, the `insecure`
/// hosts over plain http, and `named` hosts reachable on loopback.
fn authenticating(
    named: &[&str],
    insecure: &[&str],
    registry: &str,
    user: &str,
    password: &str,
) -> RegistrySource {
    let credentials = CredentialStore::from_entries([(
        registry.to_owned(),
        auth::Credentials::new(user, password),
    )]);
    RegistrySource::new().with_client(RegistryHttp::with_options(ClientOptions {
        policy: HostPolicy::naming(named),
        plain_http: insecure.iter().map(|h| h.to_string()).collect(),
        credentials,
        ..ClientOptions::default()
    }))
}

fn heads_with(heads: &Heads, needle: &str) -> usize {
    heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.contains(needle))
        .count()
}

/// The token flow end to end against doubles: registry R asks for a bearer token from the
/// realm on T (basic credentials sent there), every manifest and blob request to R carries
/// the token, the blob redirected to storage S does not; the token is cached (T asked once
/// for two pulls); the password and token never appear in an error.
#[tokio::test]
async fn token_flow_credentials_go_to_the_registry_and_realm_only() {
    let (routes, guards, r_heads, r) = guarded_registry().await;
    let (t_routes, _, t_heads, t) = guarded_registry().await;
    let (s_routes, _, s_heads, s) = guarded_registry().await;
    let config = config_json(1);
    let layer = vec![7u8; 5000];
    let manifest = manifest_json(&config, &[&layer], GZIP);
    let bearer = "Bearer tok-5e3c7";
    let challenge = format!(
        "Bearer realm=\"http://{t}/token\",service=\"registry.test\",scope=\"repository:team/app:pull\""
    );
    let layer_path = format!("/v2/team/app/blobs/{}", sha256_digest(&layer));
    let config_path = format!("/v2/team/app/blobs/{}", sha256_digest(&config));
    for path in ["/v2/team/app/manifests/v1", &config_path, &layer_path] {
        guards
            .lock()
            .unwrap()
            .insert(path.into(), (bearer.into(), challenge.clone()));
    }
    ok(&routes, "/v2/team/app/manifests/v1", "", manifest);
    ok(&routes, &config_path, "", config.clone());
    routes.lock().unwrap().insert(
        layer_path.clone(),
        (
            "307 Temporary Redirect".into(),
            format!("Location: http://{s}/bucket/layer?sig=abc\r\n"),
            Vec::new(),
        ),
    );
    ok(&s_routes, "/bucket/layer?sig=abc", "", layer.clone());
    let basic = auth::Credentials::new("alice", "s3cret-pw").basic_header();
    ok(
        &t_routes,
        "/token?service=registry.test&scope=repository%3Ateam%2Fapp%3Apull",
        "",
        b"{\"token\":\"tok-5e3c7\",\"expires_in\":300}".to_vec(),
    );
    // T also checks the credentials.
    let source = authenticating(&[&r, &t, &s], &[&r, &t], &r, "alice", "s3cret-pw");
    let pulled = source.pull_image(&image(&r, "v1")).await.unwrap();
    let mut out = Vec::new();
    source
        .export_image(&pulled)
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    assert_eq!(out.len() as u64, pulled.size_hint);
    // Again: the cached token is sent at once, T is not asked again.
    let pulled = source.pull_image(&image(&r, "v1")).await.unwrap();
    assert_eq!(pulled.image_id, sha256_digest(&config));
    assert_eq!(source.client().cached_tokens(&r), 1);

    assert_eq!(t_heads.lock().unwrap().len(), 1, "one token request");
    assert_eq!(
        heads_with(&t_heads, &basic),
        1,
        "credentials sent to the realm"
    );
    assert_eq!(heads_with(&r_heads, "s3cret"), 0);
    assert_eq!(
        heads_with(&r_heads, &basic),
        0,
        "R asked for a token, not basic"
    );
    // manifest 401 + manifest + config + layer (redirect) + manifest + config.
    assert_eq!(
        heads_with(&r_heads, bearer),
        5,
        "{:?}",
        r_heads.lock().unwrap()
    );
    let s_heads = s_heads.lock().unwrap();
    assert_eq!(s_heads.len(), 1);
    assert!(
        !s_heads[0].to_ascii_lowercase().contains("authorization"),
        "the storage host got credentials: {}",
        s_heads[0]
    );
}

/// A realm on a loopback address the operator did not name is refused (never contacted),
/// like any registry host; named, it is asked.
#[tokio::test]
async fn a_realm_on_an_unnamed_loopback_host_is_refused() {
    let (routes, guards, _, r) = guarded_registry().await;
    let (_, _, t_heads, t) = guarded_registry().await;
    guards.lock().unwrap().insert(
        "/v2/team/app/manifests/v1".into(),
        (
            "Bearer x".into(),
            format!("Bearer realm=\"http://{t}/token\",service=\"s\""),
        ),
    );
    ok(&routes, "/v2/team/app/manifests/v1", "", b"{}".to_vec());
    // R is named insecure, so the token flow runs over plain http; T is not named.
    let err = authenticating(&[&r], &[&r], &r, "u", "p")
        .pull_image(&image(&r, "v1"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Failed(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("registry host {t} refused"))
            && err.to_string().contains("loopback"),
        "{err}"
    );
    assert_eq!(t_heads.lock().unwrap().len(), 0, "the realm was contacted");
}

/// Basic auth: the right credentials pass (and are then sent at once); wrong ones are a
/// clear error naming the registry, never the password, and not handed to Docker.
#[tokio::test]
async fn basic_auth_right_and_wrong_credentials() {
    let (routes, guards, heads, r) = guarded_registry().await;
    let config = config_json(0);
    let good = auth::Credentials::new("bob", "right-pw").basic_header();
    let config_path = format!("/v2/team/app/blobs/{}", sha256_digest(&config));
    for path in ["/v2/team/app/manifests/v1", config_path.as_str()] {
        guards
            .lock()
            .unwrap()
            .insert(path.into(), (good.clone(), "Basic realm=\"r\"".into()));
    }
    ok(
        &routes,
        "/v2/team/app/manifests/v1",
        "",
        manifest_json(&config, &[], GZIP),
    );
    ok(&routes, &config_path, "", config.clone());
    let right = authenticating(&[&r], &[&r], &r, "bob", "right-pw");
    right.pull_image(&image(&r, "v1")).await.unwrap();
    // manifest: 401 then with credentials; config: with credentials at once.
    assert_eq!(
        heads.lock().unwrap().len(),
        3,
        "{:?}",
        heads.lock().unwrap()
    );
    assert_eq!(heads_with(&heads, &good), 2);

    let wrong = authenticating(&[&r], &[&r], &r, "bob", "wrong-pw");
    let err = wrong.pull_image(&image(&r, "v1")).await.unwrap_err();
    assert!(matches!(err, RegistryError::Failed(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("refused the credentials for"), "{text}");
    assert!(
        !text.contains("wrong-pw") && !text.contains("bob:"),
        "{text}"
    );
}

/// A host with an explicit port that speaks plain http, not named insecure, is read over
/// http anonymously: credentials configured for it are never sent there.
#[tokio::test]
async fn no_credentials_over_plain_http_unless_named_insecure() {
    let (routes, guards, heads, r) = guarded_registry().await;
    guards.lock().unwrap().insert(
        "/v2/team/app/manifests/v1".into(),
        ("Basic x".into(), "Basic realm=\"r\"".into()),
    );
    ok(&routes, "/v2/team/app/manifests/v1", "", b"{}".to_vec());
    let source = authenticating(&[&r], &[], &r, "carol", "pw-over-http");
    let err = source.pull_image(&image(&r, "v1")).await.unwrap_err();
    assert!(err.to_string().contains("--insecure-registry"), "{err}");
    assert_eq!(
        heads_with(&heads, "Basic"),
        0,
        "credentials sent over plain http"
    );
    assert_eq!(heads_with(&heads, "/v2/team/app"), 1, "one plain request");
}
