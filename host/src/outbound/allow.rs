//! Which URLs a plugin may send requests to: its `grants.http` list.
//!
//! A grant names a scheme, a host and optionally a port, nothing more:
//! `https://api.example.com`, `http://127.0.0.1:8080`,
//! `https://*.example.org` (any subdomain, not the domain itself),
//! `http://localhost:*` (any port). Without a port, a grant allows the
//! scheme's default one (80, 443) only. Paths are not part of a grant: the
//! host is the unit of trust, as in Spin's `allowed_outbound_hosts`.

use std::fmt;

/// One parsed entry of `grants.http`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpGrant {
    scheme: Scheme,
    host: Host,
    /// `None`: any port.
    port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    /// Exactly this name or address, lowercase (an IPv6 address in
    /// brackets, as URLs write it).
    Exact(String),
    /// Any name ending in `.suffix`; the suffix is lowercase.
    Subdomains(String),
}

impl HttpGrant {
    /// Parses a grant; the error says what is wrong with it in one line.
    pub fn parse(text: &str) -> Result<HttpGrant, String> {
        let (scheme, rest) = text.split_once("://").ok_or_else(|| {
            format!("{text:?}: expected SCHEME://HOST[:PORT], e.g. \"https://api.example.com\"")
        })?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(format!("{text:?}: scheme {other:?} is not http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{text:?}: a grant names a scheme, a host and a port, not a path, query or user"
            ));
        }
        let (host, port) = split_port(rest).map_err(|e| format!("{text:?}: {e}"))?;
        let port = match port {
            None => Some(scheme.default_port()),
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{text:?}: port {p:?} is not 1-65535 or *"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let host = match host.strip_prefix("*.") {
            Some(suffix) if valid_name(suffix) => Host::Subdomains(suffix.to_string()),
            Some(_) => {
                return Err(format!(
                    "{text:?}: \"*.\" must be followed by a domain name"
                ))
            }
            None if host.contains('*') => {
                return Err(format!(
                "{text:?}: a wildcard may only open a host name, as in \"https://*.example.org\""
            ))
            }
            None if valid_name(&host) || is_ip_literal(&host) => Host::Exact(host),
            None => {
                return Err(format!(
                    "{text:?}: {host:?} is not a host name or IP address"
                ))
            }
        };
        Ok(HttpGrant { scheme, host, port })
    }

    fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        self.scheme == scheme
            && self.port.is_none_or(|p| p == port)
            && match &self.host {
                Host::Exact(h) => h == host,
                Host::Subdomains(suffix) => host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            }
    }
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.host {
            Host::Exact(h) => write!(f, "{h}")?,
            Host::Subdomains(s) => write!(f, "*.{s}")?,
        }
        match self.port {
            None => write!(f, ":*"),
            Some(p) if p == self.scheme.default_port() => Ok(()),
            Some(p) => write!(f, ":{p}"),
        }
    }
}

/// `host[:port]` → host and port text; an IPv6 literal keeps its brackets.
fn split_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or("an IPv6 address needs its closing \"]\"")?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => rest
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or_else(|| format!("unexpected {rest:?} after the address")),
        };
    }
    Ok(match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

fn valid_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn is_ip_literal(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
}

/// A plugin's grants, checked against each request it sends.
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    grants: Vec<HttpGrant>,
}

/// Why a request was refused, and the grant that would allow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotGranted {
    /// `scheme://host[:port]`: the line to add to `grants.http`, or why
    /// no grant can allow the URL.
    pub grant: String,
}

/// A request the grants allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// Whether the grant names the address itself (an IP literal or
    /// `localhost`): only then may the request reach a loopback, private or
    /// link-local address. A granted name that resolves to one is refused,
    /// so that a name cannot be pointed at the host's own network.
    pub names_address: bool,
}

