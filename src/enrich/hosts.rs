//! Which hosts the archiver may fetch from. A recording URL is named by a sender, so without
//! a rule it could point the gateway at itself (`http://127.0.0.1:9090/metrics`) or at
//! anything else on its network. The rule, applied to the URL, to every redirect and to
//! every address a name resolves to:
//!
//! - only `http` and `https`;
//! - with `allow_hosts`, only hosts that match one of its patterns (`vendor.com` exactly,
//!   `*.vendor.com` any name below it);
//! - unless `allow_private_networks`, no address that is loopback, private, link-local,
//!   shared (CGNAT), multicast, broadcast, reserved or unspecified, in v4 or v6, including
//!   v4 addresses carried in v6 (mapped, compatible, NAT64, 6to4).
//!
//! The checked addresses are the ones connected to: names resolve through [`Resolver`],
//! which refuses a host when any of its addresses is forbidden, and reqwest connects to what
//! it returns (no second lookup a rebinding DNS server could answer differently). Literal
//! addresses in a URL never reach a resolver, so [`HostRule::check_url`] checks them; the
//! URL parser has already turned `2130706433` or `0x7f.1` into `127.0.0.1`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The host rule of `[recordings]`.
#[derive(Debug, Clone, Default)]
pub struct HostRule {
    pub allow_private_networks: bool,
    /// Empty = any host (subject to the address rule).
    pub allow_hosts: Vec<String>,
}

/// Why a URL is not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a URL, or not `http(s)`: the same every time (reason `invalid_url`).
    #[error("{0}")]
    InvalidUrl(String),
    /// Forbidden by the rule (reason `forbidden_host`); `host` is safe to log.
    #[error("the host {host} is not allowed: {why}")]
    ForbiddenHost { host: String, why: &'static str },
}

impl HostRule {
    /// Whether the rule refuses anything at all (else no resolver is needed).
    pub fn restricts(&self) -> bool {
        !self.allow_private_networks || !self.allow_hosts.is_empty()
    }

    /// Parses and checks a URL before it is fetched (or followed, on a redirect).
    pub fn check(&self, url: &str) -> Result<Url, Refused> {
        let url = Url::parse(url).map_err(|e| Refused::InvalidUrl(format!("not a URL: {e}")))?;
        self.check_url(&url)?;
        Ok(url)
    }

    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refused::InvalidUrl(format!(
                "the scheme `{}` is not http or https",
                url.scheme()
            )));
        }
        let Some(host) = url.host() else {
            return Err(Refused::InvalidUrl("the URL has no host".into()));
        };
        let name = match host {
            url::Host::Domain(d) => d.to_ascii_lowercase(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|p| matches(p, &name)) {
            return Err(Refused::ForbiddenHost {
                host: name,
                why: "not in recordings.allow_hosts",
            });
        }
        let literal = match host {
            url::Host::Domain(_) => None,
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        };
        if let Some(ip) = literal
            && !self.allow_private_networks
            && !is_public(ip)
        {
            return Err(Refused::ForbiddenHost {
                host: name,
                why: "a private, loopback, link-local, multicast or unspecified address",
            });
        }
        Ok(())
    }

    /// The resolver a client fetching under this rule must use.
    pub fn resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver {
            allow_private_networks: self.allow_private_networks,
        })
    }
}

/// `pattern` is a host name (`vendor.com`) or `*.` and a domain (`*.vendor.com`: any name
/// below it, not the domain itself); both compared without case.
pub fn matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => host == pattern,
    }
}

/// A well-formed `allow_hosts` entry: a host name, or `*.` and a domain.
pub fn valid_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether an address is one the archiver may connect to without `allow_private_networks`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0                                  // "this network"
        || (a == 100 && (64..128).contains(&b))    // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0)          // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19))      // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // A v4 address carried in v6 is judged as that v4 address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if segments[..6] == [0; 6] {
        // IPv4-compatible (deprecated) and `::`/`::1`.
        return !ip.is_unspecified()
            && !ip.is_loopback()
            && is_public_v4(embedded(segments[6], segments[7]));
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(segments[6], segments[7])); // NAT64
    }
    if segments[0] == 0x2002 {
        return is_public_v4(embedded(segments[1], segments[2])); // 6to4
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00   // unique local
        || (segments[0] & 0xffc0) == 0xfe80   // link-local
        || (segments[0] & 0xffc0) == 0xfec0   // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)) // documentation
}

