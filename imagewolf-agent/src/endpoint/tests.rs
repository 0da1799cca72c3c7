//! The endpoint against an in-memory [`Content`], through a hyper client (keep-alive: several
//! requests per connection) and raw HTTP/1.1 where the exact bytes on the wire matter.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::HeaderMap;
use imagewolf::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Manifests, tags and blobs in memory (blobs also as files, since [`Content`] hands out
/// files); records every `ns` a tag was resolved with.
struct MemContent {
    _dir: TempDir,
    manifests: HashMap<String, (Bytes, String)>,
    tags: HashMap<(String, String), String>,
    blobs: HashMap<String, (std::path::PathBuf, u64)>,
    registries: Mutex<Vec<Option<String>>>,
}

impl MemContent {
    fn registries(&self) -> Vec<Option<String>> {
        self.registries.lock().unwrap().clone()
    }
}

impl Content for MemContent {
    fn manifest(&self, digest: &str) -> Option<(Bytes, String)> {
        self.manifests.get(digest).cloned()
    }

    fn resolve_tag(&self, registry: Option<&str>, repository: &str, tag: &str) -> Option<String> {
        self.registries
            .lock()
            .unwrap()
            .push(registry.map(str::to_owned));
        self.tags
            .get(&(repository.to_owned(), tag.to_owned()))
            .cloned()
    }

    fn blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Option<(std::fs::File, u64)>> {
        Box::pin(async move {
            let (path, len) = self.blobs.get(digest)?;
            Some((std::fs::File::open(path).ok()?, *len))
        })
    }
}

struct Fixture {
    addr: SocketAddr,
    content: Arc<MemContent>,
    stats: Arc<EndpointStats>,
    manifest: Bytes,
    manifest_digest: String,
    index: Bytes,
    index_digest: String,
    blob: Vec<u8>,
    blob_digest: String,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

/// A blob of 1 MiB + 3 bytes: several chunks, the last one short.
const BLOB_LEN: usize = (1 << 20) + 3;

async fn start(config: EndpointConfig) -> Fixture {
    let dir = TempDir::new("endpoint-unit").unwrap();
    let blob: Vec<u8> = (0..BLOB_LEN).map(|i| (i * 7 % 251) as u8).collect();
    let blob_digest = sha256(&blob);
    let blob_path = dir.path().join("blob");
    std::fs::write(&blob_path, &blob).unwrap();
    // A file that is shorter than its stated length (a broken store).
    let short_digest = sha256(b"short");
    let short_path = dir.path().join("short");
    std::fs::write(&short_path, vec![1u8; 1000]).unwrap();

    let manifest = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","layers":[{{"digest":"{blob_digest}"}}]}}"#
    ));
    let manifest_digest = sha256(&manifest);
    let index = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX_TYPE}","manifests":[{{"digest":"{manifest_digest}"}}]}}"#
    ));
    let index_digest = sha256(&index);
    let tampered = Bytes::from_static(b"{\"not\":\"what the digest says\"}");
    let tampered_digest = sha256(b"something else");

    let mut manifests = HashMap::new();
    manifests.insert(
        manifest_digest.clone(),
        (manifest.clone(), MANIFEST_TYPE.to_owned()),
    );
    manifests.insert(index_digest.clone(), (index.clone(), INDEX_TYPE.to_owned()));
    manifests.insert(
        tampered_digest.clone(),
        (tampered, MANIFEST_TYPE.to_owned()),
    );
    let mut tags = HashMap::new();
    tags.insert(("team/app".into(), "v1".into()), manifest_digest.clone());
    tags.insert(("a/b/c".into(), "multi".into()), index_digest.clone());
    tags.insert(("team/app".into(), "tampered".into()), tampered_digest);
    let mut blobs = HashMap::new();
    blobs.insert(blob_digest.clone(), (blob_path, BLOB_LEN as u64));
    blobs.insert(short_digest, (short_path, 5000));
    let content = Arc::new(MemContent {
        _dir: dir,
        manifests,
        tags,
        blobs,
        registries: Mutex::new(Vec::new()),
    });

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::clone(&config.stats);
    let (shutdown, rx) = watch::channel(false);
    let dyn_content: Arc<dyn Content> = Arc::clone(&content) as Arc<dyn Content>;
    let server = tokio::spawn(serve(listener, dyn_content, config, rx));
    Fixture {
        addr,
        content,
        stats,
        manifest,
        manifest_digest,
        index,
        index_digest,
        blob,
        blob_digest,
        shutdown,
        server,
    }
}

