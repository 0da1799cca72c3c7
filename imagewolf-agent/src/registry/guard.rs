//! Which hosts the registry client may reach: the agent's defence against server-side request
//! forgery. A registry notification names the registry host (`request.host` / `target.url`),
//! so whoever can post one could otherwise make the agent request any service it can reach
//! (loopback, the cloud metadata service) and, through redirects, any URL at all.
//!
//! The rules, in the order they are applied to a host (`host[:port]` as written):
//! - **Named hosts pass.** A host that `--allow` names literally (a pattern whose host part
//!   is exactly that `host[:port]`, no wildcard), or that the operator configured
//!   (`--registry`, `--hub-registry`, `--poll` targets), is reached as given.
//! - **A registry host** (the first request of every exchange) may be a public or a private
//!   address (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7: on-prem registries live
//!   there), never a *forbidden* one: loopback, link-local, cloud metadata (169.254.169.254,
//!   fd00:ec2::254, 100.100.100.200, 168.63.129.16), unspecified, multicast, broadcast,
//!   reserved.
//! - **A redirect** is followed to the same host as the registry's, or to a named host, or
//!   else only to a host whose addresses are all public: object storage and CDNs, where real
//!   registries send blob downloads. Never to a private or forbidden address, by IP or by name.
//!
//! Where: [`HostPolicy::check`] before anything acts on a host (the registry source's pull,
//! before Docker is ever asked; each redirect hop), and again at connect time
//! ([`GuardedConnector`], a wrapper around hyper_util's `HttpConnector` whose resolver drops
//! addresses the rule refuses), so a name that resolves differently the second time (DNS
//! rebinding) still cannot reach a refused address. IPv4-mapped IPv6 addresses and NAT64's
//! well-known prefix are judged by the IPv4 address inside.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::allowlist::Allowlist;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What an address is, as far as reaching it from a notification goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// A globally routed address.
    Public,
    /// A private range (on-prem registries): allowed as a registry host, not as a redirect
    /// target. The text says which range.
    Private(&'static str),
    /// Never reached unless named (loopback, link-local, metadata, ...). The text says why.
    Forbidden(&'static str),
}

/// Which rule a connection is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The registry host itself: public or private addresses.
    Registry,
    /// A redirect to another host: public addresses only.
    Redirect,
}

/// Cloud metadata services reachable from inside a VM (AWS/GCP/Azure/OpenStack, Alibaba,
/// Azure's wire server).
const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
];
/// AWS's IPv6 metadata service.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

const LOOPBACK: &str = "loopback address";
const LINK_LOCAL: &str = "link-local address";
const METADATA: &str = "cloud metadata address";
const UNSPECIFIED: &str = "unspecified address";
const MULTICAST: &str = "multicast address";
const BROADCAST: &str = "broadcast address";
const RESERVED: &str = "reserved address";

/// The class of `ip` (see the module docs).
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::{Forbidden, Private, Public};
    let [a, b, _, _] = ip.octets();
    if METADATA_V4.contains(&ip) {
        Forbidden(METADATA)
    } else if a == 0 {
        // 0.0.0.0/8, "this network": connecting to 0.0.0.0 reaches this host on Linux.
        Forbidden(UNSPECIFIED)
    } else if a == 127 {
        Forbidden(LOOPBACK)
    } else if a == 169 && b == 254 {
        Forbidden(LINK_LOCAL)
    } else if ip.is_broadcast() {
        Forbidden(BROADCAST)
    } else if (224..240).contains(&a) {
        Forbidden(MULTICAST)
    } else if a >= 240 {
        Forbidden(RESERVED)
    } else if a == 10 || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168) {
        Private("private address")
    } else if a == 100 && (64..128).contains(&b) {
        Private("shared address space (100.64.0.0/10)")
    } else {
        Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::{Forbidden, Private, Public};
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    // NAT64's well-known prefix 64:ff9b::/96 reaches the IPv4 address in its last 32 bits.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = s;
        return classify_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    if ip == METADATA_V6 {
        Forbidden(METADATA)
    } else if ip.is_unspecified() {
        Forbidden(UNSPECIFIED)
    } else if ip.is_loopback() {
        Forbidden(LOOPBACK)
    } else if s[..6] == [0; 6] {
        // The deprecated IPv4-compatible form ::a.b.c.d: no registry lives there.
        Forbidden(RESERVED)
    } else if s[0] & 0xffc0 == 0xfe80 {
        Forbidden(LINK_LOCAL)
    } else if s[0] & 0xff00 == 0xff00 {
        Forbidden(MULTICAST)
    } else if s[0] & 0xfe00 == 0xfc00 {
        Private("unique local address (fc00::/7)")
    } else if s[0] & 0xffc0 == 0xfec0 {
        Private("site-local address (fec0::/10)")
    } else {
        Public
    }
}

