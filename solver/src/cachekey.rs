//! Cache keys: what a build step's result depends on, hashed with an
//! explicit, versioned scheme (never `derive(Hash)`), and kept as named
//! components so that a miss can say which input changed.
//!
//! A key is `sha256(len ‖ KEY_VERSION ‖ for each component: len ‖ name ‖
//! value digest)`, lengths as little-endian u64. A component's value digest
//! is itself `sha256` over its length-prefixed fields. Secret values never
//! enter a key: a secret mount is keyed by its declaration only.
//!
//! What is keyed, per op (see ARCHITECTURE "Cache keys"):
//! - scratch: a constant;
//! - source: the resolved manifest digest and the platform;
//! - exec: the parent key, argv, env (each variable its own component, ARG
//!   values named `build arg NAME`; proxy variables are left out, as in
//!   BuildKit), user, workdir, the effective network, security mode,
//!   `--add-host`, inline files and every mount's declaration with what it
//!   reads (the context checksum of a bind-mounted context subtree, or the
//!   key of the stage a mount reads);
//! - copy: the parent key, every field, and the sources: the context
//!   checksum of exactly the selected paths, or the key of the stage/image
//!   they are read from; inline (heredoc) files by content; a URL with
//!   `--checksum` by that checksum, one without by what it serves now (it
//!   is downloaded to compute the key: its sha256 and `Last-Modified`, and
//!   once more when the step runs, which fails unless it serves the same
//!   content then: see [`KeyComputer::take_downloads`]); a git source by
//!   its URL without credentials (a CI job's token changes every run) and
//!   the commit its reference names (asked with `git ls-remote`; the step
//!   checks out that commit, even if the reference moved on meanwhile) or
//!   its `--checksum`;
//! - mkdir (WORKDIR): the parent key, path, mode and user.
//!
//! Every cached op also keys SOURCE_DATE_EPOCH, which changes the layer
//! tar it produces. The layer compression is not keyed: a result made with
//! gzip serves a build that wants zstd (as in BuildKit), and the image
//! export recompresses what it must instead of every step running again.

use std::collections::BTreeMap;

use cache::Digest;
use frontend::graph::{
    BuildGraph, CacheSharing, Chmod, CopyOp, CopySource, ExecMountKind, ExecOp, MkdirOp,
    NetworkMode, Op, SecurityMode, VertexId,
};
use sha2::{Digest as _, Sha256};

use crate::context_hash::{ContextHashError, ContextHasher, ContextSum, Selection};
use crate::ops::copy::Pinned;
use crate::ops::copy::fetch::content_digest;
use crate::ops::copy::remote::resolve_commit;
use crate::sandbox::CancelHandle;
use crate::solve::BuildRequest;

/// The version of the key scheme; changing how anything is keyed must
/// change it, so that old records are never matched by new keys.
pub const KEY_VERSION: &str = "builder-cache-key-v4";

/// One named input of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// What the input is, for people: `command`, `env HOME`, `build arg
    /// VERSION`, `parent`, `context files`…
    pub name: String,
    pub value: Digest,
    /// The vertex whose key this component is (a parent or a stage read by
    /// COPY --from or a mount): its change is explained at that vertex.
    pub input: Option<VertexId>,
}

/// A vertex's key with the components it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexKey {
    pub digest: Digest,
    pub components: Vec<Component>,
    /// Per-file checksums behind the context components (by component
    /// name), so a miss can name the file that changed.
    pub files: BTreeMap<String, Vec<(String, Digest)>>,
}

/// Builds one key from its components.
struct KeyBuilder {
    components: Vec<Component>,
    files: BTreeMap<String, Vec<(String, Digest)>>,
}

/// Hashes length-prefixed fields.
fn hash_fields(fields: &[&[u8]]) -> Digest {
    let mut h = Sha256::new();
    for f in fields {
        h.update((f.len() as u64).to_le_bytes());
        h.update(f);
    }
    Digest::from_bytes(h.finalize().into())
}

