//! Registry authentication, sans-IO: `WWW-Authenticate` challenges, the credentials file
//! (`--registry-auth-file`, Docker's `config.json` / Kubernetes' `.dockerconfigjson`), the
//! token service's answer, and the bounded cache of bearer tokens. The exchanges themselves
//! are in [`super::client`].
//!
//! Rules kept here and there:
//! - **Secrets never shown.** [`Credentials`] and cached tokens have no `Display` and a
//!   redacting `Debug`; errors name hosts and fixed texts only, so nothing secret reaches
//!   the logs or `/stats`.
//! - **Bounded.** The file ([`MAX_AUTH_FILE`], [`MAX_AUTH_ENTRIES`]), a challenge header
//!   ([`MAX_CHALLENGE_LEN`], [`MAX_CHALLENGES`], [`MAX_PARAMS`]), a token ([`MAX_TOKEN_LEN`]),
//!   the cache ([`MAX_TOKENS_PER_HOST`] per registry, [`MAX_TOKEN_HOSTS`] registries).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;

/// Largest credentials file read.
pub const MAX_AUTH_FILE: u64 = 1 << 20;
/// Most registries in a credentials file.
pub const MAX_AUTH_ENTRIES: usize = 1000;
/// Longest `WWW-Authenticate` value parsed (longer ones are ignored).
pub const MAX_CHALLENGE_LEN: usize = 8192;
/// Most challenges taken from one header.
pub const MAX_CHALLENGES: usize = 8;
/// Most parameters taken from one challenge.
pub const MAX_PARAMS: usize = 16;
/// Longest bearer token accepted.
pub const MAX_TOKEN_LEN: usize = 64 << 10;
/// Most tokens cached per registry (distinct scopes: repositories).
pub const MAX_TOKENS_PER_HOST: usize = 4;
/// Most registries with cached tokens.
pub const MAX_TOKEN_HOSTS: usize = 64;
/// A token's lifetime when the token service names none (the distribution spec's default).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Longest lifetime believed.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A user name and password for one registry. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Credentials from a user name and password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The `Authorization` value for basic auth: `Basic base64(user:password)`.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Credentials by registry host (`host[:port]`, lower case, Docker Hub's names as
/// `docker.io`), read from a Docker `config.json` or a Kubernetes `.dockerconfigjson`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CredentialStore {
    by_host: HashMap<String, Credentials>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut hosts: Vec<&String> = self.by_host.keys().collect();
        hosts.sort();
        f.debug_struct("CredentialStore")
            .field("hosts", &hosts)
            .finish()
    }
}

impl CredentialStore {
    /// No credentials: every registry is read anonymously.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A store holding `entries` (`(registry key, credentials)`; keys normalised as in a
    /// credentials file).
    pub fn from_entries(entries: impl IntoIterator<Item = (String, Credentials)>) -> Self {
        CredentialStore {
            by_host: entries
                .into_iter()
                .filter_map(|(k, c)| normalize_registry_key(&k).map(|k| (k, c)))
                .collect(),
        }
    }

    /// Reads a credentials file (see [`CredentialStore::parse`]), at most [`MAX_AUTH_FILE`]
    /// bytes.
    pub fn read_file(path: &std::path::Path) -> Result<(Self, Vec<String>), String> {
        use std::io::Read;
        let file =
            std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.take(MAX_AUTH_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_AUTH_FILE {
            return Err(format!(
                "{}: larger than {MAX_AUTH_FILE} bytes",
                path.display()
            ));
        }
        Self::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses `{"auths": {"KEY": {"auth": base64(user:password)} | {"username", "password"}}}`
    /// (Docker's `config.json`, Kubernetes' `.dockerconfigjson`; a bare map without `auths`,
    /// the old `.dockercfg`, is read the same). Keys may be `host[:port]` or URLs
    /// (`https://index.docker.io/v1/`). Returns the store and warnings for entries skipped
    /// (no usable credentials, e.g. an `identitytoken` only, or `credsStore` helpers, which
    /// the agent does not run). Errors never quote the file's content.
    pub fn parse(bytes: &[u8]) -> Result<(Self, Vec<String>), String> {
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "not JSON (line {}, column {}): expected a Docker config.json or .dockerconfigjson",
                e.line(),
                e.column()
            )
        })?;
        let mut warnings = Vec::new();
        let root = doc
            .as_object()
            .ok_or("expected a JSON object with \"auths\"")?;
        for helper in ["credsStore", "credHelpers"] {
            if root.contains_key(helper) {
                warnings.push(format!(
                    "{helper} is ignored: credential helpers are not run; put the credentials in \"auths\""
                ));
            }
        }
        let auths = match root.get("auths") {
            Some(a) => a.as_object().ok_or("\"auths\" is not an object")?,
            None => root,
        };
        if auths.len() > MAX_AUTH_ENTRIES {
            return Err(format!(
                "more than {MAX_AUTH_ENTRIES} registries in \"auths\""
            ));
        }
        let mut by_host = HashMap::new();
        for (key, entry) in auths {
            if matches!(key.as_str(), "credsStore" | "credHelpers" | "HttpHeaders") {
                continue;
            }
            let shown: String = key.chars().take(100).collect();
            let Some(host) = normalize_registry_key(key) else {
                warnings.push(format!("{shown:?}: not a registry host; skipped"));
                continue;
            };
            match entry_credentials(entry) {
                Ok(c) => {
                    by_host.insert(host, c);
                }
                Err(why) => warnings.push(format!("{host}: {why}; skipped")),
            }
        }
        Ok((CredentialStore { by_host }, warnings))
    }

    /// The credentials for `registry` (`host[:port]` as in image references), if any.
    pub fn get(&self, registry: &str) -> Option<&Credentials> {
        normalize_registry_key(registry).and_then(|k| self.by_host.get(&k))
    }

    /// The registries with credentials (normalised), sorted.
    pub fn hosts(&self) -> Vec<&str> {
        let mut hosts: Vec<&str> = self.by_host.keys().map(String::as_str).collect();
        hosts.sort_unstable();
        hosts
    }

    /// Whether no registry has credentials.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// One `auths` entry's credentials: `auth` (base64 of `user:password`) first, else
