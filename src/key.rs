//! Key extraction: which bucket, breaker, cache entry or idempotency record a request
//! belongs to.
//!
//! A [`KeyExtractor`] reads a key from a request without consuming it. The crate provides
//! [`Global`] (one key for everything), [`from_fn`] (any closure), pairs `(A, B)` (both
//! keys), and with the `http` feature [`Header`] (a header's value, with a length limit),
//! [`Target`] (method, path and query), [`PeerIp`] (the connection's address) and
//! [`ClientIp`] (the client's address behind trusted proxies).
//!
//! Each extractor has a [`class`](KeyExtractor::class) (`"ip"`, `"header"`, `"route"`,
//! `"global"`...): what kind of key it is, safe as a metrics label, unlike the key itself.
//!
//! Keys are owned copies, never slices of the request's buffers, so a stored key does not
//! keep a request alive.

use std::fmt;
use std::hash::Hash;

/// Why no key could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The request does not carry the key (e.g. no such header).
    #[error("key is missing")]
    Missing,
    /// The key is longer than the configured limit.
    #[error("key is {len} bytes long, more than the limit of {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key is present but unusable (e.g. not visible ASCII).
    #[error("key is malformed: {0}")]
    Malformed(&'static str),
}

/// Reads a key from a request.
pub trait KeyExtractor<Req>: Clone + Send + Sync + 'static {
    /// The key.
    type Key: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static;

    /// The request's key, or why it has none.
    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError>;

    /// What kind of key this is (`"ip"`, `"header"`...), for events and metrics labels;
    /// default `"custom"`.
    fn class(&self) -> &'static str {
        "custom"
    }
}

/// One key, `()`, for every request: a global limit, one shared breaker.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl<Req> KeyExtractor<Req> for Global {
    type Key = ();

    #[inline]
    fn extract(&self, _: &Req) -> Result<(), KeyError> {
        Ok(())
    }

    fn class(&self) -> &'static str {
        "global"
    }
}

/// A key from a closure; see [`from_fn`].
#[derive(Clone, Copy)]
pub struct FnKey<F>(F);

/// A key extractor from a closure `Fn(&Req) -> Result<K, KeyError>`.
///
/// ```
/// use tower_parapet::key::{self, KeyExtractor, KeyError};
///
/// let by_user = key::from_fn(|req: &(u64, &str)| Ok::<_, KeyError>(req.0));
/// assert_eq!(by_user.extract(&(7, "hello")), Ok(7));
/// ```
pub fn from_fn<F>(f: F) -> FnKey<F> {
    FnKey(f)
}

impl<F> fmt::Debug for FnKey<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FnKey")
            .field(&std::any::type_name::<F>())
            .finish()
    }
}

impl<Req, K, F> KeyExtractor<Req> for FnKey<F>
where
    F: Fn(&Req) -> Result<K, KeyError> + Clone + Send + Sync + 'static,
    K: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    type Key = K;

    fn extract(&self, req: &Req) -> Result<K, KeyError> {
        (self.0)(req)
    }
}

impl<Req, A, B> KeyExtractor<Req> for (A, B)
where
    A: KeyExtractor<Req>,
    B: KeyExtractor<Req>,
{
    type Key = (A::Key, B::Key);

    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError> {
        Ok((self.0.extract(req)?, self.1.extract(req)?))
    }

    fn class(&self) -> &'static str {
        "composite"
    }
}

pub use self::cidr::{Cidr, CidrError};
#[cfg(feature = "http")]
pub use self::http_keys::{Header, Target};
#[cfg(feature = "http")]
pub use self::ip::{ClientIp, PeerAddr, PeerIp};

#[cfg(feature = "http")]
mod http_keys {
    use super::{KeyError, KeyExtractor};
    use http::{HeaderName, Method, Request};

    /// The value of one header, as an owned string of at most `max_len` bytes.
    ///
    /// A missing header is [`KeyError::Missing`]; a value that is not visible ASCII is
    /// [`KeyError::Malformed`]; a longer one is [`KeyError::TooLong`]. When the header is
    /// repeated, the first value is used.
    #[derive(Debug, Clone)]
    pub struct Header {
        name: HeaderName,
        max_len: usize,
    }

