//! Import and export of OCI layout tarballs and docker archives, recompression, flattening exporters.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use cache::Digest;
use cache::archive::export::Destination;
use cache::archive::{
    ArchiveError, DockerExporter, ExportImage, ExportKind, ExportOptions, ExportSpec, Exporter,
    ImportOptions, LoadedImage, LocalExporter, OciExporter, TarExporter, import_archive,
};
use cache::compression::{self, Compression, CompressionOptions};
use cache::images::{self, BlobRef, ImageName, ImageStore, MEDIA_TYPE_OCI_CONFIG};
use cache::store::Store;

// ---------------------------------------------------------------- helpers

/// A layer tar from (path, content) pairs; a `None` content is a directory.
fn layer_tar(files: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match content {
            Some(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, path, *c).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn compress(data: &[u8], kind: Compression) -> Vec<u8> {
    let mut c = compression::compressor(Vec::new(), &CompressionOptions::new(kind)).unwrap();
    c.write_all(data).unwrap();
    c.finish().unwrap()
}

fn decompress(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    compression::decompressor(data)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Pseudo-random bytes (xorshift), incompressible enough to make big blobs.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn config_for(diff_ids: &[Digest], seed: &str) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        r#"{{"architecture":"amd64","os":"linux","created":"2024-03-04T05:06:07Z","config":{{"Env":["SEED={seed}"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        ids.join(",")
    )
    .into_bytes()
}

/// Stores an image whose layers are `tars`, each compressed as given.
fn put_image(
    images: &ImageStore,
    tars: &[(Vec<u8>, Compression)],
    seed: &str,
    names: &[&str],
) -> Digest {
    let store = images.store();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, kind) in tars {
        let blob = compress(tar, *kind);
        let digest = store.put_blob(&blob).unwrap();
        layers.push(BlobRef {
            media_type: kind.media_type().into(),
            digest,
            size: blob.len() as u64,
        });
        diff_ids.push(Digest::of(tar));
    }
    let config = config_for(&diff_ids, seed);
    let config_ref = BlobRef {
        media_type: MEDIA_TYPE_OCI_CONFIG.into(),
        digest: Digest::of(&config),
        size: config.len() as u64,
    };
    let manifest = images::oci_manifest(&config_ref, &layers).unwrap();
    let names: Vec<ImageName> = names.iter().map(|n| n.parse().unwrap()).collect();
    images.put(&manifest, &config, &names).unwrap()
}

fn new_store(dir: &Path, name: &str) -> ImageStore {
    ImageStore::new(Store::open(dir.join(name)).unwrap())
}

/// Regular files of a tarball by path; fails on a path that appears twice.
fn tar_files(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(data);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let mut content = Vec::new();
        e.read_to_end(&mut content).unwrap();
        assert!(
            out.insert(path.clone(), content).is_none(),
            "{path} written twice"
        );
    }
    out
}

/// A tarball from (path, content) pairs in the given order, plus symlinks.
fn make_tar(files: &[(&str, &[u8])], symlinks: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(content.len() as u64);
        h.set_mode(0o444);
        b.append_data(&mut h, path, *content).unwrap();
    }
    for (path, target) in symlinks {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, path, target).unwrap();
    }
    b.into_inner().unwrap()
}

fn export_to_vec(exporter: &dyn Exporter, images: &ImageStore, refs: &[&str]) -> Vec<u8> {
    let items: Vec<ExportImage> = refs
        .iter()
        .map(|r| ExportImage::lookup(images, r).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.tar");
    exporter
        .export(images, &items, Destination::Path(path.clone()))
        .unwrap();
    std::fs::read(path).unwrap()
}

fn import(images: &ImageStore, data: &[u8]) -> Result<Vec<LoadedImage>, ArchiveError> {
    import_archive(images, data, &ImportOptions::default())
}

fn index_entries(images: &ImageStore) -> usize {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(images.store().root().join("index.json")).unwrap())
            .unwrap();
    v["manifests"].as_array().unwrap().len()
}

fn every_blob_matches_its_name(store: &Store) {
    for e in std::fs::read_dir(store.root().join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = format!("sha256:{}", e.file_name().to_string_lossy());
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(Digest::of(&data).to_string(), name);
    }
}

