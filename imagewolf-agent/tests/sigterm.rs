//! The agent binary as a process: `--help` documents every flag, bad flags are refused
//! clearly, and SIGTERM stops it cleanly (exit 0, port released) so it restarts at once on the
//! same data dir.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use imagewolf::docker::free_port;
use imagewolf::{http, ChildGuard, TempDir};

const AGENT: &str = env!("CARGO_BIN_EXE_imagewolf-agent");

fn start(dir: &std::path::Path, api: u16) -> ChildGuard {
    let mut cmd = Command::new(AGENT);
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
