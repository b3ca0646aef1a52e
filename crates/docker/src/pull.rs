//! Getting a service's image onto the host before any replica of it starts: [`prepare`], the
//! `Runtime::prepare` of [`DockerRuntime`]. It inspects the image and pulls it as the
//! service's `pull` says (`missing`: only when it is not here; `always`: every deploy, so a
//! re-pushed tag is picked up; `never`: a clear error when it is not here).
//!
//! A pull logs in with [`credentials_for`]: `[registry]` for its own server (the password read
//! from `password_file` at pull time, refused if group- or world-readable), else the `auths`
//! of Docker's `config.json` for the image's registry host, else none. [`ImageRef`] splits a
//! reference the way Docker does. [`PullSettings`] holds all of it, and whether to show
//! progress (only on a terminal). A password never reaches an error: every message from a
//! pull goes through [`redact`].

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures_util::StreamExt;
use switchyard_engine::config::container::Pull;
use switchyard_engine::config::RegistryConfig;
use switchyard_engine::{InstanceSpec, RuntimeError, Source};

use crate::image::IMAGE_STORE;
use crate::{failed, DockerRuntime};

/// Docker Hub, as the registry host of a reference that names none.
const DOCKER_HUB: &str = "docker.io";

/// How the runtime pulls: the login `[registry]` gives, where Docker's own config is, and
/// whether a terminal is watching.
#[derive(Debug, Clone)]
pub struct PullSettings {
    pub registry: Option<RegistryConfig>,
    /// Docker's client config, `config.json`; None where no home directory is known.
    pub docker_config: Option<PathBuf>,
    /// A brief progress line on stderr while pulling (for a terminal only).
    pub progress: bool,
}

impl PullSettings {
    /// `registry`, and Docker's `config.json` where the docker CLI reads it (`$DOCKER_CONFIG`,
    /// else `~/.docker`); no progress.
    pub fn new(registry: Option<RegistryConfig>) -> PullSettings {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        PullSettings {
            registry,
            docker_config: dir.map(|d| d.join("config.json")),
            progress: false,
        }
    }
}

impl Default for PullSettings {
    fn default() -> Self {
        PullSettings::new(None)
    }
}

/// An image reference split as Docker splits it: `127.0.0.1:5000/shop/web:v2` is registry
/// `127.0.0.1:5000`, repository `127.0.0.1:5000/shop/web`, tag `v2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// The registry host (with its port), `docker.io` when the reference names none.
    pub registry: String,
    /// Everything before the tag or digest.
    pub repository: &'a str,
    /// The tag, or the digest after `@`; `latest` when the reference has neither.
    pub tag: &'a str,
}

impl ImageRef<'_> {
    pub fn parse(reference: &str) -> ImageRef<'_> {
        let (repository, tag) = match reference.split_once('@') {
            Some((repository, digest)) => (repository, digest),
            None => {
                let name_start = reference.rfind('/').map_or(0, |i| i + 1);
                match reference[name_start..].rfind(':') {
                    Some(i) => (
                        &reference[..name_start + i],
                        &reference[name_start + i + 1..],
                    ),
                    None => (reference, "latest"),
                }
            }
        };
        // Docker's rule: a first component with a dot or a port, or `localhost`, is a host.
        let registry = match repository.split_once('/') {
            Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
                server_host(first)
            }
            _ => DOCKER_HUB.to_owned(),
        };
        ImageRef {
            registry,
            repository,
            tag,
        }
    }
}

/// A registry's host as configs name it in several ways: `https://index.docker.io/v1/`,
/// `127.0.0.1:5000`, `https://ghcr.io` all come down to the host (and port).
pub fn server_host(server: &str) -> String {
    let bare = server
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = bare.split('/').next().unwrap_or_default().to_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_owned()
        }
        _ => host,
    }
}

/// A login for one registry. Its `Debug` never shows the password.
#[derive(Clone)]
pub struct RegistryLogin {
    /// The registry host, as [`server_host`] gives it.
    pub server: String,
    pub username: String,
    password: String,
    /// Docker's `identitytoken` (an OAuth refresh token from `docker login`), instead of a
    /// password.
    identity_token: Option<String>,
    /// Where the login came from, for errors: `[registry] (username ci)`.
    pub source: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl RegistryLogin {
    /// A login with a password (tests push with one).
    pub fn new(server: &str, username: &str, password: &str) -> RegistryLogin {
        RegistryLogin {
            server: server_host(server),
            username: username.to_owned(),
            password: password.to_owned(),
            identity_token: None,
            source: format!("as {username}"),
        }
    }

    /// What Docker's `X-Registry-Auth` header carries.
    pub(crate) fn docker_credentials(&self) -> DockerCredentials {
        let serveraddress = match self.server.as_str() {
            DOCKER_HUB => "https://index.docker.io/v1/".to_owned(),
            host => host.to_owned(),
        };
        DockerCredentials {
            username: Some(self.username.clone()),
            password: (!self.password.is_empty()).then(|| self.password.clone()),
            identitytoken: self.identity_token.clone(),
            serveraddress: Some(serveraddress),
            ..Default::default()
        }
    }

    /// `text` with the password and identity token replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        let secrets = [Some(&self.password), self.identity_token.as_ref()];
        secrets
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "[redacted]"))
    }
}