    impl Header {
        /// The default length limit: 256 bytes.
        pub const DEFAULT_MAX_LEN: usize = 256;

        /// The header `name`, limited to [`Header::DEFAULT_MAX_LEN`] bytes.
        pub fn new(name: HeaderName) -> Header {
            Header {
                name,
                max_len: Header::DEFAULT_MAX_LEN,
            }
        }

        /// Change the length limit.
        #[must_use]
        pub fn max_len(mut self, max_len: usize) -> Header {
            self.max_len = max_len;
            self
        }

        /// The header's name.
        pub fn name(&self) -> &HeaderName {
            &self.name
        }

        /// The header's value in `req`, checked as [`extract`](KeyExtractor::extract)
        /// checks it, borrowed from the request.
        pub fn value_of<'r, B>(&self, req: &'r Request<B>) -> Result<&'r str, KeyError> {
            let value = req.headers().get(&self.name).ok_or(KeyError::Missing)?;
            let len = value.as_bytes().len();
            if len > self.max_len {
                return Err(KeyError::TooLong {
                    len,
                    max: self.max_len,
                });
            }
            value
                .to_str()
                .map_err(|_| KeyError::Malformed("not visible ASCII"))
        }
    }

    impl<B> KeyExtractor<Request<B>> for Header {
        type Key = String;

        fn extract(&self, req: &Request<B>) -> Result<String, KeyError> {
            self.value_of(req).map(str::to_owned)
        }

        fn class(&self) -> &'static str {
            "header"
        }
    }

    /// Method, path and query of an HTTP request: the natural key of a response cache or of
    /// a last-known-good fallback. Targets longer than `max_len` (default 2048 bytes) are
    /// [`KeyError::TooLong`].
    #[derive(Debug, Clone)]
    pub struct Target {
        max_len: usize,
    }

    impl Default for Target {
        fn default() -> Self {
            Target { max_len: 2048 }
        }
    }

    impl Target {
        /// Method + path + query, at most 2048 bytes.
        pub fn new() -> Target {
            Target::default()
        }

        /// Change the length limit.
        #[must_use]
        pub fn max_len(mut self, max_len: usize) -> Target {
            self.max_len = max_len;
            self
        }

        /// The path and query of `req` (`"/"` when it has none), within the length limit,
        /// borrowed from the request: what [`extract`](KeyExtractor::extract) copies.
        pub fn target_of<'r, B>(&self, req: &'r Request<B>) -> Result<&'r str, KeyError> {
            let target = req
                .uri()
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/");
            if target.len() > self.max_len {
                return Err(KeyError::TooLong {
                    len: target.len(),
                    max: self.max_len,
                });
            }
            Ok(target)
        }
    }

    impl<B> KeyExtractor<Request<B>> for Target {
        type Key = (Method, String);

        fn extract(&self, req: &Request<B>) -> Result<Self::Key, KeyError> {
            let target = self.target_of(req)?;
            Ok((req.method().clone(), target.to_owned()))
        }

        fn class(&self) -> &'static str {
            "route"
        }
    }
}

mod cidr {
    use std::fmt;
    use std::net::IpAddr;
    use std::str::FromStr;

    /// A block of IP addresses, `10.0.0.0/8` or `2001:db8::/32`: the trusted proxies of
    /// [`ClientIp`](super::ClientIp).
    ///
    /// An address without a prefix is a block of one (`/32` or `/128`). Host bits must be
    /// zero (`10.0.0.1/8` is refused: write `10.0.0.0/8`). IPv4-mapped IPv6 addresses
    /// (`::ffff:10.1.2.3`, as a dual-stack listener reports IPv4 peers) are matched as the
    /// IPv4 address they carry.
    ///
    /// ```
    /// use tower_parapet::key::Cidr;
    ///
    /// let net: Cidr = "10.0.0.0/8".parse().unwrap();
    /// assert!(net.contains("10.20.30.40".parse().unwrap()));
    /// assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
    /// assert!(!net.contains("11.0.0.1".parse().unwrap()));
    /// assert!("10.0.0.1/8".parse::<Cidr>().is_err());
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Cidr {
        addr: IpAddr,
        prefix: u8,
    }