impl KeyBuilder {
    fn new(op: &str) -> Self {
        let mut b = KeyBuilder {
            components: Vec::new(),
            files: BTreeMap::new(),
        };
        b.add("instruction", &[op.as_bytes()]);
        b
    }

    fn add(&mut self, name: impl Into<String>, fields: &[&[u8]]) {
        self.components.push(Component {
            name: name.into(),
            value: hash_fields(fields),
            input: None,
        });
    }

    fn add_str(&mut self, name: impl Into<String>, value: &str) {
        self.add(name, &[value.as_bytes()]);
    }

    fn add_opt(&mut self, name: impl Into<String>, value: Option<&str>) {
        match value {
            None => self.add(name, &[b"none"]),
            Some(v) => self.add(name, &[b"some", v.as_bytes()]),
        }
    }

    fn add_input(&mut self, name: impl Into<String>, input: VertexId, key: &VertexKey) {
        self.components.push(Component {
            name: name.into(),
            value: key.digest,
            input: Some(input),
        });
    }

    fn add_context(&mut self, name: impl Into<String>, sum: ContextSum) {
        let name = name.into();
        self.components.push(Component {
            name: name.clone(),
            value: sum.digest,
            input: None,
        });
        self.files.insert(name, sum.entries);
    }

    fn add_layer_format(&mut self, req: &BuildRequest) {
        let epoch = req.source_date_epoch.map(|e| e.to_string());
        self.add_opt("SOURCE_DATE_EPOCH", epoch.as_deref());
    }

    fn finish(self) -> VertexKey {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(KEY_VERSION.as_bytes());
        for c in &self.components {
            field(c.name.as_bytes());
            field(c.value.as_bytes());
        }
        VertexKey {
            digest: Digest::from_bytes(h.finalize().into()),
            components: self.components,
            files: self.files,
        }
    }
}

/// Why a key could not be computed.
#[derive(Debug, thiserror::Error)]
#[error("cannot checksum the build context")]
pub struct KeyError {
    pub vertex: VertexId,
    #[source]
    pub source: ContextHashError,
}

/// Computes keys vertex by vertex; inputs must be computed first.
pub struct KeyComputer<'a> {
    graph: &'a BuildGraph,
    req: &'a BuildRequest,
    /// One per local context (`context`, or a `--build-context NAME=DIR`),
    /// made when the first step reads it.
    hashers: BTreeMap<String, ContextHasher>,
    store: &'a cache::store::Store,
    cancel: &'a CancelHandle,
    /// Per vertex whose key was computed from remote sources: each URL
    /// without `--checksum`, in source order, with the sha256 of what it
    /// served or the commit a git source named.
    downloads: BTreeMap<VertexId, Vec<(String, Pinned)>>,
}

impl<'a> KeyComputer<'a> {
    pub fn new(
        graph: &'a BuildGraph,
        req: &'a BuildRequest,
        store: &'a cache::store::Store,
        cancel: &'a CancelHandle,
    ) -> Self {
        KeyComputer {
            graph,
            req,
            hashers: BTreeMap::new(),
            store,
            cancel,
            downloads: BTreeMap::new(),
        }
    }

    /// What the keys computed so far were made from downloads, by vertex
    /// (`len` entries, empty for the others): each URL an ADD without
    /// `--checksum` downloaded, in source order, with the sha256 of what
    /// it served, or the commit a git source's reference named. The step
    /// must find the same when it runs, or its result would be stored
    /// under the key of other content.
    pub fn take_downloads(&mut self, len: usize) -> Vec<Vec<(String, Pinned)>> {
        let mut downloads = vec![Vec::new(); len];
        for (id, urls) in std::mem::take(&mut self.downloads) {
            if let Some(slot) = downloads.get_mut(id) {
                *slot = urls;
            }
        }
        downloads
    }

    /// Persists what the context hasher learnt (its stat cache).
    pub fn save(&self) {
        for hasher in self.hashers.values() {
            // Losing the stat cache only costs re-reading files next time.
            let _ = hasher.save();
        }
    }

