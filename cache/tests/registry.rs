//! The registry client's library API against Debian's `docker-registry` on
//! 127.0.0.1: several images pushed together share blobs (a cross-repository
//! mount instead of a second upload), pull policies, and bounded retries.
//!
//! Needs /usr/bin/docker-registry; without it the tests print why and
//! return, under CI they fail.

#[path = "../../tests/registry_support/mod.rs"]
mod registry_support;

use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cache::Digest;
use cache::compression::{Compression, CompressionOptions};
use cache::images::{BlobRef, Image, ImageStore, MEDIA_TYPE_OCI_CONFIG, oci_manifest};
use cache::layer::create::{CreateOptions, create_layer};
use cache::registry::{self, BlobOutcome, Client, PullPolicy, RegistryError, RegistryOptions};
use cache::store::Store;
use registry_support::{Mode, Proxy, Registry, registry_available};

fn store(dir: &Path) -> ImageStore {
    ImageStore::new(Store::open(dir).unwrap())
}

/// An image of one layer per tree (each a map of file name to contents).
fn image(images: &ImageStore, name: &str, trees: &[&[(&str, &str)]]) -> Image {
    let store = images.store();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for files in trees {
        let dir = tempfile::tempdir().unwrap();
        for (path, contents) in *files {
            fs::write(dir.path().join(path), contents).unwrap();
        }
        let layer = create_layer(
            store,
            dir.path(),
            &CreateOptions {
                compression: CompressionOptions::new(Compression::Gzip),
                source_date_epoch: Some(0),
            },
        )
        .unwrap();
        diff_ids.push(layer.diff_id.to_string());
        layers.push(BlobRef {
            media_type: layer.media_type.clone(),
            digest: layer.digest,
            size: layer.size,
        });
    }
    let config = cache::json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"name": name}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_ref = BlobRef {
        media_type: MEDIA_TYPE_OCI_CONFIG.into(),
        digest: Digest::of(&config),
        size: config.len() as u64,
    };
    let manifest = oci_manifest(&config_ref, &layers).unwrap();
    let digest = images
        .put(&manifest, &config, &[name.parse().unwrap()])
        .unwrap();
    images.resolve(&digest.to_string()).unwrap()
}

fn client() -> Client {
    Client::new(RegistryOptions {
        backoff: Duration::from_millis(10),
        ..RegistryOptions::default()
    })
}

#[test]
fn registry_images_pushed_together_share_blobs_and_pull_policies_hold() {
    if !registry_available() {
        return;
    }
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let images = store(dir.path());
    let shared: &[(&str, &str)] = &[("shared.txt", "in both images")];
    let a = image(&images, "a:1", &[shared]);
    let b = image(&images, "b:1", &[shared, &[("b.txt", "only in b")]]);
    let ref_a = registry::parse_reference(&format!("{}/one/a:1", reg.host())).unwrap();
    let ref_b = registry::parse_reference(&format!("{}/two/b:1", reg.host())).unwrap();
    let c = client();
    let pushed = registry::push_many(
        &c,
        &images,
        &[(a.clone(), ref_a.clone()), (b.clone(), ref_b.clone())],
    )
    .unwrap();
    assert_eq!(pushed[0].digest, a.manifest_digest);
    assert_eq!(pushed[1].digest, b.manifest_digest);
    assert!(
        pushed[0]
            .blobs
            .iter()
            .all(|(_, o)| *o == BlobOutcome::Uploaded)
    );
    // b's first layer is a's: mounted from a's repository, not uploaded.
    let shared_layer = &b.layers()[0];
    let outcome = pushed[1]
        .blobs
        .iter()
        .find(|(blob, _)| blob.digest == shared_layer.digest)
        .map(|(_, o)| o.clone());
    assert_eq!(outcome, Some(BlobOutcome::Mounted("one/a".into())));
    assert_eq!(
        pushed[1].uploaded_bytes(),
        b.parsed.config.size + b.layers()[1].size
    );

    // Pull policies in an empty store.
    let dir2 = tempfile::tempdir().unwrap();
    let images2 = store(dir2.path());
    let err = registry::ensure_image(&c, &images2, &ref_b, PullPolicy::Never).unwrap_err();
    assert!(matches!(err, RegistryError::Image(_)), "{err}");
    let first = registry::ensure_image(&c, &images2, &ref_b, PullPolicy::Missing).unwrap();
    assert!(first.from_network);
    assert_eq!(first.fetched_blobs, 3);
    assert_eq!(first.image.manifest_digest, b.manifest_digest);
    let again = registry::ensure_image(&c, &images2, &ref_b, PullPolicy::Missing).unwrap();
    assert!(!again.from_network);
    let forced = registry::ensure_image(&c, &images2, &ref_b, PullPolicy::Always).unwrap();
    assert!(forced.from_network);
    assert_eq!(forced.fetched_blobs, 0, "present blobs are fetched again");

    // A missing tag names the repository and the registry.
    let missing = registry::parse_reference(&format!("{}/one/a:nope", reg.host())).unwrap();
    let err = registry::pull(&c, &images2, &missing).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("one/a:nope") && text.contains(&reg.host()),
        "{text}"
    );
}

#[test]
fn registry_retries_are_bounded() {
    if !registry_available() {
        return;
    }
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let images = store(dir.path());
    let a = image(&images, "a:1", &[&[("f", "x")]]);
    let c = client();
    let reference = registry::parse_reference(&format!("{}/r/a:1", reg.host())).unwrap();
    registry::push(&c, &images, &a, &reference).unwrap();
    let proxy = Proxy::start(reg.port, Mode::FailBlobs(1000));
    let through = registry::parse_reference(&format!("{}/r/a:1", proxy.host())).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let images2 = store(dir2.path());
    let c = Client::new(RegistryOptions {
        backoff: Duration::from_millis(10),
        jobs: 1,
        ..RegistryOptions::default()
    });
    let err = registry::pull(&c, &images2, &through).unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    // The first blob was tried 1 + retries times, then the pull stopped.
    let retries = c.options().retries as usize;
    assert_eq!(proxy.failures.load(Ordering::SeqCst), retries + 1);
    assert_eq!(
        fs::read_dir(dir2.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}
