//! Which scheme a registry host is read over (see the module docs of `client`): the rule
//! per host, the TLS probe of hosts on explicit ports, and what a TLS failure means.

use super::*;

impl RegistryHttp {
    /// The scheme `host` is read over (see the module docs).
    pub(super) async fn scheme_for(
        &self,
        registry: &str,
        host: &str,
        mode: HostMode,
    ) -> Result<Scheme, HttpError> {
        match mode {
            HostMode::PlainHttp => return Ok(Scheme::Http),
            HostMode::HttpsOnly => return Ok(Scheme::Https),
            HostMode::HttpsElsePlain => {}
        }
        if let Some(&(scheme, when)) = lock(&self.inner.schemes).get(host) {
            if scheme == Scheme::Https || when.elapsed() < PLAIN_HTTP_RECHECK {
                return Ok(scheme);
            }
        }
        let scheme = self.probe(registry, host).await?;
        let mut schemes = lock(&self.inner.schemes);
        if schemes.len() >= MAX_SCHEME_HOSTS && !schemes.contains_key(host) {
            // Forget the plain-http decisions first (they are re-checked anyway), then any.
            let victim = schemes
                .iter()
                .min_by_key(|(_, (s, when))| (*s == Scheme::Https, *when))
                .map(|(h, _)| h.clone());
            if let Some(v) = victim {
                schemes.remove(&v);
            }
        }
        schemes.insert(host.to_owned(), (scheme, Instant::now()));
        Ok(scheme)
    }

    /// Whether `host` speaks https; if its answer to a TLS handshake is not TLS at all, and
    /// it answers `GET /v2/` over plain http with something other than "use https", it
    /// speaks plain http only.
    pub(super) async fn probe(&self, registry: &str, host: &str) -> Result<Scheme, HttpError> {
        let https = format!("https://{host}/v2/");
        let tls_failure = match tokio::time::timeout(
            PROBE_TIMEOUT,
            self.send(&self.inner.direct, Method::GET, &https, None, None),
        )
        .await
        {
            Ok(Ok(_)) => return Ok(Scheme::Https),
            Ok(Err(HttpError::NotTls { message, .. })) => format!("no TLS: {message}"),
            Ok(Err(e)) => return Err(e),
            Err(_) => format!("no TLS answer within {PROBE_TIMEOUT:?}"),
        };
        let http = format!("http://{host}/v2/");
        let resp = within_deadline(
            &http,
            self.send(&self.inner.direct, Method::GET, &http, None, None),
        )
        .await
        .map_err(|e| HttpError::Transport {
            url: https.clone(),
            message: format!("{tls_failure}; and over plain http: {e}"),
        })?;
        let status = resp.status();
        let sniff = read_prefix(resp.into_body(), MAX_SNIFF).await;
        if status == StatusCode::BAD_REQUEST
            && String::from_utf8_lossy(&sniff)
                .to_ascii_lowercase()
                .contains("https")
        {
            return Err(HttpError::Transport {
                url: https,
                message: format!("{tls_failure}; it says it speaks https"),
            });
        }
        tracing::warn!(
            registry,
            "registry does not speak TLS: reading it over plain http, anonymously (name it in \
             --insecure-registry to send credentials to it)"
        );
        Ok(Scheme::Http)
    }
}

/// What went wrong in a TLS handshake.
pub(super) enum TlsProblem {
    /// The peer's answer was not TLS (a plain-HTTP server), or it closed without a word.
    NotTls(String),
    /// The peer's certificate was refused.
    Certificate(String),
    /// The peer speaks TLS but the handshake failed otherwise.
    Other(String),
}

/// The TLS failure somewhere in an error's chain (io::Errors looked into: tokio-rustls
/// wraps rustls's error in one, and an io::Error's `source` skips its payload).
pub(super) fn tls_error_in(e: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
    let mut current = Some(e);
    let mut depth = 0;
    while let Some(err) = current {
        depth += 1;
        if depth > 32 {
            return None;
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            use rustls::{Error as E, InvalidMessage as M};
            return Some(match tls {
                E::InvalidMessage(M::InvalidContentType | M::UnknownProtocolVersion) => {
                    TlsProblem::NotTls("its answer is not a TLS record".into())
                }
                E::InvalidCertificate(_) | E::NoCertificatesPresented => {
                    TlsProblem::Certificate(tls.to_string())
                }
                other => TlsProblem::Other(other.to_string()),
            });
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(found) = tls_error_in(inner) {
                    return Some(found);
                }
            }
            if io.kind() == std::io::ErrorKind::UnexpectedEof
                && io.to_string().contains("tls handshake")
            {
                return Some(TlsProblem::NotTls(
                    "it closed the connection during the handshake".into(),
                ));
            }
        }
        current = err.source();
    }
    None
}

/// The port of `host[:port]` (IPv6 literals in brackets), if written.
pub(super) fn explicit_port(host: &str) -> Option<u16> {
    let after = match host.rfind(']') {
        Some(i) => &host[i + 1..],
        None => host,
    };
    let (_, port) = after.rsplit_once(':')?;
    port.parse().ok()
}
