//! Run 5: the everyday update. Every node has v1 (S MiB in 4 layers); v2 = v1 plus one new
//! layer of D MiB is pushed.
//!
//! - The registry herd: every dockerd pulled v1 from the registry earlier; all pull v2 at
//!   once, each fetching only the new layer and config (dockerd skips layers it has).
//! - ImageWolf with `--distribution blobs`: v1 went out through ImageWolf (that first push
//!   is measured too: the registry-native path's first push), then v2 is pushed; each node's
//!   time runs from the end of the push until its dockerd has v2.
//!
//! Same shaped links, same registry node, same dockerds as runs 3 and 4.

use std::time::Duration;

use imagewolf::docker::{Dockerd, Registry};

use crate::docker_runs::{self, measure_push, start_registry_and_agents, E2eSetup};
use crate::report::RunResult;

/// The registry herd of an update (see the module docs).
#[allow(clippy::too_many_arguments)]
pub fn herd(
    dockerds: &[&Dockerd],
    builder: &Dockerd,
    registry: &Registry,
    v1: &str,
    v2: &str,
    rate_mbit: u32,
    delta_mib: u64,
    logs: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<RunResult> {
    builder.run_cli(&["push", v1])?;
    builder.run_cli(&["push", v2])?;
    eprintln!("== update herd: every dockerd pulls {v1} first (not measured)");
    std::thread::scope(|s| -> anyhow::Result<()> {
        let pulls: Vec<_> = dockerds
            .iter()
            .map(|d| s.spawn(move || d.run_cli(&["pull", v1])))
            .collect();
        for p in pulls {
            p.join()
                .map_err(|_| anyhow::anyhow!("pull thread panicked"))??;
        }
        Ok(())
    })?;
    let mut result =
        docker_runs::herd(dockerds, registry, v2, rate_mbit, delta_mib, logs, timeout)?;
    result.name = format!("registry herd, update (N={})", dockerds.len());
    result.notes.push(format!(
        "every dockerd had v1 (pulled from the registry); v2 = v1 + one {delta_mib} MiB layer: each pull fetched the new layer and config only"
    ));
    docker_runs::remove_image(dockerds, v2);
    docker_runs::remove_image(dockerds, v1);
    Ok(result)
}

/// ImageWolf's first push of v1 and then the update to v2 (see the module docs).
pub fn imagewolf(
    setup: &E2eSetup<'_>,
    v1: &str,
    v2: &str,
    delta_mib: u64,
) -> anyhow::Result<(RunResult, RunResult)> {
    let n = setup.dockerds.len();
    let (registry, agents) = start_registry_and_agents(setup)?;
    let first = measure_push(
        setup,
        &registry,
        &agents,
        v1,
        &format!("ImageWolf first push, blobs (N={n})"),
        setup.size_mib,
    )?;
    let before = registry.blob_get_count();
    let mut update = measure_push(
        setup,
        &registry,
        &agents,
        v2,
        &format!("ImageWolf update (N={n})"),
        delta_mib,
    )?;
    update.notes.push(format!(
        "v2 = v1 + one {delta_mib} MiB layer; the registry served {} blobs for it (its new layer and config)",
        registry.blob_get_count() - before
    ));
    drop(agents);
    drop(registry);
    docker_runs::remove_image(setup.dockerds, v2);
    docker_runs::remove_image(setup.dockerds, v1);
    Ok((first, update))
}
