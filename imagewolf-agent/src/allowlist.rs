//! `--allow`: which images this agent may distribute, as `HOST[:PORT]/REPOSITORY` patterns
//! (sans-IO: strings in, a yes or no out).
//!
//! An image is allowed when some pattern matches both its registry (the one it is pulled
//! from, i.e. after `--registry` / `--hub-registry`) and its repository. Tags and digests
//! are not part of the match.
//!
//! Wildcards:
//! - `*` matches any run of characters *within one path segment* (never a `/`). In the host
//!   it matches any host and port: `*/library/nginx`.
//! - `**` matches any run of characters, `/` included: `registry.local:5000/team/**` is every
//!   repository under `team/`, nested ones too, while `registry.local:5000/team/*` is only
//!   `team/NAME`.
//!
//! `*` stops at `/` so that `*/library/nginx` cannot be satisfied by
//! `evil.example/x/library/nginx`: a pattern's segments line up with the name's.
//! Hosts are compared case-insensitively (DNS names are); repositories are lowercase by the
//! reference grammar and compared exactly. A host pattern without a port matches only a
//! registry named without a port (`registry.local` is not `registry.local:5000`; write
//! `registry.local:*` for any port).
//!
//! A pattern whose host part has no wildcard (`127.0.0.1:5000/**`) also *names* that host:
//! the registry client then reaches it even where its address would be refused (loopback,
//! link-local, metadata: [`crate::registry::guard`]). Wildcard hosts name nothing.
//!
//! No pattern at all means every image is allowed (the behaviour before `--allow` existed);
//! production clusters should list what they run.

use std::fmt;
use std::str::FromStr;

use crate::image::ImageRef;

/// Longest pattern accepted.
pub const MAX_PATTERN_LEN: usize = 512;

/// One `HOST[:PORT]/REPOSITORY` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowPattern {
    /// Host part, lowercased.
    host: String,
    /// Repository part.
    repository: String,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--allow {pattern:?}: {reason}")]
pub struct AllowPatternError {
    pattern: String,
    reason: &'static str,
}

impl FromStr for AllowPattern {
    type Err = AllowPatternError;

    fn from_str(s: &str) -> Result<Self, AllowPatternError> {
        let s = s.trim();
        let err = |reason| AllowPatternError {
            pattern: s.chars().take(100).collect(),
            reason,
        };
        if s.len() > MAX_PATTERN_LEN {
            return Err(err("longer than 512 characters"));
        }
        let Some((host, repository)) = s.split_once('/') else {
            return Err(err(
                "expected HOST[:PORT]/REPOSITORY, e.g. registry.local:5000/team/*",
            ));
        };
        if host.is_empty() {
            return Err(err("empty registry host (use * for any host)"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:*[]_".contains(&b))
        {
            return Err(err(
                "the host may hold only letters, digits, . - : [ ] _ and *",
            ));
        }
        if host.contains("**") {
            return Err(err("** in the host: hosts have no /, use *"));
        }
        if repository.is_empty() {
            return Err(err("empty repository (use ** for every repository)"));
        }
        if !repository
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*".contains(&b))
        {
            return Err(err(
                "the repository may hold only lowercase letters, digits, . _ - / and *",
            ));
        }
        if repository.split('/').any(str::is_empty) {
            return Err(err("empty path segment in the repository"));
        }
        if repository.contains("***") {
            return Err(err("*** is not a wildcard; use * or **"));
        }
        Ok(AllowPattern {
            host: host.to_ascii_lowercase(),
            repository: repository.to_owned(),
        })
    }
}

impl fmt::Display for AllowPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)
    }
}

impl AllowPattern {
    /// The host part when it names one host literally (no wildcard), lowercased: such a
    /// pattern also lets the registry client reach that `host[:port]` when its address would
    /// otherwise be refused (loopback, link-local...: [`crate::registry::guard`]).
    pub fn literal_host(&self) -> Option<&str> {
        (!self.host.contains('*')).then_some(self.host.as_str())
    }