/// `text` with `login`'s secrets replaced, where there is a login.
pub fn redact(login: Option<&RegistryLogin>, text: &str) -> String {
    login.map_or_else(|| text.to_owned(), |l| l.redact(text))
}

/// The login for `image`'s registry: `[registry]` when it names that host, else the
/// `auths` entry of Docker's `config.json` for it, else none. The error names the file that
/// could not be used.
pub fn credentials_for(
    settings: &PullSettings,
    image: &ImageRef<'_>,
) -> Result<Option<RegistryLogin>, String> {
    if let Some(registry) = &settings.registry {
        if server_host(&registry.server) == image.registry {
            let password = read_password_file(&registry.password_file)?;
            return Ok(Some(RegistryLogin {
                source: format!("as {} from [registry]", registry.username),
                ..RegistryLogin::new(&registry.server, &registry.username, &password)
            }));
        }
    }
    match &settings.docker_config {
        Some(path) => docker_config_login(path, &image.registry),
        None => Ok(None),
    }
}

/// The password in `path`, without its trailing newline. A file that group or others can
/// read is refused, naming it and its mode.
pub fn read_password_file(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("reading registry.password_file {shown}: {e}"))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o044 != 0 {
        return Err(format!(
            "registry.password_file {shown} is readable by group or others (mode {mode:04o}); restrict it with chmod 600 {shown}"
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading registry.password_file {shown}: {e}"))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!("registry.password_file {shown} is empty"));
    }
    Ok(password.to_owned())
}

/// The `auths` entry of Docker's `config.json` at `path` for `host`; none when the file does
/// not exist or has no entry for it.
fn docker_config_login(path: &Path, host: &str) -> Result<Option<RegistryLogin>, String> {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {shown}: {e}")),
    };
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{shown} is not valid JSON: {e}"))?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let Some((key, entry)) = auths.iter().find(|(key, _)| server_host(key) == host) else {
        return Ok(None);
    };
    let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).unwrap_or("");
    let (username, password) = match field("auth") {
        "" => (field("username").to_owned(), field("password").to_owned()),
        auth => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            let Some((user, pass)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return Err(format!(
                    "{shown}: auths.{key:?}.auth is not base64 of user:password"
                ));
            };
            (user.to_owned(), pass.to_owned())
        }
    };
    let token = field("identitytoken");
    if username.is_empty() && token.is_empty() {
        return Ok(None);
    }
    Ok(Some(RegistryLogin {
        identity_token: (!token.is_empty()).then(|| token.to_owned()),
        source: format!("as {username} from {shown}"),
        ..RegistryLogin::new(host, &username, &password)
    }))
}

/// Whether `image` is on the host.
pub async fn image_present(runtime: &DockerRuntime, image: &str) -> Result<bool, RuntimeError> {
    match runtime.docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(failed(&format!("inspecting image {image}"), e)),
    }
}

/// Removes `image` from the host (a missing one is not an error). Its untagged parents stay:
/// a build running meanwhile may be using them as its cache.
pub async fn remove_image(runtime: &DockerRuntime, image: &str) -> Result<(), RuntimeError> {
    let _store = IMAGE_STORE.lock().await;
    remove_one(runtime, image).await
}

async fn remove_one(runtime: &DockerRuntime, image: &str) -> Result<(), RuntimeError> {
    let options = RemoveImageOptionsBuilder::new()
        .force(true)
        .noprune(true)
        .build();
    match runtime
        .docker
        .remove_image(image, Some(options), None)
        .await
    {
        Ok(_)
        | Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(failed(&format!("removing image {image}"), e)),
    }
}

/// Removes every image of `repository` (`127.0.0.1:5000/demo`), by id: tagged ones and
/// those a pull left known only by digest.
pub async fn remove_repository(
    runtime: &DockerRuntime,
    repository: &str,
) -> Result<(), RuntimeError> {
    let filters = std::collections::HashMap::from([("reference", vec![repository.to_owned()])]);
    let options = ListImagesOptionsBuilder::new().filters(&filters).build();
    let images = runtime
        .docker
        .list_images(Some(options))
        .await
        .map_err(|e| failed(&format!("listing images of {repository}"), e))?;
    let _store = IMAGE_STORE.lock().await;
    for image in images {
        remove_one(runtime, &image.id).await?;
    }
    Ok(())
}

