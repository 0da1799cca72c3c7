//! Debian's `docker-registry` (distribution 2.8) the way real registries are run: over TLS
//! with a certificate from a CA made by the test ([`TestCa`], rcgen), and with htpasswd
//! (bcrypt) or token authentication ([`crate::token_issuer`]). For the registry client's
//! https and credential tests.
//!
//! Images are pushed first to the same storage through a plain registry
//! ([`push_image_to_storage`], the OCI pusher of [`crate::oci`]), which is then stopped and
//! the secured one started on that storage: the pusher stays a plain-http client, and the
//! image the secured registry serves is byte for byte the one pushed.
//!
//! Processes are started and stopped by their own pid (SIGTERM, then SIGKILL) on drop; a
//! missing `docker-registry` fails the test with the install command, never skips it.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::docker::{
    free_port, other, parse_blob_get, registry_running, require_binary, spawn_registry, wait_ready,
};
use crate::TempDir;

/// How long the registry may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn rc(e: rcgen::Error) -> io::Error {
    other(format!("rcgen: {e}"))
}

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate issued by a [`TestCa`], and its key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key (ECDSA P-256), PKCS#8 PEM.
    pub key_pem: String,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
}

impl TestCa {
    /// A new CA named `name` (an ECDSA P-256 key).
    pub fn new(name: &str) -> io::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(rc)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(rc)?;
        Ok(TestCa { issuer })
    }

    /// The CA's certificate, PEM (what `--registry-ca` and a `rootcertbundle` take).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses, as subject alternative names;
    /// the first is also the common name).
    pub fn issue(&self, names: &[&str]) -> io::Result<IssuedCert> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .map_err(rc)?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let key = KeyPair::generate().map_err(rc)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rc)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_pkcs8: key.serialize_der(),
        })
    }
}

/// How the registry authenticates clients.
#[derive(Clone)]
pub enum RegistryAuth {
    /// Anonymous reads and writes.
    None,
    /// Basic auth against an htpasswd file of these `(user, password)`s (bcrypt).
    Htpasswd(Vec<(String, String)>),
    /// Bearer tokens from a token service: the registry checks each JWT's signature against
    /// `root_bundle_pem`, and its `iss` (= `issuer`), `aud` (= `service`), `exp`, `nbf` and
    /// `access` claims.
    Token {
        /// The realm clients get tokens from.
        realm: String,
        /// The service name (the tokens' audience).
        service: String,
        /// The tokens' issuer.
        issuer: String,
        /// Certificates the token signer's chains to.
        root_bundle_pem: String,
    },
}

/// How to start a [`SecureRegistry`].
#[derive(Clone)]
pub struct SecureOptions {
    /// TLS certificate and key; `None`: plain http.
    pub tls: Option<IssuedCert>,
    /// Authentication.
    pub auth: RegistryAuth,
}

/// A `docker-registry` on 127.0.0.1 over `storage`, stopped by pid on drop.
pub struct SecureRegistry {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: TempDir,
}

fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// An htpasswd line for `user` with a bcrypt hash of `password` (what `htpasswd -Bbn`
/// writes; cost 4 keeps the registry's checks fast in tests).
pub fn htpasswd_line(user: &str, password: &str) -> io::Result<String> {
    let hash = bcrypt::hash(password, 4).map_err(|e| other(format!("bcrypt: {e}")))?;
    Ok(format!("{user}:{hash}"))
}

impl SecureRegistry {
    /// Starts a registry serving `storage` on a free 127.0.0.1 port with `options`, and
    /// waits until it listens.
    pub fn start(storage: &Path, options: &SecureOptions) -> io::Result<Self> {
        // The port is free when probed and may be taken before the registry binds it.
        let mut last = None;
        for _ in 0..3 {
            match Self::start_on(storage, &format!("127.0.0.1:{}", free_port()?), options) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| other("no registry started".into())))
    }

    fn start_on(storage: &Path, addr: &str, options: &SecureOptions) -> io::Result<Self> {
        let bin = require_binary("docker-registry", "docker-registry")?;
        let sock: SocketAddr = addr
            .parse()
            .map_err(|e| other(format!("registry address {addr:?}: {e}")))?;
        let dir = TempDir::new("secure-registry")?;
        let path = |name: &str| dir.path().join(name);
        let mut yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {}\n  secret: imagewolf-test-secret\n",
            yaml_str(&storage.to_string_lossy()),
            yaml_str(addr),
        );
        if let Some(tls) = &options.tls {
            fs::write(path("tls.crt"), &tls.cert_pem)?;
            fs::write(path("tls.key"), &tls.key_pem)?;
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_str(&path("tls.crt").to_string_lossy()),
                yaml_str(&path("tls.key").to_string_lossy()),
            ));
        }
        match &options.auth {
            RegistryAuth::None => {}
            RegistryAuth::Htpasswd(users) => {
                let mut file = String::new();
                for (user, password) in users {
                    file.push_str(&htpasswd_line(user, password)?);
                    file.push('\n');
                }
                fs::write(path("htpasswd"), file)?;
                yaml.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: imagewolf-test\n    path: {}\n",
                    yaml_str(&path("htpasswd").to_string_lossy())
                ));
            }
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                root_bundle_pem,
            } => {
                fs::write(path("token-roots.pem"), root_bundle_pem)?;
                yaml.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    yaml_str(realm),
                    yaml_str(service),
                    yaml_str(issuer),
                    yaml_str(&path("token-roots.pem").to_string_lossy()),
                ));
            }
        }
        fs::write(path("config.yml"), yaml)?;
        let log = path("registry.log");
        let child = spawn_registry(Command::new(&bin), &path("config.yml"), &log)?;
        let mut r = SecureRegistry {
            child,
            addr: addr.to_owned(),
            log: log.clone(),
            _dir: dir,
        };
        let child = &mut r.child;
        wait_ready(
            &format!("registry on {addr}"),
            START_TIMEOUT,
            || registry_running(child, addr, &log),
            // Our own log must say we bound the port (another registry may hold it).
            || {
                fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on"))
                    && TcpStream::connect_timeout(&sock, Duration::from_secs(1)).is_ok()
            },
        )?;
        Ok(r)
    }

    /// `127.0.0.1:PORT`, as in image names.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The log (registry messages and its access log).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log's text.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Blob downloads answered 200 so far (from the access log).
    pub fn blobs_served(&self) -> usize {
        self.log_text()
            .lines()
            .filter_map(parse_blob_get)
            .filter(|g| g.status == 200)
            .count()
    }

    /// Requests in the access log so far (any method, any answer).
    pub fn requests_logged(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("] \"") && l.contains(" HTTP/1."))
            .count()
    }
}

impl Drop for SecureRegistry {
    fn drop(&mut self) {
        crate::docker::stop_child(&mut self.child);
    }
}

/// Pushes `image` as `repository:tag` into `storage` through a plain registry started for
/// the purpose (and stopped again), so a secured registry then serves it from there.
pub async fn push_image_to_storage(
    storage: &Path,
    repository: &str,
    tag: &str,
    image: &crate::oci::Image,
) -> io::Result<()> {
    let plain = SecureRegistry::start(
        storage,
        &SecureOptions {
            tls: None,
            auth: RegistryAuth::None,
        },
    )?;
    let addr: SocketAddr = plain.addr().parse().map_err(|e| other(format!("{e}")))?;
    crate::oci::push_image(addr, repository, image).await?;
    crate::oci::push_manifest(
        addr,
        repository,
        tag,
        crate::oci::OCI_MANIFEST,
        &image.manifest,
    )
    .await?;
    drop(plain);
    Ok(())
}