// ---------------------------------------------------------------- export + import

#[test]
fn docker_export_is_an_oci_layout_and_a_docker_archive_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let base = layer_tar(&[("etc", None), ("etc/hostname", Some(b"box\n"))]);
    let top = layer_tar(&[("data", Some(&noise(300_000, 7)))]);
    let m1 = put_image(
        &a,
        &[(base.clone(), Compression::Gzip), (top, Compression::None)],
        "1",
        &["app:1"],
    );
    let m2 = put_image(
        &a,
        &[(base, Compression::Gzip)],
        "2",
        &["localhost:5000/x:2"],
    );
    let data = export_to_vec(
        &DockerExporter::default(),
        &a,
        &["app:1", "localhost:5000/x:2"],
    );
    let files = tar_files(&data);

    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    // The shared base layer is written once (tar_files fails on duplicates).
    let blobs = files
        .keys()
        .filter(|k| k.starts_with("blobs/sha256/"))
        .count();
    assert_eq!(
        blobs,
        2 + 2 + 2,
        "two manifests, two configs, two distinct layers"
    );
    for (path, content) in &files {
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            assert_eq!(Digest::of(content).hex(), hex);
        }
    }
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["digest"], m1.to_string());
    assert_eq!(
        entries[0]["annotations"]["io.containerd.image.name"],
        "docker.io/library/app:1"
    );
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );
    assert_eq!(
        entries[1]["annotations"]["io.containerd.image.name"],
        "localhost:5000/x:2"
    );

    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let manifest = manifest.as_array().unwrap();
    assert_eq!(manifest.len(), 2);
    let image = a.resolve("app:1").unwrap();
    assert_eq!(
        manifest[0]["Config"],
        format!("blobs/sha256/{}", image.id().hex())
    );
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["app:1"]));
    assert_eq!(
        manifest[1]["RepoTags"],
        serde_json::json!(["localhost:5000/x:2"])
    );
    let layers: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = image
        .layers()
        .iter()
        .map(|l| format!("blobs/sha256/{}", l.digest.hex()))
        .collect();
    assert_eq!(layers, expected);

    let b = new_store(dir.path(), "b");
    let loaded = import(&b, &data).unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(
        loaded[0].manifest_digest, m1,
        "manifest digest survives the round trip"
    );
    assert_eq!(loaded[0].names, vec!["app:1".parse::<ImageName>().unwrap()]);
    assert_eq!(loaded[0].id, image.id());
    assert_eq!(loaded[1].manifest_digest, m2);
    let again = b.resolve("app:1").unwrap();
    assert_eq!(again.manifest, image.manifest);
    assert_eq!(again.config, image.config);
    every_blob_matches_its_name(b.store());

    // Exporting the same images again gives the same bytes.
    assert_eq!(
        export_to_vec(
            &DockerExporter::default(),
            &a,
            &["app:1", "localhost:5000/x:2"]
        ),
        data
    );
}

#[test]
fn oci_export_has_no_docker_manifest_and_unnamed_images_load_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let m = put_image(
        &a,
        &[(layer_tar(&[("f", Some(b"x"))]), Compression::Zstd)],
        "1",
        &["app:1"],
    );
    let id = a.resolve("app:1").unwrap().id();
    let data = export_to_vec(&OciExporter::default(), &a, &[&id.hex()[..12]]);
    let files = tar_files(&data);
    assert!(!files.contains_key("manifest.json"));
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    assert!(
        index["manifests"][0].get("annotations").is_none(),
        "saved by id: no name"
    );

    let b = new_store(dir.path(), "b");
    let loaded = import(&b, &data).unwrap();
    assert_eq!(
        loaded,
        vec![LoadedImage {
            names: vec![],
            manifest_digest: m,
            id
        }]
    );
    let rows = b.list().unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].name.is_none());
    assert_eq!(b.resolve(&id.to_string()).unwrap().manifest_digest, m);
}

