//! `demo-app healthcheck`: the Docker `HEALTHCHECK` for a scratch image, which has no curl.
//! [`check`] asks the local server's `/health` and passes only on a 200; it is built on
//! [`http_get`], a blocking HTTP/1.0 GET over a std [`TcpStream`] that the tests use too.
//! `demo-app get URL` is the scratch image's curl: [`get_url`] resolves the URL's host (a
//! container name or network alias, through Docker's DNS) and GETs it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Longest response read; `/health` answers a few bytes.
const MAX_RESPONSE: u64 = 64 * 1024;

/// A response as [`http_get`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "only the server tests read headers")
    )]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Where the server listening on `bind` can be reached from inside its own container:
/// loopback when it listens on every address.
pub fn local_target(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

/// Passes when `GET /health` on `addr` answers 200 within `timeout`; the error says why not.
pub fn check(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match http_get(addr, "/health", timeout) {
        Ok(response) if response.status == 200 => Ok(()),
        Ok(response) => Err(format!(
            "GET http://{addr}/health answered {}: {}",
            response.status,
            response.body.trim()
        )),
        Err(err) => Err(format!("GET http://{addr}/health failed: {err}")),
    }
}

/// `GET url` (`http://host[:port][/path]`, port 80 by default), the host resolved by name;
/// the error says which part failed.
pub fn get_url(url: &str, timeout: Duration) -> Result<RawResponse, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("bad port {port:?} in {url:?}"))?,
        ),
        None => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolving {host}: no address"))?;
    http_get(addr, path, timeout).map_err(|e| format!("GET {url} ({addr}) failed: {e}"))
}

/// One HTTP/1.0 GET; the server closes the connection after answering, so the response
/// ends at end of stream. `timeout` bounds the whole exchange.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<RawResponse> {
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    };
    let mut stream = TcpStream::connect_timeout(&addr, remaining()?)?;
    stream.set_write_timeout(Some(remaining()?))?;
    // One write: `write!` on a socket sends each piece on its own.
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(remaining()?))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 || raw.len() as u64 >= MAX_RESPONSE {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<RawResponse> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("response ended before its headers did"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid(&format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok(RawResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let raw =
            b"HTTP/1.1 503 Service Unavailable\r\nX-Version: v1\r\ncontent-length: 5\r\n\r\nnope\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.header("x-version"), Some("v1"));
        assert_eq!(response.body, "nope\n");
    }

    #[test]
    fn rejects_a_truncated_response() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn targets_loopback_when_bound_to_every_address() {
        let target = |bind: &str| local_target(bind.parse().unwrap()).to_string();
        assert_eq!(target("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(target("[::]:8080"), "[::1]:8080");
        assert_eq!(target("127.0.0.2:9000"), "127.0.0.2:9000");
    }

    #[test]
    fn get_url_reads_host_port_and_path_and_names_what_is_wrong() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello").unwrap();
            String::from_utf8(head).unwrap()
        });
        let url = format!("http://localhost:{port}/version");
        let response = get_url(&url, Duration::from_secs(5)).unwrap();
        assert_eq!((response.status, response.body.as_str()), (200, "hello"));
        assert!(server.join().unwrap().starts_with("GET /version HTTP/1.0"));
        assert!(get_url("https://x/", Duration::from_secs(1))
            .unwrap_err()
            .contains("not an http:// URL"));
        assert!(get_url("http://x:port/", Duration::from_secs(1))
            .unwrap_err()
            .contains("bad port"));
    }

    #[test]
    fn fails_on_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = check(addr, Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("/health failed"), "{err}");
    }
}
