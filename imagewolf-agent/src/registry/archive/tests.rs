//! Archive layout (checked with the real `tar` tool), exact length, and blob verification.

use std::collections::HashMap;

use tokio::io::AsyncReadExt;

use super::*;
use crate::registry::client::sha256_digest;

/// Blobs from memory; `serve` can differ from what the digest names (a corrupt store).
struct Memory(HashMap<String, Vec<u8>>);

impl BlobSource for Memory {
    fn open<'a>(
        &'a self,
        blob: &'a Descriptor,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError>>
    {
        Box::pin(async move {
            let bytes = self
                .0
                .get(&blob.digest)
                .cloned()
                .ok_or_else(|| RegistryError::Failed("blob unknown".into()))?;
            // In chunks of 7000 bytes, as a network would deliver them.
            let chunks: Vec<Result<Bytes, RegistryError>> = bytes
                .chunks(7000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Ok(futures::stream::iter(chunks).boxed())
        })
    }
}

fn desc(bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
        digest: sha256_digest(bytes),
        size: bytes.len() as u64,
    }
}

/// A plan over three distinct layers (one listed twice; sizes 0, 512-aligned and odd).
fn plan() -> (ArchivePlan, HashMap<String, Vec<u8>>) {
    let layers: Vec<Vec<u8>> = vec![vec![7u8; 100_003], vec![], vec![9u8; 4096]];
    let config = br#"{"rootfs":{"type":"layers","diff_ids":["a","b","c","d"]}}"#.to_vec();
    let manifest = ImageManifest {
        config: desc(&config),
        layers: vec![
            desc(&layers[0]),
            desc(&layers[1]),
            desc(&layers[0]),
            desc(&layers[2]),
        ],
    };
    let plan = ArchivePlan::new(
        "127.0.0.1:5000/team/app".into(),
        &manifest,
        Bytes::from(config),
        Some("127.0.0.1:5000/team/app:v1".into()),
    );
    let blobs = layers.into_iter().map(|l| (sha256_digest(&l), l)).collect();
    (plan, blobs)
}

async fn export(plan: ArchivePlan, blobs: HashMap<String, Vec<u8>>) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    stream(Arc::new(plan), Arc::new(Memory(blobs)))
        .read_to_end(&mut out)
        .await?;
    Ok(out)
}

#[tokio::test]
async fn layout_listed_by_tar_and_exact_length() {
    let (plan, blobs) = plan();
    let len = plan.len;
    let config_name = format!("{}.json", hex(&plan.config.digest));
    let layer_hex: Vec<String> = plan
        .layers
        .iter()
        .map(|l| hex(&l.digest).to_owned())
        .collect();
    let out = export(plan, blobs.clone()).await.unwrap();
    assert_eq!(out.len() as u64, len, "length differs from the plan");

    let dir = std::env::temp_dir().join(format!("iw-archive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("image.tar");
    std::fs::write(&file, &out).unwrap();
    let listing = std::process::Command::new("tar")
        .arg("-tvf")
        .arg(&file)
        .output()
        .expect("run tar");
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    let mut expected = vec![config_name.clone()];
    for h in &layer_hex {
        expected.push(format!("{h}/"));
        expected.push(format!("{h}/layer.tar"));
    }
    expected.push("manifest.json".into());
    assert_eq!(names, expected, "{lines:#?}");
    assert!(
        lines[2].contains(" 100003 "),
        "size of the first layer: {}",
        lines[2]
    );
    assert!(lines[1].starts_with('d'), "{}", lines[1]);

    // Extracted by tar, each layer is the blob byte for byte; manifest.json names them.
    let x = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&file)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(x.success());
    for h in &layer_hex {
        let got = std::fs::read(dir.join(h).join("layer.tar")).unwrap();
        assert_eq!(&got, &blobs[&format!("sha256:{h}")]);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest[0]["Config"], config_name.as_str());
    assert_eq!(manifest[0]["RepoTags"][0], "127.0.0.1:5000/team/app:v1");
    let listed: Vec<&str> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[0], listed[2], "the repeated layer is named twice");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_bad_blob_fails_the_stream_and_names_the_blob() {
    let (plan, blobs) = plan();
    let victim = plan.layers[2].digest.clone();
    type Corrupt = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: [(&str, Corrupt); 3] = [
        ("digest mismatch", Box::new(|b: &mut Vec<u8>| b[10] ^= 1)),
        (
            "sent 4095 bytes",
            Box::new(|b: &mut Vec<u8>| {
                b.pop();
            }),
        ),
        (
            "more than the 4096 bytes",
            Box::new(|b: &mut Vec<u8>| b.push(0)),
        ),
    ];
    for (expect, corrupt) in cases {
        let mut blobs = blobs.clone();
        corrupt(blobs.get_mut(&victim).unwrap());
        let (plan, _) = self::plan();
        let err = export(plan, blobs).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(expect), "{expect}: {msg}");
        assert!(
            msg.contains(&victim) && msg.contains("layer 3 of 3"),
            "{msg}"
        );
    }
    // A blob the store does not have.
    let mut missing = blobs.clone();
    missing.remove(&victim);
    let err = export(self::plan().0, missing).await.unwrap_err();
    assert!(err.to_string().contains("blob unknown"), "{err}");
}

#[test]
fn huge_layers_get_base256_sizes_and_the_length_is_exact() {
    // The size field of a ustar header holds 8 GiB - 1 in octal; beyond, base-256.
    let big = 9u64 << 30;
    let h = header("x/layer.tar", big, false).unwrap();
    let parsed = tar::Header::from_byte_slice(&h);
    assert_eq!(parsed.size().unwrap(), big);
    let m = ImageManifest {
        config: desc(b"{}"),
        layers: vec![Descriptor {
            size: big,
            ..desc(b"x")
        }],
    };
    let p = ArchivePlan::new("r/a".into(), &m, Bytes::from_static(b"{}"), None);
    assert_eq!(
        p.len,
        512 + 512 + 512 + 512 + big + 512 + padded(p.manifest_json.len() as u64) + 1024
    );
    assert!(p.manifest_json.starts_with(br#"[{"Config":"#));
}
