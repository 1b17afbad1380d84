//! The egress guard: which addresses Ferry may send to, and the HTTP client that enforces it.
//!
//! This module owns the one rule for outbound requests (destinations, `http` steps, OAuth2
//! token requests, alert channels, SMTP): the classification of an IP address as loopback,
//! private, link-local, shared, reserved and the like (IPv4 carried inside IPv6 is classified
//! as the IPv4 address it carries), the allow-list of `settings.egress.allow`, and where the
//! rule is applied:
//!
//! - at config check, on URLs whose host is an IP literal or `localhost`, and on URLs with user
//!   info (`EgressPolicy::check_url`);
//! - at send time, on the same URLs again (`EgressClient::request`: reqwest does not ask the
//!   resolver about IP literals), and on every address a host name resolves to
//!   (`GuardedResolver`, the client's only resolver: reqwest connects to exactly the addresses
//!   it returns, so a second, different DNS answer cannot slip in). SMTP resolves and checks its
//!   host the same way (`EgressPolicy::resolve`) and connects to the address it checked.
//!
//! A name is refused when ANY of its addresses is blocked, not filtered down to the allowed
//! ones: a name that mixes public and private addresses is a misconfiguration or a rebinding
//! attempt, and refusing it says so in the attempt log instead of depending on which address
//! a connection happens to try.
//!
//! It knows nothing about deliveries, runs or alerts: callers turn a [`Refused`] into a failed
//! attempt, a failed step or a logged channel error.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The most entries `settings.egress.allow` may list.
pub const MAX_ALLOW_ENTRIES: usize = 1024;
/// The longest entry: a DNS name has at most 253 characters; a network far fewer.
const MAX_ENTRY_LEN: usize = 253;

/// A range of addresses, as CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub network: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An IPv6 form that carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Form {
    pub name: &'static str,
    pub range: Range,
}

/// Why an address is blocked: the special range it is in, and, for an IPv6 address that
/// carries an IPv4 address, the form and the IPv4 address whose range that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// What the range is for: `loopback`, `private`, `multicast`...
    pub what: &'static str,
    pub range: Range,
    pub inside: Option<(Form, Ipv4Addr)>,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inside {
            None => write!(f, "{} ({})", self.what, self.range),
            Some((form, v4)) => write!(
                f,
                "{} ({}) carrying {v4}, which is {} ({})",
                form.name, form.range, self.what, self.range
            ),
        }
    }
}

const fn v4(
    a: u8,
    b: u8,
    c: u8,
    d: u8,
    prefix: u8,
    what: &'static str,
) -> (Ipv4Addr, u8, &'static str) {
    (Ipv4Addr::new(a, b, c, d), prefix, what)
}

/// The IPv4 ranges Ferry does not send to, most specific first (the first match names the
/// reason). From the IANA IPv4 special-purpose address registry; the documentation ranges are
/// in it because nothing real lives there and a config that names them is a mistake.
const V4_BLOCKED: &[(Ipv4Addr, u8, &str)] = &[
    v4(0, 0, 0, 0, 32, "unspecified"),
    v4(0, 0, 0, 0, 8, "\"this network\""),
    v4(10, 0, 0, 0, 8, "private"),
    v4(
        100,
        64,
        0,
        0,
        10,
        "shared address space (carrier-grade NAT)",
    ),
    v4(127, 0, 0, 0, 8, "loopback"),
    v4(
        169,
        254,
        0,
        0,
        16,
        "link-local (cloud metadata services live here)",
    ),
    v4(172, 16, 0, 0, 12, "private"),
    v4(192, 0, 0, 0, 24, "IETF protocol assignments"),
    v4(192, 0, 2, 0, 24, "documentation (TEST-NET-1)"),
    v4(192, 88, 99, 0, 24, "6to4 relay anycast (deprecated)"),
    v4(192, 168, 0, 0, 16, "private"),
    v4(198, 18, 0, 0, 15, "benchmarking"),
    v4(198, 51, 100, 0, 24, "documentation (TEST-NET-2)"),
    v4(203, 0, 113, 0, 24, "documentation (TEST-NET-3)"),
    v4(224, 0, 0, 0, 4, "multicast"),
    v4(255, 255, 255, 255, 32, "broadcast"),
    v4(240, 0, 0, 0, 4, "reserved"),
];

const fn v6(segments: [u16; 8], prefix: u8, what: &'static str) -> (Ipv6Addr, u8, &'static str) {
    let [a, b, c, d, e, f, g, h] = segments;
    (Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix, what)
}

/// The IPv6 ranges Ferry does not send to, checked after the forms that carry IPv4. Anything
/// outside 2000::/3, the only range allocated for global unicast, is refused after these.
const V6_BLOCKED: &[(Ipv6Addr, u8, &str)] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo"),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "benchmarking"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique-local"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (deprecated)"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
];