#[test]
fn bare_ref_name_tags_do_not_name_images_but_full_references_do() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let m = put_image(
        &a,
        &[(layer_tar(&[("f", Some(b"x"))]), Compression::Gzip)],
        "1",
        &["app:1"],
    );
    let files = tar_files(&export_to_vec(&OciExporter::default(), &a, &["app:1"]));
    for (ref_name, expected) in [
        ("t", None),
        ("app:2", Some("docker.io/library/app:2")),
        ("localhost:5000/y", Some("localhost:5000/y:latest")),
    ] {
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{ref_name}"}}}}]}}"#,
            files[&format!("blobs/sha256/{}", m.hex())].len()
        );
        let mut parts: Vec<(&str, &[u8])> = files
            .iter()
            .filter(|(k, _)| k.starts_with("blobs/"))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        parts.push(("index.json", index.as_bytes()));
        let b = new_store(
            dir.path(),
            &format!("b-{ref_name}").replace(['/', ':'], "_"),
        );
        let loaded = import(&b, &make_tar(&parts, &[])).unwrap();
        let names: Vec<String> = loaded[0].names.iter().map(|n| n.full()).collect();
        assert_eq!(
            names,
            expected.into_iter().map(String::from).collect::<Vec<_>>(),
            "{ref_name}"
        );
    }
}

#[test]
fn gzip_compressed_archives_load_too() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let m = put_image(
        &a,
        &[(layer_tar(&[("f", Some(b"x"))]), Compression::Gzip)],
        "1",
        &["app:1"],
    );
    let data = export_to_vec(&DockerExporter::default(), &a, &["app:1"]);
    let b = new_store(dir.path(), "b");
    assert_eq!(
        import(&b, &compress(&data, Compression::Gzip)).unwrap()[0].manifest_digest,
        m
    );
}

// ---------------------------------------------------------------- docker archives

/// A docker archive the way `skopeo copy … docker-archive:` writes it:
/// `<diffid>.tar` layers, `<id>/layer.tar` symlinks, `<config>.json`, and
/// `manifest.json` last.
fn docker_archive(layers: &[Vec<u8>], tags: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of(&decompress(l))).collect();
    let config = config_for(&diff_ids, "docker");
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let layer_names: Vec<String> = layers
        .iter()
        .map(|l| format!("{}.tar", Digest::of(l).hex()))
        .collect();
    let link_names: Vec<String> = (0..layers.len())
        .map(|i| format!("{i:064x}/layer.tar"))
        .collect();
    let link_targets: Vec<String> = layer_names.iter().map(|n| format!("../{n}")).collect();
    let manifest =
        serde_json::json!([{ "Config": config_name, "RepoTags": tags, "Layers": link_names }])
            .to_string();
    let mut files: Vec<(&str, &[u8])> = layer_names
        .iter()
        .map(String::as_str)
        .zip(layers.iter().map(Vec::as_slice))
        .collect();
    files.push((&config_name, &config));
    let links: Vec<(&str, &str)> = link_names
        .iter()
        .map(String::as_str)
        .zip(link_targets.iter().map(String::as_str))
        .collect();
    let mut tar = make_tar(&files, &links);
    // manifest.json after the links, as the last file.
    let tail = make_tar(&[("manifest.json", manifest.as_bytes())], &[]);
    tar.truncate(tar.len() - 1024);
    tar.extend_from_slice(&tail);
    (tar, config)
}

