//! [`TestRegistry`]: Debian's `docker-registry` on 127.0.0.1:<free port> with one htpasswd
//! (bcrypt) login, its config, storage and password file in a temp dir; stopped by PID and
//! its images removed when dropped, failed tests included.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchyard_docker::image::{build_scratch_image, push_image, ScratchImage};
use switchyard_docker::pull::{image_present, remove_image, remove_repository, RegistryLogin};
use switchyard_docker::DockerRuntime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{PASSWORD, USER};
use crate::support::{eventually, free_port, require};

/// A registry of our own, with one login (`USER`/`PASSWORD`); stopped by PID when dropped.
pub(super) struct TestRegistry {
    child: Child,
    pub(super) dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl TestRegistry {
    /// Starts one, or says why it cannot (a loud skip, or a failure under CI).
    pub(super) async fn start() -> Option<TestRegistry> {
        let tools = ["docker-registry", "htpasswd"].iter().all(|t| on_path(t));
        if !require(
            tools,
            "docker-registry and htpasswd (scripts/install-deps installs docker-registry and apache2-utils)",
        ) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("switchyard-registry-")
            .tempdir()
            .unwrap();
        let htpasswd = dir.path().join("htpasswd");
        write_htpasswd(&htpasswd);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: switchyard-test\n    path: {htpasswd}\n",
                root = dir.path().join("root").display(),
                htpasswd = htpasswd.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let registry = TestRegistry { child, dir, addr };
        // Up when /v2/ asks for a login.
        eventually(
            Duration::from_secs(10),
            "the registry to answer",
            || async {
                http_get(addr, "/v2/")
                    .await
                    .is_some_and(|r| r.starts_with("HTTP/1.1 401"))
            },
        )
        .await;
        Some(registry)
    }

    pub(super) fn host(&self) -> String {
        self.addr.to_string()
    }

    pub(super) fn login(&self) -> RegistryLogin {
        RegistryLogin::new(&self.host(), USER, PASSWORD)
    }

    /// A password file holding `password`, with `mode`.
    pub(super) fn password_file(&self, password: &str, mode: u32) -> PathBuf {
        let path = self.dir.path().join("registry.pw");
        std::fs::write(&path, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// The `[registry]` table for this registry.
    pub(super) fn table(&self, password_file: &Path) -> String {
        format!(
            "[registry]\nserver = {:?}\nusername = {USER:?}\npassword_file = {:?}\n",
            self.host(),
            password_file.display().to_string()
        )
    }

    /// Builds the demo-app as `<host>/demo:<tag>` with `APP_BUILD=<build>` baked in, pushes
    /// it with the login, and removes the local copy.
    pub(super) async fn push(&self, docker: &DockerRuntime, app: &Path, tag: &str, build: &str) {
        let image = self.build(docker, app, tag, build).await;
        push_image(docker, &image, Some(&self.login()))
            .await
            .expect("the push with credentials succeeds");
        remove_image(docker, &image).await.unwrap();
        assert!(
            !image_present(docker, &image).await.unwrap(),
            "{image} removed"
        );
    }

    /// Builds `<host>/demo:<tag>` locally with `APP_BUILD=<build>`.
    pub(super) async fn build(
        &self,
        docker: &DockerRuntime,
        app: &Path,
        tag: &str,
        build: &str,
    ) -> String {
        let image = format!("{}/demo:{tag}", self.host());
        // Images of this test only: another test removing its own never removes these.
        let host = self.host();
        let env = [("APP_BUILD", build), ("SWITCHYARD_TEST_REGISTRY", &host)];
        let scratch = ScratchImage {
            tag: &image,
            binary: app,
            env: &env,
            healthcheck: None,
        };
        build_scratch_image(docker, &scratch).await.unwrap();
        image
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let repository = format!("{}/demo", self.host());
        // Every image of this registry, built or pulled; on our own runtime, since the
        // test's may be gone.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(docker) = DockerRuntime::connect("registry-test").await {
                    if let Err(e) = remove_repository(&docker, &repository).await {
                        eprintln!("registry test cleanup: {e}");
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// `htpasswd -B` entry for `USER`, the password given on stdin.
fn write_htpasswd(path: &Path) {
    let mut child = Command::new("htpasswd")
        .args(["-niB", USER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("htpasswd runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "htpasswd -B failed");
    std::fs::write(path, out.stdout).unwrap();
}

/// One GET on a fresh connection: the whole response, or None if nothing answered.
pub(super) async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    Some(String::from_utf8_lossy(&response).into_owned())
}