const GLOBAL_UNICAST: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// The IPv6 forms that carry an IPv4 address, and where: the last 32 bits, or (6to4) bits 16
/// to 48. The local-use NAT64 prefix is read with the /96 layout RFC 6052 recommends.
const FORMS: &[(Ipv6Addr, u8, &str, Carried)] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "an IPv4-mapped IPv6 address",
        Carried::Last32,
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "an IPv4-compatible IPv6 address",
        Carried::Last32,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        "a NAT64 address",
        Carried::Last32,
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "a local-use NAT64 address",
        Carried::Last32,
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        "a 6to4 address",
        Carried::SixToFour,
    ),
];

#[derive(Debug, Clone, Copy)]
enum Carried {
    Last32,
    SixToFour,
}

fn in_v4(ip: Ipv4Addr, network: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(network) & mask
}

fn in_v6(ip: Ipv6Addr, network: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(network) & mask
}

/// The IPv4 address an IPv6 address carries, with its form, when it is one of those forms.
/// `::` and `::1` are themselves, not IPv4-compatible forms of 0.0.0.0 and 0.0.0.1.
pub fn carried_v4(ip: Ipv6Addr) -> Option<(Form, Ipv4Addr)> {
    if ip.is_unspecified() || ip.is_loopback() {
        return None;
    }
    let (network, prefix, name, carried) = FORMS
        .iter()
        .find(|(network, prefix, _, _)| in_v6(ip, *network, *prefix))?;
    let bits = u128::from(ip);
    let v4 = match carried {
        Carried::Last32 => bits as u32,
        Carried::SixToFour => (bits >> 80) as u32,
    };
    let form = Form {
        name,
        range: Range {
            network: IpAddr::V6(*network),
            prefix: *prefix,
        },
    };
    Some((form, Ipv4Addr::from(v4)))
}

/// Why Ferry does not send to `ip`, or `None` when it is an ordinary public address.
pub fn classify(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(ip) => classify_v4(ip),
        IpAddr::V6(ip) => {
            if let Some((form, carried)) = carried_v4(ip) {
                return classify_v4(carried).map(|b| Blocked {
                    inside: Some((form, carried)),
                    ..b
                });
            }
            let range = |network: Ipv6Addr, prefix| Range {
                network: IpAddr::V6(network),
                prefix,
            };
            if let Some((network, prefix, what)) = V6_BLOCKED
                .iter()
                .find(|(network, prefix, _)| in_v6(ip, *network, *prefix))
            {
                return Some(Blocked {
                    what,
                    range: range(*network, *prefix),
                    inside: None,
                });
            }
            let (network, prefix) = GLOBAL_UNICAST;
            (!in_v6(ip, network, prefix)).then_some(Blocked {
                what: "outside global unicast, the only range routed on the internet",
                range: range(network, prefix),
                inside: None,
            })
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    V4_BLOCKED
        .iter()
        .find(|(network, prefix, _)| in_v4(ip, *network, *prefix))
        .map(|(network, prefix, what)| Blocked {
            what,
            range: Range {
                network: IpAddr::V4(*network),
                prefix: *prefix,
            },
            inside: None,
        })
}

/// Why a request was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "the URL has user info (`name@` or `name:password@`) before its host `{host}`; URLs with user info are refused (credentials belong in headers or `auth`, and `127.0.0.1@{host}` would be sent to `{host}`)"
    )]
    UserInfo { host: String },
    #[error("the URL has no host")]
    NoHost,
    #[error("host `{host}` is this machine; {ALLOW_HINT}")]
    LocalName { host: String },
    #[error("address {address} is {blocked}; {ALLOW_HINT}")]
    Address {
        address: IpAddr,
        blocked: Box<Blocked>,
    },
    #[error("host `{host}` resolves to {address}, which is {blocked}; {ALLOW_HINT}")]
    Resolved {
        host: String,
        address: IpAddr,
        blocked: Box<Blocked>,
    },
}

const ALLOW_HINT: &str = "allow it by naming the host or its network in `settings.egress.allow`, or with `settings.allow_private_destinations: true`";

/// A host name that could not be resolved or was refused once resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve `{host}`: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
    #[error("`{host}` resolves to no address")]
    NoAddress { host: String },
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// One entry of `settings.egress.allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// Every address in this network (a single address is a /32 or /128).
    Network(ipnet::IpNet),
    /// This exact host name (lower case, without a final dot), whatever it resolves to.
    Host(String),
}

