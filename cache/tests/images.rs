//! Image store: names, lookups, tags and removal on the layout's index.json.

use std::collections::HashSet;
use std::io::Write;

use cache::Digest;
use cache::images::{self, BlobRef, ImageError, ImageName, ImageStore, MEDIA_TYPE_OCI_CONFIG};
use cache::store::Store;

/// A one-file uncompressed layer tar.
fn layer_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, content).unwrap();
    b.into_inner().unwrap()
}

/// Puts an image with one layer holding `seed` and returns its manifest digest.
fn put_image(images: &ImageStore, seed: &str, created: &str, names: &[&str]) -> Digest {
    let store = images.store();
    let tar = layer_tar("file", seed.as_bytes());
    let layer_digest = store.put_blob(&tar).unwrap();
    let config = format!(
        r#"{{"architecture":"amd64","created":"{created}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}},"config":{{"Env":["SEED={seed}"]}}}}"#
    );
    let config_ref = BlobRef {
        media_type: MEDIA_TYPE_OCI_CONFIG.into(),
        digest: Digest::of(config.as_bytes()),
        size: config.len() as u64,
    };
    let layer = BlobRef {
        media_type: cache::compression::MEDIA_TYPE_TAR.into(),
        digest: layer_digest,
        size: tar.len() as u64,
    };
    let manifest = images::oci_manifest(&config_ref, &[layer]).unwrap();
    let names: Vec<ImageName> = names.iter().map(|n| n.parse().unwrap()).collect();
    images.put(&manifest, config.as_bytes(), &names).unwrap()
}

fn setup() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root")).unwrap();
    (dir, ImageStore::new(store))
}

fn index_json(images: &ImageStore) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(images.store().root().join("index.json")).unwrap())
        .unwrap()
}

#[test]
fn put_then_resolve_by_every_form_of_reference() {
    let (_d, images) = setup();
    let m = put_image(&images, "one", "2024-01-02T03:04:05Z", &["app:1"]);
    let image = images.resolve("app:1").unwrap();
    assert_eq!(image.manifest_digest, m);
    assert_eq!(image.names, vec!["app:1".parse::<ImageName>().unwrap()]);
    let id = image.id();
    for reference in [
        "app:1".to_string(),
        "docker.io/library/app:1".to_string(),
        "index.docker.io/library/app:1".to_string(),
        m.to_string(),
        id.to_string(),
        id.hex()[..12].to_string(),
        format!("sha256:{}", &id.hex()[..8]),
        format!("app@{m}"),
        format!("docker.io/library/app@{m}"),
    ] {
        assert_eq!(
            images.resolve(&reference).unwrap().manifest_digest,
            m,
            "{reference}"
        );
    }
    // The stored manifest and config are byte for byte what was put.
    assert_eq!(Digest::of(&image.manifest), m);
    assert_eq!(Digest::of(&image.config), id);
}

#[test]
fn unknown_names_say_which_image_is_missing() {
    let (_d, images) = setup();
    put_image(&images, "one", "2024-01-02T03:04:05Z", &["app:1"]);
    let err = images.resolve("app").unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)));
    assert_eq!(err.to_string(), "no such image: app:latest");
    assert_eq!(
        images
            .resolve("localhost:5000/x:1")
            .unwrap_err()
            .to_string(),
        "no such image: localhost:5000/x:1"
    );
    let missing = format!("sha256:{}", "a".repeat(64));
    assert_eq!(
        images.resolve(&missing).unwrap_err().to_string(),
        format!("no such image: {missing}")
    );
}

