//! The host policy: address classes, the two rules, named hosts, redirects, and the
//! connect-time check with real sockets on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::registry::client::{HttpError, RegistryHttp};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn addresses_are_classified() {
    use AddressClass::{Forbidden, Private, Public};
    let table: &[(&str, AddressClass)] = &[
        ("127.0.0.1", Forbidden(LOOPBACK)),
        ("127.255.3.4", Forbidden(LOOPBACK)),
        ("::1", Forbidden(LOOPBACK)),
        ("::ffff:127.0.0.1", Forbidden(LOOPBACK)),
        ("64:ff9b::7f00:1", Forbidden(LOOPBACK)),
        ("169.254.169.254", Forbidden(METADATA)),
        ("100.100.100.200", Forbidden(METADATA)),
        ("168.63.129.16", Forbidden(METADATA)),
        ("fd00:ec2::254", Forbidden(METADATA)),
        ("::ffff:169.254.169.254", Forbidden(METADATA)),
        ("169.254.1.1", Forbidden(LINK_LOCAL)),
        ("fe80::1", Forbidden(LINK_LOCAL)),
        ("febf::1", Forbidden(LINK_LOCAL)),
        ("0.0.0.0", Forbidden(UNSPECIFIED)),
        ("0.1.2.3", Forbidden(UNSPECIFIED)),
        ("::", Forbidden(UNSPECIFIED)),
        ("224.0.0.1", Forbidden(MULTICAST)),
        ("239.255.255.250", Forbidden(MULTICAST)),
        ("ff02::1", Forbidden(MULTICAST)),
        ("255.255.255.255", Forbidden(BROADCAST)),
        ("240.0.0.1", Forbidden(RESERVED)),
        ("::7f00:1", Forbidden(RESERVED)),
        ("10.77.0.1", Private("private address")),
        ("172.16.0.1", Private("private address")),
        ("172.31.255.255", Private("private address")),
        ("192.168.1.10", Private("private address")),
        (
            "100.64.0.1",
            Private("shared address space (100.64.0.0/10)"),
        ),
        (
            "100.127.255.1",
            Private("shared address space (100.64.0.0/10)"),
        ),
        ("fd12:3456::1", Private("unique local address (fc00::/7)")),
        ("fc00::1", Private("unique local address (fc00::/7)")),
        ("::ffff:10.0.0.1", Private("private address")),
        ("8.8.8.8", Public),
        ("172.15.0.1", Public),
        ("172.32.0.1", Public),
        ("100.63.255.255", Public),
        ("100.128.0.1", Public),
        ("169.253.1.1", Public),
        ("52.216.1.1", Public),
        ("2600:1f18::1", Public),
        ("64:ff9b::808:808", Public),
    ];
    for (addr, class) in table {
        assert_eq!(classify(ip(addr)), *class, "{addr}");
    }
}

#[test]
fn the_two_rules() {
    for (addr, registry, redirect) in [
        ("8.8.8.8", true, true),
        ("10.0.0.5", true, false),
        ("100.64.1.1", true, false),
        ("fd00::5", true, false),
        ("127.0.0.1", false, false),
        ("169.254.169.254", false, false),
        ("fd00:ec2::254", false, false),
        ("100.100.100.200", false, false),
        ("::", false, false),
    ] {
        assert_eq!(
            verdict(ip(addr), Rule::Registry).is_ok(),
            registry,
            "{addr}"
        );
        assert_eq!(
            verdict(ip(addr), Rule::Redirect).is_ok(),
            redirect,
            "{addr}"
        );
    }
    assert_eq!(
        verdict(ip("127.0.0.1"), Rule::Registry),
        Err("loopback address")
    );
}