/// `username` and `password`.
fn entry_credentials(entry: &serde_json::Value) -> Result<Credentials, &'static str> {
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    if let Some(auth) = field("auth") {
        let auth = auth.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth))
            .map_err(|_| "\"auth\" is not base64")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "\"auth\" is not UTF-8")?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or("\"auth\" is not base64 of user:password")?;
        if user.is_empty() {
            return Err("\"auth\" has an empty user name");
        }
        return Ok(Credentials::new(user, pass));
    }
    match (
        field("username"),
        entry.get("password").and_then(|v| v.as_str()),
    ) {
        (Some(user), Some(pass)) => Ok(Credentials::new(user, pass)),
        _ if field("identitytoken").is_some() => {
            Err("an identitytoken only (OAuth refresh tokens are not supported)")
        }
        _ => Err("no \"auth\" nor \"username\" and \"password\""),
    }
}

/// A credentials key or an image's registry as `host[:port]`, lower case: the scheme and any
/// path dropped (`https://index.docker.io/v1/` -> `docker.io`); Docker Hub's names
/// (`index.docker.io`, `registry-1.docker.io`, `registry.hub.docker.com`) are `docker.io`.
/// `None` for what is no host.
pub fn normalize_registry_key(key: &str) -> Option<String> {
    let key = key.trim().to_ascii_lowercase();
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(&key);
    let host = rest.split('/').next().unwrap_or_default().to_owned();
    if host.is_empty()
        || host.len() > 255
        || host.contains('@')
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
    {
        return None;
    }
    Some(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    })
}

/// An authentication scheme a registry asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lower case (`bearer`, `basic`, ...).
    pub scheme: String,
    /// Its parameters, names lower case, values unquoted.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The value of parameter `name` (lower case), if given.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `WWW-Authenticate` values (RFC 9110 section 11.6.1): several challenges
/// separated by commas, each a scheme and `name=value` parameters whose values are tokens or
/// quoted strings (with `\` escapes; commas inside quotes are part of the value). Never
/// fails: what cannot be read ends the parse; a value longer than [`MAX_CHALLENGE_LEN`]
/// gives nothing.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    if header.len() > MAX_CHALLENGE_LEN {
        return out;
    }
    let s = header.as_bytes();
    let mut i = 0;
    while out.len() < MAX_CHALLENGES {
        skip(s, &mut i, |b| b == b',' || is_space(b));
        let scheme = read_token(s, &mut i);
        if scheme.is_empty() {
            break;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        loop {
            let save = i;
            skip(s, &mut i, |b| b == b',' || is_space(b));
            let name = read_token(s, &mut i);
            let mut j = i;
            skip(s, &mut j, is_space);
            if name.is_empty() || s.get(j) != Some(&b'=') {
                // The next challenge's scheme, or the end (a token68 ends the parse).
                i = save;
                break;
            }
            i = j + 1;
            skip(s, &mut i, is_space);
            let value = if s.get(i) == Some(&b'"') {
                read_quoted(s, &mut i)
            } else {
                read_token(s, &mut i).to_owned()
            };
            if challenge.params.len() < MAX_PARAMS {
                challenge.params.push((name.to_ascii_lowercase(), value));
            }
        }
        out.push(challenge);
        if i >= s.len() {
            break;
        }
    }
    out
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn skip(s: &[u8], i: &mut usize, pred: impl Fn(u8) -> bool) {
    while *i < s.len() && pred(s[*i]) {
        *i += 1;
    }
}

/// An RFC 9110 token (plus `/` and `:`, which unquoted realms carry in the wild).
fn read_token<'a>(s: &'a [u8], i: &mut usize) -> &'a str {
    let start = *i;
    while *i < s.len() && (s[*i].is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&s[*i])) {
        *i += 1;
    }
    // Only ASCII was taken, so this is valid UTF-8.
    std::str::from_utf8(&s[start..*i]).unwrap_or_default()
}

