//! A throwaway CA and a certificate it signed for 127.0.0.1 (and `localhost`), made with the
//! `openssl` CLI: [`TestCa`]. Clients are handed `ca.pem` (curl's `--cacert`, `--remote-ca`,
//! `SSL_CERT_FILE`); servers the leaf's `serve.pem` and `serve.key`. [`serve_tls`] is an
//! axum app served over TLS on 127.0.0.1 with serve's own listener.

use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard_engine::config::ServeTls;

pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    /// A certificate for IP 127.0.0.1 and DNS localhost, signed by the CA, and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether the openssl CLI runs: fails under CI, skips loudly elsewhere.
pub fn require_openssl() -> bool {
    let found = Command::new("openssl").arg("version").output().is_ok();
    super::require(found, "the openssl CLI (apt-get install openssl)")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        super::text(&out.stderr)
    );
}

const P256: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// `name.key` and a self-signed `name.pem` for `cn` in `dir` (openssl's defaults make it a CA).
fn self_signed(dir: &Path, name: &str, cn: &str) {
    let (key, pem, subject) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={cn}"),
    );
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
    args.extend(P256);
    args.extend(["-subj", &subject, "-keyout", &key, "-out", &pem]);
    openssl(dir, &args);
}

impl TestCa {
    /// None (after a loud skip) without the openssl CLI.
    pub fn new() -> Option<TestCa> {
        if !require_openssl() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        self_signed(d, "ca", "switchyard test CA");
        let mut leaf = vec!["req", "-new", "-nodes"];
        leaf.extend(P256);
        leaf.extend([
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "serve.key",
            "-out",
            "serve.csr",
        ]);
        openssl(d, &leaf);
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "serve.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                "serve.pem",
            ],
        );
        Some(TestCa {
            ca: d.join("ca.pem"),
            cert: d.join("serve.pem"),
            key: d.join("serve.key"),
            dir,
        })
    }

    /// A private key that does not go with [`TestCa::cert`].
    pub fn other_key(&self) -> PathBuf {
        self_signed(self.dir.path(), "other", "other");
        self.dir.path().join("other.key")
    }

    /// The base64 SHA-256 of the leaf's public key (SubjectPublicKeyInfo), as Chromium's
    /// `--ignore-certificate-errors-spki-list` takes it: that browser then trusts this
    /// certificate only.
    pub fn spki_sha256(&self) -> String {
        use base64::Engine;
        use sha2::Digest;
        let d = self.dir.path();
        let cert = self.cert.to_str().unwrap();
        openssl(
            d,
            &["x509", "-in", cert, "-pubkey", "-noout", "-out", "spki.pem"],
        );
        openssl(
            d,
            &[
                "pkey", "-pubin", "-in", "spki.pem", "-outform", "der", "-out", "spki.der",
            ],
        );
        let der = std::fs::read(d.join("spki.der")).unwrap();
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(der))
    }

    pub fn serve_tls(&self) -> ServeTls {
        ServeTls {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// `[serve]`'s lines naming the certificate and key.
    pub fn serve_lines(&self) -> String {
        format!(
            "cert = {:?}\nkey = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }
}

/// Serves `app` over TLS with the CA's certificate on a free port of 127.0.0.1: its
/// address and the server's task.
pub async fn serve_tls(
    ca: &TestCa,
    app: axum::Router,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use switchyard_app::serve::tls;
    let config = tls::server_config(&ca.serve_tls()).expect("the test certificate serves");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = tls::TlsListener::new(listener, config).unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}