    /// The content sum of `paths` of the local context `context`; `None`
    /// when the request has no local context of that name (the step fails
    /// when it runs).
    fn context_sum(
        &mut self,
        vertex: VertexId,
        context: &str,
        paths: Vec<&str>,
        exclude: &[String],
        owners: bool,
    ) -> Result<Option<ContextSum>, KeyError> {
        let Some((dir, ignore)) = self.req.local_context(context) else {
            return Ok(None);
        };
        if !self.hashers.contains_key(context) {
            let hasher = ContextHasher::new(self.store, dir, ignore)
                .map_err(|source| KeyError { vertex, source })?;
            self.hashers.insert(context.to_owned(), hasher);
        }
        let hasher = &self.hashers[context];
        hasher
            .checksum(&Selection {
                paths,
                exclude,
                owners,
            })
            .map(Some)
            .map_err(|source| KeyError { vertex, source })
    }

    /// The key of `id`, given the keys of the vertices before it (`None`:
    /// not cacheable, or the context, which is no result of its own).
    /// `source_digest` is the resolved manifest of a source op.
    pub fn key(
        &mut self,
        id: VertexId,
        keys: &[Option<VertexKey>],
        source_digest: Option<Digest>,
    ) -> Result<Option<VertexKey>, KeyError> {
        let vertex = self.graph.vertex(id);
        let key = match &vertex.op {
            Op::Scratch => Some(KeyBuilder::new("scratch").finish()),
            Op::Source(op) => source_digest.map(|digest| {
                let mut b = KeyBuilder::new("source");
                b.add_str("image", &digest.to_string());
                b.add_str("platform", &op.platform);
                b.finish()
            }),
            Op::Context(_) => None,
            Op::Exec(op) => self.exec_key(id, op, keys)?,
            Op::Copy(op) => self.copy_key(id, op, keys)?,
            Op::Mkdir(op) => mkdir_key(self.graph, id, op, keys, self.req),
        };
        Ok(key)
    }