/// xorshift64*: deterministic pseudo-random addresses without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn properties_over_random_addresses() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..200_000 {
        let r = rng.next();
        let v4 = Ipv4Addr::from(r as u32);
        let class = classify(IpAddr::V4(v4));
        // The IPv6 forms that reach an IPv4 address are judged as that address.
        assert_eq!(classify(IpAddr::V6(v4.to_ipv6_mapped())), class, "{v4}");
        let [a, b, c, d] = v4.octets();
        let nat64 = Ipv6Addr::new(
            0x64,
            0xff9b,
            0,
            0,
            0,
            0,
            u16::from_be_bytes([a, b]),
            u16::from_be_bytes([c, d]),
        );
        assert_eq!(classify(IpAddr::V6(nat64)), class, "{v4}");
        // What a redirect may reach, a registry may too; nothing forbidden passes either.
        for addr in [
            IpAddr::V4(v4),
            IpAddr::V6(Ipv6Addr::from(u128::from(r) << 64 | u128::from(rng.next()))),
        ] {
            let registry = verdict(addr, Rule::Registry).is_ok();
            let redirect = verdict(addr, Rule::Redirect).is_ok();
            assert!(!redirect || registry, "{addr}");
            match classify(addr) {
                AddressClass::Public => assert!(redirect, "{addr}"),
                AddressClass::Private(_) => assert!(registry && !redirect, "{addr}"),
                AddressClass::Forbidden(_) => assert!(!registry, "{addr}"),
            }
        }
        // Ranges, stated independently of the classifier's code.
        let forbidden = matches!(classify(IpAddr::V4(v4)), AddressClass::Forbidden(_));
        if a == 127 || a == 0 || (a == 169 && b == 254) || a >= 224 {
            assert!(forbidden, "{v4}");
        }
        if a == 10 || (a == 192 && b == 168) || (a == 172 && (16..32).contains(&b)) {
            assert_eq!(
                classify(IpAddr::V4(v4)),
                AddressClass::Private("private address")
            );
        }
        // Every address of the forbidden IPv6 ranges.
        let low = u128::from(r) << 64 | u128::from(rng.next());
        for (prefix, bits) in [(0xfe80u128 << 112, 10), (0xff00u128 << 112, 8)] {
            let addr = Ipv6Addr::from(prefix | (low >> bits));
            assert!(
                matches!(classify(IpAddr::V6(addr)), AddressClass::Forbidden(_)),
                "{addr}"
            );
        }
        let ula = Ipv6Addr::from((0xfc00u128 << 112) | (low >> 7));
        assert!(verdict(IpAddr::V6(ula), Rule::Redirect).is_err(), "{ula}");
    }
}

#[test]
fn named_hosts_and_redirect_hops() {
    let allow = Allowlist::parse([
        "127.0.0.1:5000/**",
        "*/library/nginx",
        "127.0.0.1:*/x",
        "Mirror.Local:5001/team/*",
    ])
    .unwrap();
    let policy = HostPolicy::from_allowlist(&allow).and_naming(["10.0.0.9:5000"]);
    assert_eq!(
        policy.named().collect::<Vec<_>>(),
        ["10.0.0.9:5000", "127.0.0.1:5000", "mirror.local:5001"]
    );
    assert!(policy.is_named("127.0.0.1:5000"));
    assert!(policy.is_named("MIRROR.local:5001"));
    assert!(
        !policy.is_named("127.0.0.1:5001"),
        "the port is part of the name"
    );
    assert!(!policy.is_named("127.0.0.1"));
    assert!(!HostPolicy::strict().is_named("127.0.0.1:5000"));

    let reg = "127.0.0.1:5000";
    assert_eq!(
        policy.redirect_hop(reg, "127.0.0.1:5000"),
        RedirectHop::SameHost
    );
    assert_eq!(policy.redirect_hop("Reg:1", "reg:1"), RedirectHop::SameHost);
    assert_eq!(
        policy.redirect_hop(reg, "mirror.local:5001"),
        RedirectHop::Named
    );
    assert_eq!(
        policy.redirect_hop(reg, "127.0.0.1:6000"),
        RedirectHop::MustBePublic
    );
    assert_eq!(
        policy.redirect_hop(reg, "s3.amazonaws.com"),
        RedirectHop::MustBePublic
    );
}

#[tokio::test]
async fn check_judges_literals_names_and_named_hosts() {
    let strict = HostPolicy::strict();
    let refused = strict
        .check("127.0.0.1:22", Rule::Registry)
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "registry host 127.0.0.1:22 refused: loopback address; name it in --allow to permit"
    );
    for host in [
        "169.254.169.254",
        "[::1]:5000",
        "[fe80::1]:80",
        "0.0.0.0:5000",
        "100.100.100.200:80",
        "[fd00:ec2::254]",
    ] {
        assert!(strict.check(host, Rule::Registry).await.is_err(), "{host}");
    }
    for host in [
        "10.77.0.1:5000",
        "100.64.0.5:5000",
        "8.8.8.8:5000",
        "[fd12::1]:5000",
    ] {
        strict.check(host, Rule::Registry).await.unwrap();
    }
    assert!(strict
        .check("10.77.0.1:5000", Rule::Redirect)
        .await
        .is_err());
    // Names are judged by what they resolve to: localhost, and 127.0.0.1 in a form only the
    // resolver understands.
    for host in ["localhost:5000", "2130706433:5000"] {
        let refused = strict.check(host, Rule::Registry).await.unwrap_err();
        assert!(refused.reason.contains("loopback"), "{host}: {refused}");
    }
    // Named: reached as given.
    let named = HostPolicy::naming(["127.0.0.1:22", "localhost:5000"]);
    named.check("127.0.0.1:22", Rule::Registry).await.unwrap();
    named.check("localhost:5000", Rule::Redirect).await.unwrap();
    assert!(named.check("127.0.0.1:23", Rule::Registry).await.is_err());
    assert!(strict.check("a@b:1", Rule::Registry).await.is_err());
}