#[test]
fn docker_archive_with_uncompressed_layers_becomes_an_oci_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    // One layer above the in-memory threshold, one below it.
    let big = layer_tar(&[("big", Some(&noise(3 << 20, 1)))]);
    let small = layer_tar(&[("small", Some(b"hello"))]);
    let (archive, config) = docker_archive(
        &[big.clone(), small.clone()],
        &["app:1", "docker.io/library/app:2"],
    );
    let loaded = import(&store, &archive).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        loaded[0].id,
        Digest::of(&config),
        "the config is kept byte for byte"
    );
    let names: Vec<String> = loaded[0].names.iter().map(|n| n.familiar()).collect();
    assert_eq!(names, ["app:1", "app:2"]);
    let image = store.resolve("app:2").unwrap();
    assert_eq!(image.config, config);
    assert_eq!(image.parsed.media_type, images::MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(image.parsed.config.media_type, MEDIA_TYPE_OCI_CONFIG);
    for (layer, tar) in image.layers().iter().zip([&big, &small]) {
        assert_eq!(layer.media_type, "application/vnd.oci.image.layer.v1.tar");
        assert_eq!(
            layer.digest,
            Digest::of(tar),
            "stored as is: digest = diffID"
        );
        assert_eq!(layer.size, tar.len() as u64);
        assert_eq!(store.store().read_blob(&layer.digest).unwrap(), *tar);
    }
    every_blob_matches_its_name(store.store());
    // Files that were never referenced (nothing here) and the temp files of
    // the streamed layers are gone from tmp/.
    assert_eq!(
        std::fs::read_dir(store.store().root().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn docker_archive_with_compressed_layers_keeps_their_compression() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let big = layer_tar(&[("big", Some(&noise(3 << 20, 2)))]);
    let small = layer_tar(&[("small", Some(b"hello"))]);
    let layers = vec![
        compress(&big, Compression::Gzip),
        compress(&small, Compression::Zstd),
        compress(&big, Compression::Zstd),
    ];
    let (archive, _) = docker_archive(&layers, &["app:1"]);
    import(&store, &archive).unwrap();
    let image = store.resolve("app:1").unwrap();
    let types: Vec<&str> = image
        .layers()
        .iter()
        .map(|l| l.media_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ]
    );
    for (layer, blob) in image.layers().iter().zip(&layers) {
        assert_eq!(layer.digest, Digest::of(blob));
    }
}

#[test]
fn docker_layer_that_does_not_match_its_diff_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for size in [100, 3 << 20] {
        let store = new_store(dir.path(), &format!("s{size}"));
        let good = layer_tar(&[("f", Some(&noise(size, 3)))]);
        let (mut archive, _) = docker_archive(std::slice::from_ref(&good), &["app:1"]);
        // Flip a byte of the file's content inside the archive.
        let at = archive
            .windows(16)
            .position(|w| w == &good[512..528])
            .unwrap()
            + 8;
        archive[at] ^= 0xff;
        let err = import(&store, &archive).unwrap_err();
        match &err {
            ArchiveError::DiffIdMismatch { path, expected, .. } => {
                assert_eq!(path, &format!("{:064x}/layer.tar", 0));
                assert_eq!(*expected, Digest::of(&good));
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(err.to_string().contains("layer.tar"), "{err}");
        assert_eq!(index_entries(&store), 0, "nothing named");
        let blobs: Vec<_> = std::fs::read_dir(store.store().root().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert!(blobs.is_empty(), "the bad layer was not stored");
    }
}

#[test]
fn docker_config_that_does_not_match_its_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path(), "s");
    let tar = layer_tar(&[("f", Some(b"x"))]);
    let (archive, config) = docker_archive(&[tar], &["app:1"]);
    let mut tampered = config.clone();
    let at = tampered.windows(6).position(|w| w == b"docker").unwrap();
    tampered[at] = b'D';
    let at = archive
        .windows(config.len())
        .position(|w| w == config.as_slice())
        .unwrap();
    let mut archive = archive;
    archive[at..at + config.len()].copy_from_slice(&tampered);
    let err = import(&store, &archive).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::BlobMismatch { path, .. } if path.ends_with(".json")),
        "{err}"
    );
    assert_eq!(index_entries(&store), 0);
}

// ---------------------------------------------------------------- tampering and truncation

#[test]
fn tampered_oci_blob_stores_nothing_under_its_name_and_names_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let payload = noise(2 << 20, 4);
    put_image(
        &a,
        &[(layer_tar(&[("f", Some(&payload))]), Compression::None)],
        "1",
        &["app:1"],
    );
    let layer = a.resolve("app:1").unwrap().layers()[0].clone();
    let mut data = export_to_vec(&DockerExporter::default(), &a, &["app:1"]);
    let at = data
        .windows(32)
        .position(|w| w == &payload[1000..1032])
        .unwrap();
    data[at] ^= 1;

    let b = new_store(dir.path(), "b");
    let err = import(&b, &data).unwrap_err();
    match &err {
        ArchiveError::BlobMismatch { path, expected, .. } => {
            assert_eq!(path, &format!("blobs/sha256/{}", layer.digest.hex()));
            assert_eq!(*expected, layer.digest);
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains(&layer.digest.hex()), "{err}");
    assert!(!b.store().has_blob(&layer.digest));
    every_blob_matches_its_name(b.store());
    assert_eq!(index_entries(&b), 0);
}