/// Why an entry of `settings.egress.allow` is not a network, an address or a host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowError {
    #[error("an empty entry")]
    Empty,
    #[error(
        "an entry of {0} characters; a host name has at most 253, and a network is an address and a prefix length"
    )]
    TooLong(usize),
    #[error(
        "`{0}` is not an IP address (a network is written as an address and a prefix length, such as 10.1.2.0/24 or fd00::/8)"
    )]
    BadAddress(String),
    #[error("`{given}`: the prefix length `/{prefix}` is not a whole number from 0 to {max}")]
    BadPrefix {
        given: String,
        prefix: String,
        max: u8,
    },
    #[error("`{given}` has address bits set after its prefix; the network is `{network}`")]
    HostBits {
        given: String,
        network: ipnet::IpNet,
    },
    #[error("`{given}` reads as the address {address}; write it as `{address}`")]
    NotCanonical { given: String, address: IpAddr },
    #[error("`{0}`: wildcards are not supported; name each host, or give its network")]
    Wildcard(String),
    #[error(
        "`{given}` is not a network, an IP address or a host name ({why}); write e.g. 10.1.2.0/24, ::1 or hooks.internal.example, without a scheme, port or path"
    )]
    BadHost { given: String, why: String },
}

/// At most 80 characters of `text`, for error messages.
fn shown(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

impl AllowEntry {
    /// Reads one entry: a network in CIDR (`10.1.2.0/24`, `fd00::/8`), an IP address (a
    /// network of one), or an exact host name.
    pub fn parse(text: &str) -> Result<AllowEntry, AllowError> {
        if text.is_empty() {
            return Err(AllowError::Empty);
        }
        if text.len() > MAX_ENTRY_LEN {
            return Err(AllowError::TooLong(text.chars().count()));
        }
        if text.contains("://") {
            return Err(AllowError::BadHost {
                given: shown(text),
                why: "it is a URL".into(),
            });
        }
        if let Some((address, prefix)) = text.split_once('/') {
            let address: IpAddr = address
                .parse()
                .map_err(|_| AllowError::BadAddress(shown(address)))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let bad_prefix = || AllowError::BadPrefix {
                given: shown(text),
                prefix: shown(prefix),
                max,
            };
            if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad_prefix());
            }
            let prefix: u8 = prefix.parse().map_err(|_| bad_prefix())?;
            let network = ipnet::IpNet::new(address, prefix).map_err(|_| bad_prefix())?;
            if network.trunc() != network {
                return Err(AllowError::HostBits {
                    given: text.to_string(),
                    network: network.trunc(),
                });
            }
            return Ok(AllowEntry::Network(network));
        }
        if let Ok(address) = text.parse::<IpAddr>() {
            return Ok(AllowEntry::Network(ipnet::IpNet::from(address)));
        }
        if text.contains('*') {
            return Err(AllowError::Wildcard(shown(text)));
        }
        let bad = |why: String| AllowError::BadHost {
            given: shown(text),
            why,
        };
        match url::Host::parse(text).map_err(|e| bad(e.to_string()))? {
            url::Host::Domain(name) => {
                let name = name.strip_suffix('.').unwrap_or(&name).to_string();
                check_host_name(&name).map_err(|why| bad(why.into()))?;
                Ok(AllowEntry::Host(name))
            }
            url::Host::Ipv4(address) => Err(AllowError::NotCanonical {
                given: shown(text),
                address: address.into(),
            }),
            url::Host::Ipv6(address) => Err(AllowError::NotCanonical {
                given: shown(text),
                address: address.into(),
            }),
        }
    }
}

/// Labels of 1 to 63 letters, digits, `-` or `_`, 253 characters in all.
fn check_host_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_ENTRY_LEN {
        return Err("a host name has 1 to 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label has 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a label has letters, digits, `-` and `_` only");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label does not start or end with `-`");
        }
    }
    Ok(())
}

/// What outbound requests may reach: nothing special unless `allow_private` (everything), or
/// the allow-list names the host or a network holding the address. Fixed for the life of the
/// process (settings come from the config file only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow_private: bool,
    networks: Vec<ipnet::IpNet>,
    hosts: BTreeSet<String>,
}

impl EgressPolicy {
    pub fn new(allow_private: bool, allow: impl IntoIterator<Item = AllowEntry>) -> Self {
        let mut policy = EgressPolicy {
            allow_private,
            ..EgressPolicy::default()
        };
        for entry in allow {
            match entry {
                AllowEntry::Network(n) if !policy.networks.contains(&n) => policy.networks.push(n),
                AllowEntry::Network(_) => {}
                AllowEntry::Host(h) => {
                    policy.hosts.insert(h);
                }
            }
        }
        policy
    }

