//! Tests with envelopes shaped like the ones distribution 2.8 really posts (one `docker push`
//! of a two-layer image: blob HEADs and uploads, then the manifest), Docker Hub's documented
//! webhook sample, and a deterministic mutation fuzzer over both.

use super::*;

pub(crate) const DIGEST_A: &str =
    "sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf";
pub(crate) const DIGEST_B: &str =
    "sha256:0b53e0de6f9ac3b6cb0e36d5a8e4a7ee4e2bb8ba5a4b1a2ef0c9b3d1ce7a9f21";
pub(crate) const DIGEST_LAYER: &str =
    "sha256:9c0a8fa4d5d4e5f1ba6b3e6be5f8f5e1c6e8ad54a7a1ad2b04fe1fd6de6db4a1";

/// A blob upload (layer) followed by a manifest push with a tag, as one `docker push`
/// produces, plus a manifest pull by someone else, in the registry's exact field layout.
pub(crate) fn push_envelope() -> String {
    format!(
        r#"{{
   "events": [
      {{
         "id": "a3a0c5a8-2f7b-4f9a-8e0e-1b1e9f0d6a11",
         "timestamp": "2024-05-02T10:14:26.402973972Z",
         "action": "push",
         "target": {{
            "mediaType": "application/octet-stream",
            "size": 2811478,
            "digest": "{DIGEST_LAYER}",
            "length": 2811478,
            "repository": "team/app",
            "url": "http://10.77.0.1:5000/v2/team/app/blobs/{DIGEST_LAYER}"
         }},
         "request": {{
            "id": "6df24a34-0959-4923-81ca-14f09767db19",
            "addr": "10.77.0.9:42961",
            "host": "10.77.0.1:5000",
            "method": "PUT",
            "useragent": "docker/20.10.24 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0 os/linux arch/amd64"
         }},
         "actor": {{}},
         "source": {{ "addr": "registry:5000", "instanceID": "a53db899-3b4b-4a62-a067-8dd013beaca4" }}
      }},
      {{
         "id": "320678d8-ca14-430f-8bb6-4ca139cd83f7",
         "timestamp": "2024-05-02T10:14:26.512Z",
         "action": "push",
         "target": {{
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 708,
            "digest": "{DIGEST_A}",
            "length": 708,
            "repository": "team/app",
            "url": "http://10.77.0.1:5000/v2/team/app/manifests/{DIGEST_A}",
            "tag": "v1.2.3"
         }},
         "request": {{
            "id": "8f2a1c3e-0b0c-4d8e-9a31-2b7f1c0e5d42",
            "addr": "10.77.0.9:42962",
            "host": "10.77.0.1:5000",
            "method": "PUT",
            "useragent": "docker/20.10.24"
         }},
         "actor": {{}},
         "source": {{ "addr": "registry:5000", "instanceID": "a53db899-3b4b-4a62-a067-8dd013beaca4" }}
      }},
      {{
         "id": "11111111-2222-3333-4444-555555555555",
         "timestamp": "2024-05-02T10:15:00Z",
         "action": "pull",
         "target": {{
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 708,
            "digest": "{DIGEST_A}",
            "length": 708,
            "repository": "team/app",
            "url": "http://10.77.0.1:5000/v2/team/app/manifests/{DIGEST_A}",
            "tag": "v1.2.3"
         }},
         "request": {{ "id": "x", "addr": "10.77.0.5:5555", "host": "10.77.0.1:5000", "method": "GET", "useragent": "docker/20.10.24" }},
         "actor": {{}},
         "source": {{ "addr": "registry:5000", "instanceID": "a53db899-3b4b-4a62-a067-8dd013beaca4" }}
      }}
   ]
}}"#
    )
}