#[test]
fn truncated_archives_name_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    put_image(
        &a,
        &[(
            layer_tar(&[("f", Some(&noise(2 << 20, 5)))]),
            Compression::None,
        )],
        "1",
        &["app:1"],
    );
    let data = export_to_vec(&DockerExporter::default(), &a, &["app:1"]);
    for cut in [100, 5000, data.len() / 2, data.len() - 3000] {
        let b = new_store(dir.path(), &format!("b{cut}"));
        assert!(import(&b, &data[..cut]).is_err(), "cut at {cut}");
        assert_eq!(index_entries(&b), 0, "cut at {cut}");
        every_blob_matches_its_name(b.store());
    }
}

#[test]
fn not_an_archive_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let s = new_store(dir.path(), "s");
    let err = import(&s, &make_tar(&[("hello.txt", b"hi")], &[])).unwrap_err();
    assert!(matches!(err, ArchiveError::NotAnArchive), "{err}");
}

// ---------------------------------------------------------------- platforms

#[test]
fn nested_index_picks_the_host_platform_and_skips_attestations() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let m = put_image(
        &a,
        &[(layer_tar(&[("f", Some(b"amd64"))]), Compression::Gzip)],
        "1",
        &["app:1"],
    );
    let files = tar_files(&export_to_vec(&OciExporter::default(), &a, &["app:1"]));
    let msize = files[&format!("blobs/sha256/{}", m.hex())].len();
    let other = Digest::of(b"an arm64 manifest that is not in the archive");
    let arch = ImportOptions::default().architecture;
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other.to_string(), "size": 10,
             "platform": {"os": "linux", "architecture": "riscv64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other.to_string(), "size": 10,
             "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m.to_string(), "size": msize,
             "platform": {"os": "linux", "architecture": arch}},
        ]
    })
    .to_string();
    let nested_digest = Digest::of(nested.as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested_digest.to_string(), "size": nested.len(),
        "annotations": {"io.containerd.image.name": "docker.io/library/multi:1", "org.opencontainers.image.ref.name": "1"}
    }]})
    .to_string();
    let nested_path = format!("blobs/sha256/{}", nested_digest.hex());
    let mut parts: Vec<(&str, &[u8])> = vec![
        ("index.json", index.as_bytes()),
        (&nested_path, nested.as_bytes()),
    ];
    parts.extend(
        files
            .iter()
            .filter(|(k, _)| k.starts_with("blobs/"))
            .map(|(k, v)| (k.as_str(), v.as_slice())),
    );
    let b = new_store(dir.path(), "b");
    let loaded = import(&b, &make_tar(&parts, &[])).unwrap();
    assert_eq!(loaded[0].manifest_digest, m);
    assert_eq!(b.resolve("multi:1").unwrap().manifest_digest, m);

    let other_platform = ImportOptions {
        os: "linux".into(),
        architecture: "s390x".into(),
    };
    let c = new_store(dir.path(), "c");
    let err = import_archive(&c, make_tar(&parts, &[]).as_slice(), &other_platform).unwrap_err();
    assert!(matches!(err, ArchiveError::NoPlatform { .. }), "{err}");
    assert_eq!(index_entries(&c), 0);
}

// ---------------------------------------------------------------- recompression