    fn exec_key(
        &mut self,
        id: VertexId,
        op: &ExecOp,
        keys: &[Option<VertexKey>],
    ) -> Result<Option<VertexKey>, KeyError> {
        let vertex = self.graph.vertex(id);
        let mut b = KeyBuilder::new("exec");
        let Some(parent) = input_key(vertex.inputs.first(), keys) else {
            return Ok(None);
        };
        b.add_input("parent", vertex.inputs[0], parent);
        let argv: Vec<&[u8]> = op.args.iter().map(|a| a.as_bytes()).collect();
        b.add("command", &argv);
        for entry in op.env.iter() {
            let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
            let label = if vertex.build_args.iter().any(|a| &**a == name) {
                format!("build arg {name}")
            } else {
                format!("env {name}")
            };
            b.add(label, &[value.as_bytes()]);
        }
        b.add_opt("user", op.user.as_deref());
        b.add_str("workdir", &op.cwd);
        let network = match op.network {
            NetworkMode::Default => self.req.network,
            mode => mode,
        };
        b.add_str(
            "network",
            match network {
                NetworkMode::Default => "default",
                NetworkMode::None => "none",
                NetworkMode::Host => "host",
            },
        );
        b.add_str(
            "security",
            match op.security {
                SecurityMode::Sandbox => "sandbox",
                SecurityMode::Insecure => "insecure",
            },
        );
        // A step that needs an entitlement must not be served from the
        // cache to a build that does not grant it: it fails when it runs.
        if network == NetworkMode::Host {
            b.add(
                "network.host allowed",
                &[&[u8::from(self.req.network_allowed_host)]],
            );
        }
        if op.security == SecurityMode::Insecure {
            b.add(
                "security.insecure allowed",
                &[&[u8::from(self.req.allow_security_insecure)]],
            );
        }
        let hosts: Vec<String> = self
            .req
            .extra_hosts
            .iter()
            .map(|(h, ip)| format!("{h}:{ip}"))
            .collect();
        let hosts: Vec<&[u8]> = hosts.iter().map(|h| h.as_bytes()).collect();
        b.add("extra hosts", &hosts);
        // What the step may use: /dev/shm's size and its resource limits.
        let shm = self.req.shm_size.map(|s| s.to_string());
        b.add_opt("shm size", shm.as_deref());
        let limits: Vec<String> = self
            .req
            .ulimits
            .iter()
            .map(|u| format!("{}:{}:{}", u.resource, u.soft, u.hard))
            .collect();
        let limits: Vec<&[u8]> = limits.iter().map(|l| l.as_bytes()).collect();
        b.add("ulimits", &limits);
        for file in &op.files {
            b.add(
                format!("file {}", file.path),
                &[&file.mode.to_le_bytes(), file.content.as_bytes()],
            );
        }
        for mount in &op.mounts {
            let name = format!("mount {}", mount_label(mount));
            let ro: &[u8] = if mount.readonly { b"ro" } else { b"rw" };
            let source = mount.source.as_deref().unwrap_or("/");
            match &mount.kind {
                ExecMountKind::Bind => {
                    b.add(
                        &name,
                        &[b"bind", mount.target.as_bytes(), source.as_bytes(), ro],
                    );
                }
                ExecMountKind::Cache {
                    id,
                    sharing,
                    mode,
                    uid,
                    gid,
                } => {
                    let sharing: &[u8] = match sharing {
                        CacheSharing::Shared => b"shared",
                        CacheSharing::Private => b"private",
                        CacheSharing::Locked => b"locked",
                    };
                    b.add(
                        &name,
                        &[
                            b"cache",
                            mount.target.as_bytes(),
                            id.as_bytes(),
                            sharing,
                            opt_u32(*mode).as_bytes(),
                            opt_u32(*uid).as_bytes(),
                            opt_u32(*gid).as_bytes(),
                            source.as_bytes(),
                            ro,
                        ],
                    );
                }
                ExecMountKind::Tmpfs { size } => {
                    let size = size.map(|s| s.to_string()).unwrap_or_default();
                    b.add(&name, &[b"tmpfs", mount.target.as_bytes(), size.as_bytes()]);
                }
                ExecMountKind::Secret {
                    id,
                    required,
                    env,
                    mode,
                    uid,
                    gid,
                } => {
                    // The declaration only: the value must never reach a key.
                    b.add(
                        &name,
                        &[
                            b"secret",
                            mount.target.as_bytes(),
                            id.as_bytes(),
                            &[u8::from(*required)],
                            env.as_deref().unwrap_or("").as_bytes(),
                            &mode.to_le_bytes(),
                            &uid.to_le_bytes(),
                            &gid.to_le_bytes(),
                        ],
                    );
                }
                ExecMountKind::Ssh {
                    id,
                    required,
                    mode,
                    uid,
                    gid,
                } => {
                    b.add(
                        &name,
                        &[
                            b"ssh",
                            mount.target.as_bytes(),
                            id.as_bytes(),
                            &[u8::from(*required)],
                            &mode.to_le_bytes(),
                            &uid.to_le_bytes(),
                            &gid.to_le_bytes(),
                        ],
                    );
                }
            }
            // What the mount reads: a context subtree by content, a stage by
            // its key.
            if let Some(slot) = mount.input {
                let Some(&input) = vertex.inputs.get(slot) else {
                    return Ok(None);
                };
                if let Op::Context(c) = &self.graph.vertex(input).op {
                    // A bind mount's source is a literal path while the
                    // context selection reads patterns: a source with
                    // pattern characters (`data[1]`) is not cached rather
                    // than keyed by what the pattern would match.
                    if source.contains(['*', '?', '[', '\\']) {
                        return Ok(None);
                    }
                    // A bind mount shows the files' owners.
                    let Some(sum) = self.context_sum(id, &c.name, vec![source], &[], true)? else {
                        return Ok(None);
                    };
                    b.add_context(format!("{name} {} files", context_label(&c.name)), sum);
                } else {
                    let Some(key) = keys[input].as_ref() else {
                        return Ok(None);
                    };
                    b.add_input(format!("{name} from"), input, key);
                }
            }
        }
        b.add_layer_format(self.req);
        Ok(Some(b.finish()))
    }

