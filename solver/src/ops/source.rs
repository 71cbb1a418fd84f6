//! Source op: an image from the local store as a chain of snapshots.
//!
//! Every layer is unpacked once into `snapshots/<diffid>` (checked against
//! both digests) and shared by every build that uses it afterwards.

use cache::Digest;
use cache::images::ConfigSummary;
use cache::layer::create::LayerDescriptor;
use cache::snapshot::LayerRef;
use frontend::graph::SourceOp;

use super::{OpContext, Operation, State};
use crate::rootfs::{ChainLayer, LayerChain};
use crate::solve::{BuildError, StepError};

impl Operation for SourceOp {
    fn run(&self, cx: &OpContext<'_>, _inputs: &[&State]) -> Result<State, BuildError> {
        let Some(digest) = cx.source_digest else {
            return Err(BuildError::ImageNotFound {
                reference: self.reference.clone(),
                position: cx.vertex.position,
                pull_error: None,
            });
        };
        let image_error = |source| {
            cx.step_error(StepError::Image {
                reference: self.reference.clone(),
                source,
            })
        };
        let (_, manifest) = cx.images.read_manifest(&digest).map_err(image_error)?;
        let config = cx
            .store
            .read_blob(&manifest.config.digest)
            .map_err(|e| image_error(e.into()))?;
        let diff_ids = ConfigSummary::parse(&config)
            .map_err(|e| {
                invalid(
                    cx,
                    &self.reference,
                    &format!("its config does not parse: {e}"),
                )
            })?
            .diff_ids()
            .map_err(|e| invalid(cx, &self.reference, &format!("its config lists {}", e.0)))?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(invalid(
                cx,
                &self.reference,
                &format!(
                    "its manifest has {} layers but its config {} diff ids",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (blob, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if cx.cancel.is_cancelled() {
                return Err(BuildError::Cancelled);
            }
            layers.push(layer(cx, &self.reference, blob.digest, diff_id, blob)?);
        }
        Ok(State::Layers(LayerChain::from_layers(layers)))
    }
}

fn layer(
    cx: &OpContext<'_>,
    reference: &str,
    digest: Digest,
    diff_id: Digest,
    blob: &cache::images::BlobRef,
) -> Result<ChainLayer, BuildError> {
    let snapshot_error = |source| {
        cx.step_error(StepError::Snapshot {
            reference: reference.to_owned(),
            source,
        })
    };
    let layer_ref = LayerRef { digest, diff_id };
    let snapshot = cx.snapshots.ensure(&layer_ref).map_err(snapshot_error)?;
    cx.hold(cx.snapshots.hold(&diff_id).map_err(snapshot_error)?);
    Ok(ChainLayer {
        descriptor: LayerDescriptor {
            media_type: blob.media_type.clone(),
            digest,
            size: blob.size,
            diff_id,
        },
        snapshot,
    })
}

fn invalid(cx: &OpContext<'_>, reference: &str, why: &str) -> BuildError {
    cx.step_error(StepError::Invalid(format!(
        "image {reference} is invalid: {why}"
    )))
}