#[test]
fn recompression_writes_new_layers_and_manifest_with_the_same_diff_ids() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let text: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let tar1 = layer_tar(&[("a.txt", Some(&text))]);
    let tar2 = layer_tar(&[("b.txt", Some(b"bee"))]);
    let m = put_image(
        &a,
        &[
            (tar1.clone(), Compression::Gzip),
            (tar2.clone(), Compression::Zstd),
        ],
        "1",
        &["app:1"],
    );
    let original = a.resolve("app:1").unwrap();

    let export = |opts: ExportOptions| -> (Vec<u8>, serde_json::Value, BTreeMap<String, Vec<u8>>) {
        let data = export_to_vec(&OciExporter { opts }, &a, &["app:1"]);
        let files = tar_files(&data);
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let digest: Digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{}", digest.hex())]).unwrap();
        (data, manifest, files)
    };
    let layer_blob = |files: &BTreeMap<String, Vec<u8>>, l: &serde_json::Value| {
        let d: Digest = l["digest"].as_str().unwrap().parse().unwrap();
        files[&format!("blobs/sha256/{}", d.hex())].clone()
    };

    for kind in [Compression::Zstd, Compression::None, Compression::Gzip] {
        let opts = ExportOptions {
            compression: Some(CompressionOptions::new(kind)),
            force_compression: false,
        };
        let (data, manifest, files) = export(opts);
        let layers = manifest["layers"].as_array().unwrap();
        for (l, tar) in layers.iter().zip([&tar1, &tar2]) {
            assert_eq!(l["mediaType"], kind.media_type(), "{kind}");
            let blob = layer_blob(&files, l);
            assert_eq!(compression::detect(&blob), kind, "{kind}");
            assert_eq!(decompress(&blob), *tar, "diffID unchanged for {kind}");
        }
        assert_eq!(
            manifest["config"]["digest"],
            original.id().to_string(),
            "config unchanged"
        );
        // The converted manifest loads elsewhere and keeps its digest.
        let b = new_store(dir.path(), &format!("b-{kind}"));
        let loaded = import(&b, &data).unwrap();
        assert_ne!(loaded[0].manifest_digest, m);
        assert_eq!(loaded[0].id, original.id());
        every_blob_matches_its_name(b.store());
    }

    // Layers already in the wanted compression stay as they are.
    let gzip_only = put_image(&a, &[(tar1.clone(), Compression::Gzip)], "2", &["app:2"]);
    let data = export_to_vec(
        &OciExporter {
            opts: ExportOptions {
                compression: Some(CompressionOptions::new(Compression::Gzip)),
                force_compression: false,
            },
        },
        &a,
        &["app:2"],
    );
    assert!(tar_files(&data).contains_key(&format!("blobs/sha256/{}", gzip_only.hex())));
    // Forced, another level gives other bytes.
    let forced = ExportOptions {
        compression: Some(CompressionOptions::with_level(Compression::Gzip, 1)),
        force_compression: true,
    };
    let data = export_to_vec(&OciExporter { opts: forced }, &a, &["app:2"]);
    let files = tar_files(&data);
    assert!(!files.contains_key(&format!("blobs/sha256/{}", gzip_only.hex())));
    let original_layer = a.resolve("app:2").unwrap().layers()[0].clone();
    assert!(!files.contains_key(&format!("blobs/sha256/{}", original_layer.digest.hex())));
}

/// A layer recompressed once is not recompressed again: the next export
/// with the same options takes the blob made then (seen here by damaging
/// the source, which only a recompression would read), other options make
/// another, and prune forgets what it removed.
#[test]
fn a_recompressed_layer_is_reused_by_later_exports() {
    use cache::archive::export::recompress;
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let store = a.store();
    let tar = layer_tar(&[("f.txt", Some(&noise(300_000, 9)))]);
    put_image(&a, &[(tar.clone(), Compression::Gzip)], "1", &["app:1"]);
    let source = a.resolve("app:1").unwrap().layers()[0].clone();
    let zstd = CompressionOptions::new(Compression::Zstd);
    let made = recompress(store, &source, &zstd).unwrap();
    assert_eq!(made.media_type, Compression::Zstd.media_type());
    assert_eq!(decompress(&store.read_blob(&made.digest).unwrap()), tar);

    let path = store.blob_path(&source.digest);
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert_eq!(recompress(store, &source, &zstd).unwrap(), made);
    // Another level is another conversion: it reads the damaged source.
    let level = CompressionOptions::with_level(Compression::Zstd, 19);
    let err = recompress(store, &source, &level).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::CorruptLayer { .. } | ArchiveError::CorruptBlob { .. }
        ),
        "{err:?}"
    );
    std::fs::write(&path, &good).unwrap();

    // A made blob that is gone is made again, and a prune drops the
    // records of blobs it removed.
    std::fs::remove_file(store.blob_path(&made.digest)).unwrap();
    assert_eq!(recompress(store, &source, &zstd).unwrap(), made);
    let records = || {
        std::fs::read_dir(store.root().join("conversions"))
            .unwrap()
            .count()
    };
    assert_eq!(records(), 1);
    let opts = cache::gc::PruneOptions {
        all: true,
        ..Default::default()
    };
    cache::gc::prune(store, &opts).unwrap();
    assert!(!store.has_blob(&made.digest), "nothing needs the made blob");
    assert_eq!(records(), 0);
}

