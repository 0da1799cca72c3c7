//! Subnet leases and cleanup for [`super::Cluster`]: claiming a free /24 with a lock file,
//! tearing down exactly what a cluster created, and sweeping what a killed test process left
//! behind (see the parent module's doc for the reasoning).

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::{forward_rule, io_err, iptables_present, run, run_logged, ClusterError, LOCK_DIR};

/// Everything a cluster created, in creation order, so that a half-built cluster is torn down
/// exactly like a whole one.
#[derive(Debug, Default)]
pub(super) struct Created {
    pub(super) lock: Option<PathBuf>,
    pub(super) bridge: Option<String>,
    /// The bridge whose `FORWARD` rule was inserted.
    pub(super) forward_rule: Option<String>,
    pub(super) netns: Vec<String>,
    pub(super) etc_dirs: Vec<PathBuf>,
    pub(super) host_veths: Vec<String>,
}

/// Removes what `created` lists. Order matters: processes first (they pin namespaces), then
/// links (deleting a veth end deletes its peer at once, instead of whenever the kernel
/// gets round to freeing the namespace), then namespaces, files, rule, and last the lock.
pub(super) fn teardown(created: &Created) {
    for ns in &created.netns {
        kill_namespace_processes(ns);
    }
    for veth in &created.host_veths {
        run_logged("ip", &["link", "del", "dev", veth]);
    }
    if let Some(bridge) = &created.bridge {
        run_logged("ip", &["link", "del", "dev", bridge]);
    }
    if let Some(bridge) = &created.forward_rule {
        let mut args = vec!["-D"];
        args.extend(forward_rule(bridge));
        run_logged("iptables", &args);
    }
    for ns in &created.netns {
        run_logged("ip", &["netns", "del", ns]);
    }
    for dir in &created.etc_dirs {
        if let Err(e) = fs::remove_dir_all(dir) {
            eprintln!("cluster teardown: removing {}: {e}", dir.display());
        }
    }
    if let Some(lock) = &created.lock {
        let _ = fs::remove_file(lock);
    }
}

/// SIGKILLs, by pid, the processes inside namespace `ns` (only ones the cluster's user started).
fn kill_namespace_processes(ns: &str) {
    let Ok(pids) = run("ip", &["netns", "pids", ns]) else {
        return;
    };
    let pids: Vec<&str> = pids
        .split_whitespace()
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    if !pids.is_empty() {
        let mut args = vec!["-KILL"];
        args.extend(&pids);
        // A process may exit on its own meanwhile; that is not worth a message.
        let _ = run("kill", &args);
    }
}