    /// Why a CIDR block was refused.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("invalid CIDR block {input:?}: {reason}")]
    pub struct CidrError {
        input: String,
        reason: &'static str,
    }

    impl CidrError {
        fn new(input: &str, reason: &'static str) -> CidrError {
            CidrError {
                input: input.chars().take(64).collect(),
                reason,
            }
        }
    }

    impl Cidr {
        /// The block of `prefix` leading bits of `addr`.
        pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
            let addr = addr.to_canonical();
            let bits = max_prefix(addr);
            if prefix > bits {
                return Err(CidrError::new(&addr.to_string(), "prefix is too long"));
            }
            if mask(addr, prefix) != addr {
                return Err(CidrError::new(
                    &format!("{addr}/{prefix}"),
                    "host bits are set (write the network address)",
                ));
            }
            Ok(Cidr { addr, prefix })
        }

        /// The network address.
        pub fn addr(&self) -> IpAddr {
            self.addr
        }

        /// The prefix length in bits.
        pub fn prefix(&self) -> u8 {
            self.prefix
        }

        /// Whether `ip` is in the block.
        pub fn contains(&self, ip: IpAddr) -> bool {
            let ip = ip.to_canonical();
            ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
        }
    }

    fn max_prefix(ip: IpAddr) -> u8 {
        if ip.is_ipv4() { 32 } else { 128 }
    }

    /// `ip` with all but its first `prefix` bits cleared.
    pub(crate) fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let keep = u32::MAX
                    .checked_shl(32 - u32::from(prefix.min(32)))
                    .unwrap_or(0);
                IpAddr::from(std::net::Ipv4Addr::from(u32::from(v4) & keep))
            }
            IpAddr::V6(v6) => {
                let keep = u128::MAX
                    .checked_shl(128 - u32::from(prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::from(std::net::Ipv6Addr::from(u128::from(v6) & keep))
            }
        }
    }

    impl FromStr for Cidr {
        type Err = CidrError;

        fn from_str(s: &str) -> Result<Cidr, CidrError> {
            let text = s.trim();
            let (addr, prefix) = match text.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (text, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| CidrError::new(s, "not an IP address"))?;
            let prefix = match prefix {
                None => max_prefix(addr.to_canonical()),
                Some(p) => crate::parse::parse_digits(p.as_bytes(), 3)
                    .and_then(|n| u8::try_from(n).ok())
                    .ok_or_else(|| CidrError::new(s, "the prefix length is not a number"))?,
            };
            Cidr::new(addr, prefix).map_err(|e| CidrError::new(s, e.reason))
        }
    }

    impl fmt::Display for Cidr {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }

    impl serde::Serialize for Cidr {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self)
        }
    }

    impl<'de> serde::Deserialize<'de> for Cidr {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(feature = "http")]
mod ip {
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;

    use http::{HeaderName, Request};

    use super::cidr::mask;
    use super::{Cidr, KeyError, KeyExtractor};

    /// The address of the connection's peer, in a request's extensions.
    ///
    /// [`PeerIp`] and [`ClientIp`] read it from a `PeerAddr` or a plain
    /// [`SocketAddr`] in the request's extensions. The server puts it there: with hyper,
    /// insert it in the service made for each connection; with axum, whose
    /// `ConnectInfo<SocketAddr>` this crate cannot name (it lives in the `axum` crate, not
    /// `axum-core`), copy it with a small middleware added outermost:
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    /// use axum::extract::{ConnectInfo, Request};
    /// use axum::middleware::{self, Next};
    /// use axum::{Router, routing::get};
    /// use tower::ServiceBuilder;
    /// use tower_parapet::http::RejectionResponseLayer;
    /// use tower_parapet::key::{PeerAddr, PeerIp};
    /// use tower_parapet::rate_limit::{Quota, RateLimitLayer};
    ///
    /// async fn peer_addr(
    ///     ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ///     mut req: Request,
    ///     next: Next,
    /// ) -> axum::response::Response {
    ///     req.extensions_mut().insert(PeerAddr(addr));
    ///     next.run(req).await
    /// }
    ///
    /// # async fn serve() -> std::io::Result<()> {
    /// let app = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .layer(
    ///         ServiceBuilder::new()
    ///             .layer(RejectionResponseLayer::new())
    ///             .layer(RateLimitLayer::keyed(PeerIp::new(), Quota::per_second(10))),
    ///     )
    ///     .layer(middleware::from_fn(peer_addr)); // added last: runs first
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
    /// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    /// # }
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PeerAddr(pub SocketAddr);