async fn client(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body));
        let error = &v["errors"][0];
        assert!(error["message"].is_string(), "{v}");
        error["code"].as_str().unwrap().to_owned()
    }
}

async fn send(
    client: &mut SendRequest<Empty<Bytes>>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client.ready().await.unwrap();
    let resp = client
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(client: &mut SendRequest<Empty<Bytes>>, path: &str) -> Answer {
    send(client, Method::GET, path, &[]).await
}

/// Raw HTTP/1.1 with `Connection: close`: the whole reply, bytes as on the wire.
async fn raw(addr: SocketAddr, request_line: &str, extra: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!("{request_line}\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

fn split_raw(reply: &[u8]) -> (String, &[u8]) {
    let at = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of head");
    (
        String::from_utf8_lossy(&reply[..at]).to_ascii_lowercase(),
        &reply[at + 4..],
    )
}

#[tokio::test]
async fn base_route_answers_with_the_api_version() {
    let f = start(EndpointConfig::default()).await;
    let mut c = client(f.addr).await;
    for path in ["/v2/", "/v2"] {
        let a = get(&mut c, path).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.header(API_VERSION_HEADER), "registry/2.0");
        assert_eq!(a.header("content-type"), "application/json");
        assert_eq!(a.header("content-length"), "2");
        assert_eq!(&a.body[..], b"{}");
    }
    let a = send(&mut c, Method::HEAD, "/v2/", &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header(API_VERSION_HEADER), "registry/2.0");
    assert!(a.body.is_empty());
    assert_eq!(f.stats.snapshot().other_requests, 3);
}

#[tokio::test]
async fn manifests_by_digest_and_by_tag() {
    let f = start(EndpointConfig::default()).await;
    let mut c = client(f.addr).await;

    let by_digest = get(
        &mut c,
        &format!("/v2/team/app/manifests/{}", f.manifest_digest),
    )
    .await;
    assert_eq!(by_digest.status, StatusCode::OK);
    assert_eq!(by_digest.header("content-type"), MANIFEST_TYPE);
    assert_eq!(by_digest.header(CONTENT_DIGEST_HEADER), f.manifest_digest);
    assert_eq!(
        by_digest.header("content-length"),
        f.manifest.len().to_string()
    );
    assert_eq!(by_digest.body, f.manifest);

    // A tag, on the same (kept-alive) connection.
    let by_tag = get(&mut c, "/v2/team/app/manifests/v1").await;
    assert_eq!(by_tag.status, StatusCode::OK);
    assert_eq!(by_tag.header(CONTENT_DIGEST_HEADER), f.manifest_digest);
    assert_eq!(by_tag.header("content-type"), MANIFEST_TYPE);
    assert_eq!(by_tag.body, f.manifest);

    // An index keeps its own media type; the name has three components.
    let index = get(&mut c, "/v2/a/b/c/manifests/multi").await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(index.header("content-type"), INDEX_TYPE);
    assert_eq!(index.header(CONTENT_DIGEST_HEADER), f.index_digest);
    assert_eq!(index.body, f.index);

    // HEAD: the same headers, no body.
    let head = send(&mut c, Method::HEAD, "/v2/team/app/manifests/v1", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header(CONTENT_DIGEST_HEADER), f.manifest_digest);
    assert_eq!(head.header("content-type"), MANIFEST_TYPE);
    assert_eq!(head.header("content-length"), f.manifest.len().to_string());
    assert!(head.body.is_empty());

    // containerd's `ns` reaches the tag resolution, decoded.
    let mirrored = get(
        &mut c,
        "/v2/team/app/manifests/v1?ns=upstream.invalid%3A5000",
    )
    .await;
    assert_eq!(mirrored.status, StatusCode::OK);
    assert_eq!(
        f.content.registries(),
        vec![None, None, None, Some("upstream.invalid:5000".to_owned())]
    );

    let counts = f.stats.snapshot();
    assert_eq!(counts.manifest_requests, 5);
    assert_eq!(
        counts.bytes_served,
        3 * f.manifest.len() as u64 + f.index.len() as u64
    );
    assert_eq!(counts.not_found, 0);
}

#[tokio::test]
async fn head_sends_no_body_on_the_wire() {
    let f = start(EndpointConfig::default()).await;
    let line = format!("HEAD /v2/team/app/manifests/{} HTTP/1.1", f.manifest_digest);
    let reply = raw(f.addr, &line, "").await;
    let (head, body) = split_raw(&reply);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", f.manifest.len())),
        "{head}"
    );
    assert!(body.is_empty(), "HEAD sent a body: {body:?}");

    let line = format!("HEAD /v2/team/app/blobs/{} HTTP/1.1", f.blob_digest);
    let reply = raw(f.addr, &line, "").await;
    let (head, body) = split_raw(&reply);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {BLOB_LEN}")),
        "{head}"
    );
    assert!(body.is_empty());
    assert_eq!(f.stats.snapshot().bytes_served, 0);
}