/// Whether `rule` lets a connection reach `ip`; the refusal says why.
pub fn verdict(ip: IpAddr, rule: Rule) -> Result<(), &'static str> {
    match (classify(ip), rule) {
        (AddressClass::Public, _) | (AddressClass::Private(_), Rule::Registry) => Ok(()),
        (AddressClass::Private(why), Rule::Redirect) | (AddressClass::Forbidden(why), _) => {
            Err(why)
        }
    }
}

/// How a redirect from the registry `from` to the host `to` is judged (sans-IO; both are
/// `host[:port]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectHop {
    /// The registry's own host: already checked.
    SameHost,
    /// A host the operator named: reached as given.
    Named,
    /// Any other host: only if every address it has is public ([`Rule::Redirect`]).
    MustBePublic,
}

/// A host the policy refused, and which rule refused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {host} refused: {reason}; name it in --allow to permit", self.what())]
pub struct Refused {
    /// The rule that refused it.
    pub rule: Rule,
    /// The host as written (`host[:port]`, at most 100 characters).
    pub host: String,
    /// Why, e.g. "loopback address" or "it resolves to 127.0.0.1, a loopback address".
    pub reason: String,
}

impl Refused {
    fn new(rule: Rule, host: &str, reason: String) -> Self {
        Refused {
            rule,
            host: host.chars().take(100).collect(),
            reason,
        }
    }

    fn what(&self) -> &'static str {
        match self.rule {
            Rule::Registry => "registry host",
            Rule::Redirect => "redirect to",
        }
    }
}

/// The hosts reached as given, whatever their addresses (see the module docs). The default
/// names none: every host is judged by its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// Lowercased `host[:port]`s.
    named: BTreeSet<String>,
}

impl HostPolicy {
    /// No named hosts: loopback, link-local, metadata... are refused everywhere.
    pub fn strict() -> Self {
        Self::default()
    }

    /// A policy naming `hosts` (`host[:port]` as in image references), e.g. the operator's
    /// `--registry` and `--poll` targets, or a test's registry on 127.0.0.1.
    pub fn naming<S: AsRef<str>>(hosts: impl IntoIterator<Item = S>) -> Self {
        Self::default().and_naming(hosts)
    }

    /// The hosts `--allow` names literally: each pattern whose host part has no wildcard.
    /// `127.0.0.1:5000/**` names `127.0.0.1:5000`; `*/**` and `127.0.0.1:*/**` name nothing.
    pub fn from_allowlist(allow: &Allowlist) -> Self {
        Self::naming(allow.patterns().iter().filter_map(|p| p.literal_host()))
    }

    /// This policy, naming `hosts` too.
    pub fn and_naming<S: AsRef<str>>(mut self, hosts: impl IntoIterator<Item = S>) -> Self {
        self.named.extend(
            hosts
                .into_iter()
                .map(|h| h.as_ref().trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty()),
        );
        self
    }

    /// Whether `host` (`host[:port]`) is named; case-insensitive, the port must match.
    pub fn is_named(&self, host: &str) -> bool {
        self.named.contains(&host.to_ascii_lowercase())
    }

    /// The named hosts, lowercased.
    pub fn named(&self) -> impl Iterator<Item = &str> {
        self.named.iter().map(String::as_str)
    }

    /// How a redirect from the registry host `from` to `to` is judged.
    pub fn redirect_hop(&self, from: &str, to: &str) -> RedirectHop {
        if from.eq_ignore_ascii_case(to) {
            RedirectHop::SameHost
        } else if self.is_named(to) {
            RedirectHop::Named
        } else {
            RedirectHop::MustBePublic
        }
    }

