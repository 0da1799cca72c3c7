//! Criterion: a whole transfer over loopback between two in-process sessions (one seed, one
//! downloader, memory storage), so the engine's own cost is measured without disk. The
//! 1 GiB file-backed comparison with iperf3 and libtorrent is `scripts/bench_loopback.py`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imagewolf::random_payload;
use imagewolf_bt::metainfo::TorrentBuilder;
use imagewolf_bt::storage::MemoryStorage;
use imagewolf_bt::{AddTorrent, PeerId, Session, SessionConfig, StartFrom};

const SIZE: usize = 64 << 20;

fn loopback() -> SessionConfig {
    SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        peer_id: PeerId::generate(),
        ..SessionConfig::default()
    }
}

fn transfer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let payload = random_payload(SIZE, 7);
    let meta = TorrentBuilder::new("bench.bin")
        .build_from_reader(&payload[..], SIZE as u64, std::io::sink())
        .unwrap();
    let seed = rt.block_on(async {
        let seed = Session::new(loopback()).await.unwrap();
        let storage = Arc::new(MemoryStorage::from_vec(payload.clone()));
        seed.add_torrent(AddTorrent::new(meta.clone(), storage, StartFrom::Complete))
            .await
            .unwrap();
        seed
    });
    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    group.bench_function("seed_to_one_downloader_64MiB", |b| {
        b.to_async(&rt).iter(|| async {
            let leech = Session::new(loopback()).await.unwrap();
            let out = Arc::new(MemoryStorage::new(SIZE as u64));
            let add = AddTorrent::new(meta.clone(), out, StartFrom::Empty)
                .with_peers([seed.listen_addr()]);
            let handle = leech.add_torrent(add).await.unwrap();
            handle.wait_complete().await.unwrap();
            leech.shutdown().await;
        })
    });
    group.finish();
    rt.block_on(seed.shutdown());
}

criterion_group!(benches, transfer);
criterion_main!(benches);