/// An OCI manifest pushed by digest only (as buildx pushes each platform of an index).
pub(crate) fn digest_push_envelope() -> String {
    format!(
        r#"{{"events":[{{"id":"e1","timestamp":"2024-05-02T10:14:26Z","action":"push",
        "target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1024,
        "digest":"{DIGEST_B}","length":1024,"repository":"team/app",
        "url":"http://10.77.0.1:5000/v2/team/app/manifests/{DIGEST_B}"}},
        "request":{{"id":"r","addr":"10.77.0.9:1","host":"10.77.0.1:5000","method":"PUT","useragent":"buildkit/v0.12"}},
        "actor":{{}},"source":{{"addr":"registry:5000","instanceID":"i"}}}}]}}"#
    )
}

/// A manifest list pushed with a tag.
pub(crate) fn manifest_list_envelope() -> String {
    format!(
        r#"{{"events":[{{"id":"e2","action":"push","target":{{
        "mediaType":"application/vnd.docker.distribution.manifest.list.v2+json",
        "digest":"{DIGEST_A}","repository":"library/multi","tag":"latest",
        "url":"http://10.77.0.1:5000/v2/library/multi/manifests/{DIGEST_A}"}},
        "request":{{"host":"10.77.0.1:5000","method":"PUT"}}}}]}}"#
    )
}

/// Docker Hub's documented webhook sample.
pub(crate) const HUB_SAMPLE: &str = r#"{
  "callback_url": "https://registry.hub.docker.com/u/svendowideit/testhook/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
  "push_data": {
    "pushed_at": 1417566161,
    "pusher": "trustedbuilder",
    "tag": "latest"
  },
  "repository": {
    "comment_count": 0,
    "date_created": 1417494799,
    "description": "",
    "dockerfile": "FROM busybox\n",
    "full_description": "Docker Hub based automated build from a GitHub repo",
    "is_official": false,
    "is_private": true,
    "is_trusted": true,
    "name": "testhook",
    "namespace": "svendowideit",
    "owner": "svendowideit",
    "repo_name": "svendowideit/testhook",
    "repo_url": "https://registry.hub.docker.com/u/svendowideit/testhook/",
    "star_count": 0,
    "status": "Active"
  }
}"#;

fn event(action: &str, media_type: &str, fields: &str) -> String {
    format!(
        r#"{{"events":[{{"id":"ev","action":"{action}","target":{{"mediaType":"{media_type}"{fields}}},"request":{{"host":"reg:5000"}}}}]}}"#
    )
}

const V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn invalid_reason(envelope: &Envelope) -> &NotificationError {
    match &envelope.skipped.first().expect("one skipped event").reason {
        SkipReason::Invalid(e) => e,
        other => panic!("expected an invalid event, got {other:?}"),
    }
}

#[test]
fn real_push_yields_only_the_tagged_manifest() {
    let env = parse_registry_envelope_detailed(push_envelope().as_bytes(), None).unwrap();
    assert_eq!(
        env.pushes,
        vec![PushEvent {
            image: ImageRef {
                registry: "10.77.0.1:5000".into(),
                repository: "team/app".into(),
                tag: Some("v1.2.3".into()),
                digest: Some(DIGEST_A.into()),
            },
            event_id: Some("320678d8-ca14-430f-8bb6-4ca139cd83f7".into()),
        }]
    );
    // The blob upload and the pull are skipped as ordinary events, not as invalid ones.
    assert_eq!(env.skipped.len(), 2);
    assert_eq!(env.invalid().count(), 0);
    assert!(matches!(
        &env.skipped[1].reason,
        SkipReason::NotAManifestPush { action, .. } if action == "pull"
    ));
    assert_eq!(
        parse_registry_envelope(push_envelope().as_bytes(), None).unwrap(),
        env.pushes
    );
}

#[test]
fn push_by_digest_has_no_tag() {
    let pushes = parse_registry_envelope(digest_push_envelope().as_bytes(), None).unwrap();
    assert_eq!(pushes.len(), 1);
    let image = &pushes[0].image;
    assert_eq!(image.tag, None);
    assert_eq!(image.digest.as_deref(), Some(DIGEST_B));
    assert_eq!(
        image.pull_reference(),
        format!("10.77.0.1:5000/team/app@{DIGEST_B}")
    );
}