impl Allowlist {
    /// Parses every grant; the error names the first bad one.
    pub fn parse<S: AsRef<str>>(grants: &[S]) -> Result<Allowlist, String> {
        let grants = grants
            .iter()
            .map(|g| HttpGrant::parse(g.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Allowlist { grants })
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// Whether a request to `uri` may go out. The URI comes from
    /// `wasi:http`, so it has a scheme and an authority; one without
    /// either is refused, as is any scheme but http and https, and an
    /// authority with user information or a port that is not a number
    /// (what is checked must be what is dialled).
    pub fn check(&self, uri: &http::Uri) -> Result<Allowed, NotGranted> {
        let refuse = |why: &str| NotGranted {
            grant: format!("{uri} ({why})"),
        };
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            _ => return Err(refuse("only http and https can be granted")),
        };
        let Some(authority) = uri.authority() else {
            return Err(refuse("no host"));
        };
        if authority.as_str().contains('@') {
            return Err(refuse("user information in a URL cannot be granted"));
        }
        if authority.port().is_some() && authority.port_u16().is_none() {
            return Err(refuse("the port is not a number"));
        }
        let host = authority.host().to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(scheme.default_port());
        match self.grants.iter().find(|g| g.allows(scheme, &host, port)) {
            Some(g) => Ok(Allowed {
                names_address: matches!(&g.host, Host::Exact(h) if h == "localhost" || is_ip_literal(h)),
            }),
            None => Err(NotGranted {
                grant: HttpGrant {
                    scheme,
                    host: Host::Exact(host),
                    port: Some(port),
                }
                .to_string(),
            }),
        }
    }
}

/// Whether a peer at `ip` is on the host's own network: loopback, private,
/// link-local (cloud metadata lives there), unspecified, or the IPv6 forms
/// of these. A granted name may not lead there.
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                // Shared address space (RFC 6598), carrier-grade NAT.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                // Unique local (fc00::/7) and link-local (fe80::/10).
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(grants: &[&str], url: &str) -> bool {
        Allowlist::parse(grants)
            .unwrap()
            .check(&url.parse().unwrap())
            .is_ok()
    }

    #[test]
    fn a_grant_allows_its_scheme_host_and_port_only() {
        let g = ["https://api.example.com", "http://127.0.0.1:8080"];
        assert!(allows(&g, "https://api.example.com/v1/prices?sku=1"));
        assert!(allows(&g, "https://API.example.com:443/"));
        assert!(allows(&g, "http://127.0.0.1:8080/x"));
        assert!(!allows(&g, "http://api.example.com/"), "scheme");
        assert!(!allows(&g, "https://api.example.com:8443/"), "port");
        assert!(!allows(&g, "http://127.0.0.1:8081/"), "port");
        assert!(!allows(&g, "https://example.com/"), "host");
        assert!(!allows(&g, "https://api.example.com.evil.net/"), "suffix");
    }

    #[test]
    fn wildcards_open_subdomains_or_ports() {
        let g = ["https://*.example.org", "http://localhost:*"];
        assert!(allows(&g, "https://a.example.org/"));
        assert!(allows(&g, "https://a.b.example.org/"));
        assert!(!allows(&g, "https://example.org/"), "the domain itself");
        assert!(!allows(&g, "https://badexample.org/"));
        assert!(allows(&g, "http://localhost:1/"));
        assert!(allows(&g, "http://localhost/"));
        assert!(!allows(&g, "https://localhost/"));
    }

    #[test]
    fn a_refusal_names_the_grant_that_would_allow_it() {
        let list = Allowlist::parse(&["https://api.example.com"]).unwrap();
        let refused = |u: &str| list.check(&u.parse().unwrap()).unwrap_err().grant;
        assert_eq!(refused("http://127.0.0.1:9/x?y"), "http://127.0.0.1:9");
        assert_eq!(
            refused("https://other.example.com/"),
            "https://other.example.com"
        );
        assert_eq!(refused("http://[::1]:80/"), "http://[::1]");
        // What is checked must be what is dialled.
        assert!(refused("https://evil.com:80@api.example.com/").contains("user information"));
    }

    #[test]
    fn only_a_grant_naming_the_address_reaches_the_hosts_own_network() {
        let list = Allowlist::parse(&[
            "http://127.0.0.1:8080",
            "http://localhost:*",
            "https://api.example.com",
        ])
        .unwrap();
        let names = |u: &str| list.check(&u.parse().unwrap()).unwrap().names_address;
        assert!(names("http://127.0.0.1:8080/"));
        assert!(names("http://localhost:9/"));
        assert!(!names("https://api.example.com/"));
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "192.168.0.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn bad_grants_are_refused_with_the_reason() {
        for (text, reason) in [
            ("api.example.com", "expected SCHEME://HOST"),
            ("ftp://x", "not http or https"),
            ("https://x/path", "not a path"),
            ("https://x:0", "not 1-65535"),
            ("https://x:http", "not 1-65535"),
            ("https://a*.x", "wildcard"),
            ("https://*.", "domain name"),
            ("https://", "not a host name"),
            ("https://[::1", "closing"),
        ] {
            let e = HttpGrant::parse(text).unwrap_err();
            assert!(e.contains(reason), "{text}: {e}");
        }
    }

    #[test]
    fn grants_print_as_written_in_canonical_form() {
        for text in [
            "https://api.example.com",
            "http://127.0.0.1:8080",
            "https://*.example.org",
            "http://[::1]:*",
        ] {
            assert_eq!(HttpGrant::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            HttpGrant::parse("HTTPS://Api.Example.com:443/")
                .unwrap()
                .to_string(),
            "https://api.example.com"
        );
    }
}
