//! Filesystem states of a build: chains of layers with their snapshots, the
//! scratch space a step writes its new layer in, and mounted views of a
//! chain for the solver's own file operations (COPY, WORKDIR).
//!
//! A state is never flattened: a step sees the chain through overlayfs
//! (lowerdirs = the snapshots), writes into a fresh upperdir, and that
//! upperdir becomes the next layer's blob and, renamed, its snapshot.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cache::Digest;
use cache::layer::create::{CreateError, CreateOptions, LayerDescriptor, create_layer};
use cache::snapshot::{SnapshotError, Snapshots};
use cache::store::{Store, StoreError, StoreLock};

use crate::sandbox::{DetachedMount, SandboxError, overlay_view};

/// One layer of a state: its blob as an image manifest lists it, and the
/// unpacked tree an overlay uses as a lowerdir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLayer {
    pub descriptor: LayerDescriptor,
    pub snapshot: PathBuf,
}

/// A filesystem state: layers, base first (the order of an image manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerChain {
    layers: Vec<ChainLayer>,
}

impl LayerChain {
    /// The empty filesystem (`FROM scratch`).
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn from_layers(layers: Vec<ChainLayer>) -> Self {
        Self { layers }
    }

    /// This state with `layer` on top.
    pub fn with(&self, layer: ChainLayer) -> Self {
        let mut layers = Vec::with_capacity(self.layers.len() + 1);
        layers.extend_from_slice(&self.layers);
        layers.push(layer);
        Self { layers }
    }

    pub fn layers(&self) -> &[ChainLayer] {
        &self.layers
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Snapshot directories, base first, as [`crate::sandbox::RootFs`] wants
    /// them, each once.
    ///
    /// Identical layers (two empty RUN steps, say) share one snapshot, and
    /// overlayfs refuses a directory as two of its layers (ELOOP). Keeping
    /// only the top-most occurrence shows the same tree: every path and
    /// whiteout of that layer is decided at the top-most copy already.
    pub fn lowerdirs(&self) -> Vec<PathBuf> {
        let mut seen = std::collections::HashSet::new();
        let mut top_first: Vec<PathBuf> = self
            .layers
            .iter()
            .rev()
            .filter(|l| seen.insert(&l.snapshot))
            .map(|l| l.snapshot.clone())
            .collect();
        top_first.reverse();
        top_first
    }

    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.descriptor.diff_id).collect()
    }
}

/// A directory tree to read or write files in: a detached mount, or a plain
/// directory where no mount is needed (an empty state, a `--link` target,
/// the build context).
#[derive(Debug)]
pub enum View {
    Mounted(DetachedMount),
    Dir(PathBuf),
}

impl View {
    /// A path that reaches the view's root while `self` lives.
    pub fn path(&self) -> PathBuf {
        match self {
            View::Mounted(mount) => mount.path(),
            View::Dir(dir) => dir.clone(),
        }
    }

    /// An open handle on the root, for lookups that must stay inside it.
    pub fn open_root(&self) -> io::Result<File> {
        File::open(self.path())
    }
}

