//! Who a request comes from: the client address that throttles and limits count under, and
//! which forwarded headers may be believed (docs/security.md).
//!
//! A proxy in front of `serve` tells the client's address in `X-Forwarded-For`, and the host
//! and scheme the client used in `X-Forwarded-Host` and `X-Forwarded-Proto`. Anyone can write
//! those headers, so they are believed only from a peer in `STOCKQ_TRUSTED_PROXIES`; from any
//! other peer [`identify`] removes them before a route sees the request, so that no route
//! can trust them by mistake.
//!
//! Behind trusted proxies, the client is the right-most address of `X-Forwarded-For` that is
//! not itself a trusted proxy: each proxy appends the address it was connected from, so the
//! entries to the left of the first untrusted one are whatever that client wrote.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

use crate::config::TrustedProxies;

/// The forwarded headers stockq reads; dropped unless a trusted proxy sent them.
const FORWARDED: [&str; 3] = ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"];

/// The client a request comes from, as [`identify`] found it (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Client(pub(crate) IpAddr);

impl Client {
    /// What limits and throttles count under: the address, except that an IPv6 client is its
    /// /64 (one host's network: its privacy addresses change within it at will).
    pub(crate) fn key(self) -> IpAddr {
        key(self.0)
    }
}

/// `ip` as limits and throttles count it (see [`Client::key`]).
pub(crate) fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        v4 => v4,
    }
}

/// Middleware: drops the forwarded headers of an untrusted peer and notes the [`Client`].
/// The peer comes from the connection (`ConnectInfo`, set by the server for each request).
pub(crate) async fn identify(
    State(trusted): State<Arc<TrustedProxies>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| peer.ip());
    // without a peer (never in the server) nothing is known: one shared, untrusted client
    let peer = peer.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    let client = if trusted.contains(peer) {
        client_behind(peer, request.headers(), &trusted)
    } else {
        let headers = request.headers_mut();
        for name in FORWARDED {
            headers.remove(name);
        }
        peer.to_canonical()
    };
    request.extensions_mut().insert(Client(client));
    next.run(request).await
}

/// The client of a request that the trusted proxy `peer` passed on: the right-most address
/// of `X-Forwarded-For` that is not a trusted proxy. When every address is one, or an entry
/// is not an address (the walk cannot go past it), the last address reached.
fn client_behind(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    // several headers count as one list, in their order
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .collect();
    let mut client = peer.to_canonical();
    for entry in entries.iter().rev() {
        let Some(ip) = forwarded_address(entry) else { break };
        client = ip.to_canonical();
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

/// An entry of `X-Forwarded-For`: an address, which some proxies write with a port
/// (`203.0.113.9:41000`, `[2001:db8::1]:41000`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    entry.parse::<SocketAddr>().ok().map(|addr| addr.ip())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn forwarded_for(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_client_is_the_right_most_address_that_is_not_a_trusted_proxy() {
        let trusted = TrustedProxies::parse("10.0.0.1, 192.0.2.0/24").unwrap();
        let proxy = ip("10.0.0.1");
        let cases: [(&[&'static str], &str); 8] = [
            (&[], "10.0.0.1"),
            (&["198.51.100.7"], "198.51.100.7"),
            // whatever the client wrote itself sits left of its own address
            (&["1.1.1.1, 6.6.6.6, 198.51.100.7"], "198.51.100.7"),
            (&["1.1.1.1, 198.51.100.7, 192.0.2.9"], "198.51.100.7"),
            (&["1.1.1.1", "198.51.100.7, 192.0.2.9"], "198.51.100.7"),
            (&["192.0.2.3, 192.0.2.9"], "192.0.2.3"),
            (&["1.1.1.1, unknown, 192.0.2.9"], "192.0.2.9"),
            (&["[2001:db8::7]:41000, 198.51.100.7:5000"], "198.51.100.7"),
        ];
        for (headers, client) in cases {
            assert_eq!(client_behind(proxy, &forwarded_for(headers), &trusted), ip(client), "{headers:?}");
        }
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(key(ip("2001:db8:1:2:bbbb::9")), key(ip("2001:db8:1:2:aaaa::1")));
        assert_ne!(key(ip("2001:db8:1:3::1")), key(ip("2001:db8:1:2::1")));
        assert_eq!(key(ip("::ffff:127.0.0.2")), ip("127.0.0.2"));
        assert_eq!(key(ip("127.0.0.2")), ip("127.0.0.2"));
    }
}
