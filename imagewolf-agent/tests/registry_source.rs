//! The registry-API source against a real Debian `docker-registry` and real dockerds: the
//! archive it streams (no Docker involved) loads into a fresh dockerd as the same image
//! with its tag; a corrupted blob in the registry's storage fails the export, naming the
//! blob. Needs root, `docker.io` and `docker-registry`; without them the tests fail with the
//! install command, they never skip.

use std::path::Path;
use std::time::{Duration, Instant};

use imagewolf::docker::{build_and_push, start_daemons, Dockerd, Registry};
use imagewolf::TempDir;
use imagewolf_agent::docker::Docker;
use imagewolf_agent::image::ImageRef;
use imagewolf_agent::loader::ImageLoader;
use imagewolf_agent::registry::{HostPolicy, RegistrySource};
use imagewolf_agent::source::{ImageSource, PulledImage};

fn image_ref(
    registry: &str,
    repository: &str,
    tag: Option<&str>,
    digest: Option<&str>,
) -> ImageRef {
    ImageRef {
        registry: registry.into(),
        repository: repository.into(),
        tag: tag.map(str::to_owned),
        digest: digest.map(str::to_owned),
    }
}

/// Exports through `source` into `path`; the bytes written, or the stream's error.
async fn export_to(
    source: &RegistrySource,
    pulled: &PulledImage,
    path: &Path,
) -> std::io::Result<u64> {
    let mut tarball = source.export(pulled).await.expect("export starts");
    let mut file = tokio::fs::File::create(path).await?;
    let n = tokio::io::copy(&mut tarball, &mut file).await?;
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_archive_loads_into_a_fresh_dockerd_with_id_and_tag() {
    let t0 = Instant::now();
    let registry = Registry::start_local().expect("registry starts");
    let daemons = start_daemons(&["rsbuild", "rsload"]);
    let (builder, fresh) = (&daemons[0], &daemons[1]);
    let reference = format!("{}/test/regsrc:v1", registry.addr());
    let (image_id, digest) = build_and_push(builder, &reference, 4, 3);
    // The test registry is on 127.0.0.1: named, as `--allow 127.0.0.1:PORT/**` would.
    let source = RegistrySource::new().with_policy(HostPolicy::naming([registry.addr()]));
    let tmp = TempDir::new("regsrc").unwrap();

    // By tag: pulled without Docker; the archive is exactly size_hint bytes.
    let pulled = source
        .pull(&image_ref(registry.addr(), "test/regsrc", Some("v1"), None))
        .await
        .unwrap_or_else(|e| panic!("pull: {e}"));
    assert_eq!(
        pulled.image_id, image_id,
        "image id = config digest = Docker's id"
    );
    assert_eq!(pulled.reference, reference);
    let by_tag = tmp.path().join("by-tag.tar");
    let t = Instant::now();
    let written = export_to(&source, &pulled, &by_tag).await.expect("export");
    eprintln!("export of {written} bytes took {:?}", t.elapsed());
    assert_eq!(written, pulled.size_hint, "archive length == size_hint");
    assert!(written > (4 * 3) << 20, "{written}");

    // The fresh dockerd loads it (gzip layers as they came: dockerd decompresses them and
    // checks them against the config's diff_ids): same id, and the tag.
    let docker = Docker::connect(&fresh.docker_host()).await.unwrap();
    assert!(!docker.has_image(&image_id).await.unwrap());
    docker
        .load(&by_tag)
        .await
        .unwrap_or_else(|e| panic!("docker load: {e}\n{}", fresh.log_tail()));
    assert!(docker.has_image(&image_id).await.unwrap());
    assert_eq!(fresh.image_id(&reference).unwrap(), image_id);
    let tags = docker.image_tags(&image_id).await.unwrap();
    assert_eq!(tags, vec![reference.clone()]);
    // The loaded layers are the pushed ones (same chain): the builder's rootfs layers match.
    let layers = |d: &Dockerd| {
        d.run_cli(&[
            "image",
            "inspect",
            "--format",
            "{{json .RootFS.Layers}}",
            &image_id,
        ])
        .unwrap()
    };
    assert_eq!(layers(fresh), layers(builder));

    // By digest only: no tag in the archive; loads (after rmi) to the same id, untagged.
    let pulled = source
        .pull(&image_ref(
            registry.addr(),
            "test/regsrc",
            None,
            Some(&digest),
        ))
        .await
        .unwrap_or_else(|e| panic!("pull by digest: {e}"));
    assert_eq!(pulled.image_id, image_id);
    let by_digest = tmp.path().join("by-digest.tar");
    assert_eq!(
        export_to(&source, &pulled, &by_digest).await.unwrap(),
        pulled.size_hint
    );
    fresh.run_cli(&["rmi", &reference]).unwrap();
    assert!(!docker.has_image(&image_id).await.unwrap());
    docker
        .load(&by_digest)
        .await
        .unwrap_or_else(|e| panic!("load by digest: {e}"));
    assert!(docker.has_image(&image_id).await.unwrap());
    assert_eq!(
        docker.image_tags(&image_id).await.unwrap(),
        Vec::<String>::new()
    );

    // Tag and digest: fetched by digest, tagged in the archive; same bytes as by tag.
    let pulled = source
        .pull(&image_ref(
            registry.addr(),
            "test/regsrc",
            Some("v1"),
            Some(&digest),
        ))
        .await
        .unwrap();
    let both = tmp.path().join("both.tar");
    export_to(&source, &pulled, &both).await.unwrap();
    assert!(
        std::fs::read(&both).unwrap() == std::fs::read(&by_tag).unwrap(),
        "deterministic archive"
    );

    // Unknown tag: a permanent error, not one for Docker.
    let err = source
        .pull_image(&image_ref(
            registry.addr(),
            "test/regsrc",
            Some("nope"),
            None,
        ))
        .await
        .unwrap_err();
    assert!(!err.retryable() && !err.wants_fallback(), "{err:?}");
    eprintln!("whole test {:?}", t0.elapsed());
}

/// The path of a blob in distribution's filesystem storage.
fn blob_file(registry: &Registry, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    registry
        .dir()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_blob_in_the_registry_fails_the_export_naming_it() {
    let registry = Registry::start_local().expect("registry starts");
    let builder = start_daemons(&["rscorrupt"]).remove(0);
    let reference = format!("{}/test/corrupt:v1", registry.addr());
    build_and_push(&builder, &reference, 3, 2);
    // The test registry is on 127.0.0.1: named, as `--allow 127.0.0.1:PORT/**` would.
    let source = RegistrySource::new().with_policy(HostPolicy::naming([registry.addr()]));
    let image = image_ref(registry.addr(), "test/corrupt", Some("v1"), None);
    let pulled = source.pull(&image).await.unwrap();
    let plan = pulled.archive.clone().unwrap();
    let victim = plan.layers[1].digest.clone();
    let file = blob_file(&registry, &victim);
    let mut bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(bytes.len() as u64, plan.layers[1].size);
    // Same length, different bytes in the middle.
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&file, &bytes).unwrap();

    let tmp = TempDir::new("regsrc-corrupt").unwrap();
    let out = tmp.path().join("image.tar");
    let err = export_to(&source, &pulled, &out)
        .await
        .expect_err("a corrupted blob must fail the export");
    let msg = err.to_string();
    eprintln!("export error: {msg}");
    assert!(msg.contains("digest mismatch"), "{msg}");
    assert!(
        msg.contains(&victim) && msg.contains("layer 2 of 3"),
        "{msg}"
    );
    // The archive never completed: no manifest.json was written.
    let written = std::fs::metadata(&out).unwrap().len();
    assert!(
        written < pulled.size_hint,
        "{written} of {}",
        pulled.size_hint
    );
}

/// Measures (and prints) exporting a 128 MiB 4-layer image from the local registry through
/// the registry source vs `docker pull` + `docker save` of the same image on this machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_time_vs_docker_pull_and_save_128_mib() {
    let registry = Registry::start_local().expect("registry starts");
    let daemons = start_daemons(&["rsbench", "rspull"]);
    let (builder, puller) = (&daemons[0], &daemons[1]);
    let reference = format!("{}/test/bench:v1", registry.addr());
    build_and_push(builder, &reference, 4, 32);
    let tmp = TempDir::new("regsrc-bench").unwrap();

    let t = Instant::now();
    puller.run_cli(&["pull", &reference]).unwrap();
    let pulled_in = t.elapsed();
    let saved = tmp.path().join("docker-save.tar");
    puller
        .run_cli(&["save", "-o", &saved.to_string_lossy(), &reference])
        .unwrap();
    let docker_total = t.elapsed();
    std::fs::remove_file(&saved).unwrap();

    // The test registry is on 127.0.0.1: named, as `--allow 127.0.0.1:PORT/**` would.
    let source = RegistrySource::new().with_policy(HostPolicy::naming([registry.addr()]));
    let t = Instant::now();
    let pulled = source
        .pull(&image_ref(registry.addr(), "test/bench", Some("v1"), None))
        .await
        .unwrap();
    let out = tmp.path().join("registry.tar");
    let n = export_to(&source, &pulled, &out).await.unwrap();
    let ours = t.elapsed();
    assert_eq!(n, pulled.size_hint);
    eprintln!(
        "128 MiB, 4 layers: registry source pull+export {ours:?} ({:.0} MiB/s); \
         docker pull {pulled_in:?} + save {:?} = {docker_total:?}; ratio {:.1}x",
        n as f64 / (1 << 20) as f64 / ours.as_secs_f64(),
        docker_total - pulled_in,
        docker_total.as_secs_f64() / ours.as_secs_f64()
    );
    // Generous: it streams blobs to disk, Docker decompresses, unpacks and re-tars them.
    assert!(
        ours < docker_total.max(Duration::from_secs(1)),
        "registry source {ours:?} not faster than docker pull+save {docker_total:?}"
    );
}
