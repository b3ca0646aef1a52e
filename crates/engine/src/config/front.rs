//! The front door of one `[[service]]`: how nginx answers for it. Host names and a path
//! prefix (several services may share one `listen`), TLS with SNI per host and a redirect
//! from plain HTTP, request-body and buffering limits, proxy timeouts, and which peers are
//! trusted to name the real client. Checked into a [`FrontSpec`]; the checks across
//! services (a host and path claimed twice, TLS on one service of a listen but not another)
//! live in [`Checker::check_fronts`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::checker::{parse_addr, Checker};
use super::container::parse_bytes;
use super::raw::RawService;
use super::ServiceSpec;
use crate::names::check_http_path;

/// How nginx answers for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontSpec {
    /// `hosts`: the names this service answers to (empty: any name, the listen's default).
    pub hosts: Vec<String>,
    /// `path`: the prefix this service answers under, `/` or `/shop/` (always ending in `/`).
    pub path: String,
    /// `strip_path`: the prefix is removed before the request reaches the app.
    pub strip_path: bool,
    /// `tls`: certificate and key, for HTTPS (and HTTP/2) on `listen`.
    pub tls: Option<TlsFiles>,
    /// `redirect_http`: a plain-HTTP listen that redirects this service's hosts to HTTPS.
    pub redirect_http: Option<SocketAddr>,
    /// `buffering`: nginx buffers responses (false: streamed as they come, for SSE).
    pub buffering: bool,
    /// `max_body`: the largest request body, in bytes (0: no limit).
    pub max_body: u64,
    pub timeouts: ProxyTimeouts,
    /// `trusted_proxies`: peers (addresses or CIDR blocks) whose `X-Forwarded-For` and
    /// `X-Forwarded-Proto` are believed.
    pub trusted_proxies: Vec<String>,
}

/// The certificate chain and private key nginx presents for a service's hosts (PEM files),
/// with where each is written in the config (line, column), for the check that reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_at: (usize, usize),
    pub key_at: (usize, usize),
}

impl TlsFiles {
    /// The same files (wherever they are written).
    pub fn same_files(&self, other: &TlsFiles) -> bool {
        self.cert == other.cert && self.key == other.key
    }
}

/// `timeouts`: nginx's `proxy_connect_timeout`, `proxy_read_timeout` (also how long an idle
/// websocket stays open) and `proxy_send_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub send: Duration,
}

/// The default `max_body`: large enough for real uploads, bounded against abuse.
pub const DEFAULT_MAX_BODY: u64 = 100 << 20;