    /// Whether every special address is allowed (`settings.allow_private_destinations`).
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        self.hosts.contains(host) || self.hosts.contains(&host.to_ascii_lowercase())
    }

    /// Whether an allowed network holds `ip`, or the IPv4 address it carries.
    fn network_allowed(&self, ip: IpAddr) -> bool {
        let carried = match ip {
            IpAddr::V6(v6) => carried_v4(v6).map(|(_, v4)| IpAddr::V4(v4)),
            IpAddr::V4(_) => None,
        };
        self.networks
            .iter()
            .any(|n| n.contains(&ip) || carried.is_some_and(|c| n.contains(&c)))
    }

    /// Why `ip` may not be reached, if it may not.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Blocked> {
        if self.allow_private || self.network_allowed(ip) {
            return Ok(());
        }
        classify(ip).map_or(Ok(()), Err)
    }

    /// Checks what can be checked of a URL without DNS: user info, an IP literal host, and
    /// `localhost`. Other names are checked when they are resolved.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        let host = url.host().ok_or(Refused::NoHost)?;
        if has_user_info(url) {
            return Err(Refused::UserInfo {
                host: host.to_string(),
            });
        }
        self.check_host(&host)
    }

    /// Checks a host as written (in a URL, or SMTP's `host`) before any DNS.
    pub fn check_host<S: AsRef<str>>(&self, host: &url::Host<S>) -> Result<(), Refused> {
        let address = match host {
            url::Host::Domain(name) => {
                let name = name.as_ref();
                let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
                let local = name == "localhost" || name.ends_with(".localhost");
                if local && !self.allow_private && !self.host_allowed(&name) {
                    return Err(Refused::LocalName { host: name });
                }
                return Ok(());
            }
            url::Host::Ipv4(a) => IpAddr::V4(*a),
            url::Host::Ipv6(a) => IpAddr::V6(*a),
        };
        self.check_address(address)
            .map_err(|blocked| Refused::Address {
                address,
                blocked: Box::new(blocked),
            })
    }

    /// Checks every address `host` resolves to (all must pass; an allowed host name passes
    /// whatever it resolves to).
    pub fn check_resolved(&self, host: &str, addresses: &[SocketAddr]) -> Result<(), Refused> {
        if self.allow_private || self.host_allowed(host) {
            return Ok(());
        }
        for address in addresses {
            let ip = address.ip();
            if let Err(blocked) = self.check_address(ip) {
                let blocked = Box::new(blocked);
                return Err(match host.parse::<IpAddr>() {
                    Ok(_) => Refused::Address {
                        address: ip,
                        blocked,
                    },
                    Err(_) => Refused::Resolved {
                        host: host.to_string(),
                        address: ip,
                        blocked,
                    },
                });
            }
        }
        Ok(())
    }

    /// Resolves `host` with the system resolver (so `/etc/hosts` applies) and checks every
    /// address. An IP literal resolves to itself and is checked the same way.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let lookup = |source| ResolveError::Lookup {
            host: host.to_string(),
            source,
        };
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(lookup)?
            .collect();
        if addresses.is_empty() {
            return Err(ResolveError::NoAddress {
                host: host.to_string(),
            });
        }
        self.check_resolved(host, &addresses)?;
        Ok(addresses)
    }
}

/// Whether a URL has user info (`name@`, `name:password@`, `:password@`).
pub fn has_user_info(url: &url::Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// A host as written in a config field that is not a URL (SMTP's `host`): an IP address with
/// or without brackets, or a name.
pub fn parse_host(text: &str) -> Option<url::Host<String>> {
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Some(url::Host::Ipv4(a)),
        Ok(IpAddr::V6(a)) => Some(url::Host::Ipv6(a)),
        Err(_) => url::Host::parse(text).ok(),
    }
}

/// The only resolver of [`EgressClient`]: the system's, then the policy on every address.
struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses = policy.resolve(&host, 0).await?;
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// The HTTP client of every request that leaves Ferry for a configured URL: the policy is
/// checked on the URL before the request is built and on every resolved address before a
/// connection; no redirects are followed and no proxy (from the environment or elsewhere) is
/// used, so nothing routes around the check. Cheap to clone.
#[derive(Clone)]
pub struct EgressClient {
    http: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl EgressClient {
    pub fn new(policy: Arc<EgressPolicy>) -> Result<EgressClient, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(GuardedResolver {
                policy: policy.clone(),
            })
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        Ok(EgressClient { http, policy })
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// A request to `url`, or why it may not be sent. Host names are checked again when the
    /// request resolves them.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: &url::Url,
    ) -> Result<reqwest::RequestBuilder, Refused> {
        self.policy.check_url(url)?;
        Ok(self.http.request(method, url.clone()))
    }
}

/// The refusal somewhere in an error's chain of causes (a request refused after DNS comes
/// back from reqwest wrapped in its connect error).
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        if let Some(ResolveError::Refused(refused)) = e.downcast_ref::<ResolveError>() {
            return Some(refused);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