#[test]
fn manifest_lists_and_every_manifest_type_are_accepted() {
    let pushes = parse_registry_envelope(manifest_list_envelope().as_bytes(), None).unwrap();
    assert_eq!(pushes[0].image.repository, "library/multi");
    assert_eq!(pushes[0].image.tag.as_deref(), Some("latest"));
    for media_type in MANIFEST_MEDIA_TYPES {
        let body = event(
            "push",
            media_type,
            &format!(r#","repository":"a","digest":"{DIGEST_A}""#),
        );
        assert_eq!(
            parse_registry_envelope(body.as_bytes(), None)
                .unwrap()
                .len(),
            1,
            "{media_type}"
        );
    }
    // Parameters and case do not matter.
    let body = event(
        "push",
        "Application/VND.oci.image.index.v1+json; charset=utf-8",
        r#","repository":"a","tag":"t""#,
    );
    assert_eq!(
        parse_registry_envelope(body.as_bytes(), None)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn blobs_pulls_deletes_and_layer_types_are_ignored_quietly() {
    for (action, media_type) in [
        ("push", "application/octet-stream"),
        ("push", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ("push", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("push", "application/vnd.docker.container.image.v1+json"),
        ("pull", V2),
        ("delete", V2),
        ("mount", "application/octet-stream"),
        ("", V2),
    ] {
        let body = event(action, media_type, r#","repository":"a","tag":"t""#);
        let env = parse_registry_envelope_detailed(body.as_bytes(), None).unwrap();
        assert!(env.pushes.is_empty(), "{action} {media_type}");
        assert_eq!(env.skipped.len(), 1);
        assert_eq!(env.invalid().count(), 0, "{action} {media_type}");
    }
    // An event without a target or action at all is just not a push.
    let env = parse_registry_envelope_detailed(br#"{"events":[{}]}"#, None).unwrap();
    assert!(env.pushes.is_empty() && env.invalid().count() == 0);
    // An empty envelope is fine.
    assert!(parse_registry_envelope(br#"{"events":[]}"#, None)
        .unwrap()
        .is_empty());
}

#[test]
fn registry_host_comes_from_request_then_url_then_override() {
    let no_host = format!(
        r#"{{"events":[{{"action":"push","target":{{"mediaType":"{V2}","repository":"a","tag":"t",
        "url":"https://user:pw@registry.example.com:443/v2/a/manifests/t"}}}}]}}"#
    );
    let pushes = parse_registry_envelope(no_host.as_bytes(), None).unwrap();
    assert_eq!(pushes[0].image.registry, "registry.example.com:443");

    let pushes =
        parse_registry_envelope(push_envelope().as_bytes(), Some("mirror.local:5000")).unwrap();
    assert_eq!(pushes[0].image.registry, "mirror.local:5000");

    let nothing = format!(
        r#"{{"events":[{{"action":"push","target":{{"mediaType":"{V2}","repository":"a","tag":"t"}}}}]}}"#
    );
    let env = parse_registry_envelope_detailed(nothing.as_bytes(), None).unwrap();
    assert!(matches!(
        invalid_reason(&env),
        NotificationError::NoRegistry
    ));
    // ... unless an override names it.
    assert_eq!(
        parse_registry_envelope(nothing.as_bytes(), Some("r:1"))
            .unwrap()
            .len(),
        1
    );

    let ftp = no_host.replace("https://user:pw@", "ftp://");
    let env = parse_registry_envelope_detailed(ftp.as_bytes(), None).unwrap();
    assert!(matches!(
        invalid_reason(&env),
        NotificationError::NoRegistry
    ));
}

#[test]
fn invalid_fields_skip_only_that_event() {
    let good = format!(
        r#"{{"id":"ok","action":"push","target":{{"mediaType":"{V2}","repository":"a","tag":"t"}},"request":{{"host":"r:5000"}}}}"#
    );
    type Check = fn(&NotificationError) -> bool;
    let cases: &[(&str, Check)] = &[
        (r#""repository":"Team/App","tag":"t""#, |e| {
            matches!(e, NotificationError::InvalidRepository(_))
        }),
        (r#""repository":"a//b","tag":"t""#, |e| {
            matches!(e, NotificationError::InvalidRepository(_))
        }),
        (r#""repository":"../etc","tag":"t""#, |e| {
            matches!(e, NotificationError::InvalidRepository(_))
        }),
        (r#""repository":"a","tag":"-rm""#, |e| {
            matches!(e, NotificationError::InvalidTag(_))
        }),
        (r#""repository":"a","tag":"t t""#, |e| {
            matches!(e, NotificationError::InvalidTag(_))
        }),
        (r#""repository":"a","digest":"sha256:abc""#, |e| {
            matches!(e, NotificationError::InvalidDigest(_))
        }),
        (r#""repository":"a","digest":"md5:0123""#, |e| {
            matches!(e, NotificationError::InvalidDigest(_))
        }),
        (r#""repository":"a""#, |e| {
            matches!(e, NotificationError::NothingToPull)
        }),
        (r#""tag":"t""#, |e| {
            matches!(e, NotificationError::MissingField("target.repository"))
        }),
        (r#""repository":"","tag":"t""#, |e| {
            matches!(e, NotificationError::MissingField(_))
        }),
    ];
    for (fields, check) in cases {
        let bad = format!(
            r#"{{"id":"bad","action":"push","target":{{"mediaType":"{V2}",{fields}}},"request":{{"host":"r:5000"}}}}"#
        );
        let body = format!(r#"{{"events":[{bad},{good}]}}"#);
        let env = parse_registry_envelope_detailed(body.as_bytes(), None).unwrap();
        assert_eq!(env.pushes.len(), 1, "{fields}");
        assert_eq!(env.pushes[0].event_id.as_deref(), Some("ok"));
        assert_eq!(env.skipped[0].event_id.as_deref(), Some("bad"));
        assert!(
            check(invalid_reason(&env)),
            "{fields}: {:?}",
            invalid_reason(&env)
        );
    }
    // A bad host from the request is refused too.
    let body =
        event("push", V2, r#","repository":"a","tag":"t""#).replace("reg:5000", "-reg;rm:5000");
    let env = parse_registry_envelope_detailed(body.as_bytes(), None).unwrap();
    assert!(matches!(
        invalid_reason(&env),
        NotificationError::InvalidRegistry(_)
    ));
}

#[test]
fn wrong_types_skip_the_event_and_unknown_fields_are_tolerated() {
    for bad in [
        r#""action":5"#,
        r#""action":"push","target":[]"#,
        r#""action":"push","target":{"mediaType":7}"#,
        r#""action":"push","target":{"tag":true}"#,
        r#""action":"push","request":"host""#,
    ] {
        let body = format!(r#"{{"events":[{{{bad}}}, 3, "x", null]}}"#);
        let env = parse_registry_envelope_detailed(body.as_bytes(), None).unwrap();
        assert!(env.pushes.is_empty());
        assert_eq!(env.invalid().count(), 4, "{bad}");
    }
    // Unused fields may have any type; unknown fields are ignored.
    let body = event(
        "push",
        V2,
        r#","repository":"a","tag":"t","size":"big","length":null,"future":{"x":[1,2]}"#,
    )
    .replace(
        r#""id":"ev""#,
        r#""id":"ev","timestamp":17,"actor":"me","extra":[]"#,
    );
    assert_eq!(
        parse_registry_envelope(body.as_bytes(), None)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn malformed_envelopes_are_errors() {
    for body in [
        &b""[..],
        b"not json",
        b"{",
        b"[]",
        b"null",
        b"{}",
        br#"{"events":{}}"#,
        br#"{"events":"x"}"#,
        br#"{"events":[{"action":"push"}"#,
        b"\xff\xfe{}",
    ] {
        let err = parse_registry_envelope(body, None).unwrap_err();
        assert!(matches!(err, NotificationError::Json(_)), "{body:?}: {err}");
        assert!(!err.is_too_large());
    }
}

#[test]
fn size_and_event_count_are_bounded() {
    let big = vec![b' '; MAX_BODY + 1];
    let err = parse_registry_envelope(&big, None).unwrap_err();
    assert!(err.is_too_large(), "{err}");
    assert!(parse_hub_webhook(&big, "docker.io")
        .unwrap_err()
        .is_too_large());

    let many = format!(r#"{{"events":[{}{{}}]}}"#, "{},".repeat(MAX_EVENTS));
    let err = parse_registry_envelope(many.as_bytes(), None).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
    let enough = format!(r#"{{"events":[{}{{}}]}}"#, "{},".repeat(MAX_EVENTS - 1));
    assert!(parse_registry_envelope(enough.as_bytes(), None).is_ok());

    // Deep nesting hits serde_json's recursion limit, not the stack.
    let deep = format!(
        r#"{{"events":[{}{}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(parse_registry_envelope(deep.as_bytes(), None).is_err());
}

#[test]
fn long_values_are_quoted_short() {
    let tag = "x".repeat(10_000) + " ";
    let body = event("push", V2, &format!(r#","repository":"a","tag":"{tag}""#));
    let env = parse_registry_envelope_detailed(body.as_bytes(), None).unwrap();
    let message = invalid_reason(&env).to_string();
    assert!(message.len() < 200, "{message}");
    // Odd event ids are dropped rather than carried into logs.
    let body = event("push", V2, r#","repository":"a","tag":"t""#)
        .replace(r#""id":"ev""#, r#""id":"a\nb""#);
    assert_eq!(
        parse_registry_envelope(body.as_bytes(), None).unwrap()[0].event_id,
        None
    );
}

#[test]
fn hub_webhook_sample() {
    let push = parse_hub_webhook(HUB_SAMPLE.as_bytes(), "docker.io").unwrap();
    assert_eq!(
        push.image,
        ImageRef {
            registry: "docker.io".into(),
            repository: "svendowideit/testhook".into(),
            tag: Some("latest".into()),
            digest: None,
        }
    );
    assert_eq!(push.event_id, None);
    let mirrored = parse_hub_webhook(HUB_SAMPLE.as_bytes(), "10.77.0.1:5000").unwrap();
    assert_eq!(mirrored.image.registry, "10.77.0.1:5000");
}

#[test]
fn official_images_map_to_library_only_on_docker_hub() {
    let body = br#"{"push_data":{"tag":"1.25"},"repository":{"repo_name":"nginx","name":"nginx","namespace":"library"}}"#;
    for hub in [
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "Docker.IO",
    ] {
        let push = parse_hub_webhook(body, hub).unwrap();
        assert_eq!(push.image.repository, "library/nginx", "{hub}");
        assert_eq!(push.image.tag.as_deref(), Some("1.25"));
    }
    let push = parse_hub_webhook(body, "mirror.local:5000").unwrap();
    assert_eq!(push.image.repository, "nginx");
    // No repo_name: namespace/name.
    let body = br#"{"push_data":{"tag":"t"},"repository":{"name":"app","namespace":"user"}}"#;
    assert_eq!(
        parse_hub_webhook(body, "docker.io")
            .unwrap()
            .image
            .repository,
        "user/app"
    );
}

#[test]
fn hub_webhook_errors() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "malformed"),
        (b"[]", "malformed"),
        (br#"{"push_data":{"tag":"t"}}"#, "repository"),
        (br#"{"repository":{"repo_name":"a/b"}}"#, "push_data.tag"),
        (
            br#"{"push_data":{"tag":""},"repository":{"repo_name":"a/b"}}"#,
            "push_data.tag",
        ),
        (br#"{"push_data":{"tag":"t"},"repository":{}}"#, "repo_name"),
        (
            br#"{"push_data":{"tag":"t"},"repository":{"repo_name":"A/B"}}"#,
            "repository name",
        ),
        (
            br#"{"push_data":{"tag":".t"},"repository":{"repo_name":"a/b"}}"#,
            "invalid tag",
        ),
        (
            br#"{"push_data":{"tag":5},"repository":{"repo_name":"a/b"}}"#,
            "malformed",
        ),
    ];
    for (body, needle) in cases {
        let err = parse_hub_webhook(body, "docker.io")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle),
            "{:?}: {err}",
            String::from_utf8_lossy(body)
        );
    }
    let ok = br#"{"push_data":{"tag":"t"},"repository":{"repo_name":"a/b"}}"#;
    assert!(parse_hub_webhook(ok, "bad host!").is_err());
}

#[test]
fn repository_grammar() {
    for good in [
        "a",
        "library/nginx",
        "team/app",
        "a0/b-c/d.e/f_g/h__i/j---k",
        "x1.y2",
        &"a".repeat(255),
    ] {
        assert!(validate_repository(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "A",
        "a/",
        "/a",
        "a//b",
        "-a",
        "a-",
        "a_",
        ".a",
        "a..b",
        "a___b",
        "a._b",
        "a b",
        "a:b",
        "a@b",
        "../a",
        "a/./b",
        "é",
        &"a".repeat(256),
    ] {
        assert!(validate_repository(bad).is_err(), "{bad}");
    }
}

#[test]
fn tag_digest_and_host_grammar() {
    for good in ["latest", "v1.2.3", "_x", "1", "a-b.c_d", &"a".repeat(128)] {
        assert!(validate_tag(good).is_ok(), "{good}");
    }
    for bad in ["", ".a", "-a", "a/b", "a:b", "a b", &"a".repeat(129)] {
        assert!(validate_tag(bad).is_err(), "{bad}");
    }
    assert!(validate_digest(DIGEST_A).is_ok());
    for bad in [
        "",
        "sha256:",
        &DIGEST_A.to_uppercase(),
        &DIGEST_A[..DIGEST_A.len() - 1],
        &format!("{DIGEST_A}0"),
        &DIGEST_A.replace("sha256", "sha512"),
    ] {
        assert!(validate_digest(bad).is_err(), "{bad}");
    }
    for good in [
        "10.77.0.1:5000",
        "localhost",
        "registry-1.docker.io",
        "Reg.Example.com:443",
        "[::1]:5000",
        "[fe80::1]",
    ] {
        assert!(validate_registry(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        ":5000",
        "reg:",
        "reg:0",
        "reg:65536",
        "reg:x",
        "-reg",
        "reg-",
        "a..b",
        "a/b",
        "a b",
        "[::1",
        "[zz]:1",
        "[::1]x",
        "[]",
        "reg:5000:1",
        "user@reg",
    ] {
        assert!(validate_registry(bad).is_err(), "{bad}");
    }
    let long = ImageRef {
        registry: "r".repeat(200),
        repository: "a".repeat(60),
        tag: None,
        digest: None,
    };
    assert!(validate_image_ref(&long).is_err());
}

/// xorshift64*: a deterministic source for the mutation fuzzer below (no proptest in this
/// crate's dev-dependencies).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    const TOKENS: &[&[u8]] = &[
        b"{", b"}", b"[", b"]", b"\"", b":", b",", b"null", b"push", b"\\u0000", b"\xff", b"1e999",
        b"-", b"/", b"sha256:",
    ];
    for _ in 0..=rng.below(8) {
        let at = rng.below(data.len() + 1);
        match rng.below(4) {
            0 if at < data.len() => data[at] = rng.next() as u8,
            1 if at < data.len() => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            _ => data.truncate(at),
        }
    }
    data
}

#[test]
fn arbitrary_and_mutated_bodies_never_panic() {
    let seeds = [
        push_envelope().into_bytes(),
        digest_push_envelope().into_bytes(),
        manifest_list_envelope().into_bytes(),
        HUB_SAMPLE.as_bytes().to_vec(),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..3000 {
        let body = if case % 4 == 0 {
            (0..rng.below(256)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = rng.below(seeds.len());
            mutate(&mut rng, &seeds[seed])
        };
        if let Ok(env) = parse_registry_envelope_detailed(&body, None) {
            for push in env.pushes {
                validate_image_ref(&push.image).expect("accepted pushes are valid");
            }
        }
        let _ = parse_registry_envelope(&body, Some("r:1"));
        if let Ok(push) = parse_hub_webhook(&body, "docker.io") {
            validate_image_ref(&push.image).expect("accepted pushes are valid");
        }
    }
}