#[test]
fn index_json_holds_full_names_canonically() {
    let (_d, images) = setup();
    let m = put_image(
        &images,
        "one",
        "2024-01-02T03:04:05Z",
        &["app", "localhost:5000/x:1"],
    );
    let raw = std::fs::read_to_string(images.store().root().join("index.json")).unwrap();
    assert!(
        !raw.contains(' ') && !raw.contains('\n'),
        "not canonical: {raw}"
    );
    let index = index_json(&images);
    assert_eq!(index["schemaVersion"], 2);
    let entries = index["manifests"].as_array().unwrap();
    let names: Vec<&str> = entries
        .iter()
        .map(|e| {
            e["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names, ["app", "localhost:5000/x:1"]);
    let full: Vec<&str> = entries
        .iter()
        .map(|e| {
            e["annotations"]["io.containerd.image.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(full, ["docker.io/library/app:latest", "localhost:5000/x:1"]);
    for e in entries {
        assert_eq!(e["digest"], m.to_string());
        assert_eq!(e["mediaType"], images::MEDIA_TYPE_OCI_MANIFEST);
        assert_eq!(
            e["size"].as_u64().unwrap(),
            images.store().blob_size(&m).unwrap()
        );
    }
    // The same document parses as an OCI index.
    let parsed: oci_spec::image::ImageIndex = serde_json::from_str(&raw).unwrap();
    assert_eq!(parsed.manifests().len(), 2);
}

#[test]
fn list_reports_name_id_size_and_created() {
    let (_d, images) = setup();
    let m1 = put_image(&images, "one", "2024-01-02T03:04:05Z", &["app:1"]);
    let m2 = put_image(&images, "two-two", "2023-05-06T07:08:09.5+02:00", &[]);
    let rows = images.list().unwrap();
    assert_eq!(rows.len(), 2);
    let named = rows.iter().find(|r| r.manifest_digest == m1).unwrap();
    assert_eq!(named.name.as_ref().unwrap().familiar(), "app:1");
    let image = images.resolve("app:1").unwrap();
    assert_eq!(named.id, image.id());
    assert_eq!(named.size, image.layers()[0].size);
    assert_eq!(named.created.as_deref(), Some("2024-01-02T03:04:05Z"));
    let unnamed = rows.iter().find(|r| r.manifest_digest == m2).unwrap();
    assert!(unnamed.name.is_none());
    assert_eq!(
        images::parse_rfc3339(unnamed.created.as_deref().unwrap()),
        Some(1683349689)
    );
}

#[test]
fn tag_adds_and_moves_names() {
    let (_d, images) = setup();
    let m1 = put_image(&images, "one", "2024-01-02T03:04:05Z", &["app:1"]);
    let m2 = put_image(&images, "two", "2024-01-02T03:04:05Z", &["other:1"]);
    let tagged = images.tag("app:1", &"app:latest".parse().unwrap()).unwrap();
    assert_eq!(tagged.manifest_digest, m1);
    assert_eq!(tagged.names.len(), 2);
    // Tagging another image with an existing name moves the name.
    images
        .tag("other:1", &"app:latest".parse().unwrap())
        .unwrap();
    assert_eq!(images.resolve("app").unwrap().manifest_digest, m2);
    assert_eq!(images.resolve("app:1").unwrap().manifest_digest, m1);
    assert_eq!(
        index_json(&images)["manifests"].as_array().unwrap().len(),
        3
    );
}

#[test]
fn tagging_an_unnamed_image_replaces_its_nameless_entry() {
    let (_d, images) = setup();
    let m = put_image(&images, "one", "2024-01-02T03:04:05Z", &[]);
    assert_eq!(
        index_json(&images)["manifests"].as_array().unwrap().len(),
        1
    );
    images
        .tag(&m.to_string(), &"app:1".parse().unwrap())
        .unwrap();
    let index = index_json(&images);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"],
        "app:1"
    );
    assert_eq!(
        entries[0]["annotations"]["io.containerd.image.name"],
        "docker.io/library/app:1"
    );
}

#[test]
fn rmi_removes_index_entries_but_keeps_blobs() {
    let (_d, images) = setup();
    let m = put_image(&images, "one", "2024-01-02T03:04:05Z", &["app:1", "app:2"]);
    let image = images.resolve("app:1").unwrap();
    let removal = images.remove("app:1", false).unwrap();
    assert_eq!(
        removal.untagged,
        vec!["app:1".parse::<ImageName>().unwrap()]
    );
    assert!(removal.deleted.is_empty(), "app:2 still names it");
    assert!(matches!(
        images.resolve("app:1"),
        Err(ImageError::NotFound(_))
    ));
    assert_eq!(images.resolve("app:2").unwrap().manifest_digest, m);
    let removal = images.remove("app:2", false).unwrap();
    assert_eq!(removal.deleted, vec![image.id()]);
    assert!(images.list().unwrap().is_empty());
    for blob in [m, image.id(), image.layers()[0].digest] {
        assert!(images.store().has_blob(&blob), "{blob} was removed");
    }
}

#[test]
fn rmi_by_id_needs_force_when_several_names_point_at_it() {
    let (_d, images) = setup();
    put_image(&images, "one", "2024-01-02T03:04:05Z", &["app:1", "app:2"]);
    let id = images.resolve("app:1").unwrap().id();
    let err = images.remove(&id.hex()[..12], false).unwrap_err();
    assert!(
        matches!(err, ImageError::MultipleNames { count: 2, .. }),
        "{err}"
    );
    assert_eq!(
        images.list().unwrap().len(),
        2,
        "a refused rmi changes nothing"
    );
    let removal = images.remove(&id.hex()[..12], true).unwrap();
    assert_eq!(removal.untagged.len(), 2);
    assert_eq!(removal.deleted, vec![id]);
    assert!(images.list().unwrap().is_empty());
}

#[test]
fn ambiguous_id_prefixes_are_refused() {
    let (_d, images) = setup();
    // Add images until two ids share their first hex digit (at most 17).
    let mut seen: Vec<Digest> = Vec::new();
    let (a, b) = loop {
        let m = put_image(
            &images,
            &format!("seed{}", seen.len()),
            "2024-01-02T03:04:05Z",
            &[],
        );
        let id = images.resolve(&m.to_string()).unwrap().id();
        if let Some(other) = seen.iter().find(|o| o.hex()[..1] == id.hex()[..1]) {
            break (*other, id);
        }
        seen.push(id);
    };
    let common = a
        .hex()
        .chars()
        .zip(b.hex().chars())
        .take_while(|(x, y)| x == y)
        .count();
    let err = images.resolve(&a.hex()[..common]).unwrap_err();
    assert!(matches!(err, ImageError::Ambiguous(_)), "{err}");
    assert_eq!(images.resolve(&a.hex()[..common + 1]).unwrap().id(), a);
}

#[test]
fn an_image_with_a_missing_blob_is_never_named() {
    let (_d, images) = setup();
    let store = images.store();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let absent = BlobRef {
        media_type: cache::compression::MEDIA_TYPE_TAR.into(),
        digest: Digest::of(b"absent layer"),
        size: 12,
    };
    let config_ref = BlobRef {
        media_type: MEDIA_TYPE_OCI_CONFIG.into(),
        digest: Digest::of(config),
        size: config.len() as u64,
    };
    let manifest = images::oci_manifest(&config_ref, std::slice::from_ref(&absent)).unwrap();
    let err = images
        .put(&manifest, config, &["app:1".parse().unwrap()])
        .unwrap_err();
    match err {
        ImageError::MissingBlob { digest, image } => {
            assert_eq!(digest, absent.digest);
            assert_eq!(image, "app:1");
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(
        index_json(&images)["manifests"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // With the layer in, the same manifest is accepted.
    let mut w = store.blob_writer().unwrap();
    w.write_all(b"absent layer").unwrap();
    w.commit(Some(&absent.digest)).unwrap();
    images
        .put(&manifest, config, &["app:1".parse().unwrap()])
        .unwrap();
    assert_eq!(images.resolve("app:1").unwrap().layers(), &[absent]);
}

#[test]
fn concurrent_tagging_loses_no_name() {
    let (_d, images) = setup();
    put_image(&images, "one", "2024-01-02T03:04:05Z", &["app:base"]);
    std::thread::scope(|s| {
        for t in 0..8 {
            let images = images.clone();
            s.spawn(move || {
                // A separate ImageStore per thread, as separate processes would have.
                let own = ImageStore::new(Store::open(images.store().root()).unwrap());
                for i in 0..10 {
                    own.tag("app:base", &format!("app:t{t}-{i}").parse().unwrap())
                        .unwrap();
                }
            });
        }
    });
    let names: HashSet<String> = images
        .list()
        .unwrap()
        .into_iter()
        .filter_map(|r| r.name.map(|n| n.familiar()))
        .collect();
    assert_eq!(names.len(), 81);
    assert!(names.contains("app:t7-9"));
}
