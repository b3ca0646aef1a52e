//! Building `FROM scratch` images from a static binary: [`build_scratch_image`], and
//! pushing one to a registry: [`push_image`].
//!
//! No public registry can be reached where switchyard is tested, so the demo and the tests
//! build their images locally: a tar context holding the binary and a Dockerfile with the
//! given environment baked in and, optionally, a HEALTHCHECK that runs the binary itself.
//! The registry tests push them to a local registry.

use std::path::Path;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::{BuildImageOptionsBuilder, PushImageOptionsBuilder};
use futures_util::StreamExt;
use switchyard_engine::RuntimeError;

use crate::pull::{redact, ImageRef, RegistryLogin};
use crate::DockerRuntime;

/// Held while this process builds or removes an image. The engine's classic builder looks
/// for its cache among all images, and one removed meanwhile fails the build (`failed to get
/// digest …: no such file`), so a test removing its images never breaks another's build.
pub(crate) static IMAGE_STORE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What goes into a scratch image.
pub struct ScratchImage<'a> {
    pub tag: &'a str,
    /// A statically linked executable; it becomes `/app`, the entrypoint.
    pub binary: &'a Path,
    pub env: &'a [(&'a str, &'a str)],
    /// Arguments to `/app` for a Docker HEALTHCHECK (`["healthcheck"]` for demo-app).
    pub healthcheck: Option<&'a [&'a str]>,
}

pub async fn build_scratch_image(
    runtime: &DockerRuntime,
    image: &ScratchImage<'_>,
) -> Result<(), RuntimeError> {
    let fail = |message: String| RuntimeError::Failed {
        what: format!("building image {}", image.tag),
        message,
    };
    let context =
        tar_context(image).map_err(|e| fail(format!("packing {}: {e}", image.binary.display())))?;
    let _store = IMAGE_STORE.lock().await;
    let options = BuildImageOptionsBuilder::new()
        .t(image.tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream =
        runtime
            .docker
            .build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| fail(e.to_string()))?;
        if let Some(detail) = info.error_detail {
            return Err(fail(detail.message.unwrap_or_default()));
        }
    }
    Ok(())
}

/// Pushes `image` (`host/name:tag`) to its registry, logged in as `login` where given.
pub async fn push_image(
    runtime: &DockerRuntime,
    image: &str,
    login: Option<&RegistryLogin>,
) -> Result<(), RuntimeError> {
    let fail = |message: String| RuntimeError::Failed {
        what: format!("pushing image {image}"),
        message: redact(login, &message),
    };
    let reference = ImageRef::parse(image);
    let options = PushImageOptionsBuilder::new().tag(reference.tag).build();
    let credentials = login.map(RegistryLogin::docker_credentials);
    let mut stream = runtime
        .docker
        .push_image(reference.repository, Some(options), credentials);
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => {}
            Err(BollardError::DockerStreamError { error }) => return Err(fail(error)),
            Err(BollardError::DockerResponseServerError { message, .. }) => {
                return Err(fail(message))
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    Ok(())
}

fn dockerfile(image: &ScratchImage<'_>) -> String {
    let mut text = String::from("FROM scratch\nCOPY app /app\n");
    for (k, v) in image.env {
        text.push_str(&format!("ENV {k}={v:?}\n"));
    }
    if let Some(args) = image.healthcheck {
        let argv: Vec<String> = std::iter::once("/app")
            .chain(args.iter().copied())
            .map(|a| format!("{a:?}"))
            .collect();
        text.push_str(&format!(
            "HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD [{}]\n",
            argv.join(", ")
        ));
    }
    text.push_str("ENTRYPOINT [\"/app\"]\n");
    text
}

fn tar_context(image: &ScratchImage<'_>) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    // Plain ustar entries from memory: a linker's output can be sparse on disk, and the
    // engine's tar reader rejects GNU sparse entries.
    let binary = std::fs::read(image.binary)?;
    for (name, data, mode) in [
        ("Dockerfile", dockerfile(image).into_bytes(), 0o644),
        ("app", binary, 0o755),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        tar.append_data(&mut header, name, data.as_slice())?;
    }
    tar.into_inner()
}