impl Default for FrontSpec {
    fn default() -> FrontSpec {
        FrontSpec {
            hosts: Vec::new(),
            path: "/".to_owned(),
            strip_path: false,
            tls: None,
            redirect_http: None,
            buffering: true,
            max_body: DEFAULT_MAX_BODY,
            timeouts: ProxyTimeouts::default(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for ProxyTimeouts {
    fn default() -> ProxyTimeouts {
        ProxyTimeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(60),
            send: Duration::from_secs(60),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) connect: Option<Spanned<String>>,
    pub(super) read: Option<Spanned<String>>,
    pub(super) send: Option<Spanned<String>>,
}

impl Checker<'_> {
    pub(super) fn front(&mut self, s: &RawService) -> FrontSpec {
        let defaults = FrontSpec::default();
        let mut hosts: Vec<String> = Vec::new();
        for raw_host in &s.hosts {
            if let Some(h) = self.check(raw_host, "service.hosts", |h| check_host(h)) {
                if hosts.contains(&h) {
                    self.push(
                        Some(raw_host.span()),
                        "service.hosts",
                        format!("{h:?} is listed twice"),
                    );
                } else {
                    hosts.push(h);
                }
            }
        }
        let path = match &s.path {
            None => defaults.path.clone(),
            Some(p) => self
                .check(p, "service.path", |p| {
                    check_http_path(p)?;
                    if p.contains("//") || p.split('/').any(|seg| seg == "." || seg == "..") {
                        return Err(format!(
                            "invalid path {p:?}: no empty, '.' or '..' segments"
                        ));
                    }
                    Ok(if p.ends_with('/') {
                        p.clone()
                    } else {
                        format!("{p}/")
                    })
                })
                .unwrap_or(defaults.path.clone()),
        };
        let strip_path = s.strip_path.as_ref().is_some_and(|b| *b.get_ref());
        if strip_path && path == "/" {
            self.push(
                s.strip_path.as_ref().map(|b| b.span()),
                "service.strip_path",
                "strip_path needs a path other than \"/\"".into(),
            );
        }
        let tls = s.tls.as_ref().and_then(|t| {
            let t = t.get_ref();
            let cert = self.check(&t.cert, "service.tls.cert", |p| absolute_file(p));
            let key = self.check(&t.key, "service.tls.key", |p| absolute_file(p));
            Some(TlsFiles {
                cert: cert?,
                key: key?,
                cert_at: self.locate(Some(t.cert.span())),
                key_at: self.locate(Some(t.key.span())),
            })
        });
        let redirect_http = s.redirect_http.as_ref().and_then(|r| {
            if s.tls.is_none() {
                self.push(
                    Some(r.span()),
                    "service.redirect_http",
                    "redirect_http redirects to HTTPS: the service needs `tls`".into(),
                );
                return None;
            }
            self.check(r, "service.redirect_http", |r| parse_addr(r))
        });
        let max_body = match &s.max_body {
            None => defaults.max_body,
            Some(m) => self
                .check(m, "service.max_body", |m| {
                    parse_bytes(m).map(|b| b as u64).map_err(|e| {
                        format!("{e} (\"0\" lifts the limit; the default is \"100m\")")
                    })
                })
                .unwrap_or(defaults.max_body),
        };
        let raw = s.timeouts.as_ref().map(|t| t.get_ref());
        let d = defaults.timeouts;
        let empty = RawTimeouts::default();
        let raw = raw.unwrap_or(&empty);
        let timeouts = ProxyTimeouts {
            connect: self.positive(&raw.connect, "service.timeouts.connect", d.connect),
            read: self.positive(&raw.read, "service.timeouts.read", d.read),
            send: self.positive(&raw.send, "service.timeouts.send", d.send),
        };
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .filter_map(|p| self.check(p, "service.trusted_proxies", |p| check_cidr(p)))
            .collect();
        FrontSpec {
            hosts,
            path,
            strip_path,
            tls,
            redirect_http,
            buffering: s.buffering.unwrap_or(true),
            max_body,
            timeouts,
            trusted_proxies,
        }
    }

    /// A duration that must be above zero (nginx reads 0 as "fail at once").
    fn positive(
        &mut self,
        v: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration(v, field, default);
        if d.is_zero() {
            self.push(
                v.as_ref().map(|v| v.span()),
                field,
                "must be above zero".into(),
            );
            return default;
        }
        d
    }

    /// Across services: every (listen, host, path) is claimed once; the services of one
    /// listen are all TLS or all plain, and one host on one listen has one certificate; a
    /// redirect listen is no service's listen nor one of `reserved` (the control and serve
    /// addresses), and one redirect listen sends one host to one place.
    pub(super) fn check_fronts(
        &mut self,
        raw: &[Spanned<RawService>],
        services: &[ServiceSpec],
        reserved: &[SocketAddr],
    ) {
        for (i, s) in services.iter().enumerate() {
            let Some(r) = raw
                .iter()
                .find(|r| r.get_ref().name.get_ref() == s.name.as_str())
            else {
                continue;
            };
            let span = Some(r.get_ref().listen.span());
            for earlier in &services[..i] {
                if earlier.listen != s.listen {
                    continue;
                }
                let shared: Vec<&str> = names(&s.front)
                    .filter(|h| names(&earlier.front).any(|e| e == *h))
                    .collect();
                if s.front.path == earlier.front.path && !shared.is_empty() {
                    let raw = r.get_ref();
                    let span = raw
                        .hosts
                        .iter()
                        .find(|h| h.get_ref().eq_ignore_ascii_case(shared[0]))
                        .map(|h| h.span())
                        .or_else(|| raw.path.as_ref().map(|p| p.span()))
                        .or(span.clone());
                    let what = match shared[0] {
                        "" => "requests for any host name".to_owned(),
                        host => format!("host {host:?}"),
                    };
                    self.push(
                        span,
                        "service.hosts",
                        format!(
                            "services {} and {} both claim {what} under path {:?} on {}: give one of them other `hosts` or another `path`",
                            earlier.name, s.name, s.front.path, s.listen
                        ),
                    );
                }
                let (mine, theirs) = (&s.front.tls, &earlier.front.tls);
                if let (Some(mine), Some(theirs), Some(host)) = (mine, theirs, shared.first()) {
                    if !mine.same_files(theirs) {
                        self.push(
                            r.get_ref().tls.as_ref().map(|t| t.span()),
                            "service.tls",
                            format!(
                                "services {} and {} both answer {} on {} with different certificates: one name has one certificate, use the same `tls` for both",
                                earlier.name,
                                s.name,
                                if host.is_empty() { "any host name".to_owned() } else { format!("{host:?}") },
                                s.listen
                            ),
                        );
                    }
                }
                if s.front.tls.is_some() != earlier.front.tls.is_some() {
                    self.push(
                        span.clone(),
                        "service.tls",
                        format!(
                            "services {} and {} share {} but only one of them has `tls`: a listen is HTTPS or plain HTTP for all its services",
                            earlier.name, s.name, s.listen
                        ),
                    );
                }
            }
            if let Some(redirect) = s.front.redirect_http {
                let span = r.get_ref().redirect_http.as_ref().map(|r| r.span());
                if let Some(other) = services.iter().find(|o| o.listen == redirect) {
                    self.push(
                        span.clone(),
                        "service.redirect_http",
                        format!(
                            "{redirect} is the listen of service {}: redirect from an address no service listens on",
                            other.name
                        ),
                    );
                } else if reserved.contains(&redirect) {
                    self.push(
                        span.clone(),
                        "service.redirect_http",
                        format!(
                            "{redirect} is switchyard's own (the proxy control or serve address)"
                        ),
                    );
                }
                let twice = services[..i].iter().find(|e| {
                    e.front.redirect_http == Some(redirect)
                        && e.listen != s.listen
                        && names(&e.front).any(|h| names(&s.front).any(|m| m == h))
                });
                if let Some(other) = twice {
                    self.push(
                        span,
                        "service.redirect_http",
                        format!(
                            "services {} and {} both redirect the same host from {redirect} to different listens",
                            other.name, s.name
                        ),
                    );
                }
            }
        }
    }
}

/// The host names a front answers to, `""` standing for any.
fn names(front: &FrontSpec) -> impl Iterator<Item = &str> {
    let any = front.hosts.is_empty().then_some("");
    front.hosts.iter().map(String::as_str).chain(any)
}

/// A DNS name (lower-cased), or `*.` and a name for every subdomain.
fn check_host(h: &str) -> Result<String, String> {
    let host = h.to_ascii_lowercase();
    let name = host.strip_prefix("*.").unwrap_or(&host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(host)
    } else {
        Err(format!(
            "{h:?} is not a host name: use names like \"shop.example.com\" or \"*.example.com\" (no scheme, port or path)"
        ))
    }
}

fn absolute_file(p: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.chars()
        .any(|c| c.is_whitespace() || matches!(c, ';' | '"' | '\'' | '{' | '}' | '$' | '\\'))
    {
        return Err(format!(
            "{p:?} holds a space, quote, brace, '$', '\\' or ';', which nginx would misread"
        ));
    }
    Ok(path)
}

/// An IP address or a CIDR block, as nginx's `set_real_ip_from` takes it.
fn check_cidr(p: &str) -> Result<String, String> {
    let bad = || format!("{p:?} is not an address or CIDR block, such as \"10.0.0.0/8\"");
    let (addr, bits) = match p.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (p, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    if let Some(bits) = bits {
        let bits: u8 = bits.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(bad());
        }
    }
    Ok(p.to_owned())
}