    fn copy_key(
        &mut self,
        id: VertexId,
        op: &CopyOp,
        keys: &[Option<VertexKey>],
    ) -> Result<Option<VertexKey>, KeyError> {
        let vertex = self.graph.vertex(id);
        let mut b = KeyBuilder::new(if op.add { "add" } else { "copy" });
        let Some(parent) = input_key(vertex.inputs.first(), keys) else {
            return Ok(None);
        };
        b.add_input("parent", vertex.inputs[0], parent);
        b.add_str("destination", &op.dest);
        b.add_opt("chown", op.chown.as_deref());
        let chmod = op.chmod.as_ref().map(|c| match c {
            Chmod::Octal(bits) => format!("octal {bits:o}"),
            Chmod::Symbolic(s) => format!("symbolic {s}"),
        });
        b.add_opt("chmod", chmod.as_deref());
        b.add("link", &[&[u8::from(op.link)]]);
        b.add("parents", &[&[u8::from(op.parents)]]);
        let exclude: Vec<&[u8]> = op.exclude.iter().map(|e| e.as_bytes()).collect();
        b.add("exclude", &exclude);
        b.add_opt("checksum", op.checksum.as_deref());
        let unpack = op.unpack.map(|u| if u { "true" } else { "false" });
        b.add_opt("unpack", unpack);
        b.add("keep git dir", &[&[u8::from(op.keep_git_dir)]]);
        let mut paths = Vec::new();
        let mut downloads = Vec::new();
        for source in &op.sources {
            match source {
                CopySource::Path { path, pivot } => {
                    b.add(
                        format!("source {path}"),
                        &[path.as_bytes(), pivot.as_deref().unwrap_or("").as_bytes()],
                    );
                    paths.push(path.as_str());
                }
                CopySource::Url { url, filename } => match &op.checksum {
                    Some(checksum) => b.add(
                        format!("url {url}"),
                        &[url.as_bytes(), filename.as_bytes(), checksum.as_bytes()],
                    ),
                    None => {
                        // A download that fails leaves the step uncached:
                        // it runs and reports the failure itself.
                        let Ok((digest, modified)) = content_digest(url, self.cancel) else {
                            return Ok(None);
                        };
                        downloads.push((url.clone(), Pinned::Content(digest)));
                        let modified = modified.map(|m| m.to_string()).unwrap_or_default();
                        b.add(
                            format!("url {url}"),
                            &[
                                url.as_bytes(),
                                filename.as_bytes(),
                                digest.as_bytes(),
                                modified.as_bytes(),
                            ],
                        );
                    }
                },
                CopySource::Git { url } => {
                    let shown = without_credentials(url);
                    match &op.checksum {
                        // The checkout is checked against it when the step runs.
                        Some(checksum) => b.add(
                            format!("git {shown}"),
                            &[shown.as_bytes(), checksum.to_ascii_lowercase().as_bytes()],
                        ),
                        None => {
                            // A repository that cannot be asked leaves the
                            // step uncached: it runs and reports what git says.
                            let Ok(Some(commit)) = resolve_commit(url, self.cancel) else {
                                return Ok(None);
                            };
                            // A miss says `commit of URL#REF changed`.
                            b.add(
                                format!("commit of {shown}"),
                                &[shown.as_bytes(), commit.as_bytes()],
                            );
                            downloads.push((url.clone(), Pinned::Commit(commit)));
                        }
                    }
                }
                CopySource::Inline { name, content } => {
                    b.add(
                        format!("file {name}"),
                        &[name.as_bytes(), content.as_bytes()],
                    );
                }
            }
        }
        if !paths.is_empty() {
            let Some(&from) = vertex.inputs.get(1) else {
                return Ok(None);
            };
            if let Op::Context(c) = &self.graph.vertex(from).op {
                // COPY makes context files 0:0: their owners do not matter.
                let Some(sum) = self.context_sum(id, &c.name, paths, &op.exclude, false)? else {
                    return Ok(None);
                };
                b.add_context(format!("{} files", context_label(&c.name)), sum);
            } else {
                let Some(key) = keys[from].as_ref() else {
                    return Ok(None);
                };
                b.add_input("from", from, key);
            }
        }
        b.add_layer_format(self.req);
        if !downloads.is_empty() {
            self.downloads.insert(id, downloads);
        }
        Ok(Some(b.finish()))
    }
}

