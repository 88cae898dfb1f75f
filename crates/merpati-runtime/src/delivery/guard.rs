//! The private-address guard: deliveries never reach loopback, private, link-local, CGNAT,
//! unique-local, metadata or other special addresses unless `delivery.allowed_networks`
//! exempts them.
//!
//! The address vetted is the address connected to: the HTTP client resolves names only
//! through [`GuardedResolver`], which hands it vetted addresses and nothing else, so a name
//! that resolves to a public address at one lookup and to a private one at the next (DNS
//! rebinding) cannot slip through. URLs with an address instead of a name never reach a
//! resolver and are checked before the request ([`check_url_host`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Why an address may not be delivered to.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("forbidden address: {host} is {addrs} (private, loopback or special; allow it with delivery.allowed_networks)")]
pub struct ForbiddenAddress {
    pub host: String,
    pub addrs: String,
}

/// Which addresses deliveries may reach.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allowed: Vec<IpNet>,
}

impl Guard {
    pub fn new(allowed: Vec<IpNet>) -> Guard {
        Guard { allowed }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_special(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// For an endpoint URL: refuses an address (or `localhost`) the guard would refuse.
    /// Names are left to delivery time, where the addresses they resolve to are vetted.
    pub fn check_url_host(&self, url: &url::Url) -> Result<(), ForbiddenAddress> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(d)) if is_localhost(d) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ => return Ok(()),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(ForbiddenAddress {
                host: url.host_str().unwrap_or_default().to_string(),
                addrs: ip.to_string(),
            })
        }
    }
}

fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Addresses that are not the public internet.
pub fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_special_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address in IPv6 clothing is judged as the IPv4 address.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_special_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return is_special_v4(v4);
            }
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7 (incl. fd00:ec2::254)
                || (s[0] & 0xffc0) == 0xfe80 // link-local, fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated), fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only, 100::/64
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)
        }
    }
}

fn is_special_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_unspecified()
        || o[0] == 0 // "this network", 0/8
        || v4.is_loopback() // 127/8
        || v4.is_private() // 10/8, 172.16/12, 192.168/16
        || v4.is_link_local() // 169.254/16, cloud metadata included
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT, 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments, 192.0.0/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking, 198.18/15
        || v4.is_documentation()
        || v4.is_multicast()
        || o[0] >= 240 // reserved and broadcast
}

/// The HTTP client's only way from names to addresses. `pinned` names (from
/// `delivery.resolve`) resolve to their given addresses; the rest through the system
/// resolver. Either way, only addresses the guard permits are returned.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: Guard,
    pinned: Arc<HashMap<String, Vec<IpAddr>>>,
    upstream: Upstream,
}

/// A scripted name server: the addresses it answers for a name.
#[cfg(test)]
type Answer = Arc<dyn Fn(&str) -> Vec<IpAddr> + Send + Sync>;

/// Where names that are not pinned are looked up.
#[derive(Clone)]
enum Upstream {
    System,
    /// A name server whose answers a test scripts (one that changes its answer, say).
    #[cfg(test)]
    Scripted(Answer),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::System => f.write_str("System"),
            #[cfg(test)]
            Upstream::Scripted(_) => f.write_str("Scripted"),
        }
    }
}

impl GuardedResolver {
    pub fn new(guard: Guard, pinned: HashMap<String, Vec<IpAddr>>) -> Self {
        GuardedResolver {
            guard,
            pinned: Arc::new(pinned),
            upstream: Upstream::System,
        }
    }

    /// Looks names up with `answer` instead of the system's resolver.
    #[cfg(test)]
    pub fn scripted(
        guard: Guard,
        answer: impl Fn(&str) -> Vec<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        GuardedResolver {
            guard,
            pinned: Arc::new(HashMap::new()),
            upstream: Upstream::Scripted(Arc::new(answer)),
        }
    }

    pub async fn lookup(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let found: Vec<IpAddr> = match (self.pinned.get(&host.to_ascii_lowercase()), &self.upstream)
        {
            (Some(ips), _) => ips.clone(),
            (None, Upstream::System) => tokio::net::lookup_host((host, 0))
                .await?
                .map(|a| a.ip())
                .collect(),
            #[cfg(test)]
            (None, Upstream::Scripted(answer)) => answer(host),
        };
        let permitted: Vec<SocketAddr> = found
            .iter()
            .filter(|ip| self.guard.permits(**ip))
            .map(|ip| SocketAddr::new(*ip, 0))
            .collect();
        if permitted.is_empty() {
            let addrs = found
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Box::new(ForbiddenAddress {
                host: host.to_string(),
                addrs: if addrs.is_empty() {
                    "nothing".into()
                } else {
                    addrs
                },
            }));
        }
        Ok(permitted)
    }
}

/// The delivery client's resolver: every name it connects to is looked up here.
impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.lookup(name.as_str()).await?.into_iter()) })
    }
}

/// Whether an error (or one of its causes) is the guard's refusal.
pub fn is_forbidden(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.downcast_ref::<ForbiddenAddress>().is_some() {
            return true;
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_addresses_are_refused() {
        for s in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.170",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
        ] {
            assert!(is_special(ip(s)), "{s} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!is_special(ip(s)), "{s} should pass");
        }
    }

    #[test]
    fn allowed_networks_exempt_ranges() {
        let guard = Guard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        assert!(guard.permits(ip("127.0.0.1")));
        assert!(guard.permits(ip("::1")));
        assert!(!guard.permits(ip("10.0.0.1")));
        assert!(guard.permits(ip("8.8.8.8")));
    }

    #[test]
    fn endpoint_urls_with_addresses_are_checked_names_are_not() {
        let guard = Guard::default();
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(guard
            .check_url_host(&url("http://127.0.0.1:9000/"))
            .is_err());
        assert!(guard.check_url_host(&url("http://[::1]/")).is_err());
        assert!(guard
            .check_url_host(&url("http://169.254.169.254/latest/meta-data"))
            .is_err());
        assert!(guard
            .check_url_host(&url("http://localhost:8080/"))
            .is_err());
        assert!(guard.check_url_host(&url("http://api.localhost/")).is_err());
        assert!(guard
            .check_url_host(&url("http://[::ffff:10.0.0.1]/"))
            .is_err());
        assert!(guard.check_url_host(&url("https://8.8.8.8/")).is_ok());
        assert!(guard.check_url_host(&url("https://example.com/")).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_only_hands_out_permitted_addresses() {
        let pinned = HashMap::from([
            ("inside.test".to_string(), vec![ip("10.0.0.5")]),
            (
                "mixed.test".to_string(),
                vec![ip("10.0.0.5"), ip("93.184.216.34")],
            ),
            ("loop.test".to_string(), vec![ip("127.0.0.1")]),
        ]);
        let r = GuardedResolver::new(Guard::new(vec!["127.0.0.0/8".parse().unwrap()]), pinned);
        let e = r.lookup("inside.test").await.unwrap_err();
        assert!(is_forbidden(e.as_ref()));
        assert_eq!(
            r.lookup("mixed.test").await.unwrap(),
            vec![SocketAddr::new(ip("93.184.216.34"), 0)]
        );
        assert_eq!(r.lookup("loop.test").await.unwrap().len(), 1);
    }
}