/// What can go wrong while preparing or committing a step's layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("cannot prepare the step's scratch space in {}", path.display())]
    Scratch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot mount the step's filesystem")]
    Mount(#[source] SandboxError),
    #[error("cannot create the layer")]
    Create(#[source] CreateError),
    #[error("cannot store the layer's snapshot")]
    Snapshot(#[source] SnapshotError),
}

/// A step's scratch space in the store's `tmp/` (the filesystem of
/// `snapshots/`, so that the upperdir can be renamed into place): `upper`
/// receives the step's changes, `work` is overlay's workdir, `empty` stands
/// for an empty state. Everything left is removed when it is dropped, also
/// when the step fails or is cancelled.
#[derive(Debug)]
pub struct Workspace {
    dir: tempfile::TempDir,
    upper: PathBuf,
    work: PathBuf,
}

impl Workspace {
    /// A fresh scratch space for a step on top of `parent`.
    ///
    /// The upperdir's root lends its mode and owner to the merged root, so
    /// it copies them from the top-most layer that has the root (0755 and
    /// root's when none does): a 0700 temp dir would lock other users out of
    /// `/`. The layer tar never contains the root itself.
    pub fn new(store: &Store, parent: &LayerChain) -> Result<Self, LayerError> {
        let dir = store.temp_dir("step-")?;
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        let scratch = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LayerError::Scratch { path, source }
        };
        fs::create_dir(&upper).map_err(scratch(&upper))?;
        fs::create_dir(&work).map_err(scratch(&work))?;
        let (mode, uid, gid) = parent
            .layers()
            .last()
            .and_then(|top| fs::metadata(&top.snapshot).ok())
            .map_or((0o755, 0, 0), |m| (m.mode() & 0o7777, m.uid(), m.gid()));
        std::os::unix::fs::chown(&upper, Some(uid), Some(gid)).map_err(scratch(&upper))?;
        fs::set_permissions(&upper, fs::Permissions::from_mode(mode)).map_err(scratch(&upper))?;
        Ok(Self { dir, upper, work })
    }

    pub fn upper(&self) -> &Path {
        &self.upper
    }

    pub fn work(&self) -> &Path {
        &self.work
    }

    /// An empty directory (created on first use) for views of an empty
    /// state.
    pub fn empty_dir(&self) -> Result<PathBuf, LayerError> {
        let empty = self.dir.path().join("empty");
        match fs::create_dir(&empty) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(LayerError::Scratch {
                    path: empty,
                    source,
                });
            }
        }
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o755)).map_err(|source| {
            LayerError::Scratch {
                path: empty.clone(),
                source,
            }
        })?;
        Ok(empty)
    }

    /// A writable view of `parent` whose changes land in the upperdir. An
    /// empty parent needs no overlay: the upperdir itself is the view.
    pub fn writable_view(&self, parent: &LayerChain) -> Result<View, LayerError> {
        if parent.is_empty() {
            return Ok(View::Dir(self.upper.clone()));
        }
        overlay_view(&parent.lowerdirs(), Some((&self.upper, &self.work)))
            .map(View::Mounted)
            .map_err(LayerError::Mount)
    }

    /// A read-only view of `chain` (any state, not only the parent).
    pub fn read_only_view(&self, chain: &LayerChain) -> Result<View, LayerError> {
        read_only_view(chain, || self.empty_dir())
    }

    /// Turns the upperdir into a layer: the blob goes into the content
    /// store, then the directory itself is renamed into `snapshots/`
    /// (nothing is copied). Every view of it must have been dropped. When
    /// the same layer already has a snapshot, that one is used and the
    /// upperdir is discarded with the workspace.
    pub fn commit(
        self,
        store: &Store,
        snapshots: &Snapshots,
        opts: &CreateOptions,
    ) -> Result<(ChainLayer, StoreLock), LayerError> {
        let descriptor = create_layer(store, &self.upper, opts).map_err(LayerError::Create)?;
        // The snapshot keeps the upperdir's own mtimes, which the tar may
        // have clamped to SOURCE_DATE_EPOCH: overlay only needs the tree,
        // and the digests come from the blob.
        let diff_id = &descriptor.diff_id;
        // Adopting takes the snapshot's exclusive lock, which would wait
        // forever for the shared one this build holds when an earlier step
        // made the same layer (two empty RUN steps, say). A snapshot that
        // exists is immutable and, once held, cannot go away.
        if !snapshots.exists(diff_id) {
            snapshots
                .adopt(&self.upper, diff_id)
                .map_err(LayerError::Snapshot)?;
        }
        let mut hold = snapshots.hold(diff_id).map_err(LayerError::Snapshot)?;
        if !snapshots.exists(diff_id) {
            // Removed between the check and the hold: nobody else holds it
            // now, so adopting cannot wait on this build.
            drop(hold);
            snapshots
                .adopt(&self.upper, diff_id)
                .map_err(LayerError::Snapshot)?;
            hold = snapshots.hold(diff_id).map_err(LayerError::Snapshot)?;
        }
        let snapshot = snapshots.path(&descriptor.diff_id);
        Ok((
            ChainLayer {
                descriptor,
                snapshot,
            },
            hold,
        ))
    }
}

/// A read-only view of `chain`; `empty` supplies a directory for an empty
/// chain.
pub fn read_only_view(
    chain: &LayerChain,
    empty: impl FnOnce() -> Result<PathBuf, LayerError>,
) -> Result<View, LayerError> {
    if chain.is_empty() {
        return empty().map(View::Dir);
    }
    overlay_view(&chain.lowerdirs(), None)
        .map(View::Mounted)
        .map_err(LayerError::Mount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> ChainLayer {
        let digest = Digest::from_bytes([n; 32]);
        ChainLayer {
            descriptor: LayerDescriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest,
                size: 1,
                diff_id: digest,
            },
            snapshot: PathBuf::from(format!("/s/{n}")),
        }
    }

    #[test]
    fn lowerdirs_keep_the_top_most_copy_of_a_layer() {
        let chain = LayerChain::from_layers(vec![layer(0), layer(1), layer(2), layer(1), layer(3)]);
        let dirs: Vec<String> = chain
            .lowerdirs()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(dirs, ["/s/0", "/s/2", "/s/1", "/s/3"]);
        // The manifest still lists every layer.
        assert_eq!(chain.diff_ids().len(), 5);
        assert_eq!(chain.with(layer(0)).lowerdirs().len(), 4);
    }
}
