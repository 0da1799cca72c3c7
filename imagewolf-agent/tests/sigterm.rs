//! The agent binary as a process: `--help` documents every flag, bad flags are refused
//! clearly, and SIGTERM stops it cleanly (exit 0, port released) so it restarts at once on the
//! same data dir.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imagewolf::docker::free_port;
use imagewolf::{http, ChildGuard, TempDir};

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");

fn start(dir: &std::path::Path, api: u16) -> ChildGuard {
    let mut cmd = Command::new(AGENT);
    // Every agent of the test cluster shares one secret (the agent refuses to start without).
    cmd.env("IMAGEWOLF_CLUSTER_SECRET", "imagewolf-test-cluster-secret");
    cmd.args(["--peers", &format!("static:127.0.0.1:{api}")])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--bt-listen", "127.0.0.1:0", "--runtime", "none"])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    ChildGuard::spawn("agent", &mut cmd).unwrap()
}

async fn wait_healthy(api: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http::request(api, "GET", "/healthz", &[], b"").await {
            if r.status == 200 {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_the_agent_restarts_on_the_same_data_dir() {
    let dir = TempDir::new("sigterm").unwrap();
    let port = free_port().unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    for round in 0..2 {
        let mut agent = start(dir.path(), port);
        wait_healthy(api).await;
        let killed = Command::new("kill")
            .args(["-TERM", &agent.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = agent.wait_timeout(Duration::from_secs(15)).unwrap();
        assert!(status.success(), "round {round}: exit {status}");
        assert!(
            http::request(api, "GET", "/healthz", &[], b"")
                .await
                .is_err(),
            "still serving after exit"
        );
    }
}

#[test]
fn help_explains_every_flag_and_bad_flags_are_refused() {
    let help = Command::new(AGENT).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--peers",
        "--listen",
        "--bt-listen",
        "--advertise-addr",
        "--data-dir",
        "--docker-host",
        "--runtime",
        "--hub-registry",
        "--registry",
        "--seed-seconds",
        "--log-format",
        "--webhook-token",
        "--cluster-secret",
    ] {
        assert!(text.contains(flag), "--help does not mention {flag}");
    }
    for bad in [
        &["--peers", "imagewolf"][..],
        &["--peers", "dns:x", "--listen", "nope"],
    ] {
        let out = Command::new(AGENT).args(bad).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{err}");
    }
}

#[test]
fn the_agent_refuses_to_start_without_a_cluster_secret_unless_told_loudly() {
    let common = ["--peers", "static:127.0.0.1:1", "--runtime", "none"];
    // No secret: refused before anything listens, with the way out named.
    let out = Command::new(AGENT)
        .args(common)
        .env_remove("IMAGEWOLF_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cluster-secret") && err.contains("--insecure-no-cluster-secret"),
        "{err}"
    );
    // A short one: refused.
    let out = Command::new(AGENT)
        .args(common)
        .args(["--cluster-secret", "short"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16"));
    // The explicit insecure mode starts, and says so at warn level.
    let dir = TempDir::new("insecure").unwrap();
    let api = free_port().unwrap();
    let log = dir.path().join("agent.log");
    let mut cmd = Command::new(AGENT);
    cmd.args(["--peers", &format!("static:127.0.0.1:{api}")])
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--bt-listen", "127.0.0.1:0", "--runtime", "none"])
        .args([
            "--advertise-addr",
            "127.0.0.1",
            "--insecure-no-cluster-secret",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("IMAGEWOLF_CLUSTER_SECRET")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null());
    let agent = ChildGuard::spawn("agent", &mut cmd).unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the insecure agent never listened: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(agent);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("WARN") && l.contains("INSECURE")),
        "{text}"
    );
}
