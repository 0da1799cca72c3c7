//! A registry token service (the distribution "token authentication" realm) for tests: an
//! https server on 127.0.0.1 whose certificate comes from the test's [`TestCa`], answering
//! `GET /token?service=...&scope=...` with a JWT signed ES256 by a key whose certificate
//! (issued by the same CA, sent in the JWT's `x5c` header) the registry trusts through its
//! `rootcertbundle`. Claims: `iss`, `sub`, `aud` (= the service), `exp`, `nbf`, `iat`,
//! `jti`, and `access` granting `pull` on each repository asked for.
//!
//! Users are checked with basic auth; anonymous requests get a token only if allowed. Every
//! request is recorded (never a password: only the user name a request claimed), so tests
//! can count token requests and see which credentials reached the realm.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::docker::other;
use crate::secure_registry::TestCa;

/// What a token service accepts.
#[derive(Clone)]
pub struct IssuerConfig {
    /// The `iss` claim (the registry's `auth.token.issuer`).
    pub issuer: String,
    /// `(user, password)`s accepted with basic auth.
    pub users: Vec<(String, String)>,
    /// Whether a request without credentials gets a token.
    pub anonymous: bool,
    /// `expires_in` of each token, seconds.
    pub lifetime: u64,
}

/// One request the service received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `service` asked for.
    pub service: Option<String>,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// The user name of the basic credentials sent, if any.
    pub user: Option<String>,
    /// Whether a token was given.
    pub granted: bool,
}

/// The running service; stops when dropped.
pub struct TokenIssuer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    root_bundle_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Signer {
    key: EcdsaKeyPair,
    x5c: String,
    rng: SystemRandom,
    config: IssuerConfig,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenIssuer {
    /// Starts the service on 127.0.0.1 with a TLS certificate and a signing certificate
    /// from `ca`.
    pub async fn start(ca: &TestCa, config: IssuerConfig) -> io::Result<Self> {
        let tls_cert = ca.issue(&["127.0.0.1"])?;
        let signing = ca.issue(&["imagewolf-test-token-signer"])?;
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &signing.key_pkcs8, &rng)
                .map_err(|e| other(format!("signing key: {e}")))?;
        let signer = Arc::new(Signer {
            key,
            x5c: base64::engine::general_purpose::STANDARD.encode(&signing.cert_der),
            rng,
            config,
        });
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            #[allow(deprecated)]
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| other(format!("rustls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(
                tls_cert.cert_der.clone(),
            )],
            rustls::pki_types::PrivateKeyDer::Pkcs8(tls_cert.key_pkcs8.clone().into()),
        )
        .map_err(|e| other(format!("rustls: {e}")))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let signer = Arc::clone(&signer);
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 16 << 10];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                        match tls.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..len]).into_owned();
                    let (status, body) = answer(&signer, &head, &log);
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(TokenIssuer {
            addr,
            requests,
            root_bundle_pem: ca.pem(),
            task,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The realm URL (`https://127.0.0.1:PORT/token`).
    pub fn realm(&self) -> String {
        format!("https://{}/token", self.addr)
    }

    /// The certificates the registry's `rootcertbundle` needs (the CA).
    pub fn root_bundle_pem(&self) -> &str {
        &self.root_bundle_pem
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The basic credentials in a request head, if any: (user, password).
fn basic_credentials(head: &str) -> Option<(String, String)> {
    let value = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("authorization").then(|| v.trim())
    })?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn answer(signer: &Signer, head: &str, log: &Mutex<Vec<TokenRequest>>) -> (&'static str, String) {
    let target = head.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = TokenRequest {
        service: None,
        scopes: Vec::new(),
        user: None,
        granted: false,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "service" => request.service = Some(percent_decode(v)),
            "scope" => request.scopes.push(percent_decode(v)),
            _ => {}
        }
    }
    let credentials = basic_credentials(head);
    request.user = credentials.as_ref().map(|(u, _)| u.clone());
    let allowed = match &credentials {
        Some((u, p)) => signer
            .config
            .users
            .iter()
            .any(|(user, pass)| user == u && pass == p),
        None => signer.config.anonymous,
    };
    let result = if path != "/token" {
        ("404 Not Found", "{}".to_owned())
    } else if !allowed {
        ("401 Unauthorized", "{\"details\":\"no\"}".to_owned())
    } else {
        match sign(signer, &request) {
            Ok(token) => {
                request.granted = true;
                (
                    "200 OK",
                    serde_json::json!({
                        "token": token,
                        "access_token": token,
                        "expires_in": signer.config.lifetime,
                    })
                    .to_string(),
                )
            }
            Err(_) => ("500 Internal Server Error", "{}".to_owned()),
        }
    };
    log.lock().unwrap().push(request);
    result
}

/// The JWT for `request`: pull on each repository scope asked for.
fn sign(signer: &Signer, request: &TokenRequest) -> Result<String, ring::error::Unspecified> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let access: Vec<serde_json::Value> = request
        .scopes
        .iter()
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let granted: Vec<&str> = actions.split(',').filter(|a| *a == "pull").collect();
            Some(serde_json::json!({"type": kind, "name": name, "actions": granted}))
        })
        .collect();
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [signer.x5c]});
    let claims = serde_json::json!({
        "iss": signer.config.issuer,
        "sub": request.user.clone().unwrap_or_default(),
        "aud": request.service.clone().unwrap_or_default(),
        "exp": now + signer.config.lifetime,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("{:016x}", rand::random::<u64>()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = signer.key.sign(&signer.rng, input.as_bytes())?;
    Ok(format!("{input}.{}", b64url(signature.as_ref())))
}
