//! The servers nginx answers on: which service a request reaches by its listen, host name
//! and path. Several services may share one listen, each under its own hosts or path.
//!
//! Each service's file records what it claims (its [`Claim`]: listen, hosts, path, TLS,
//! redirect) on its first line, so the files on disk alone say which servers must exist.
//! [`plan`] turns the claims into one server per listen and host name (`_site.*.conf`),
//! each including the locations of the services that answer there, plus the redirects from
//! plain HTTP and, on a listen where every service names its hosts, a default server that
//! answers nobody (404, or a refused TLS handshake).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use switchyard_engine::config::FrontSpec;

/// The first line of a service file that records its claim.
const CLAIM_PREFIX: &str = "# front: ";
/// Every site file's name starts with this (it sorts after `_control.conf`).
pub const SITE_PREFIX: &str = "_site.";

/// What one service claims of nginx's front: where it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub service: String,
    pub listen: SocketAddr,
    #[serde(default)]
    pub hosts: Vec<String>,
    pub path: String,
    #[serde(default)]
    pub tls: Option<(PathBuf, PathBuf)>,
    #[serde(default)]
    pub redirect_http: Option<SocketAddr>,
}

impl Claim {
    pub fn new(service: &str, listen: SocketAddr, front: &FrontSpec) -> Claim {
        Claim {
            service: service.to_owned(),
            listen,
            hosts: front.hosts.clone(),
            path: front.path.clone(),
            tls: front.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone())),
            redirect_http: front.redirect_http,
        }
    }

    /// The line a service file starts with.
    pub fn line(&self) -> String {
        let json = serde_json::to_string(self).expect("a claim serializes");
        format!("{CLAIM_PREFIX}{json}\n")
    }

    /// The claim a service file's text records, if it records one.
    pub fn parse(text: &str) -> Option<Claim> {
        let line = text.lines().next()?.strip_prefix(CLAIM_PREFIX)?;
        serde_json::from_str(line).ok()
    }
}

/// The claims recorded by the service files in `conf_dir`, by service.
pub fn claims_on_disk(conf_dir: &Path) -> BTreeMap<String, Claim> {
    let Ok(entries) = std::fs::read_dir(conf_dir) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".conf") && !name.starts_with('_')
        })
        .filter_map(|e| Claim::parse(&std::fs::read_to_string(e.path()).ok()?))
        .map(|c| (c.service.clone(), c))
        .collect()
}