#[tokio::test]
async fn blobs_whole_and_ranged() {
    let f = start(EndpointConfig::default()).await;
    let mut c = client(f.addr).await;
    let path = format!("/v2/team/app/blobs/{}", f.blob_digest);

    let whole = get(&mut c, &path).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.header("content-type"), "application/octet-stream");
    assert_eq!(whole.header("content-length"), BLOB_LEN.to_string());
    assert_eq!(whole.header("accept-ranges"), "bytes");
    assert_eq!(whole.header(CONTENT_DIGEST_HEADER), f.blob_digest);
    assert!(whole.body[..] == f.blob[..], "blob bytes differ");

    // Crossing a chunk boundary.
    let ranged = send(
        &mut c,
        Method::GET,
        &path,
        &[("range", "bytes=262000-262999")],
    )
    .await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        ranged.header("content-range"),
        format!("bytes 262000-262999/{BLOB_LEN}")
    );
    assert_eq!(ranged.header("content-length"), "1000");
    assert_eq!(&ranged.body[..], &f.blob[262_000..263_000]);

    // Open-ended: the rest, as a resumed download asks.
    let rest = send(&mut c, Method::GET, &path, &[("range", "bytes=1000000-")]).await;
    assert_eq!(rest.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        rest.header("content-range"),
        format!("bytes 1000000-{}/{BLOB_LEN}", BLOB_LEN - 1)
    );
    assert_eq!(&rest.body[..], &f.blob[1_000_000..]);

    // An end past the blob is clamped; a suffix range takes the last bytes.
    let clamped = send(&mut c, Method::GET, &path, &[("range", "bytes=5-99999999")]).await;
    assert_eq!(clamped.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&clamped.body[..], &f.blob[5..]);
    let suffix = send(&mut c, Method::GET, &path, &[("range", "bytes=-10")]).await;
    assert_eq!(suffix.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&suffix.body[..], &f.blob[BLOB_LEN - 10..]);

    // Past the end: 416 with the length.
    let past = send(
        &mut c,
        Method::GET,
        &path,
        &[("range", &format!("bytes={BLOB_LEN}-"))],
    )
    .await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.header("content-range"), format!("bytes */{BLOB_LEN}"));

    // Several ranges: ignored, the whole blob.
    let multi = send(&mut c, Method::GET, &path, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(multi.status, StatusCode::OK);
    assert_eq!(multi.body.len(), BLOB_LEN);

    let counts = f.stats.snapshot();
    assert_eq!(counts.blob_requests, 7);
    assert_eq!(counts.partial_responses, 4);
    let expected = 2 * BLOB_LEN + 1000 + (BLOB_LEN - 1_000_000) + (BLOB_LEN - 5) + 10;
    assert_eq!(counts.bytes_served, expected as u64);
}

#[tokio::test]
async fn unknown_content_is_404_with_an_oci_error() {
    let f = start(EndpointConfig::default()).await;
    let mut c = client(f.addr).await;
    let missing = format!("sha256:{}", "0".repeat(64));

    let a = get(&mut c, &format!("/v2/team/app/manifests/{missing}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("content-type"), "application/json");
    assert_eq!(a.error_code(), "MANIFEST_UNKNOWN");
    let a = get(&mut c, "/v2/team/app/manifests/v2").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error_code(), "MANIFEST_UNKNOWN");
    let a = get(&mut c, &format!("/v2/team/app/blobs/{missing}")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error_code(), "BLOB_UNKNOWN");
    // HEAD of something unknown: 404, no body.
    let a = send(
        &mut c,
        Method::HEAD,
        &format!("/v2/team/app/blobs/{missing}"),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.body.is_empty());
    // A stored manifest whose bytes do not match its digest is never served.
    let a = get(&mut c, "/v2/team/app/manifests/tampered").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.error_code(), "MANIFEST_UNKNOWN");
    // Routes that do not exist here.
    for path in [
        "/",
        "/v1/_ping",
        "/v2/_catalog",
        "/v2/team/app/tags/list",
        "/v2/team/app/blobs/uploads/",
        "/v2/team/app/manifests/",
    ] {
        let a = get(&mut c, path).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(a.error_code(), "UNSUPPORTED", "{path}");
        assert_eq!(a.header(API_VERSION_HEADER), "registry/2.0");
    }
    assert_eq!(f.stats.snapshot().not_found, 5);
}

