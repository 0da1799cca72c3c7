//! Unit tests of the containerd loader's pure parts (listing parsers, ids, clipping, the
//! hosts file) and of its refusals before `ctr` runs. containerd itself is exercised in
//! `tests/containerd.rs`.

use super::ctr::{clip, read_bounded};
use super::endpoint_pull::hosts_toml;
use super::images::{normalize_id, parse_content, parse_images, target_has_config};
use super::*;

const ID: &str = "sha256:d9eb266c682df50d3d657506678b2a918ea4bdacb7a6ea1a0f4e331aa3f25ffc";
const MANIFEST: &str = "sha256:91eada5519eee967ae0ff74f21cef346c0b137f09e7662bf874b0d08807d03ca";

// Real output of ctr 1.6 after importing a `docker save` tarball (CRI plugin off: no
// `sha256:` reference).
fn images_ls() -> String {
    format!(
        "REF                        TYPE                                                 DIGEST  SIZE    PLATFORMS   LABELS\n\
         127.0.0.1:5000/test/app:v2 application/vnd.docker.distribution.manifest.v2+json {MANIFEST} 1.9 MiB linux/amd64 -\n"
    )
}

fn content_ls() -> String {
    format!(
        "DIGEST\t\t\t\t\t\t\t\t\tSIZE\tAGE\t\t\tLABELS\n\
         sha256:1025715e0470f72b2164fa5a558ecf43e4204630d55fb2b63493a43b367c1196\t1.191kB\tLess than a second\t-\n\
         {MANIFEST}\t582B\tLess than a second\tcontainerd.io/gc.ref.content.config={ID},containerd.io/gc.ref.content.l.0=sha256:c360cba30be1b49dd01252878dfd85a014ee694370d96b3f6e2aa9ac5ff9e1a5\n\
         {ID}\t1.476kB\t2 minutes\tcontainerd.io/gc.ref.snapshot.overlayfs=sha256:7685bcf41a3a91e07094d7cc89bc6da23da7942577f57fcae0b6ddbd0c8d85f5\n"
    )
}

#[test]
fn finds_config_through_manifest() {
    let images = parse_images(&images_ls());
    assert_eq!(
        images,
        vec![("127.0.0.1:5000/test/app:v2".to_owned(), MANIFEST.to_owned())]
    );
    let content = parse_content(&content_ls());
    assert!(target_has_config(&content, MANIFEST, ID));
    let other = normalize_id(&"ab".repeat(32));
    assert!(!target_has_config(&content, MANIFEST, &other));
    // The config blob itself is content, not an image target.
    assert!(!target_has_config(&content, ID, ID));
}

#[test]
fn finds_config_through_index() {
    let index = "sha256:".to_owned() + &"1".repeat(64);
    let listing = format!(
        "{}{index}\t358B\t1 hour\tcontainerd.io/gc.ref.content.m.0=sha256:{},containerd.io/gc.ref.content.m.1={MANIFEST}\n",
        content_ls(),
        "2".repeat(64)
    );
    let content = parse_content(&listing);
    assert!(target_has_config(&content, &index, ID));
    assert!(!target_has_config(
        &content,
        &index,
        &normalize_id(&"3".repeat(64))
    ));
}

#[test]
fn garbage_listings_parse_to_nothing() {
    for junk in [
        "", "\n\n", "REF TYPE", "a b c", "\t\t\t", "sha256:x", "x=y,=,,",
    ] {
        let content = parse_content(junk);
        assert!(!target_has_config(&content, "sha256:x", ID), "{junk:?}");
        assert!(parse_images(junk).is_empty(), "{junk:?}");
    }
}

#[test]
fn ids_and_clipping() {
    assert_eq!(
        normalize_id(&"AB".repeat(32)),
        format!("sha256:{}", "ab".repeat(32))
    );
    assert_eq!(normalize_id(ID), ID);
    let long = "\u{e9}".repeat(MAX_MESSAGE_LEN);
    assert!(clip(&long).len() <= MAX_MESSAGE_LEN + 3);
}

#[test]
fn hosts_file() {
    assert_eq!(
        hosts_toml("10.0.0.1:5000", "127.0.0.1:5055"),
        "# Written by imagewolf-agent: pulls go through the agent's endpoint first.\n\
         server = \"http://10.0.0.1:5000\"\n\n\
         [host.\"http://127.0.0.1:5055\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
}

#[tokio::test]
async fn endpoint_pull_checks_names_first() {
    let dir = std::env::temp_dir().join(format!("imagewolf-hosts-test-{}", std::process::id()));
    let c = Containerd {
        config: ContainerdConfig {
            ctr: PathBuf::from("/nonexistent/ctr"),
            ..ContainerdConfig::default()
        },
        hosts_dir: dir.clone(),
    };
    let digest = format!("sha256:{}", "ab".repeat(32));
    let image = |registry: &str, repository: &str, tag: Option<&str>| ImageRef {
        registry: registry.into(),
        repository: repository.into(),
        tag: tag.map(str::to_owned),
        digest: None,
    };
    for (endpoint, image, digest) in [
        ("127.0.0.1:1/x", image("r:1", "a", None), digest.as_str()),
        ("127.0.0.1:1", image("../etc", "a", None), &digest),
        ("127.0.0.1:1", image("r:1", "a\"b", None), &digest),
        ("127.0.0.1:1", image("r:1", "a", Some("t\n")), &digest),
        ("127.0.0.1:1", image("r:1", "a", None), "sha256:abc"),
    ] {
        let e = c
            .pull_through_endpoint(endpoint, &image, digest)
            .await
            .unwrap_err();
        assert!(matches!(e, ContainerdError::InvalidName { .. }), "{e}");
    }
    assert!(!dir.exists(), "nothing is written for a refused name");
    // A good name gets its hosts file, then ctr's absence is the error.
    let e = c
        .pull_through_endpoint("127.0.0.1:1", &image("r:1", "a/b", Some("v1")), &digest)
        .await
        .unwrap_err();
    assert!(matches!(e, ContainerdError::Spawn { .. }), "{e}");
    let written = std::fs::read_to_string(dir.join("r:1/hosts.toml")).unwrap();
    assert_eq!(written, hosts_toml("r:1", "127.0.0.1:1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn missing_ctr_is_a_clear_error() {
    let c = Containerd {
        config: ContainerdConfig {
            ctr: PathBuf::from("/nonexistent/ctr"),
            ..ContainerdConfig::default()
        },
        hosts_dir: default_hosts_dir(),
    };
    let e = c.has_image_id(ID).await.unwrap_err();
    assert!(matches!(e, ContainerdError::Spawn { .. }), "{e}");
    let e = c.has_image_id("sha256:../../etc").await.unwrap_err();
    assert!(matches!(e, ContainerdError::InvalidImageId(_)), "{e}");
}

#[tokio::test]
async fn output_is_bounded() {
    let big = vec![b'x'; usize::try_from(MAX_OUTPUT).unwrap() + 10];
    let (kept, dropped) = read_bounded(&big[..]).await.unwrap();
    assert_eq!(kept.len() as u64, MAX_OUTPUT);
    assert!(dropped);
    let (kept, dropped) = read_bounded(&b"small"[..]).await.unwrap();
    assert_eq!(kept, b"small");
    assert!(!dropped);
}