// ---------------------------------------------------------------- destinations

/// Both ways a blob is copied: whole (small blobs) and through the reading
/// thread that hashes buffers ahead of the writer (large ones, several
/// buffers long), with the damage in the last buffer, after most of the
/// blob was written out.
#[test]
fn a_failed_export_leaves_nothing_at_the_destination() {
    for (i, len) in [1usize << 20, (9 << 20) + 123].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let a = new_store(dir.path(), "a");
        put_image(
            &a,
            &[(
                layer_tar(&[("f", Some(&noise(len, 6 + i as u64)))]),
                Compression::None,
            )],
            "1",
            &["app:1"],
        );
        let layer = a.resolve("app:1").unwrap().layers()[0].clone();
        let path = a.store().blob_path(&layer.digest);
        let mut bytes = std::fs::read(&path).unwrap();
        // Intact, the layer is exported byte for byte.
        let exported = tar_files(&export_to_vec(&DockerExporter::default(), &a, &["app:1"]));
        assert_eq!(
            exported[&format!("blobs/sha256/{}", layer.digest.hex())],
            bytes
        );
        // Corrupt the stored layer in place (same size), near its end.
        let at = bytes.len() - 2000;
        bytes[at] ^= 1;
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &bytes).unwrap();

        let out_dir = dir.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let dest = out_dir.join("app.tar");
        let items = vec![ExportImage::lookup(&a, "app:1").unwrap()];
        let err = DockerExporter::default()
            .export(&a, &items, Destination::Path(dest.clone()))
            .unwrap_err();
        assert!(
            matches!(err, ArchiveError::CorruptBlob { digest, .. } if digest == layer.digest),
            "{err}"
        );
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(&out_dir).unwrap().count(),
            0,
            "no temp file left either"
        );
        // An existing file stays as it was.
        std::fs::write(&dest, b"old").unwrap();
        OciExporter::default()
            .export(&a, &items, Destination::Path(dest.clone()))
            .unwrap_err();
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 1);

        // A stream cannot be taken back: it gets less than the whole blob,
        // so no reader of it finds a complete entry under that digest.
        let streamed = Arc::new(Mutex::new(Vec::new()));
        let sink = SharedSink(streamed.clone());
        let err = OciExporter::default()
            .export(&a, &items, Destination::Writer(Box::new(sink)))
            .unwrap_err();
        assert!(matches!(err, ArchiveError::CorruptBlob { .. }), "{err}");
        let streamed = streamed.lock().unwrap();
        assert!(
            !streamed.windows(2000).any(|w| w == &bytes[at..at + 2000]),
            "the damaged tail of the blob was streamed"
        );
    }
}

/// A writer whose bytes the test can read after handing it over.
struct SharedSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_export_replaces_an_existing_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    put_image(
        &a,
        &[(layer_tar(&[("f", Some(b"x"))]), Compression::None)],
        "1",
        &["app:1"],
    );
    let dest = dir.path().join("app.tar");
    std::fs::write(&dest, b"old content").unwrap();
    let items = vec![ExportImage::lookup(&a, "app:1").unwrap()];
    let report = DockerExporter::default()
        .export(&a, &items, Destination::Path(dest.clone()))
        .unwrap();
    let data = std::fs::read(&dest).unwrap();
    assert_eq!(report.bytes, data.len() as u64);
    assert!(tar_files(&data).contains_key("manifest.json"));
}