    /// Checks `host` (`host[:port]`) under `rule` before anything acts on it: a named host
    /// passes; an IP literal is judged as it is; a name is resolved and passes if some
    /// address it resolves to passes (connections then go to those only,
    /// [`GuardedConnector`]). A name that does not resolve passes here: the request then
    /// fails with the resolver's error, as it would have.
    pub async fn check(&self, host: &str, rule: Rule) -> Result<(), Refused> {
        if self.is_named(host) {
            return Ok(());
        }
        let Some((name, port)) = split_host(host) else {
            return Err(Refused::new(rule, host, "not a host[:port]".into()));
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            return verdict(ip, rule).map_err(|why| Refused::new(rule, host, why.into()));
        }
        let lookup = tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((name.as_str(), port)),
        )
        .await;
        let Ok(Ok(addrs)) = lookup else {
            return Ok(());
        };
        let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
        match first_refusal(&addrs, rule) {
            Some(reason) if addrs.iter().all(|ip| verdict(*ip, rule).is_err()) => {
                Err(Refused::new(rule, host, reason))
            }
            _ => Ok(()),
        }
    }
}

/// How long a pre-flight resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// "it resolves to IP, a WHY" for the first address `rule` refuses.
fn first_refusal(addrs: &[IpAddr], rule: Rule) -> Option<String> {
    addrs.iter().find_map(|ip| {
        verdict(*ip, rule)
            .err()
            .map(|why| format!("it resolves to {ip}, a {why}"))
    })
}

/// `host[:port]` -> (host without brackets, port or 80).
fn split_host(host: &str) -> Option<(String, u16)> {
    if host.contains(['@', '/', '?', '#']) {
        return None; // user info or a path: not a registry host
    }
    let uri: Uri = format!("http://{host}/").parse().ok()?;
    let authority = uri.authority()?;
    if authority.as_str() != host {
        return None;
    }
    let name = authority.host();
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    Some((name.to_owned(), authority.port_u16().unwrap_or(80)))
}

/// A DNS resolver for `HttpConnector` that keeps only the addresses its rule allows (the
/// connect-time check of names; IP literals never reach a resolver).
#[derive(Clone)]
pub struct GuardedResolver {
    rule: Rule,
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let rule = self.rule;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
            let kept: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| verdict(a.ip(), rule).is_ok())
                .collect();
            if kept.is_empty() {
                let reason =
                    first_refusal(&ips, rule).unwrap_or_else(|| "it resolves to nothing".into());
                return Err(Box::new(Refused::new(rule, &host, reason)) as BoxError);
            }
            Ok(kept.into_iter())
        })
    }
}

/// hyper_util's `HttpConnector` with the policy applied at connect time (the TCP connection
/// TLS then runs over, for https): named hosts are
/// connected to as given; an IP literal is judged by `rule` before connecting; a name is
/// resolved by a [`GuardedResolver`], so only addresses `rule` allows are ever dialled.
#[derive(Clone)]
pub struct GuardedConnector {
    policy: Arc<HostPolicy>,
    rule: Rule,
    open: HttpConnector,
    guarded: HttpConnector<GuardedResolver>,
}

impl GuardedConnector {
    /// A connector judging hosts by `rule` under `policy`.
    pub fn new(policy: Arc<HostPolicy>, rule: Rule, connect_timeout: Duration) -> Self {
        let mut open = HttpConnector::new();
        open.set_connect_timeout(Some(connect_timeout));
        // TLS (hyper-rustls) runs over this connector: it hands https URIs down too.
        open.enforce_http(false);
        let mut guarded = HttpConnector::new_with_resolver(GuardedResolver { rule });
        guarded.set_connect_timeout(Some(connect_timeout));
        guarded.enforce_http(false);
        GuardedConnector {
            policy,
            rule,
            open,
            guarded,
        }
    }
}

impl Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default();
            if this.policy.is_named(&authority) {
                let mut open = this.open;
                std::future::poll_fn(|cx| open.poll_ready(cx)).await?;
                return Ok(open.call(uri).await?);
            }
            let host = uri.host().unwrap_or_default();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if let Ok(ip) = host.parse::<IpAddr>() {
                verdict(ip, this.rule)
                    .map_err(|why| Refused::new(this.rule, &authority, why.into()))?;
            }
            let mut guarded = this.guarded;
            std::future::poll_fn(|cx| guarded.poll_ready(cx)).await?;
            Ok(guarded.call(uri).await?)
        })
    }
}

/// The [`Refused`] somewhere in an error's chain of sources, if any (a connector's refusal
/// reaches the caller wrapped in hyper's errors).
pub fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests;
