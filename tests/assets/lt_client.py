#!/usr/bin/python3
"""libtorrent 2.0 as a reference peer for ImageWolf's interoperability tests and benchmarks.

  lt_client.py seed TORRENT SAVE_DIR --listen IP:PORT [--seconds N]
  lt_client.py download TORRENT SAVE_DIR --listen IP:PORT [--peer IP:PORT]... [--timeout S]
  lt_client.py magnet MAGNET_URI SAVE_DIR --listen IP:PORT [--peer IP:PORT]... [--timeout S]
      (a download that first fetches the torrent's metadata from peers, BEP 9)

Prints one JSON object per line: {"event": "listening", "port": P}, progress lines, and
{"event": "complete", "seconds": S} when a download finishes (then exits 0). Settings are
libtorrent's high-performance seeding preset, with everything that would reach outside the
test (DHT, LSD, UPnP, NAT-PMP) off, TCP only, and several peers per IP allowed (all peers share an IP on
loopback).
"""
import argparse
import json
import sys
import time

import libtorrent as lt


def emit(**kw):
    print(json.dumps(kw), flush=True)


def session(listen):
    settings = lt.high_performance_seed()
    settings.update({
        "listen_interfaces": listen,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        # TCP only: uTP's delay-based congestion control caps a loopback transfer at ~10 MB/s,
        # and ImageWolf speaks TCP, so this keeps the comparison like for like.
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "alert_mask": lt.alert.category_t.error_notification | lt.alert.category_t.status_notification,
    })
    return lt.session(settings)


def active(params):
    """Started at once: libtorrent adds a torrent paused and auto-managed, and until its queue
    manager starts it (up to a second later) it hangs up on every peer's handshake."""
    params.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    return params


def add(ses, torrent, save_dir, seed, magnet=False):
    if magnet:
        params = lt.parse_magnet_uri(torrent)
        params.save_path = save_dir
        return ses.add_torrent(active(params))
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = save_dir
    if seed:
        params.flags |= lt.torrent_flags.seed_mode
    return ses.add_torrent(active(params))


def ready(h):
    """Whether the torrent is past adding and checking, so a peer's handshake is answered."""
    st = h.status()
    if st.paused:
        return False
    if not st.has_metadata:
        return True  # a magnet download: nothing to check before the metadata arrives
    return st.state in (lt.torrent_status.states.downloading, lt.torrent_status.states.seeding,
                        lt.torrent_status.states.finished)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["seed", "download", "magnet"])
    p.add_argument("torrent")
    p.add_argument("save_dir")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--seconds", type=float, default=0)
    args = p.parse_args()

    ses = session(args.listen)
    h = add(ses, args.torrent, args.save_dir, args.mode == "seed", args.mode == "magnet")
    if args.mode == "magnet":
        args.mode = "download"
    # "listening" means peers are answered: libtorrent accepts connections at once but hangs
    # up on handshakes for a torrent still being added or checked.
    ready_by = time.time() + 30
    while not ready(h) and time.time() < ready_by:
        time.sleep(0.01)
    emit(event="listening", port=ses.listen_port(), info_hash=str(h.info_hash()))
    for peer in args.peer:
        ip, port = peer.rsplit(":", 1)
        h.connect_peer((ip, int(port)))

    start = time.time()
    last = 0.0
    while True:
        for a in ses.pop_alerts():
            if a.category() & lt.alert.category_t.error_notification:
                emit(event="alert", message=a.message())
        st = h.status()
        now = time.time()
        if now - last >= 1.0:
            last = now
            emit(event="progress", progress=st.progress, peers=st.num_peers,
                 down=st.download_payload_rate, up=st.upload_payload_rate,
                 uploaded=st.total_payload_upload, state=str(st.state))
        if args.mode == "download" and st.is_seeding:
            emit(event="complete", seconds=now - start, wasted=st.total_redundant_bytes,
                 failed=st.total_failed_bytes)
            return 0
        if args.mode == "download" and now - start > args.timeout:
            emit(event="timeout", progress=st.progress)
            return 1
        if args.mode == "seed" and args.seconds and now - start > args.seconds:
            return 0
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