/// Candidate /24s overlapping an address or route of the root namespace are skipped.
fn used_networks() -> Result<Vec<(u32, u32)>, ClusterError> {
    let mut text = run("ip", &["-4", "-o", "addr", "show"])?;
    text.push_str(&run("ip", &["-4", "route", "show", "table", "all"])?);
    let mut nets = Vec::new();
    for token in text.split_whitespace() {
        let (addr, len) = token.split_once('/').unwrap_or((token, "32"));
        let (Ok(addr), Ok(len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
            continue;
        };
        if (1..=32).contains(&len) {
            let mask = u32::MAX << (32 - len);
            nets.push((u32::from(addr) & mask, mask));
        }
    }
    Ok(nets)
}

fn overlaps(candidate: [u8; 3], used: &[(u32, u32)]) -> bool {
    let [a, b, c] = candidate;
    let ours = u32::from(Ipv4Addr::new(a, b, c, 0));
    let our_mask = u32::MAX << 8;
    used.iter().any(|&(net, mask)| {
        let common = mask & our_mask;
        net & common == ours & common
    })
}

pub(super) fn write_lock(path: &Path, tag: &str) -> Result<(), ClusterError> {
    fs::write(path, format!("{} {tag}\n", std::process::id()))
        .map_err(io_err(format!("writing {}", path.display())))
}

/// Picks a free random /24 and claims it with an exclusive lock file holding pid and tag.
pub(super) fn claim_subnet(tag: &str) -> Result<([u8; 3], PathBuf), ClusterError> {
    fs::create_dir_all(LOCK_DIR).map_err(io_err(format!("creating {LOCK_DIR}")))?;
    let used = used_networks()?;
    for _ in 0..256 {
        let pick = rand::random::<u32>();
        let subnet = [10, 77 + (pick % 23) as u8, (pick >> 8) as u8];
        if overlaps(subnet, &used) {
            continue;
        }
        let [a, b, c] = subnet;
        let path = Path::new(LOCK_DIR).join(format!("{a}.{b}.{c}"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                let line = format!("{} {tag}\n", std::process::id());
                if let Err(e) = file.write_all(line.as_bytes()) {
                    let _ = fs::remove_file(&path);
                    return Err(io_err(format!("writing {}", path.display()))(e));
                }
                return Ok((subnet, path));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(format!("creating {}", path.display()))(e)),
        }
    }
    Err(ClusterError::NoFreeSubnet)
}

/// Tears down clusters whose owning process is gone (see the module doc).
pub(super) fn sweep_stale_clusters() {
    let Ok(entries) = fs::read_dir(LOCK_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "sweep") {
            continue;
        }
        let Some((pid, tag)) = read_lock(&path) else {
            continue; // being written, or not ours
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        // Renaming first makes one sweeper the owner of the leftovers; the re-read guards
        // against a lock that was re-created for the same subnet in between.
        let claimed = path.with_extension(format!("{}.sweep", std::process::id()));
        if fs::rename(&path, &claimed).is_err() {
            continue;
        }
        if read_lock(&claimed) != Some((pid, tag.clone())) {
            let _ = fs::rename(&claimed, &path);
            continue;
        }
        eprintln!("cluster: removing leftovers of dead pid {pid} (tag {tag})");
        teardown(&leftovers(&tag));
        let _ = fs::remove_file(&claimed);
    }
}

fn read_lock(path: &Path) -> Option<(u32, String)> {
    let text = fs::read_to_string(path).ok()?;
    let (pid, tag) = text.trim().split_once(' ')?;
    if tag.len() != 6 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((pid.parse().ok()?, tag.to_owned()))
}

/// What a dead cluster with `tag` may have left, found by name.
fn leftovers(tag: &str) -> Created {
    let prefix = format!("iw{tag}");
    let mut created = Created::default();
    if let Ok(list) = run("ip", &["netns", "list"]) {
        created.netns = list
            .split_whitespace()
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .map(str::to_owned)
            .collect();
    }
    let bridge = format!("{prefix}br");
    if let Ok(links) = run("ip", &["-o", "link", "show"]) {
        for name in links.lines().filter_map(|l| l.split(": ").nth(1)) {
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(&format!("{prefix}h")) {
                created.host_veths.push(name.to_owned());
            } else if name == bridge {
                created.bridge = Some(bridge.clone());
            }
        }
    }
    if iptables_present() {
        let mut args = vec!["-C"];
        args.extend(forward_rule(&bridge));
        if run("iptables", &args).is_ok() {
            created.forward_rule = Some(bridge);
        }
    }
    if let Ok(dirs) = fs::read_dir("/etc/netns") {
        created.etc_dirs = dirs
            .flatten()
            .map(|d| d.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{prefix}-")))
            })
            .collect();
    }
    created
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_covers_containing_contained_and_equal_networks() {
        let net = |a, b, c, d, len: u32| {
            let mask = u32::MAX << (32 - len);
            (u32::from(Ipv4Addr::new(a, b, c, d)) & mask, mask)
        };
        assert!(overlaps([10, 80, 3], &[net(10, 0, 0, 0, 8)]));
        assert!(overlaps([10, 80, 3], &[net(10, 80, 3, 7, 32)]));
        assert!(overlaps([10, 80, 3], &[net(10, 80, 3, 0, 24)]));
        assert!(overlaps([10, 80, 3], &[net(10, 80, 3, 128, 25)]));
        assert!(!overlaps([10, 80, 3], &[net(10, 80, 4, 0, 24)]));
        assert!(!overlaps(
            [10, 80, 3],
            &[net(192, 0, 2, 2, 24), net(10, 81, 0, 0, 16)]
        ));
    }

    #[test]
    fn lock_lines_parse_only_when_well_formed() {
        let dir = crate::TempDir::new("lease").unwrap();
        let path = dir.path().join("10.80.3");
        for (text, want) in [
            ("123 0a1b2c\n", Some((123, "0a1b2c".to_owned()))),
            ("", None),
            ("123", None),
            ("x 0a1b2c", None),
            ("123 0a1b2", None),
            ("123 0a1b2g", None),
        ] {
            fs::write(&path, text).unwrap();
            assert_eq!(read_lock(&path), want, "{text:?}");
        }
    }
}