    /// Whether this pattern matches the image's registry and repository.
    pub fn matches(&self, registry: &str, repository: &str) -> bool {
        glob(
            self.host.as_bytes(),
            registry.to_ascii_lowercase().as_bytes(),
        ) && glob(self.repository.as_bytes(), repository.as_bytes())
    }
}

/// The `--allow` list; empty allows everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    patterns: Vec<AllowPattern>,
}

impl Allowlist {
    /// A list of patterns; an empty one allows every image.
    pub fn new(patterns: Vec<AllowPattern>) -> Self {
        Allowlist { patterns }
    }

    /// Allows every image (no `--allow`).
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Parses patterns (tests, examples); the first bad one is the error.
    pub fn parse<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, AllowPatternError> {
        Ok(Allowlist {
            patterns: patterns
                .into_iter()
                .map(str::parse)
                .collect::<Result<_, _>>()?,
        })
    }

    /// True when some pattern restricts what is allowed (`--allow` was given).
    pub fn is_restricted(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[AllowPattern] {
        &self.patterns
    }

    /// Whether `registry/repository` may be distributed.
    pub fn allows_name(&self, registry: &str, repository: &str) -> bool {
        self.patterns.is_empty()
            || self
                .patterns
                .iter()
                .any(|p| p.matches(registry, repository))
    }

    /// Whether this image may be distributed.
    pub fn allows(&self, image: &ImageRef) -> bool {
        self.allows_name(&image.registry, &image.repository)
    }
}

/// Glob match of `text` against `pattern`: `*` is any run without `/`, `**` any run at all.
/// Dynamic programming over (pattern position, text position): O(|pattern| x |text|) time,
/// O(|text|) memory, no backtracking blow-up whatever the input.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    enum Tok {
        Byte(u8),
        Star,
        DoubleStar,
    }
    let mut toks = Vec::with_capacity(pattern.len());
    let mut i = 0;
    while i < pattern.len() {
        if pattern[i] == b'*' {
            if pattern.get(i + 1) == Some(&b'*') {
                toks.push(Tok::DoubleStar);
                i += 2;
            } else {
                toks.push(Tok::Star);
                i += 1;
            }
        } else {
            toks.push(Tok::Byte(pattern[i]));
            i += 1;
        }
    }
    // row[j]: the tokens so far match text[..j].
    let mut row = vec![false; text.len() + 1];
    row[0] = true;
    for tok in &toks {
        let mut next = vec![false; text.len() + 1];
        match tok {
            Tok::Byte(b) => {
                for j in 0..text.len() {
                    next[j + 1] = row[j] && text[j] == *b;
                }
            }
            Tok::Star | Tok::DoubleStar => {
                let crosses = matches!(tok, Tok::DoubleStar);
                next[0] = row[0];
                for j in 0..text.len() {
                    // Either the wildcard matches nothing here, or it extends over text[j].
                    next[j + 1] = row[j + 1] || (next[j] && (crosses || text[j] != b'/'));
                }
            }
        }
        row = next;
    }
    row[text.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> Allowlist {
        Allowlist::parse(patterns.iter().copied()).unwrap()
    }

    #[test]
    fn glob_semantics() {
        assert!(glob(b"team/*", b"team/app"));
        assert!(!glob(b"team/*", b"team/sub/app"));
        assert!(glob(b"team/**", b"team/sub/app"));
        assert!(glob(b"team/**", b"team/app"));
        assert!(!glob(b"team/**", b"other/app"));
        assert!(glob(b"*", b"registry.local:5000"));
        assert!(!glob(b"*", b"a/b"));
        assert!(glob(b"app-*", b"app-"));
        assert!(glob(b"*-svc", b"billing-svc"));
        assert!(!glob(b"*-svc", b"billing-svc2"));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
        assert!(glob(b"**/nginx", b"library/nginx"));
        assert!(glob(b"**/nginx", b"a/b/c/nginx"));
        assert!(!glob(b"**/nginx", b"nginx"));
        assert!(glob(b"exact", b"exact"));
        assert!(!glob(b"exact", b"exact2"));
        assert!(!glob(b"", b"x"));
        assert!(glob(b"", b""));
        // Pathological input stays polynomial (this would explode with naive backtracking).
        let pattern = "*a".repeat(100);
        let text = "a".repeat(255) + "b";
        assert!(!glob(pattern.as_bytes(), text.as_bytes()));
    }

    #[test]
    fn patterns_match_registry_and_repository() {
        let allow = list(&["registry.local:5000/team/*", "*/library/nginx"]);
        assert!(allow.is_restricted());
        assert!(allow.allows_name("registry.local:5000", "team/app"));
        assert!(
            allow.allows_name("REGISTRY.local:5000", "team/app"),
            "hosts are case-insensitive"
        );
        assert!(!allow.allows_name("registry.local:5000", "team/sub/app"));
        assert!(
            !allow.allows_name("registry.local", "team/app"),
            "port is part of the host"
        );
        assert!(!allow.allows_name("registry.local:5001", "team/app"));
        assert!(!allow.allows_name("evil.example", "team/app"));
        assert!(allow.allows_name("docker.io", "library/nginx"));
        assert!(allow.allows_name("10.0.0.1:5000", "library/nginx"));
        assert!(
            !allow.allows_name("evil.example", "x/library/nginx"),
            "* never spans a /"
        );
        assert!(!allow.allows_name("docker.io", "library/nginx-evil"));

        let image = ImageRef {
            registry: "registry.local:5000".into(),
            repository: "team/app".into(),
            tag: Some("v1".into()),
            digest: None,
        };
        assert!(allow.allows(&image));
        assert!(!list(&["registry.local:*/other"]).allows(&image));
        assert!(list(&["registry.local:*/team/**"]).allows(&image));
        assert!(list(&["*/**"]).allows(&image));
    }

    #[test]
    fn empty_allows_everything() {
        let allow = Allowlist::allow_all();
        assert!(!allow.is_restricted());
        assert!(allow.allows_name("anything.example:1234", "any/repo/at/all"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (bad, why) in [
            ("", "HOST"),
            ("nginx", "HOST"),
            ("/library/nginx", "empty registry host"),
            ("docker.io/", "empty repository"),
            ("docker.io/a//b", "empty path segment"),
            ("docker.io/a/", "empty path segment"),
            ("docker.io/Library/nginx", "lowercase"),
            ("docker.io/a b", "lowercase"),
            ("docker.io/a?", "lowercase"),
            ("dock er.io/a", "host may hold"),
            ("**/a", "** in the host"),
            ("docker.io/***", "***"),
        ] {
            let err = bad.parse::<AllowPattern>().expect_err(bad).to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let long = format!("h/{}", "a".repeat(MAX_PATTERN_LEN));
        assert!(long.parse::<AllowPattern>().is_err());
        // Only a wildcard-free host part names a host.
        let named: Vec<Option<String>> = [
            "127.0.0.1:5000/**",
            "127.0.0.1:*/**",
            "*/a",
            "Reg.Local/a/*",
        ]
        .iter()
        .map(|p| {
            p.parse::<AllowPattern>()
                .unwrap()
                .literal_host()
                .map(str::to_owned)
        })
        .collect();
        assert_eq!(
            named,
            [
                Some("127.0.0.1:5000".into()),
                None,
                None,
                Some("reg.local".into())
            ]
        );
        // Round trip, host lowercased.
        let p: AllowPattern = " Registry.Local:5000/team/* ".parse().unwrap();
        assert_eq!(p.to_string(), "registry.local:5000/team/*");
    }
}