/// A quoted string starting at `s[*i] == '"'`; an unterminated one runs to the end.
fn read_quoted(s: &[u8], i: &mut usize) -> String {
    let mut out = Vec::new();
    *i += 1;
    while *i < s.len() {
        match s[*i] {
            b'"' => {
                *i += 1;
                break;
            }
            b'\\' if *i + 1 < s.len() => {
                out.push(s[*i + 1]);
                *i += 2;
            }
            b => {
                out.push(b);
                *i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A bearer token from a token service, and how long it is good for. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    value: String,
    /// Its lifetime (`expires_in`, else [`DEFAULT_TOKEN_LIFETIME`]; at most
    /// [`MAX_TOKEN_LIFETIME`]).
    pub lifetime: Duration,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl Token {
    /// The `Authorization` value: `Bearer TOKEN`.
    pub fn header(&self) -> String {
        format!("Bearer {}", self.value)
    }
}

/// Reads a token service's answer: `{"token": ...}` or `{"access_token": ...}` (the first
/// non-empty), `expires_in` seconds. The token must fit in a header (visible ASCII, at most
/// [`MAX_TOKEN_LEN`]). Errors never quote the body.
pub fn parse_token_response(body: &[u8]) -> Result<Token, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<serde_json::Value>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|_| "the token service's answer is not a token (JSON object)".to_owned())?;
    let value = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or("the token service's answer has no token")?;
    if value.len() > MAX_TOKEN_LEN || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token service's token is not a usable header value".into());
    }
    let lifetime = answer
        .expires_in
        .and_then(|v| v.as_u64())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
        .min(MAX_TOKEN_LIFETIME);
    Ok(Token { value, lifetime })
}

/// A cached token, and whether credentials were used to get it.
#[derive(Clone)]
struct Cached {
    scope: String,
    token: Token,
    with_credentials: bool,
    until: Instant,
}

/// Bearer tokens per (registry host, scope), each kept until shortly before it expires:
/// a token of lifetime `L` obtained at `t` (when it was asked for, so the service's clock
/// does not matter) is reused until `t + L - min(L / 2, 10 s)`. At most
/// [`MAX_TOKENS_PER_HOST`] per host (the one expiring first makes room) and
/// [`MAX_TOKEN_HOSTS`] hosts.
#[derive(Default)]
pub struct TokenCache {
    hosts: HashMap<String, Vec<Cached>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("tokens", &self.len())
            .finish()
    }
}

impl TokenCache {
    /// The token for (`host`, `scope`) still good at `now`, and whether credentials were
    /// used to get it.
    pub fn get(&self, host: &str, scope: &str, now: Instant) -> Option<(Token, bool)> {
        self.hosts
            .get(host)?
            .iter()
            .find(|c| c.scope == scope && now < c.until)
            .map(|c| (c.token.clone(), c.with_credentials))
    }

    /// Keeps `token` for (`host`, `scope`), asked for at `asked`.
    pub fn insert(
        &mut self,
        host: &str,
        scope: &str,
        token: Token,
        with_credentials: bool,
        asked: Instant,
    ) {
        let margin = (token.lifetime / 2).min(Duration::from_secs(10));
        let until = asked + token.lifetime - margin;
        let now = Instant::now().max(asked);
        self.hosts.retain(|_, list| {
            list.retain(|c| now < c.until);
            !list.is_empty()
        });
        if !self.hosts.contains_key(host) && self.hosts.len() >= MAX_TOKEN_HOSTS {
            // Make room: the host whose last token expires first goes.
            if let Some(victim) = self
                .hosts
                .iter()
                .min_by_key(|(_, list)| list.iter().map(|c| c.until).max())
                .map(|(h, _)| h.clone())
            {
                self.hosts.remove(&victim);
            }
        }
        let list = self.hosts.entry(host.to_owned()).or_default();
        list.retain(|c| c.scope != scope);
        if list.len() >= MAX_TOKENS_PER_HOST {
            if let Some(first) = list
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.until)
                .map(|(i, _)| i)
            {
                list.swap_remove(first);
            }
        }
        list.push(Cached {
            scope: scope.to_owned(),
            token,
            with_credentials,
            until,
        });
    }

    /// Forgets the token for (`host`, `scope`) (the registry refused it).
    pub fn remove(&mut self, host: &str, scope: &str) {
        if let Some(list) = self.hosts.get_mut(host) {
            list.retain(|c| c.scope != scope);
            if list.is_empty() {
                self.hosts.remove(host);
            }
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.hosts.values().map(Vec::len).sum()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Tokens held for `host`.
    pub fn len_for(&self, host: &str) -> usize {
        self.hosts.get(host).map_or(0, Vec::len)
    }
}

/// The scope a request path needs: `repository:NAME:pull` for `/v2/NAME/manifests|blobs|tags/...`,
/// empty for anything else (`/v2/`).
pub fn scope_of(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let Some(rest) = path.strip_prefix("/v2/") else {
        return String::new();
    };
    for marker in ["/manifests/", "/blobs/", "/tags/"] {
        if let Some(at) = rest.rfind(marker) {
            let name = &rest[..at];
            if !name.is_empty() {
                return format!("repository:{name}:pull");
            }
        }
    }
    String::new()
}

#[cfg(test)]
mod tests;
