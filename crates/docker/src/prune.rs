//! Removing a service's old images: [`DockerRuntime::prune_images`].

use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder};
use switchyard_engine::RuntimeError;

use crate::DockerRuntime;

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Image tags removed.
    pub removed: Vec<String>,
    /// Tags kept although not wanted, and why (a container still uses it).
    pub kept: Vec<(String, String)>,
}

impl DockerRuntime {
    /// Removes the local tags of `template` (an image reference with `{version}`, as in
    /// `service.image`) whose version is not in `keep`. An image a container still uses is
    /// kept and named; nothing is forced.
    pub async fn prune_images(
        &self,
        template: &str,
        keep: &[String],
    ) -> Result<Pruned, RuntimeError> {
        let (prefix, suffix) =
            template
                .split_once("{version}")
                .ok_or_else(|| RuntimeError::Failed {
                    what: format!("pruning {template}"),
                    message:
                        "the image reference has no {version}: every version is the same image"
                            .into(),
                })?;
        let images = self
            .docker
            .list_images(Some(ListImagesOptionsBuilder::new().all(false).build()))
            .await
            .map_err(|e| crate::failed(&format!("listing images for {template}"), e))?;
        let mut pruned = Pruned::default();
        for tag in images.iter().flat_map(|i| &i.repo_tags) {
            let Some(version) = tag
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
            else {
                continue;
            };
            if version.is_empty()
                || version.contains([':', '/'])
                || keep.iter().any(|k| k == version)
            {
                continue;
            }
            let options = RemoveImageOptionsBuilder::new()
                .force(false)
                .noprune(false)
                .build();
            match self.docker.remove_image(tag, Some(options), None).await {
                Ok(_) => pruned.removed.push(tag.clone()),
                Err(e) => pruned.kept.push((tag.clone(), e.to_string())),
            }
        }
        pruned.removed.sort();
        Ok(pruned)
    }
}