/// Service files written before services recorded their claims (an older switchyard): each
/// one's service and the listen its own `server` block holds.
pub fn legacy_listens(conf_dir: &Path) -> Vec<(String, SocketAddr)> {
    let Ok(entries) = std::fs::read_dir(conf_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let service = name
                .strip_suffix(".conf")
                .filter(|_| !name.starts_with('_'))?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            if Claim::parse(&text).is_some() {
                return None;
            }
            let listen = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("listen ")?.strip_suffix(';'))?;
            Some((
                service.to_owned(),
                listen.split_whitespace().next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// The names of the site files in `conf_dir` now.
pub fn sites_on_disk(conf_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(conf_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(SITE_PREFIX) && n.ends_with(".conf"))
        .collect();
    names.sort();
    names
}

/// What a site's server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteKind {
    /// Proxies to the services whose locations it includes.
    Serve,
    /// Redirects plain HTTP to HTTPS.
    Redirect,
    /// Answers no one: no service claims the name asked for.
    Reject,
}

/// One server block, as the site template sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub kind: SiteKind,
    pub listen: String,
    /// None: any host name.
    pub host: Option<String>,
    pub default_server: bool,
    pub tls: Option<SiteTls>,
    /// The location files it includes, relative to nginx's conf directory.
    pub includes: Vec<String>,
    /// For a redirect: `:8443`, or empty for 443.
    pub https_port: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteTls {
    pub cert: String,
    pub key: String,
}

/// The site files the claims need, by file name. `include_dir` is `conf_dir` relative to
/// nginx's conf directory (`switchyard`), as the includes name it. The config's checks keep
/// its services apart; claims on disk may also come from a service no longer in it, so a
/// host and path claimed twice, or one server with two certificates, is refused here too,
/// naming both services.
pub fn plan(
    claims: &BTreeMap<String, Claim>,
    include_dir: &str,
) -> Result<BTreeMap<String, Site>, String> {
    // (listen, host) -> the services answering there, and the TLS of the first.
    let mut serving: BTreeMap<(SocketAddr, Option<String>), Vec<&Claim>> = BTreeMap::new();
    let mut redirects: BTreeMap<(SocketAddr, Option<String>), u16> = BTreeMap::new();
    for claim in claims.values() {
        let hosts: Vec<Option<String>> = if claim.hosts.is_empty() {
            vec![None]
        } else {
            claim.hosts.iter().cloned().map(Some).collect()
        };
        for host in hosts {
            serving
                .entry((claim.listen, host.clone()))
                .or_default()
                .push(claim);
            if let Some(from) = claim.redirect_http {
                redirects.insert((from, host), claim.listen.port());
            }
        }
    }
    for ((listen, host), members) in &serving {
        let any = || "any host name".to_owned();
        let what = host.as_ref().map_or_else(any, |h| format!("host {h:?}"));
        for (i, a) in members.iter().enumerate() {
            for b in &members[..i] {
                let both = format!(
                    "services {} and {} both claim {what} on {listen}",
                    b.service, a.service
                );
                let fix = "change one, or `switchyard remove` the one no longer in the config";
                if a.path == b.path {
                    return Err(format!("{both} under path {:?}: {fix}", a.path));
                }
                if a.tls != b.tls {
                    return Err(format!("{both} with different TLS settings: {fix}"));
                }
            }
        }
    }
    let mut sites = BTreeMap::new();
    let tls_of = |claims: &[&Claim]| {
        claims.iter().find_map(|c| {
            c.tls.as_ref().map(|(cert, key)| SiteTls {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
            })
        })
    };
    for ((listen, host), members) in &serving {
        let mut includes: Vec<String> = members
            .iter()
            .map(|c| format!("{include_dir}/{}.locations", c.service))
            .collect();
        includes.sort();
        includes.dedup();
        sites.insert(
            file_name(*listen, host.as_deref()),
            Site {
                kind: SiteKind::Serve,
                listen: listen.to_string(),
                host: host.clone(),
                default_server: host.is_none(),
                tls: tls_of(members),
                includes,
                https_port: String::new(),
            },
        );
    }
    for ((listen, host), port) in &redirects {
        sites.insert(
            file_name(*listen, host.as_deref()),
            Site {
                kind: SiteKind::Redirect,
                listen: listen.to_string(),
                host: host.clone(),
                default_server: host.is_none(),
                tls: None,
                includes: Vec::new(),
                https_port: if *port == 443 {
                    String::new()
                } else {
                    format!(":{port}")
                },
            },
        );
    }
    // A listen where every server names its host: a default that answers no one, so a
    // request for another name does not land on whichever server nginx read first.
    let mut listens: BTreeMap<SocketAddr, (bool, bool)> = BTreeMap::new();
    for site in sites.values() {
        let addr: SocketAddr = site.listen.parse().expect("rendered from a SocketAddr");
        let entry = listens.entry(addr).or_insert((false, false));
        entry.0 |= site.host.is_none();
        entry.1 |= site.tls.is_some();
    }
    for (listen, (has_default, tls)) in listens {
        if has_default {
            continue;
        }
        sites.insert(
            file_name(listen, None),
            Site {
                kind: SiteKind::Reject,
                listen: listen.to_string(),
                host: None,
                default_server: true,
                // ssl_reject_handshake needs no certificate; an empty one marks TLS.
                tls: tls.then(|| SiteTls {
                    cert: String::new(),
                    key: String::new(),
                }),
                includes: Vec::new(),
                https_port: String::new(),
            },
        );
    }
    Ok(sites)
}

/// `_site.127.0.0.1_8443.shop.example.com.conf`; `_default` for any host.
fn file_name(listen: SocketAddr, host: Option<&str>) -> String {
    let listen: String = listen
        .to_string()
        .chars()
        .map(|c| match c {
            ':' => '_',
            '[' | ']' => '-',
            c => c,
        })
        .collect();
    let host = host.map_or("_default".to_owned(), |h| h.replace('*', "_wildcard"));
    format!("{SITE_PREFIX}{listen}.{host}.conf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_and_path_claimed_twice_on_disk_is_refused_naming_both() {
        let mut claims = BTreeMap::new();
        for c in [
            claim("shop", "127.0.0.1:8443", &["shop.example.com"], "/", true),
            claim("store", "127.0.0.1:8443", &["shop.example.com"], "/", true),
        ] {
            claims.insert(c.service.clone(), c);
        }
        let err = plan(&claims, "switchyard").unwrap_err();
        assert!(
            err.contains("services shop and store both claim host \"shop.example.com\" on 127.0.0.1:8443 under path \"/\""),
            "{err}"
        );
        claims.get_mut("store").unwrap().path = "/api/".into();
        claims.get_mut("store").unwrap().tls = None;
        let err = plan(&claims, "switchyard").unwrap_err();
        assert!(err.contains("different TLS settings"), "{err}");
    }

    #[test]
    fn an_older_service_file_is_known_by_its_listen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("old.conf"),
            "upstream sy_old_stable {}\nserver {\n    listen 127.0.0.1:8000;\n}\n",
        )
        .unwrap();
        let c = claim("new", "127.0.0.1:8001", &[], "/", false);
        std::fs::write(dir.path().join("new.conf"), c.line()).unwrap();
        assert_eq!(
            legacy_listens(dir.path()),
            [("old".to_owned(), "127.0.0.1:8000".parse().unwrap())]
        );
    }

    fn claim(service: &str, listen: &str, hosts: &[&str], path: &str, tls: bool) -> Claim {
        Claim {
            service: service.into(),
            listen: listen.parse().unwrap(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path: path.into(),
            tls: tls.then(|| ("/c.pem".into(), "/k.pem".into())),
            redirect_http: None,
        }
    }

    #[test]
    fn a_claim_round_trips_through_its_line() {
        let c = claim("web", "127.0.0.1:8443", &["a.example.com"], "/", true);
        let text = format!("{}upstream x {{}}\n", c.line());
        assert_eq!(Claim::parse(&text), Some(c));
        assert_eq!(Claim::parse("upstream x {}\n"), None);
    }

    #[test]
    fn hosts_on_one_listen_get_a_server_each_and_a_default_that_rejects() {
        let mut claims = BTreeMap::new();
        for c in [
            claim("shop", "127.0.0.1:8443", &["shop.example.com"], "/", true),
            claim(
                "api",
                "127.0.0.1:8443",
                &["shop.example.com"],
                "/api/",
                true,
            ),
            claim("blog", "127.0.0.1:8443", &["blog.example.com"], "/", true),
        ] {
            claims.insert(c.service.clone(), c);
        }
        let sites = plan(&claims, "switchyard").unwrap();
        let names: Vec<&String> = sites.keys().collect();
        assert_eq!(
            names,
            [
                "_site.127.0.0.1_8443._default.conf",
                "_site.127.0.0.1_8443.blog.example.com.conf",
                "_site.127.0.0.1_8443.shop.example.com.conf",
            ]
        );
        let shop = &sites["_site.127.0.0.1_8443.shop.example.com.conf"];
        assert_eq!(
            shop.includes,
            ["switchyard/api.locations", "switchyard/shop.locations"]
        );
        assert!(shop.tls.is_some() && !shop.default_server);
        let default = &sites["_site.127.0.0.1_8443._default.conf"];
        assert_eq!(default.kind, SiteKind::Reject);
        assert!(default.default_server && default.tls.is_some());
    }

    #[test]
    fn a_redirect_names_the_https_port_unless_it_is_443() {
        let mut c = claim("shop", "127.0.0.1:8443", &["shop.example.com"], "/", true);
        c.redirect_http = Some("127.0.0.1:8080".parse().unwrap());
        let claims = BTreeMap::from([("shop".to_owned(), c)]);
        let sites = plan(&claims, "switchyard").unwrap();
        let redirect = &sites["_site.127.0.0.1_8080.shop.example.com.conf"];
        assert_eq!(redirect.kind, SiteKind::Redirect);
        assert_eq!(redirect.https_port, ":8443");
        // The redirect listen names its host only: it gets a plain default that rejects.
        assert_eq!(
            sites["_site.127.0.0.1_8080._default.conf"].kind,
            SiteKind::Reject
        );
    }

    #[test]
    fn a_service_without_hosts_is_its_listens_default() {
        let claims = BTreeMap::from([(
            "web".to_owned(),
            claim("web", "127.0.0.1:8000", &[], "/", false),
        )]);
        let sites = plan(&claims, "switchyard").unwrap();
        assert_eq!(sites.len(), 1);
        let web = &sites["_site.127.0.0.1_8000._default.conf"];
        assert!(web.default_server && web.kind == SiteKind::Serve);
    }
}