/// Brings `spec`'s image onto the host as its pull policy says, before a replica starts.
pub(crate) async fn prepare(
    runtime: &DockerRuntime,
    spec: &InstanceSpec,
) -> Result<(), RuntimeError> {
    // The start says what is wrong with a service that has no image.
    let Source::Image(image) = &spec.source else {
        return Ok(());
    };
    let pull = spec.container.pull;
    if pull != Pull::Always && image_present(runtime, image).await? {
        return Ok(());
    }
    if pull == Pull::Never {
        return Err(RuntimeError::Failed {
            what: format!("image {image}"),
            message: "not on this host, and the service says pull = \"never\" (pull or build it first, or set pull = \"missing\")".into(),
        });
    }
    pull_image(runtime, image).await
}

/// Pulls `image`, logged in where a login is known, with brief progress on a terminal.
pub async fn pull_image(runtime: &DockerRuntime, image: &str) -> Result<(), RuntimeError> {
    let settings = &runtime.pull;
    let reference = ImageRef::parse(image);
    let login = credentials_for(settings, &reference).map_err(|message| RuntimeError::Failed {
        what: format!("pulling image {image}"),
        message,
    })?;
    let what = match &login {
        Some(l) => format!("pulling image {image} ({})", l.source),
        None => format!(
            "pulling image {image} (no credentials for {}: none in [registry] or Docker's config.json)",
            reference.registry
        ),
    };
    let options = CreateImageOptionsBuilder::new()
        .from_image(reference.repository)
        .tag(reference.tag)
        .build();
    let credentials = login.as_ref().map(RegistryLogin::docker_credentials);
    let mut stream = runtime
        .docker
        .create_image(Some(options), None, credentials);
    let mut progress = settings.progress.then(|| Progress::new(image));
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(e) => {
                if let Some(p) = &progress {
                    p.abandon();
                }
                return Err(pull_failed(&what, login.as_ref(), e));
            }
        };
        if let (Some(p), Some(id), Some(status)) = (&mut progress, &info.id, &info.status) {
            p.layer(id, status);
        }
    }
    if let Some(p) = &progress {
        p.finish();
    }
    Ok(())
}

/// The registry's own words, with any secret of `login` taken out.
fn pull_failed(what: &str, login: Option<&RegistryLogin>, e: BollardError) -> RuntimeError {
    let e = match e {
        BollardError::DockerStreamError { error } => RuntimeError::Failed {
            what: what.to_owned(),
            message: error,
        },
        e => failed(what, e),
    };
    match e {
        RuntimeError::Failed { what, message } => RuntimeError::Failed {
            what: redact(login, &what),
            message: redact(login, &message),
        },
        RuntimeError::Unavailable(message) => RuntimeError::Unavailable(redact(login, &message)),
    }
}

/// One line on stderr, rewritten in place: `pulling IMAGE: 2/3 layers`.
struct Progress {
    image: String,
    started: Instant,
    layers: Vec<(String, bool)>,
}

impl Progress {
    fn new(image: &str) -> Progress {
        let progress = Progress {
            image: image.to_owned(),
            started: Instant::now(),
            layers: Vec::new(),
        };
        progress.show("");
        progress
    }

    /// Docker's status for one layer: `Pulling fs layer`, …, `Pull complete`.
    fn layer(&mut self, id: &str, status: &str) {
        let done = matches!(status, "Pull complete" | "Already exists");
        let known = status.starts_with("Pulling fs layer")
            || status.starts_with("Waiting")
            || status.starts_with("Downloading")
            || status.starts_with("Verifying")
            || status.starts_with("Extracting")
            || done;
        if !known {
            return;
        }
        match self.layers.iter_mut().find(|(l, _)| l == id) {
            Some(layer) => layer.1 |= done,
            None => self.layers.push((id.to_owned(), done)),
        }
        let finished = self.layers.iter().filter(|(_, d)| *d).count();
        self.show(&format!(": {finished}/{} layers", self.layers.len()));
    }

    fn show(&self, detail: &str) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K  pulling {}{detail}", self.image);
        let _ = err.flush();
    }

    fn finish(&self) {
        let seconds = self.started.elapsed().as_secs_f64();
        let _ = writeln!(
            std::io::stderr().lock(),
            "\r\x1b[2K  pulled {} in {seconds:.1}s",
            self.image
        );
    }

    /// Ends the line; the error that follows says what went wrong.
    fn abandon(&self) {
        let _ = writeln!(std::io::stderr().lock());
    }
}

#[cfg(test)]
mod tests;
