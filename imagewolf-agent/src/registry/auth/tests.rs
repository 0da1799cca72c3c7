//! Unit tests of the sans-IO auth parts: challenges, the credentials file, tokens and their
//! cache.

use super::*;

fn params(c: &Challenge) -> Vec<(&str, &str)> {
    c.params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn docker_hub_style_bearer_challenge() {
    let c = parse_challenges(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
    );
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].scheme, "bearer");
    assert_eq!(
        params(&c[0]),
        [
            ("realm", "https://auth.docker.io/token"),
            ("service", "registry.docker.io"),
            ("scope", "repository:library/nginx:pull"),
        ]
    );
    assert_eq!(c[0].param("service"), Some("registry.docker.io"));
    assert_eq!(c[0].param("nope"), None);
}

#[test]
fn commas_and_escapes_inside_quotes_and_odd_spacing() {
    let c = parse_challenges(
        "bEaReR   realm = \"https://r/t?a=1,b=2\" ,  scope=\"repository:a/b:pull,push\",error=\"insufficient_scope\", service=\"say \\\"hi\\\"\"",
    );
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].scheme, "bearer");
    assert_eq!(c[0].param("realm"), Some("https://r/t?a=1,b=2"));
    assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
    assert_eq!(c[0].param("error"), Some("insufficient_scope"));
    assert_eq!(c[0].param("service"), Some("say \"hi\""));
}

#[test]
fn several_challenges_in_one_header() {
    let c = parse_challenges(
        r#"Basic realm="Registry Realm", Bearer realm="https://a/token",service="s", Negotiate"#,
    );
    let schemes: Vec<&str> = c.iter().map(|c| c.scheme.as_str()).collect();
    assert_eq!(schemes, ["basic", "bearer", "negotiate"], "{c:?}");
    assert_eq!(c[0].param("realm"), Some("Registry Realm"));
    assert_eq!(c[1].param("realm"), Some("https://a/token"));
    assert_eq!(c[1].param("service"), Some("s"));
    assert!(c[2].params.is_empty());
    // Unquoted values, a bare scheme.
    let c = parse_challenges("Bearer realm=https://a:8443/token,service=reg");
    assert_eq!(c[0].param("realm"), Some("https://a:8443/token"));
    assert_eq!(c[0].param("service"), Some("reg"));
    assert_eq!(parse_challenges("Basic")[0].scheme, "basic");
}

#[test]
fn bad_challenges_never_panic_and_are_bounded() {
    for bad in [
        "",
        ",,,",
        "=",
        "Bearer =",
        "Bearer realm=",
        "Bearer realm=\"unterminated",
        "Bearer realm=\"x\\",
        "Basic dXNlcjpwYXNz==",
        "\"quoted\" scheme",
        "Bearer realm=\"é\",service=ü",
    ] {
        let _ = parse_challenges(bad);
    }
    assert_eq!(
        parse_challenges("Bearer realm=\"unterminated")[0].param("realm"),
        Some("unterminated")
    );
    // Too long: nothing.
    let long = format!("Bearer realm=\"{}\"", "a".repeat(MAX_CHALLENGE_LEN));
    assert!(parse_challenges(&long).is_empty());
    // Too many challenges or parameters: cut.
    let many = vec!["Basic realm=x"; 50].join(", ");
    assert_eq!(parse_challenges(&many).len(), MAX_CHALLENGES);
    let params: Vec<String> = (0..50).map(|i| format!("p{i}=v")).collect();
    let c = parse_challenges(&format!("Bearer {}", params.join(",")));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].params.len(), MAX_PARAMS);
}