/// Resolves names for the archiver's client, refusing a name any of whose addresses is not
/// public (unless private networks are allowed). reqwest connects to the addresses it
/// returns, so what was checked is what is connected to.
#[derive(Debug)]
pub struct Resolver {
    allow_private_networks: bool,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private_networks;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
                return Err(Box::new(Refused::ForbiddenHost {
                    host,
                    why: "it resolves to a private, loopback, link-local, multicast or unspecified address",
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The [`Refused`] somewhere in an error's chain (a resolver's or a redirect policy's).
pub fn refused_in(error: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        next = e.source();
    }
    None
}

/// A URL as it may be logged: scheme, host, port and path; never the query (it often holds
/// the vendor's access token), the fragment or user-info.
pub fn shown(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            match u.port() {
                Some(port) => format!("{}://{host}:{port}{}", u.scheme(), u.path()),
                None => format!("{}://{host}{}", u.scheme(), u.path()),
            }
        }
        Err(_) => "(not a URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> HostRule {
        HostRule::default()
    }

    fn refused(rule: &HostRule, url: &str) -> Option<Refused> {
        rule.check(url).err()
    }

    #[test]
    fn loopback_private_and_odd_spellings_of_them_are_refused() {
        for url in [
            "http://127.0.0.1:9090/metrics",
            "http://2130706433:9090/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0.0.0.0/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:c0a8:0101::1]/",
            "http://[fc00::1]/",
            "http://[fd12:3456::1]/",
            "http://[fe80::1]/",
            "http://[ff02::1]/",
        ] {
            assert!(
                matches!(refused(&strict(), url), Some(Refused::ForbiddenHost { .. })),
                "{url} must be refused"
            );
        }
    }

    #[test]
    fn public_addresses_and_names_pass_the_url_check() {
        for url in [
            "https://93.184.215.14/rec.wav",
            "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/x",
            "https://[::ffff:93.184.215.14]/x",
            "https://recordings.vendor.example/a.wav?token=x",
            // A name is checked when it resolves (Resolver), not here.
            "http://localhost/",
        ] {
            assert_eq!(refused(&strict(), url), None, "{url}");
        }
        let open = HostRule {
            allow_private_networks: true,
            allow_hosts: vec![],
        };
        assert_eq!(refused(&open, "http://127.0.0.1:9090/"), None);
    }

    #[test]
    fn only_http_urls_are_fetched() {
        for url in [
            "file:///etc/passwd",
            "ftp://host/x",
            "gopher://h/",
            "not a url",
            "http://",
        ] {
            assert!(
                matches!(refused(&strict(), url), Some(Refused::InvalidUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn allow_hosts_admits_only_its_hosts() {
        let rule = HostRule {
            allow_private_networks: true,
            allow_hosts: vec!["*.vendor.com".into(), "cdn.example.org".into()],
        };
        assert_eq!(refused(&rule, "https://a.vendor.com/x"), None);
        assert_eq!(refused(&rule, "https://A.B.Vendor.COM/x"), None);
        assert_eq!(refused(&rule, "https://cdn.example.org/x"), None);
        for url in [
            "https://vendor.com/x",
            "https://evilvendor.com/x",
            "https://vendor.com.evil.net/x",
            "https://x.cdn.example.org/x",
            "http://127.0.0.1/",
        ] {
            assert!(
                matches!(refused(&rule, url), Some(Refused::ForbiddenHost { .. })),
                "{url}"
            );
        }
        assert!(valid_pattern("*.vendor.com") && valid_pattern("cdn.example.org"));
        assert!(!valid_pattern("*") && !valid_pattern("a..b") && !valid_pattern("http://x"));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_by_the_resolver() {
        let strict = strict().resolver();
        let error = strict
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost resolves to loopback");
        assert!(matches!(
            refused_in(error.as_ref()),
            Some(Refused::ForbiddenHost { .. })
        ));
        let open = HostRule {
            allow_private_networks: true,
            allow_hosts: vec![],
        }
        .resolver();
        assert!(open.resolve("localhost".parse().unwrap()).await.is_ok());
    }

    #[test]
    fn a_shown_url_has_no_query() {
        assert_eq!(
            shown("https://u:p@host.example:8443/rec/1.wav?token=secret#frag"),
            "https://host.example:8443/rec/1.wav"
        );
    }
}