/// `url` without the user and password of its authority
/// (`https://x-access-token:TOKEN@github.com/o/r.git` →
/// `https://github.com/o/r.git`), for keys and what they show. Other forms
/// (`git@host:repo`, where `git` is no secret) are kept as they are.
fn without_credentials(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]).into(),
        None => url.into(),
    }
}

fn mkdir_key(
    graph: &BuildGraph,
    id: VertexId,
    op: &MkdirOp,
    keys: &[Option<VertexKey>],
    req: &BuildRequest,
) -> Option<VertexKey> {
    let vertex = graph.vertex(id);
    let parent = input_key(vertex.inputs.first(), keys)?;
    let mut b = KeyBuilder::new("mkdir");
    b.add_input("parent", vertex.inputs[0], parent);
    b.add_str("path", &op.path);
    b.add("mode", &[&op.mode.to_le_bytes()]);
    b.add_opt("user", op.user.as_deref());
    b.add_layer_format(req);
    Some(b.finish())
}

fn input_key<'k>(input: Option<&VertexId>, keys: &'k [Option<VertexKey>]) -> Option<&'k VertexKey> {
    keys[*input?].as_ref()
}

/// How a key names a local context's files: `context` for the main one
/// (as before named contexts were keyed), `context NAME` for another.
fn context_label(name: &str) -> String {
    if name == "context" {
        "context".into()
    } else {
        format!("context {name:?}")
    }
}

fn mount_label(mount: &frontend::graph::ExecMount) -> String {
    if mount.target.is_empty() {
        match &mount.kind {
            ExecMountKind::Secret { id, .. } => format!("secret {id}"),
            _ => "(no target)".into(),
        }
    } else {
        mount.target.clone()
    }
}

