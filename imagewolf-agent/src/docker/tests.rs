//! Unit tests of the Docker client's pure parts: host parsing, name checks, retry
//! classification, clipping and size hints. The daemon itself is exercised in
//! `tests/docker.rs`.

use super::*;

#[test]
fn hosts() {
    assert_eq!(
        parse_host("unix:///run/docker.sock").unwrap(),
        Endpoint::Unix("/run/docker.sock".into())
    );
    assert_eq!(
        parse_host("/tmp/d.sock").unwrap(),
        Endpoint::Unix("/tmp/d.sock".into())
    );
    assert_eq!(
        parse_host("tcp://10.0.0.1:2375").unwrap(),
        Endpoint::Http("tcp://10.0.0.1:2375".into())
    );
    assert_eq!(
        parse_host("http://h:2375/").unwrap(),
        Endpoint::Http("tcp://h:2375".into())
    );
    for bad in [
        "",
        "unix://",
        "tcp://",
        "https://h:2376",
        "ssh://u@h",
        "h:2375",
        "tcp://a/b",
    ] {
        assert!(
            matches!(parse_host(bad), Err(DockerError::UnsupportedHost { .. })),
            "{bad}"
        );
    }
}

#[test]
fn references() {
    for ok in [
        "127.0.0.1:5000/test/img:v1",
        "registry-1.docker.io/library/alpine:3.20",
        "10.77.0.1:5000/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "app",
    ] {
        validate_reference(ok).unwrap();
    }
    for bad in [
        "",
        "a/../b",
        "a/./b",
        "/a",
        "a//b",
        "a?x=1",
        "a#b",
        "a b",
        "a/%2e%2e/b",
        "a@b@c",
        "../containers/json",
        "a/\u{e9}",
    ] {
        assert!(validate_reference(bad).is_err(), "{bad:?}");
    }
    assert!(validate_reference(&"a".repeat(2000)).is_err());
}

#[test]
fn digests_and_endpoints() {
    let hex = "0123456789abcdef".repeat(4);
    validate_digest(&format!("sha256:{hex}")).unwrap();
    for bad in [
        "",
        hex.as_str(),
        "sha256:",
        &format!("sha256:{}", hex.to_uppercase()),
        &format!("sha512:{hex}"),
        &format!("sha256:{hex}0"),
    ] {
        assert!(validate_digest(bad).is_err(), "{bad:?}");
    }
    for ok in ["127.0.0.1:5055", "localhost:5000", "node-1.local"] {
        validate_endpoint(ok).unwrap();
    }
    for bad in [
        "",
        "http://h:1",
        "h:1/x",
        "h?x",
        "-h:1",
        ":5000",
        "a b",
        "[::1]:5000",
    ] {
        assert!(validate_endpoint(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn image_ids() {
    let hex = "0123456789abcdef".repeat(4);
    validate_image_id(&hex).unwrap();
    validate_image_id(&format!("sha256:{hex}")).unwrap();
    for bad in [
        "",
        "sha256:",
        "sha256:abc",
        "sha256:../../x",
        &format!("sha256:{hex}0"),
    ] {
        assert!(validate_image_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn retry_classification() {
    let daemon = |status, message: &str| DockerError::Daemon {
        status,
        message: message.into(),
    };
    assert!(!daemon(
        404,
        "manifest for 127.0.0.1:5000/x:nope not found: manifest unknown"
    )
    .is_retryable());
    assert!(daemon(
        500,
        "Get \"http://127.0.0.1:5099/v2/\": dial tcp 127.0.0.1:5099: connect: connection refused"
    )
    .is_retryable());
    assert!(!daemon(500, "unauthorized: authentication required").is_retryable());
    assert!(daemon(429, "toomanyrequests: rate limit").is_retryable());
    assert!(!DockerError::Stream {
        message: "manifest unknown: manifest unknown".into()
    }
    .is_retryable());
    assert!(DockerError::Stream {
        message: "read tcp: connection reset by peer".into()
    }
    .is_retryable());
    assert!(DockerError::Timeout {
        what: "x",
        after: Duration::from_secs(1)
    }
    .is_retryable());
    let e: SourceError = daemon(404, "manifest unknown").into();
    assert!(!e.retryable && e.message.contains("manifest unknown"));
}

#[test]
fn clipping_and_sizes() {
    let long = "\u{e9}".repeat(MAX_MESSAGE_LEN);
    let c = clip(&long);
    assert!(c.len() <= MAX_MESSAGE_LEN + 3);
    assert_eq!(size_hint(None), 0);
    assert_eq!(size_hint(Some(-5)), 0);
    assert_eq!(size_hint(Some(20 << 20)), (21 << 20) + (1 << 20));
    assert_eq!(
        size_hint(Some(i64::MAX)),
        (i64::MAX as u64) + (i64::MAX as u64) / 20 + (1 << 20)
    );
}
