//! serve's TLS, both ends, with rustls on the ring provider. [`server_config`] reads
//! `[serve] cert` and `key` (PEM) into a rustls config, failing with a [`TlsFileError`] that
//! names the field and the file; [`TlsListener`] is the listener `serve` hands axum when
//! they are set: it accepts TCP connections and completes each handshake in a task of its
//! own (bounded by [`HANDSHAKE_WITHIN`], at most [`HANDSHAKES_AT_ONCE`] at once), so one
//! slow client holds up no other. On the other end, [`client_config`] trusts the system's roots (or `SSL_CERT_FILE` / `SSL_CERT_DIR`,
//! which rustls-native-certs reads instead of the system store when set) plus a CA of the
//! caller's (`--remote-ca`), and [`connect`] speaks TLS over a connection with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchyard_engine::config::ServeTls;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::RootCertStore;
pub use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// How long a client may take to complete its handshake before it is dropped.
pub const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// A certificate, key or CA file that cannot serve: which field named it, and why (the
/// message names the file).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TlsFileError {
    /// `serve.cert`, `serve.key`, or the caller's name for a CA file (`--remote-ca`).
    pub field: &'static str,
    pub path: PathBuf,
    message: String,
}

impl TlsFileError {
    fn new(field: &'static str, path: &Path, message: String) -> TlsFileError {
        TlsFileError {
            field,
            path: path.to_owned(),
            message,
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path)
        .map_err(|e| TlsFileError::new(field, path, format!("cannot read {}: {e}", path.display())))
}

/// Every PEM certificate in `path`; at least one.
fn certificates(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bad = |why: String| TlsFileError::new(field, path, why);
    let bytes = read(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The rustls config of `[serve] cert` and `key`: HTTP/1.1, TLS 1.2 and 1.3. Every file is
/// read here, so a missing, unreadable or invalid one (or a key that does not go with the
/// certificate) is found before anything listens.
pub fn server_config(tls: &ServeTls) -> Result<Arc<ServerConfig>, TlsFileError> {
    let certs = certificates("serve.cert", &tls.cert)?;
    let key_bytes = read("serve.key", &tls.key)?;
    let bad_key = |why: String| TlsFileError::new("serve.key", &tls.key, why);
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        bad_key(format!(
            "{} holds no usable PEM private key: {e}",
            tls.key.display()
        ))
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad_key(format!(
                "the key in {} does not serve the certificate in {}: {e}",
                tls.key.display(),
                tls.cert.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS listener for `axum::serve`: connections come out of [`Listener::accept`] once
/// their handshake is done. Dropping it stops accepting.
///
/// [`Listener::accept`]: axum::serve::Listener::accept
pub struct TlsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(server::TlsStream<TcpStream>, SocketAddr)>,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (done, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), done));
        Ok(TlsListener {
            addr,
            ready,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (it never does on its own): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

type Handshaken = mpsc::Sender<(server::TlsStream<TcpStream>, SocketAddr)>;

/// How many TLS handshakes run at once, at most.
pub const HANDSHAKES_AT_ONCE: usize = 256;

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, done: Handshaken) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_AT_ONCE));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: axum's own listener backs off too.
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Bounded: idle connections that never finish a handshake cannot pile up past
        // HANDSHAKES_AT_ONCE (each is dropped after HANDSHAKE_WITHIN); beyond it, new ones wait.
        let Ok(slot) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (acceptor, done) = (acceptor.clone(), done.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = done.send((stream, peer)).await;
                }
                // A plain-HTTP request or a client that does not trust the certificate.
                Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                Err(_) => {
                    tracing::debug!("TLS handshake with {peer}: none within {HANDSHAKE_WITHIN:?}")
                }
            }
        });
    }
}

/// A client config trusting the system's roots (replaced by `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when either is set) and every certificate in `extra_ca`, named `field` in
/// errors.
pub fn client_config(
    extra_ca: Option<(&'static str, &Path)>,
) -> Result<Arc<ClientConfig>, TlsFileError> {
    let mut roots = RootCertStore::empty();
    // Unreadable entries of the system store are skipped, as curl skips them.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some((field, path)) = extra_ca {
        for cert in certificates(field, path)? {
            roots.add(cert).map_err(|e| {
                let why = format!("{}: not a usable CA certificate: {e}", path.display());
                TlsFileError::new(field, path, why)
            })?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// TLS over `tcp`, connected to `authority` (`host:port`, `[v6]:port`), the certificate
/// verified for `host` (a DNS name or an IP address).
pub async fn connect(
    tcp: TcpStream,
    authority: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<client::TlsStream<TcpStream>> {
    let host = host_of(authority);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host:?}: {e}"))
    })?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// The host of `host:port` or `[v6]:port`, without brackets.
fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_the_authority_without_its_port_or_brackets() {
        assert_eq!(host_of("127.0.0.1:9100"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9100"), "::1");
        assert_eq!(host_of("serve.example:443"), "serve.example");
        assert_eq!(host_of("serve.example"), "serve.example");
    }

    #[test]
    fn files_that_are_missing_or_hold_no_pem_name_their_field_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let gone = dir.path().join("gone.pem");
        let tls = |cert: &Path, key: &Path| ServeTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
        };
        let e = server_config(&tls(&gone, &junk)).unwrap_err();
        assert_eq!((e.field, e.path.as_path()), ("serve.cert", gone.as_path()));
        assert!(e.to_string().starts_with("cannot read "), "{e}");
        let e = server_config(&tls(&junk, &gone)).unwrap_err();
        assert_eq!(e.field, "serve.cert", "the certificate is read first");
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let e = client_config(Some(("--remote-ca", &junk))).unwrap_err();
        assert_eq!((e.field, e.path.as_path()), ("--remote-ca", junk.as_path()));
        assert!(client_config(None).is_ok());
    }
}