    /// The peer's IP from the request's extensions ([`PeerAddr`] first, then
    /// [`SocketAddr`]), IPv4-mapped IPv6 addresses unwrapped.
    fn peer_of<B>(req: &Request<B>) -> Option<IpAddr> {
        let ext = req.extensions();
        ext.get::<PeerAddr>()
            .map(|p| p.0.ip())
            .or_else(|| ext.get::<SocketAddr>().map(SocketAddr::ip))
            .map(|ip| ip.to_canonical())
    }

    fn group(ip: IpAddr, v6_prefix: Option<u8>) -> IpAddr {
        match (ip, v6_prefix) {
            (IpAddr::V6(_), Some(bits)) => mask(ip, bits),
            _ => ip,
        }
    }

    /// The IP address of the connection's peer (see [`PeerAddr`] for where it comes from).
    ///
    /// Use it when clients connect directly; behind a proxy every request has the proxy's
    /// address, so use [`ClientIp`]. No peer address is [`KeyError::Missing`].
    #[derive(Debug, Clone, Copy, Default)]
    pub struct PeerIp {
        v6_prefix: Option<u8>,
    }

    impl PeerIp {
        /// The peer's address, each IPv6 address on its own.
        pub fn new() -> PeerIp {
            PeerIp::default()
        }

        /// Group IPv6 addresses by their first `bits` (e.g. 64: one key per /64, the
        /// block a single subscriber usually gets, so one client cannot rotate through its
        /// 2^64 addresses to escape a limit).
        #[must_use]
        pub fn ipv6_prefix(mut self, bits: u8) -> PeerIp {
            self.v6_prefix = Some(bits.min(128));
            self
        }
    }

    impl<B> KeyExtractor<Request<B>> for PeerIp {
        type Key = IpAddr;

        fn extract(&self, req: &Request<B>) -> Result<IpAddr, KeyError> {
            peer_of(req)
                .map(|ip| group(ip, self.v6_prefix))
                .ok_or(KeyError::Missing)
        }