/// A listener on 127.0.0.1 that counts connections and answers each with `reply`.
async fn counting_server(reply: String) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                    // A TLS ClientHello: a plain-HTTP server's 400, as real ones answer.
                    if buf[0] == 0x16 {
                        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                        return;
                    }
                }
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, count)
}

const SECRET: &str = "internal-secret-4711";

fn secret_reply() -> String {
    format!(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{SECRET}",
        SECRET.len()
    )
}

#[tokio::test]
async fn the_connector_refuses_at_connect_time_whatever_the_caller_checked() {
    let (internal, contacted) = counting_server(secret_reply()).await;
    let port = internal.rsplit_once(':').unwrap().1.to_owned();
    // Straight to the connector, as if a pre-flight check had seen another address (DNS
    // rebinding): a literal, and a name resolving to loopback.
    let mut connector = GuardedConnector::new(
        Arc::new(HostPolicy::strict()),
        Rule::Registry,
        REQUEST_TIMEOUT_TEST,
    );
    for url in [
        format!("http://{internal}/"),
        format!("http://localhost:{port}/"),
    ] {
        let err = connector.call(url.parse().unwrap()).await.expect_err(&url);
        let refused = refusal_in(err.as_ref()).unwrap_or_else(|| panic!("{url}: {err}"));
        assert!(refused.reason.contains("loopback"), "{refused}");
    }
    assert_eq!(contacted.load(Ordering::SeqCst), 0);
    // Named: connected.
    let mut named = GuardedConnector::new(
        Arc::new(HostPolicy::naming([&internal])),
        Rule::Redirect,
        REQUEST_TIMEOUT_TEST,
    );
    let mut conn = named
        .call(format!("http://{internal}/").parse().unwrap())
        .await
        .map_err(|e| e.to_string())
        .unwrap()
        .into_inner();
    // The answer shows the server accepted (and counted) this connection.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.ends_with(SECRET), "{answer}");
    assert_eq!(contacted.load(Ordering::SeqCst), 1);
}

const REQUEST_TIMEOUT_TEST: Duration = Duration::from_secs(5);

#[tokio::test]
async fn redirects_to_unnamed_internal_hosts_are_refused_and_never_contacted() {
    let (internal, contacted) = counting_server(secret_reply()).await;
    let port = internal.rsplit_once(':').unwrap().1.to_owned();
    for location in [
        format!("http://{internal}/latest/meta-data"),
        format!("http://localhost:{port}/x"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.1.2.3:5000/x".to_owned(),
    ] {
        let (registry, _) = counting_server(format!(
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
        let http = RegistryHttp::with_policy(HostPolicy::naming([&registry]));
        let url = format!("http://{registry}/v2/a/blobs/x");
        let err = http
            .get_bounded(&registry, "/v2/a/blobs/x", None, 1 << 20)
            .await
            .unwrap_err();
        let HttpError::Refused {
            url: named_url,
            refused,
        } = &err
        else {
            panic!("{location}: {err:?}");
        };
        assert_eq!(named_url, &url, "errors name the URL asked for");
        assert_eq!(refused.rule, Rule::Redirect);
        assert!(
            err.to_string().starts_with(&format!("{url}: redirect to ")),
            "{err}"
        );
        assert!(!err.to_string().contains("meta-data"), "{err}");
    }
    assert_eq!(contacted.load(Ordering::SeqCst), 0);

    // Named in the policy: followed.
    let (registry, _) = counting_server(format!(
        "HTTP/1.1 302 Found\r\nLocation: http://{internal}/ok\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ))
    .await;
    let http = RegistryHttp::with_policy(HostPolicy::naming([&registry, &internal]));
    let r = http
        .get_bounded(&registry, "/v2/a/blobs/x", None, 1 << 20)
        .await
        .unwrap();
    assert_eq!(&r.body[..], SECRET.as_bytes());
    assert_eq!(contacted.load(Ordering::SeqCst), 1);

    // The registry itself on loopback, not named: refused before any request.
    let err = RegistryHttp::new()
        .get_bounded(&internal, "/v2/", None, 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HttpError::Refused { refused, .. } if refused.rule == Rule::Registry),
        "{err:?}"
    );
    assert_eq!(contacted.load(Ordering::SeqCst), 1);
}