#[test]
fn auth_file_both_shapes_and_docker_hub_keys() {
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
    let file = serde_json::json!({
        "auths": {
            "https://index.docker.io/v1/": {"auth": auth},
            "Registry.Example.com:5000": {"username": "bob", "password": "pw"},
            "http://plain.example:5000/v2/": {"auth": auth, "username": "ignored", "password": "x"},
            "ghcr.io": {"identitytoken": "refresh-t0ken"},
            "broken.example": {"auth": "%%%"},
            "empty.example": {},
        },
        "credsStore": "desktop",
    });
    let (store, warnings) = CredentialStore::parse(file.to_string().as_bytes()).unwrap();
    let hub = store.get("docker.io").expect("Docker Hub");
    assert_eq!(hub.username, "alice");
    assert_eq!(
        hub.basic_header(),
        format!("Basic {auth}"),
        "password with a colon kept"
    );
    for alias in ["index.docker.io", "registry-1.docker.io", "Docker.IO"] {
        assert_eq!(store.get(alias), Some(hub), "{alias}");
    }
    let bob = store.get("registry.example.com:5000").unwrap();
    assert_eq!(
        bob.basic_header(),
        Credentials::new("bob", "pw").basic_header()
    );
    assert!(
        store.get("registry.example.com").is_none(),
        "the port matters"
    );
    assert_eq!(store.get("plain.example:5000").unwrap().username, "alice");
    assert!(store.get("ghcr.io").is_none());
    assert_eq!(
        store.hosts(),
        [
            "docker.io",
            "plain.example:5000",
            "registry.example.com:5000"
        ]
    );
    let w = warnings.join("\n");
    for expected in ["credsStore", "ghcr.io", "broken.example", "empty.example"] {
        assert!(w.contains(expected), "{expected}: {w}");
    }
    assert!(!w.contains("refresh-t0ken") && !w.contains("pa:ss"), "{w}");
    // Debug never shows a password.
    let shown = format!("{store:?} {hub:?}");
    assert!(
        !shown.contains("pa:ss") && !shown.contains("pw\""),
        "{shown}"
    );

    // Kubernetes' .dockerconfigjson is the same shape; the old .dockercfg has no "auths".
    let (old, _) =
        CredentialStore::parse(br#"{"reg.example:5000": {"username": "u", "password": "p"}}"#)
            .unwrap();
    assert_eq!(old.get("reg.example:5000").unwrap().username, "u");
}

#[test]
fn bad_auth_files_are_errors_without_their_content() {
    for bad in [
        &b"not json s3cret"[..],
        b"[]",
        b"{\"auths\": 5}",
        b"\"s3cret\"",
    ] {
        let err = CredentialStore::parse(bad).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
    let many: serde_json::Map<String, serde_json::Value> = (0..=MAX_AUTH_ENTRIES)
        .map(|i| (format!("r{i}.example"), serde_json::json!({"auth": "dTpw"})))
        .collect();
    let file = serde_json::json!({ "auths": many }).to_string();
    assert!(CredentialStore::parse(file.as_bytes()).is_err());
    assert!(CredentialStore::read_file(std::path::Path::new("/nonexistent/config.json")).is_err());
}

#[test]
fn registry_keys_normalise() {
    for (key, want) in [
        ("https://index.docker.io/v1/", Some("docker.io")),
        ("registry.hub.docker.com", Some("docker.io")),
        ("HTTP://Reg.Example:5000/v2/", Some("reg.example:5000")),
        ("10.0.0.5:5000", Some("10.0.0.5:5000")),
        ("[::1]:5000", Some("[::1]:5000")),
        ("", None),
        ("https://", None),
        ("user@host", None),
        ("a b", None),
    ] {
        assert_eq!(normalize_registry_key(key).as_deref(), want, "{key:?}");
    }
}

#[test]
fn token_answers() {
    let t = parse_token_response(br#"{"token":"abc.def","expires_in":300}"#).unwrap();
    assert_eq!(t.header(), "Bearer abc.def");
    assert_eq!(t.lifetime, Duration::from_secs(300));
    // access_token (OAuth shape), no lifetime: the spec's 60 s.
    let t = parse_token_response(br#"{"access_token":"xyz"}"#).unwrap();
    assert_eq!(t.header(), "Bearer xyz");
    assert_eq!(t.lifetime, DEFAULT_TOKEN_LIFETIME);
    // Both: the first non-empty one.
    let t = parse_token_response(br#"{"token":"","access_token":"second"}"#).unwrap();
    assert_eq!(t.header(), "Bearer second");
    // Lifetimes past a day are believed up to a day.
    let t = parse_token_response(br#"{"token":"a","expires_in":99999999}"#).unwrap();
    assert_eq!(t.lifetime, MAX_TOKEN_LIFETIME);
    for bad in [
        &b"{}"[..],
        b"{\"token\":\"\"}",
        b"{\"token\":\"has space\"}",
        b"{\"token\":\"line\\nbreak\"}",
        b"<html>s3cret</html>",
    ] {
        let err = parse_token_response(bad).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
    let huge = format!("{{\"token\":\"{}\"}}", "a".repeat(MAX_TOKEN_LEN + 1));
    assert!(parse_token_response(huge.as_bytes()).is_err());
    // Debug hides the token.
    let t = parse_token_response(br#"{"token":"tok-s3cret"}"#).unwrap();
    assert!(!format!("{t:?}").contains("s3cret"));
}

fn token(value: &str, secs: u64) -> Token {
    Token {
        value: value.into(),
        lifetime: Duration::from_secs(secs),
    }
}

#[test]
fn cached_tokens_expire_before_the_service_says() {
    let mut cache = TokenCache::default();
    let t0 = Instant::now();
    cache.insert("r:5000", "repository:a:pull", token("a", 300), true, t0);
    // Kept until 10 s before its 300 s run out.
    let (t, with_credentials) = cache
        .get("r:5000", "repository:a:pull", t0 + Duration::from_secs(289))
        .unwrap();
    assert_eq!(t.header(), "Bearer a");
    assert!(with_credentials);
    assert!(cache
        .get("r:5000", "repository:a:pull", t0 + Duration::from_secs(290))
        .is_none());
    // Per scope and host.
    assert!(cache.get("r:5000", "repository:b:pull", t0).is_none());
    assert!(cache.get("other", "repository:a:pull", t0).is_none());
    // A short-lived token keeps half its life at most.
    cache.insert("r:5000", "repository:s:pull", token("s", 6), false, t0);
    assert!(cache
        .get("r:5000", "repository:s:pull", t0 + Duration::from_secs(2))
        .is_some());
    assert!(cache
        .get("r:5000", "repository:s:pull", t0 + Duration::from_secs(3))
        .is_none());
    // A newer token for the same scope replaces the old one; remove forgets it.
    cache.insert("r:5000", "repository:a:pull", token("a2", 300), false, t0);
    assert_eq!(
        cache
            .get("r:5000", "repository:a:pull", t0)
            .unwrap()
            .0
            .header(),
        "Bearer a2"
    );
    cache.remove("r:5000", "repository:a:pull");
    assert!(cache.get("r:5000", "repository:a:pull", t0).is_none());
}

#[test]
fn the_cache_is_bounded_per_host_and_in_hosts() {
    let mut cache = TokenCache::default();
    let t0 = Instant::now();
    // The one expiring first makes room.
    for i in 0..10u64 {
        cache.insert(
            "r",
            &format!("repository:r{i}:pull"),
            token(&format!("t{i}"), 100 + i),
            false,
            t0,
        );
    }
    assert_eq!(cache.len_for("r"), MAX_TOKENS_PER_HOST);
    assert!(cache.get("r", "repository:r9:pull", t0).is_some());
    assert!(cache.get("r", "repository:r0:pull", t0).is_none());
    for h in 0..(MAX_TOKEN_HOSTS + 10) {
        cache.insert(&format!("h{h}"), "s", token("x", 1000), false, t0);
    }
    assert!(cache.hosts.len() <= MAX_TOKEN_HOSTS);
    assert!(cache.len() <= MAX_TOKEN_HOSTS * MAX_TOKENS_PER_HOST);
    assert!(cache
        .get(&format!("h{}", MAX_TOKEN_HOSTS + 9), "s", t0)
        .is_some());
}

#[test]
fn scopes_from_paths() {
    assert_eq!(
        scope_of("/v2/team/app/manifests/v1"),
        "repository:team/app:pull"
    );
    assert_eq!(
        scope_of("/v2/library/nginx/blobs/sha256:ab"),
        "repository:library/nginx:pull"
    );
    assert_eq!(
        scope_of("/v2/a/tags/list?n=100&last=x"),
        "repository:a:pull"
    );
    // A repository whose name holds a marker: the last one counts.
    assert_eq!(
        scope_of("/v2/x/blobs/y/manifests/v1"),
        "repository:x/blobs/y:pull"
    );
    for none in ["/v2/", "/v2/manifests/x", "/token", ""] {
        assert_eq!(scope_of(none), "", "{none:?}");
    }
}