#[tokio::test]
async fn writes_are_refused_with_405() {
    let f = start(EndpointConfig::default()).await;
    let mut c = client(f.addr).await;
    for (method, path) in [
        (Method::POST, "/v2/team/app/blobs/uploads/".to_owned()),
        (Method::PUT, "/v2/team/app/manifests/v1".to_owned()),
        (
            Method::DELETE,
            format!("/v2/team/app/manifests/{}", f.manifest_digest),
        ),
        (Method::PATCH, "/v2/".to_owned()),
    ] {
        let a = send(&mut c, method.clone(), &path, &[]).await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(a.header("allow"), "GET, HEAD");
        assert_eq!(a.error_code(), "UNSUPPORTED");
    }
    // A PUT with a body is answered without reading the body (the connection is then closed,
    // since its unread body is in the way).
    let reply = raw(
        f.addr,
        "PUT /v2/team/app/manifests/v1 HTTP/1.1",
        "Content-Length: 5\r\n",
    )
    .await;
    let (head, _) = split_raw(&reply);
    assert!(head.starts_with("http/1.1 405"), "{head}");
    // Nothing changed.
    let a = get(&mut c, "/v2/team/app/manifests/v1").await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_names_and_references_are_refused() {
    let f = start(EndpointConfig::default()).await;
    let cases = [
        ("/v2/../x/manifests/v1", "400", "NAME_INVALID"),
        ("/v2/%2e%2e/x/manifests/v1", "400", "NAME_INVALID"),
        ("/v2/Team/app/manifests/v1", "400", "NAME_INVALID"),
        ("/v2/team//app/manifests/v1", "400", "NAME_INVALID"),
        ("/v2/-team/app/blobs/sha256:00", "400", "NAME_INVALID"),
        ("/v2/team/app/manifests/-v1", "400", "TAG_INVALID"),
        (
            "/v2/team/app/manifests/sha256:ABCD",
            "400",
            "DIGEST_INVALID",
        ),
        ("/v2/team/app/blobs/v1", "400", "DIGEST_INVALID"),
        ("/v2/team/app/blobs/md5:0123", "400", "DIGEST_INVALID"),
        ("/v2/team/app/manifests/%zz", "404", "UNSUPPORTED"),
    ];
    for (path, status, code) in cases {
        let reply = raw(f.addr, &format!("GET {path} HTTP/1.1"), "").await;
        let (head, body) = split_raw(&reply);
        assert!(
            head.starts_with(&format!("http/1.1 {status}")),
            "{path}: {head}"
        );
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["errors"][0]["code"], code, "{path}");
    }
    let long = format!("/v2/{}/manifests/v1", "a".repeat(256));
    let mut c = client(f.addr).await;
    let a = get(&mut c, &long).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error_code(), "NAME_INVALID");
    // The content was never asked about any of them.
    assert!(f.content.registries().is_empty());
}

#[tokio::test]
async fn multi_component_names_split_at_the_last_separator() {
    let f = start(EndpointConfig::default()).await;
    let mut c = client(f.addr).await;
    let a = get(&mut c, &format!("/v2/a/b/c/blobs/{}", f.blob_digest)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.len(), BLOB_LEN);
    // A name whose components are themselves "blobs" / "manifests".
    let a = get(&mut c, "/v2/blobs/manifests/x/manifests/v1").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND); // resolve_tag("blobs/manifests/x", "v1")
    assert_eq!(
        parse_path(&format!("/v2/x/blobs/y/manifests/{}", f.manifest_digest)),
        Ok(Route::Manifest {
            name: "x/blobs/y".into(),
            reference: Reference::Digest(f.manifest_digest.clone()),
        })
    );
    assert_eq!(
        parse_path(&format!("/v2/x/manifests/y/blobs/{}", f.blob_digest)),
        Ok(Route::Blob {
            name: "x/manifests/y".into(),
            digest: f.blob_digest.clone(),
        })
    );
}

#[tokio::test]
async fn a_short_blob_file_cuts_the_connection() {
    let f = start(EndpointConfig::default()).await;
    let line = format!("GET /v2/team/app/blobs/{} HTTP/1.1", sha256(b"short"));
    let reply = raw(f.addr, &line, "").await;
    let (head, body) = split_raw(&reply);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 5000"), "{head}");
    assert!(
        body.is_empty(),
        "sent {} bytes of a broken blob",
        body.len()
    );
}