        fn class(&self) -> &'static str {
            "ip"
        }
    }

    #[derive(Debug, Clone)]
    enum Source {
        XForwardedFor(HeaderName),
        Forwarded,
    }

    /// The client's IP address behind trusted proxies.
    ///
    /// Proxies append the address they received a request from to `X-Forwarded-For` (or
    /// to `Forwarded`, RFC 7239, with [`ClientIp::forwarded`]). Everything left of the
    /// nearest untrusted hop was written by the client itself and proves nothing, so the
    /// walk goes from the right:
    ///
    /// 1. If the peer ([`PeerAddr`]) is not a trusted proxy, it is the client and the
    ///    headers are ignored entirely: anyone can send them.
    /// 2. Otherwise the addresses in the header are read from the right, skipping trusted
    ///    proxies; the first untrusted address is the client.
    /// 3. Anything unparseable in that walk (`unknown`, an obfuscated `_node`, garbage, an
    ///    empty entry, a `Forwarded` element without `for=`, more than
    ///    [`max_hops`](ClientIp::max_hops) trusted hops) stops it and yields the peer
    ///    address: a broken chain is never trusted. Never a panic.
    /// 4. If every address is trusted, the leftmost is the client (a request from inside);
    ///    with no header at all, the peer.
    ///
    /// Entries may carry ports (`203.0.113.7:4711`, `[2001:db8::1]:443`), which are
    /// dropped. Repeated header lines are read as one list, in order. `Forwarded` values
    /// are split on commas and semicolons outside quoted strings only.
    ///
    /// ```
    /// use std::net::{IpAddr, SocketAddr};
    /// use tower_parapet::key::{ClientIp, KeyExtractor, PeerAddr};
    ///
    /// let key = ClientIp::trusting(["10.0.0.0/8"]).unwrap();
    /// let mut req = http::Request::builder()
    ///     .header("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2")
    ///     .body(())
    ///     .unwrap();
    /// req.extensions_mut().insert(PeerAddr(SocketAddr::from(([10, 0, 0, 1], 443))));
    /// // 10.0.0.2 is a trusted proxy; 203.0.113.7 is the client; 6.6.6.6 is what the
    /// // client claimed.
    /// assert_eq!(key.extract(&req), Ok("203.0.113.7".parse::<IpAddr>().unwrap()));
    /// ```
    #[derive(Debug, Clone)]
    pub struct ClientIp {
        trusted: Arc<[Cidr]>,
        source: Source,
        v6_prefix: Option<u8>,
        max_hops: usize,
    }

    impl ClientIp {
        /// The default limit of trusted hops walked.
        pub const DEFAULT_MAX_HOPS: usize = 16;

        /// Trust the proxies in `trusted` and read `X-Forwarded-For`.
        pub fn new(trusted: impl IntoIterator<Item = Cidr>) -> ClientIp {
            ClientIp {
                trusted: trusted.into_iter().collect(),
                source: Source::XForwardedFor(HeaderName::from_static("x-forwarded-for")),
                v6_prefix: None,
                max_hops: ClientIp::DEFAULT_MAX_HOPS,
            }
        }

        /// [`ClientIp::new`] from CIDR text (`"10.0.0.0/8"`, `"::1"`).
        pub fn trusting<I, T>(trusted: I) -> Result<ClientIp, super::CidrError>
        where
            I: IntoIterator<Item = T>,
            T: AsRef<str>,
        {
            let cidrs = trusted
                .into_iter()
                .map(|t| t.as_ref().parse())
                .collect::<Result<Vec<Cidr>, _>>()?;
            Ok(ClientIp::new(cidrs))
        }

        /// Read the RFC 7239 `Forwarded` header instead of `X-Forwarded-For`. Choose the
        /// header your proxies maintain: a proxy that only appends to one passes the other
        /// through as the client wrote it.
        #[must_use]
        pub fn forwarded(mut self) -> ClientIp {
            self.source = Source::Forwarded;
            self
        }

        /// Read `header`, in `X-Forwarded-For` syntax (comma-separated addresses), e.g.
        /// `x-real-ip` or a CDN's client-IP header.
        #[must_use]
        pub fn x_forwarded_for(mut self, header: HeaderName) -> ClientIp {
            self.source = Source::XForwardedFor(header);
            self
        }

        /// Group IPv6 client addresses by their first `bits` (see [`PeerIp::ipv6_prefix`]).
        #[must_use]
        pub fn ipv6_prefix(mut self, bits: u8) -> ClientIp {
            self.v6_prefix = Some(bits.min(128));
            self
        }

        /// Walk at most `hops` trusted proxies; a longer chain yields the peer address.
        #[must_use]
        pub fn max_hops(mut self, hops: usize) -> ClientIp {
            self.max_hops = hops;
            self
        }

        fn is_trusted(&self, ip: IpAddr) -> bool {
            self.trusted.iter().any(|c| c.contains(ip))
        }

        /// The client's address (before IPv6 grouping), or `None` with no peer address.
        pub fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
            let peer = peer_of(req)?;
            if !self.is_trusted(peer) {
                return Some(peer);
            }
            let headers = req.headers();
            let mut hops = Vec::new();
            let well_formed = match &self.source {
                Source::XForwardedFor(name) => headers
                    .get_all(name)
                    .iter()
                    .all(|v| split_list(v.as_bytes(), &mut hops)),
                Source::Forwarded => headers
                    .get_all(http::header::FORWARDED)
                    .iter()
                    .all(|v| split_forwarded(v.as_bytes(), &mut hops)),
            };
            if !well_formed {
                return Some(peer);
            }
            let mut leftmost = None;
            for (walked, hop) in hops.iter().rev().enumerate() {
                if walked >= self.max_hops {
                    return Some(peer);
                }
                let Some(ip) = hop.and_then(parse_node) else {
                    return Some(peer);
                };
                if !self.is_trusted(ip) {
                    return Some(ip);
                }
                leftmost = Some(ip);
            }
            Some(leftmost.unwrap_or(peer))
        }
    }

    impl<B> KeyExtractor<Request<B>> for ClientIp {
        type Key = IpAddr;

        fn extract(&self, req: &Request<B>) -> Result<IpAddr, KeyError> {
            self.client_ip(req)
                .map(|ip| group(ip, self.v6_prefix))
                .ok_or(KeyError::Missing)
        }

        fn class(&self) -> &'static str {
            "ip"
        }
    }

    fn is_ows(b: u8) -> bool {
        b == b' ' || b == b'\t'
    }

    fn trim(mut s: &[u8]) -> &[u8] {
        while let [first, rest @ ..] = s
            && is_ows(*first)
        {
            s = rest;
        }
        while let [rest @ .., last] = s
            && is_ows(*last)
        {
            s = rest;
        }
        s
    }

    /// Split an `X-Forwarded-For` value on commas into `out`. Always well formed: bad
    /// entries are found when parsed.
    fn split_list<'a>(value: &'a [u8], out: &mut Vec<Option<&'a [u8]>>) -> bool {
        out.extend(value.split(|&b| b == b',').map(|e| Some(trim(e))));
        true
    }

    /// Split a `Forwarded` value into elements (commas outside quoted strings) and keep
    /// each element's `for=` node (unquoted), or `None` when it has none, several, or a
    /// malformed pair. Returns false for an unterminated quoted string.
    fn split_forwarded<'a>(value: &'a [u8], out: &mut Vec<Option<&'a [u8]>>) -> bool {
        let mut start = 0;
        let mut in_quotes = false;
        let mut escaped = false;
        let mut elements = Vec::new();
        for (i, &b) in value.iter().enumerate() {
            if in_quotes {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quotes = false;
                }
            } else if b == b'"' {
                in_quotes = true;
            } else if b == b',' {
                elements.push(&value[start..i]);
                start = i + 1;
            }
        }
        if in_quotes {
            return false;
        }
        elements.push(&value[start..]);
        out.extend(elements.into_iter().map(for_node));
        true
    }

    /// The `for=` value of one `Forwarded` element, unquoted.
    fn for_node(element: &[u8]) -> Option<&[u8]> {
        let mut found = None;
        for pair in split_pairs(element) {
            let pair = trim(pair);
            if pair.is_empty() {
                continue;
            }
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (name, value) = (&pair[..eq], &pair[eq + 1..]);
            if !name.eq_ignore_ascii_case(b"for") {
                continue;
            }
            if found.is_some() {
                return None;
            }
            found = Some(unquote(value)?);
        }
        found
    }

    /// Split an element on semicolons outside quoted strings.
    fn split_pairs(element: &[u8]) -> impl Iterator<Item = &[u8]> {
        let mut in_quotes = false;
        let mut escaped = false;
        element.split(move |&b| {
            if in_quotes {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quotes = false;
                }
                false
            } else if b == b'"' {
                in_quotes = true;
                false
            } else {
                b == b';'
            }
        })
    }

    /// A token as is, or a quoted string without its quotes. Escapes (`\x`) are refused:
    /// no valid node needs them.
    fn unquote(value: &[u8]) -> Option<&[u8]> {
        match value {
            [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') && !inner.contains(&b'"') => {
                Some(inner)
            }
            [b'"', ..] => None,
            _ => Some(value),
        }
    }

    /// A node: `1.2.3.4`, `1.2.3.4:80`, `[v6]`, `[v6]:80` or a bare IPv6 address. Port
    /// dropped; `unknown`, obfuscated and malformed nodes are `None`.
    fn parse_node(node: &[u8]) -> Option<IpAddr> {
        let text = std::str::from_utf8(node).ok()?;
        if text.is_empty() || text.len() > 64 {
            return None;
        }
        let ip = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']')?;
            if !(after.is_empty() || is_port(after.strip_prefix(':')?)) {
                return None;
            }
            match inside.parse().ok()? {
                IpAddr::V6(v6) => IpAddr::V6(v6),
                IpAddr::V4(_) => return None,
            }
        } else if let Ok(ip) = text.parse::<IpAddr>() {
            ip
        } else {
            let (host, port) = text.split_once(':')?;
            if !is_port(port) {
                return None;
            }
            IpAddr::V4(host.parse().ok()?)
        };
        Some(ip.to_canonical())
    }

    fn is_port(p: &str) -> bool {
        crate::parse::parse_digits(p.as_bytes(), 5).is_some_and(|n| n <= 65_535)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn ip(s: &str) -> IpAddr {
            s.parse().unwrap()
        }

        #[test]
        fn nodes() {
            assert_eq!(parse_node(b"1.2.3.4"), Some(ip("1.2.3.4")));
            assert_eq!(parse_node(b"1.2.3.4:8080"), Some(ip("1.2.3.4")));
            assert_eq!(parse_node(b"[2001:db8::1]:443"), Some(ip("2001:db8::1")));
            assert_eq!(parse_node(b"[2001:db8::1]"), Some(ip("2001:db8::1")));
            assert_eq!(parse_node(b"2001:db8::1"), Some(ip("2001:db8::1")));
            assert_eq!(parse_node(b"::ffff:1.2.3.4"), Some(ip("1.2.3.4")));
            for bad in [
                &b""[..],
                b"unknown",
                b"_hidden",
                b"1.2.3",
                b"1.2.3.4:",
                b"1.2.3.4:99999",
                b"1.2.3.4:+80",
                b"[1.2.3.4]",
                b"[::1",
                b"[::1]x",
                b"\xff\xfe",
                b"a.b.c.d",
            ] {
                assert_eq!(parse_node(bad), None, "{:?}", String::from_utf8_lossy(bad));
            }
        }

        #[test]
        fn forwarded_elements_respect_quotes() {
            let mut out = Vec::new();
            assert!(split_forwarded(
                br#"for="[2001:db8::1]:80";proto=https, for=192.0.2.1;by="a,b;c", For=10.0.0.1"#,
                &mut out
            ));
            let nodes: Vec<_> = out
                .iter()
                .map(|n| n.map(|n| String::from_utf8_lossy(n).into_owned()))
                .collect();
            assert_eq!(
                nodes,
                [
                    Some("[2001:db8::1]:80".to_owned()),
                    Some("192.0.2.1".to_owned()),
                    Some("10.0.0.1".to_owned())
                ]
            );
            let mut out = Vec::new();
            assert!(
                !split_forwarded(br#"for="1.2.3.4"#, &mut out),
                "unterminated"
            );
            let mut out = Vec::new();
            assert!(split_forwarded(
                b"proto=http, for=1.1.1.1;for=2.2.2.2, for",
                &mut out
            ));
            assert_eq!(out, [None, None, None], "no for, two fors, no value");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_pairs() {
        assert_eq!(Global.extract(&"anything"), Ok(()));
        let pair = (Global, from_fn(|r: &&str| Ok::<_, KeyError>(r.len())));
        assert_eq!(pair.extract(&"abc"), Ok(((), 3)));
        let failing = (Global, from_fn(|_: &&str| Err::<u8, _>(KeyError::Missing)));
        assert_eq!(failing.extract(&"abc"), Err(KeyError::Missing));
    }

    #[cfg(feature = "http")]
    #[test]
    fn header_key_limits() {
        use http::{HeaderName, Request};
        let k = Header::new(HeaderName::from_static("x-api-key")).max_len(4);
        let req = |v: &[u8]| {
            Request::builder()
                .header("x-api-key", http::HeaderValue::from_bytes(v).unwrap())
                .body(())
                .unwrap()
        };
        assert_eq!(k.extract(&req(b"abcd")), Ok("abcd".to_owned()));
        assert_eq!(
            k.extract(&req(b"abcde")),
            Err(KeyError::TooLong { len: 5, max: 4 })
        );
        assert!(matches!(
            k.extract(&req(b"\xff\xfe")),
            Err(KeyError::Malformed(_))
        ));
        assert_eq!(k.extract(&Request::new(())), Err(KeyError::Missing));
    }

    #[cfg(feature = "http")]
    #[test]
    fn target_key() {
        let req = http::Request::get("/a/b?c=1").body(()).unwrap();
        assert_eq!(
            Target::new().extract(&req),
            Ok((http::Method::GET, "/a/b?c=1".to_owned()))
        );
        assert!(matches!(
            Target::new().max_len(3).extract(&req),
            Err(KeyError::TooLong { .. })
        ));
    }
}
