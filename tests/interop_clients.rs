//! Interoperability with the mainstream clients besides libtorrent: aria2 and Transmission,
//! both directions, each held to libtorrent's own time in the same run; and the habits of
//! theirs a strict engine trips on (a Bitfield in the middle of a connection), played by a
//! raw-socket peer.

use std::sync::Arc;
use std::time::Duration;

use imagewolf::random_payload;
use imagewolf_bt::metainfo::TorrentBuilder;
use imagewolf_bt::storage::MemoryStorage;
use imagewolf_bt::wire::{
    bitfield, Bytes, BytesMut, DecoderLimits, ExtensionHandshake, Handshake, Message,
    MessageDecoder, EXTENDED_HANDSHAKE_ID,
};
use imagewolf_bt::{AddTorrent, PeerId, Session, SessionConfig, StartFrom, TorrentEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn loopback() -> SessionConfig {
    SessionConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        peer_id: PeerId::generate(),
        ..SessionConfig::default()
    }
}

/// A raw-socket seed that announces its pieces as aria2 does: extension handshake first,
/// then (after an Unchoke, i.e. after other messages) a Bitfield with the first half of
/// the pieces, and once all of those were served, a second Bitfield with every piece in
/// place of HAVEs. With `fast`, it starts with HaveNone as BEP 6 requires and ends with
/// HaveAll instead of the second Bitfield. Serves every request on one connection; returns
/// the number of blocks it served once our side closes the connection.
async fn aria2_style_seed(
    mut stream: TcpStream,
    info_hash: imagewolf_bt::InfoHash,
    payload: Arc<Vec<u8>>,
    lengths: imagewolf_bt::Lengths,
    fast: bool,
) -> usize {
    let mut ours = Handshake::new(info_hash, PeerId::generate());
    if !fast {
        ours.reserved[7] &= !0x04;
    }
    stream.write_all(&ours.encode()).await.unwrap();
    let mut theirs = [0u8; Handshake::LEN];
    stream.read_exact(&mut theirs).await.unwrap();
    assert_eq!(Handshake::decode(&theirs).unwrap().info_hash, info_hash);

    let n = lengths.num_pieces();
    let half = n / 2;
    let mut first_half = vec![0u8; lengths.bitfield_len()];
    for p in 0..half {
        bitfield::set_piece(&mut first_half, p);
    }
    let half_blocks: usize = (0..half)
        .map(|p| lengths.blocks_in_piece(lengths.piece(p).unwrap()) as usize)
        .sum();
    let mut out = BytesMut::new();
    let ext = ExtensionHandshake {
        v: Some("aria2/1.36.0".into()),
        ..ExtensionHandshake::default()
    };
    Message::Extended {
        id: EXTENDED_HANDSHAKE_ID,
        payload: ext.encode(),
    }
    .encode(&mut out);
    if fast {
        Message::HaveNone.encode(&mut out);
    }
    Message::Unchoke.encode(&mut out);
    Message::Bitfield(Bytes::from(first_half)).encode(&mut out);
    stream.write_all(&out).await.unwrap();

    let mut decoder = MessageDecoder::new(DecoderLimits::for_torrent(&lengths));
    let mut buf = BytesMut::with_capacity(1 << 16);
    let mut served = 0usize;
    loop {
        while let Some(msg) = decoder.decode(&mut buf).unwrap() {
            let Message::Request(raw) = msg else { continue };
            let block = lengths
                .block_at(raw.index, raw.begin, raw.length)
                .expect("a request inside the torrent");
            assert!(
                served >= half_blocks || raw.index < half,
                "piece {} requested before it was announced",
                raw.index
            );
            let at = lengths.block_offset(block) as usize;
            let mut out = BytesMut::new();
            Message::Piece {
                index: raw.index,
                begin: raw.begin,
                data: Bytes::copy_from_slice(&payload[at..at + raw.length as usize]),
            }
            .encode(&mut out);
            served += 1;
            if served == half_blocks {
                // Everything announced so far went out: announce the rest in bulk.
                if fast {
                    Message::HaveAll.encode(&mut out);
                } else {
                    Message::Bitfield(Bytes::from(vec![0xff; lengths.bitfield_len()]))
                        .encode(&mut out);
                }
            }
            stream.write_all(&out).await.unwrap();
        }
        buf.reserve(1 << 16);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return served,
            Ok(_) => {}
        }
    }
}

async fn late_bitfield_keeps_the_connection(fast: bool) {
    // 3 MiB of 64 KiB pieces: 48 pieces, 192 blocks.
    let payload = Arc::new(random_payload(3 << 20, 21));
    let meta = TorrentBuilder::new("late.bin")
        .build_from_reader(&payload[..], payload.len() as u64, std::io::sink())
        .unwrap();
    let lengths = meta.lengths();
    let leech = Session::new(loopback()).await.unwrap();
    let out = Arc::new(MemoryStorage::new(meta.total_len()));
    let handle = leech
        .add_torrent(AddTorrent::new(meta.clone(), out.clone(), StartFrom::Empty))
        .await
        .unwrap();
    let mut events = handle.events();
    let stream = TcpStream::connect(leech.listen_addr()).await.unwrap();
    let peer = tokio::spawn(aria2_style_seed(
        stream,
        meta.info_hash(),
        Arc::clone(&payload),
        lengths,
        fast,
    ));
    let done = tokio::time::timeout(Duration::from_secs(30), handle.wait_complete()).await;
    // Any disconnect before completion is the bug this test is about: report it.
    let mut disconnects = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let TorrentEvent::PeerDisconnected { reason, .. } = event {
            disconnects.push(reason);
        }
    }
    done.unwrap_or_else(|_| {
        panic!(
            "download from a late-Bitfield peer (fast: {fast}) did not complete: {} of {} pieces; disconnects: {disconnects:?}",
            handle.stats().have_pieces,
            lengths.num_pieces()
        )
    })
    .unwrap();
    assert!(disconnects.is_empty(), "{disconnects:?}");
    assert!(out.to_vec() == *payload, "our copy differs");
    leech.shutdown().await;
    let served = tokio::time::timeout(Duration::from_secs(10), peer)
        .await
        .expect("the raw peer saw the connection end")
        .unwrap();
    let blocks: usize = lengths
        .pieces()
        .map(|p| lengths.blocks_in_piece(p) as usize)
        .sum();
    assert_eq!(served, blocks, "every block came over the one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bitfield_after_other_messages_keeps_the_connection() {
    late_bitfield_keeps_the_connection(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn have_all_after_a_late_bitfield_keeps_the_connection() {
    late_bitfield_keeps_the_connection(true).await;
}