#[test]
fn grammar() {
    for ok in [
        "a",
        "team/app",
        "a/b/c",
        "my-app",
        "my--app",
        "my.app",
        "my_app",
        "my__app",
        "0",
        "library/ubuntu-22.04",
    ] {
        assert!(valid_name(ok), "{ok}");
    }
    for bad in [
        "", "/a", "a/", "a//b", "..", "../x", "A", "a.", "a..b", "a___b", "a._b", "-a", "a b",
        "a:b",
    ] {
        assert!(!valid_name(bad), "{bad}");
    }
    assert!(valid_name(&"a".repeat(255)));
    assert!(!valid_name(&"a".repeat(256)));
    for ok in ["v1", "latest", "_x", "V1.2-rc_3", &"a".repeat(128)] {
        assert!(valid_tag(ok), "{ok}");
    }
    for bad in ["", "-x", ".x", "a:b", "a/b", &"a".repeat(129)] {
        assert!(!valid_tag(bad), "{bad}");
    }
    assert!(valid_digest(&format!("sha256:{}", "a0".repeat(32))));
    assert!(!valid_digest(&format!("sha256:{}", "A0".repeat(32))));
    assert!(!valid_digest(&format!("sha256:{}", "a".repeat(63))));
    assert!(!valid_digest(&format!("sha512:{}", "a".repeat(64))));
    assert_eq!(
        route::ns_param(Some("a=1&ns=docker.io")),
        Some("docker.io".into())
    );
    assert_eq!(route::ns_param(Some("nsx=1")), None);
    assert_eq!(route::ns_param(None), None);
}

#[test]
fn ranges() {
    use RangeRequest::*;
    let r = |h: &str, len| parse_range(Some(h), len);
    assert_eq!(parse_range(None, 10), Full);
    assert_eq!(r("bytes=0-4", 10), Partial { start: 0, end: 4 });
    assert_eq!(r("bytes=3-", 10), Partial { start: 3, end: 9 });
    assert_eq!(r("bytes=3-100", 10), Partial { start: 3, end: 9 });
    assert_eq!(r("bytes=-3", 10), Partial { start: 7, end: 9 });
    assert_eq!(r("bytes=-30", 10), Partial { start: 0, end: 9 });
    assert_eq!(r("bytes=10-", 10), Unsatisfiable);
    assert_eq!(r("bytes=0-", 0), Unsatisfiable);
    assert_eq!(r("bytes=-0", 10), Unsatisfiable);
    for ignored in [
        "bytes=5-3",
        "bytes=a-b",
        "bytes=-",
        "items=0-1",
        "bytes=0-1,3-4",
        "bytes=+1-2",
    ] {
        assert_eq!(r(ignored, 10), Full, "{ignored}");
    }
}

#[tokio::test]
async fn connections_are_bounded_and_keep_alive_is_kept() {
    let f = start(EndpointConfig {
        max_connections: 1,
        ..EndpointConfig::default()
    })
    .await;
    let mut first = client(f.addr).await;
    assert_eq!(get(&mut first, "/v2/").await.status, StatusCode::OK);
    // The only slot is taken by the idle keep-alive connection: the second waits.
    let mut second = client(f.addr).await;
    let waiting = tokio::spawn(async move { get(&mut second, "/v2/").await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "second connection served past the bound"
    );
    // The first is still usable (kept alive) ...
    assert_eq!(get(&mut first, "/v2/").await.status, StatusCode::OK);
    // ... and once it closes, the second is served.
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("second connection never served")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn silent_connections_time_out() {
    let f = start(EndpointConfig {
        header_timeout: Duration::from_millis(300),
        ..EndpointConfig::default()
    })
    .await;
    let mut stream = TcpStream::connect(f.addr).await.unwrap();
    stream.write_all(b"GET /v2/ HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .expect("not closed after the header timeout")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn shutdown_ends_serve() {
    let f = start(EndpointConfig::default()).await;
    let mut c = client(f.addr).await;
    assert_eq!(get(&mut c, "/v2/").await.status, StatusCode::OK);
    f.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), f.server)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
    assert!(TcpStream::connect(f.addr).await.is_err());
}

#[test]
fn counts_serialize() {
    let counts = EndpointStats::default().snapshot();
    let v = serde_json::to_value(counts).unwrap();
    for key in [
        "manifest_requests",
        "blob_requests",
        "other_requests",
        "partial_responses",
        "bytes_served",
        "not_found",
    ] {
        assert_eq!(v[key], 0, "{key}");
    }
}
