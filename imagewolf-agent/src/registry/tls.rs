//! The registry client's TLS settings: rustls (no OpenSSL), with the `ring` provider
//! (see [`TlsSettings::platform`] for why ring).
//!
//! Trust: the platform's roots (`rustls-native-certs`: `SSL_CERT_FILE`/`SSL_CERT_DIR`, else
//! the distribution's bundle such as `/etc/ssl/certs`); when the platform has none (a
//! minimal container image without `ca-certificates`), Mozilla's roots compiled in
//! (`webpki-roots`), so Docker Hub, GHCR, ECR... work out of the box either way. A private
//! CA is added with `--registry-ca FILE` (a PEM bundle): added to the roots, never instead
//! of certificate checking. There is no "skip verification" mode.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Largest `--registry-ca` file read.
pub const MAX_CA_FILE: u64 = 4 << 20;

/// Where the trusted roots came from (logged at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RootsSummary {
    /// Roots from the platform's store.
    pub platform: usize,
    /// Mozilla's roots compiled in (used when the platform has none).
    pub builtin: usize,
    /// Certificates from `--registry-ca`.
    pub extra: usize,
}

/// The client's TLS configuration and where its roots came from.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<ClientConfig>,
    summary: RootsSummary,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("roots", &self.summary)
            .finish()
    }
}

impl Default for TlsSettings {
    /// The platform's roots (else the built-in ones), no extra CA.
    fn default() -> Self {
        Self::platform()
    }
}

impl TlsSettings {
    /// The platform's roots, else Mozilla's (see the module docs); read from disk once per
    /// process.
    pub fn platform() -> Self {
        static PLATFORM: std::sync::OnceLock<TlsSettings> = std::sync::OnceLock::new();
        PLATFORM
            .get_or_init(|| {
                let (roots, summary) = default_roots();
                Self::from_roots(roots, summary)
            })
            .clone()
    }

    /// Only the certificates of `pem` (a PEM bundle) as roots: for tests and for operators
    /// who want to trust their private CA alone.
    pub fn only(pem: &[u8]) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        let extra = add_pem(&mut roots, pem, "the CA bundle")?;
        Ok(Self::from_roots(
            roots,
            RootsSummary {
                extra,
                ..RootsSummary::default()
            },
        ))
    }

    /// The platform's roots (else the built-in ones) and the certificates of the PEM bundle
    /// at `path` (`--registry-ca`). An unreadable file, or one holding no certificate, is an
    /// error: the agent must not start believing it trusts a CA it does not.
    pub fn with_ca_file(path: &Path) -> Result<Self, String> {
        let pem = read_bounded(path)?;
        let (mut roots, mut summary) = default_roots();
        summary.extra = add_pem(&mut roots, &pem, &path.display().to_string())?;
        Ok(Self::from_roots(roots, summary))
    }

    fn from_roots(roots: RootCertStore, summary: RootsSummary) -> Self {
        // ring, not aws-lc-rs: pure cc-built C and assembly with no cmake, so the agent
        // still cross-builds for arm64 and armv7 with Debian's cross gcc alone (README).
        // rustls 0.23.48 deprecated it for lacking post-quantum key exchange; X25519 and
        // the NIST curves remain, as with most registries today.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsSettings {
            config: Arc::new(config),
            summary,
        }
    }

    /// The rustls client configuration.
    pub fn client_config(&self) -> ClientConfig {
        (*self.config).clone()
    }

    /// Where the roots came from.
    pub fn summary(&self) -> RootsSummary {
        self.summary
    }
}

fn default_roots() -> (RootCertStore, RootsSummary) {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(
            errors = native.errors.len(),
            "some platform CA certificates could not be read"
        );
    }
    let (platform, _) = roots.add_parsable_certificates(native.certs);
    let mut summary = RootsSummary {
        platform,
        ..RootsSummary::default()
    };
    if platform == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        summary.builtin = webpki_roots::TLS_SERVER_ROOTS.len();
    }
    (roots, summary)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(format!(
            "{}: larger than {MAX_CA_FILE} bytes; not a CA bundle",
            path.display()
        ));
    }
    Ok(pem)
}

/// Adds every certificate of `pem` to `roots`; at least one is required.
fn add_pem(roots: &mut RootCertStore, pem: &[u8], what: &str) -> Result<usize, String> {
    let mut added = 0;
    for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = cert.map_err(|e| format!("{what}: certificate {}: {e}", i + 1))?;
        roots
            .add(cert)
            .map_err(|e| format!("{what}: certificate {}: {e}", i + 1))?;
        added += 1;
    }
    if added == 0 {
        return Err(format!("{what}: no PEM certificate in it"));
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_bundles_are_errors() {
        assert!(TlsSettings::only(b"").is_err());
        assert!(TlsSettings::only(b"not a pem").is_err());
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(TlsSettings::only(garbage).is_err());
        assert!(TlsSettings::with_ca_file(Path::new("/nonexistent/ca.pem")).is_err());
    }

    #[test]
    fn platform_or_builtin_roots_are_never_empty() {
        let s = TlsSettings::platform().summary();
        assert!(s.platform + s.builtin > 0, "{s:?}");
        assert_eq!(s.extra, 0);
    }
}