#[test]
fn local_and_tar_exporters_flatten_the_layers() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let base = layer_tar(&[("etc", None), ("etc/a", Some(b"a")), ("etc/b", Some(b"b"))]);
    let top = layer_tar(&[
        ("etc", None),
        ("etc/.wh.a", Some(b"")),
        ("etc/b", Some(b"B")),
        ("new", Some(b"n")),
    ]);
    put_image(
        &a,
        &[(base, Compression::Gzip), (top, Compression::Zstd)],
        "1",
        &["app:1"],
    );
    let items = vec![ExportImage::lookup(&a, "app:1").unwrap()];

    let local = dir.path().join("rootfs");
    LocalExporter
        .export(&a, &items, Destination::Path(local.clone()))
        .unwrap();
    assert!(!local.join("etc/a").exists(), "whiteout applied");
    assert_eq!(std::fs::read(local.join("etc/b")).unwrap(), b"B");
    assert_eq!(std::fs::read(local.join("new")).unwrap(), b"n");
    assert!(!local.join("etc/.wh.a").exists());

    let tar_path = dir.path().join("rootfs.tar");
    TarExporter
        .export(&a, &items, Destination::Path(tar_path.clone()))
        .unwrap();
    let files = tar_files(&std::fs::read(&tar_path).unwrap());
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, ["etc/b", "new"]);
    assert_eq!(files["etc/b"], b"B");

    let two = vec![items[0].clone(), items[0].clone()];
    assert!(matches!(
        TarExporter.export(&a, &two, Destination::Path(tar_path)),
        Err(ArchiveError::Unsupported { .. })
    ));
}

#[test]
fn export_spec_parses_buildx_syntax() {
    let spec: ExportSpec =
        "type=oci,dest=out.tar,compression=zstd,compression-level=9,force-compression=true"
            .parse()
            .unwrap();
    assert_eq!(spec.kind, ExportKind::Oci);
    assert_eq!(spec.dest.as_deref(), Some(Path::new("out.tar")));
    assert_eq!(
        spec.options.compression,
        Some(CompressionOptions::with_level(Compression::Zstd, 9))
    );
    assert!(spec.options.force_compression);
    let spec: ExportSpec = "type=docker,name=app:1".parse().unwrap();
    assert_eq!(
        (spec.kind, spec.dest, spec.names),
        (ExportKind::Docker, None, vec!["app:1".to_string()])
    );
    let spec: ExportSpec = "./out".parse().unwrap();
    assert_eq!(spec.kind, ExportKind::Local);
    let spec: ExportSpec = "type=tar,dest=-,compression=uncompressed".parse().unwrap();
    assert_eq!(spec.options.compression.unwrap().kind, Compression::None);
    for bad in [
        "type=zip",
        "dest=x",
        "type=oci,compression=lz4",
        "type=oci,bogus=1",
        "type=oci,compression-level=x",
    ] {
        assert!(bad.parse::<ExportSpec>().is_err(), "{bad}");
    }
    assert_eq!(
        ExportKind::Tar.exporter(ExportOptions::default()).kind(),
        ExportKind::Tar
    );
}

#[test]
fn one_image_under_two_names_is_written_once_with_both_names() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let m = put_image(
        &a,
        &[(layer_tar(&[("f", Some(b"x"))]), Compression::Gzip)],
        "1",
        &["app:1", "app:2"],
    );
    let files = tar_files(&export_to_vec(
        &DockerExporter::default(),
        &a,
        &["app:1", "app:2", "app:1"],
    ));
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(manifest.as_array().unwrap().len(), 1);
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["app:1", "app:2"])
    );
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e["digest"] == m.to_string()));

    // Names that normalise to the same reference give one index entry.
    let (archive, _) = docker_archive(
        &[layer_tar(&[("g", Some(b"y"))])],
        &["app:3", "docker.io/library/app:3"],
    );
    let b = new_store(dir.path(), "b");
    import(&b, &archive).unwrap();
    assert_eq!(index_entries(&b), 1);
}