fn opt_u32(v: Option<u32>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache::compression::{Compression, CompressionOptions};

    #[test]
    fn credentials_are_left_out_of_urls() {
        for (url, shown) in [
            (
                "https://x-access-token:s3cr3t@github.com/o/r.git#main:sub",
                "https://github.com/o/r.git#main:sub",
            ),
            ("https://user@h/r.git", "https://h/r.git"),
            ("ssh://git@h:22/r.git", "ssh://h:22/r.git"),
            ("https://h/r.git#ref@x", "https://h/r.git#ref@x"),
            ("https://h/a@b/r.git", "https://h/a@b/r.git"),
            ("git@github.com:o/r.git", "git@github.com:o/r.git"),
            ("/srv/r.git", "/srv/r.git"),
        ] {
            assert_eq!(without_credentials(url), shown, "{url}");
        }
    }
    use cache::images::ImageStore;
    use cache::store::Store;

    /// The key of the target of `req`'s Dockerfile (built on scratch).
    fn target_key(req: &BuildRequest) -> VertexKey {
        target_key_opt(req).expect("the target is cached")
    }

    fn request(dockerfile: &str) -> BuildRequest {
        BuildRequest::new(dockerfile, "Dockerfile", std::env::temp_dir())
    }

    /// The key of the target of `req`'s Dockerfile, or `None` when it is
    /// not cached.
    fn target_key_opt(req: &BuildRequest) -> Option<VertexKey> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        let images = ImageStore::new(store.clone());
        let resolver = crate::LocalResolver::new(&images);
        let compiled =
            frontend::convert::compile(&req.dockerfile, &req.options, &resolver).unwrap();
        let graph = &compiled.graph;
        let cancel = CancelHandle::new();
        let mut computer = KeyComputer::new(graph, req, &store, &cancel);
        let mut keys = vec![None; graph.len()];
        for id in 0..graph.len() {
            keys[id] = computer.key(id, &keys, None).unwrap();
        }
        keys[compiled.target().vertex].clone()
    }

    #[test]
    fn a_bind_source_with_pattern_characters_is_not_cached() {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::create_dir(ctx.path().join("data[1]")).unwrap();
        std::fs::write(ctx.path().join("data[1]/f"), "x").unwrap();
        let plain = BuildRequest::new(
            "FROM scratch\nRUN --mount=type=bind,source=data,target=/d cat /d/f\n",
            "Dockerfile",
            ctx.path(),
        );
        assert!(target_key_opt(&plain).is_some());
        let bracketed = BuildRequest::new(
            "FROM scratch\nRUN --mount=type=bind,source=data[1],target=/d cat /d/f\n",
            "Dockerfile",
            ctx.path(),
        );
        assert!(target_key_opt(&bracketed).is_none());
    }

    #[test]
    fn run_keys_cover_what_changes_a_run_and_nothing_else() {
        let base = request("FROM scratch\nARG V=1\nRUN make\n");
        let key = target_key(&base);
        assert_eq!(target_key(&base), key, "keys are deterministic");
        let changed = |f: &dyn Fn(&mut BuildRequest)| {
            let mut req = base.clone();
            f(&mut req);
            target_key(&req)
        };
        // A proxy variable and an unused build arg are not part of it.
        assert_eq!(
            changed(&|r| {
                r.options
                    .build_args
                    .insert("HTTPS_PROXY".into(), "http://p:1".into());
                r.options.build_args.insert("UNUSED".into(), "x".into());
            }),
            key
        );
        // Nor is the layer compression (an export recompresses).
        assert_eq!(
            changed(&|r| r.layer_compression = CompressionOptions::new(Compression::Zstd)),
            key
        );
        // A secret's source is not either (only the mount declaration).
        assert_eq!(
            changed(&|r| r.secrets.push(crate::SecretSpec {
                id: "s".into(),
                source: crate::SecretSource::Env("SECRET".into()),
            })),
            key
        );
        for (what, other) in [
            (
                "build arg",
                changed(&|r| {
                    r.options.build_args.insert("V".into(), "2".into());
                }),
            ),
            ("network", changed(&|r| r.network = NetworkMode::None)),
            (
                "extra hosts",
                changed(&|r| {
                    r.extra_hosts
                        .push(("h".into(), "10.0.0.1".parse().unwrap()))
                }),
            ),
            ("epoch", changed(&|r| r.source_date_epoch = Some(1))),
            ("shm size", changed(&|r| r.shm_size = Some(1 << 27))),
            (
                "ulimits",
                changed(&|r| {
                    r.ulimits.push(crate::sandbox::Ulimit {
                        resource: 7,
                        soft: 1024,
                        hard: 2048,
                    })
                }),
            ),
        ] {
            assert_ne!(other.digest, key.digest, "{what}");
        }
        let names: Vec<&str> = key.components.iter().map(|c| c.name.as_str()).collect();
        assert!(names.contains(&"build arg V"), "{names:?}");
        assert!(names.contains(&"command"), "{names:?}");
    }

    #[test]
    fn fields_are_length_prefixed() {
        assert_ne!(hash_fields(&[b"ab", b"c"]), hash_fields(&[b"a", b"bc"]));
        assert_ne!(hash_fields(&[b"", b"a"]), hash_fields(&[b"a"]));
    }

    #[test]
    fn component_names_and_order_matter() {
        let mut a = KeyBuilder::new("x");
        a.add_str("one", "1");
        a.add_str("two", "2");
        let mut b = KeyBuilder::new("x");
        b.add_str("two", "2");
        b.add_str("one", "1");
        let mut c = KeyBuilder::new("x");
        c.add_str("one", "1");
        c.add_str("tw", "o2");
        let (a, b, c) = (a.finish(), b.finish(), c.finish());
        assert_ne!(a.digest, b.digest);
        assert_ne!(a.digest, c.digest);
        let mut again = KeyBuilder::new("x");
        again.add_str("one", "1");
        again.add_str("two", "2");
        assert_eq!(again.finish().digest, a.digest);
    }
}
