//! Credentials on the wire: what a request carries before any challenge (a cached token for
//! its scope, or basic credentials to a host that asked for them), the token flow after a
//! 401, and which challenge to answer.

use super::*;

/// The `Authorization` a request carried.
#[derive(Clone)]
pub(super) enum AuthUse {
    None,
    Basic(HeaderValue),
    Bearer {
        header: HeaderValue,
        with_credentials: bool,
    },
}

impl AuthUse {
    pub(super) fn header(&self) -> Option<&HeaderValue> {
        match self {
            AuthUse::None => None,
            AuthUse::Basic(h) | AuthUse::Bearer { header: h, .. } => Some(h),
        }
    }

    pub(super) fn with_credentials(&self) -> bool {
        match self {
            AuthUse::None => false,
            AuthUse::Basic(_) => true,
            AuthUse::Bearer {
                with_credentials, ..
            } => *with_credentials,
        }
    }
}

pub(super) fn secret_header(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl RegistryHttp {
    /// What to send before any challenge: a cached token for the scope, else basic
    /// credentials to a host that asked for them before.
    pub(super) fn preemptive(
        &self,
        host: &str,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> AuthUse {
        if let Some((token, with_credentials)) =
            lock(&self.inner.tokens).get(host, scope, Instant::now())
        {
            if let Some(header) = secret_header(&token.header()) {
                return AuthUse::Bearer {
                    header,
                    with_credentials,
                };
            }
        }
        match credentials {
            Some(c) if lock(&self.inner.basic).contains(host) => {
                secret_header(&c.basic_header()).map_or(AuthUse::None, AuthUse::Basic)
            }
            _ => AuthUse::None,
        }
    }

    /// The token flow: GET the realm with `service` and `scope`, anonymously or with the
    /// registry's credentials (basic). `None` when the service refuses an anonymous
    /// request (the caller returns the registry's 401: credentials are needed).
    pub(super) async fn fetch_token(
        &self,
        registry: &str,
        host: &str,
        url: &str,
        challenge: &Challenge,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Option<AuthUse>, HttpError> {
        let auth_error = |message: String| HttpError::Auth {
            url: url.to_owned(),
            message,
        };
        let realm = challenge
            .param("realm")
            .ok_or_else(|| auth_error(format!("{host} asks for a bearer token without a realm")))?;
        if !(realm.starts_with("https://") || realm.starts_with("http://")) || realm.len() > 2048 {
            return Err(auth_error(format!(
                "{host} names a token realm that is not an http(s) URL"
            )));
        }
        let realm_host = authority_of(realm)
            .map_err(|e| auth_error(format!("{host} names an unusable token realm: {e}")))?;
        let realm_mode = self.host_mode(&realm_host);
        let realm_https = realm.starts_with("https://");
        // Credentials go to the realm over https, or plain http to a host named insecure.
        let credentials = credentials.filter(|_| realm_https || realm_mode == HostMode::PlainHttp);
        if !realm_host.eq_ignore_ascii_case(host) && !self.inner.policy.is_named(&realm_host) {
            self.preflight(url, &realm_host, Rule::Registry).await?;
        }
        let mut query = Vec::new();
        if let Some(service) = challenge.param("service") {
            query.push(format!("service={}", percent_encode(service)));
        }
        let scopes = challenge.param("scope").unwrap_or(scope);
        for s in scopes.split(' ').filter(|s| !s.is_empty()) {
            query.push(format!("scope={}", percent_encode(s)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let token_url = if query.is_empty() {
            realm.to_owned()
        } else {
            format!("{realm}{sep}{}", query.join("&"))
        };
        let header = match credentials {
            Some(c) => Some(secret_header(&c.basic_header()).ok_or_else(|| {
                auth_error(format!("the credentials for {host} do not fit in a header"))
            })?),
            None => None,
        };
        let asked = Instant::now();
        let resp = self
            .send(
                &self.inner.direct,
                Method::GET,
                &token_url,
                Some("application/json"),
                header.as_ref(),
            )
            .await
            .map_err(|e| match e {
                HttpError::Transport { message, .. } => HttpError::Transport {
                    url: url.to_owned(),
                    message: format!("token service {realm_host}: {message}"),
                },
                HttpError::Tls {
                    message,
                    certificate,
                    ..
                } => HttpError::Tls {
                    url: url.to_owned(),
                    message: format!("token service {realm_host}: {message}"),
                    certificate,
                },
                HttpError::Refused { refused, .. } => HttpError::Refused {
                    url: url.to_owned(),
                    refused,
                },
                e => e,
            })?;
        let status = resp.status();
        match status.as_u16() {
            200 => {}
            401 | 403 if credentials.is_some() => {
                return Err(auth_error(format!(
                    "the token service {realm_host} refused the credentials for {} (HTTP {})",
                    auth::normalize_registry_key(registry).unwrap_or_else(|| host.to_owned()),
                    status.as_u16()
                )))
            }
            401 | 403 => return Ok(None),
            408 | 429 | 500..=599 => {
                return Err(HttpError::Transport {
                    url: url.to_owned(),
                    message: format!("token service {realm_host} answered {}", status.as_u16()),
                })
            }
            _ => {
                return Err(auth_error(format!(
                    "the token service {realm_host} answered {}",
                    status.as_u16()
                )))
            }
        }
        let body = read_bounded(url, resp, MAX_TOKEN_RESPONSE).await?.body;
        let token = auth::parse_token_response(&body)
            .map_err(|e| auth_error(format!("token service {realm_host}: {e}")))?;
        let header = secret_header(&token.header())
            .ok_or_else(|| auth_error(format!("token service {realm_host}: unusable token")))?;
        let with_credentials = credentials.is_some();
        tracing::debug!(registry = host, realm = %realm_host, scope, lifetime = ?token.lifetime, with_credentials, "registry token obtained");
        lock(&self.inner.tokens).insert(host, scope, token, with_credentials, asked);
        Ok(Some(AuthUse::Bearer {
            header,
            with_credentials,
        }))
    }
}

/// The challenge to answer: a bearer one with a realm first, else basic.
pub(super) fn pick(challenges: &[Challenge]) -> Option<&Challenge> {
    challenges
        .iter()
        .find(|c| c.scheme == "bearer" && c.param("realm").is_some())
        .or_else(|| challenges.iter().find(|c| c.scheme == "basic"))
}

/// Every challenge of every `WWW-Authenticate` header.
pub(super) fn challenges_of(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(auth::parse_challenges)
        .take(auth::MAX_CHALLENGES)
        .collect()
}
