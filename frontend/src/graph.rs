//! The build graph: plain-data ops (source, context, exec, copy) in a petgraph DAG.
//!
//! Vertices are numbered in creation order, which is also a topological order:
//! a vertex is only ever created after all of its inputs. The solver computes a
//! cache key per vertex from its op and the keys of its inputs (in slot order),
//! so every field that changes the result of an op lives in the op, and nothing
//! that must stay out of keys (proxy variables, descriptions) is mixed into it
//! without being marked.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use serde::{Deserialize, Serialize};

use crate::error::Position;

/// A 1-based line and column in the Dockerfile (serde form of [`Position`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePos {
    pub line: usize,
    pub column: usize,
}

impl From<Position> for SourcePos {
    fn from(p: Position) -> Self {
        Self {
            line: p.line,
            column: p.column,
        }
    }
}

impl From<SourcePos> for Position {
    fn from(p: SourcePos) -> Self {
        Position::new(p.line, p.column)
    }
}

/// An immutable value shared between vertices (consecutive RUN steps
/// usually have the same environment); serializes as the value itself.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shared<T: ?Sized>(Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Self(Arc::new(value))
    }
}

impl<T: ?Sized> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Default> Default for Shared<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: ?Sized> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl From<String> for Shared<str> {
    fn from(value: String) -> Self {
        Self(Arc::from(value))
    }
}

impl From<&str> for Shared<str> {
    fn from(value: &str) -> Self {
        Self(Arc::from(value))
    }
}

impl<T: ?Sized + Serialize> Serialize for Shared<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Self::new)
    }
}

impl<'de> Deserialize<'de> for Shared<str> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

fn is_empty_set(s: &Shared<BTreeSet<Shared<str>>>) -> bool {
    s.is_empty()
}

/// Index of a vertex in [`BuildGraph`]; equal to its creation order.
pub type VertexId = usize;

/// A build graph: vertices are ops, an edge `a → b` with slot `s` says that
/// `a`'s result is input number `s` of `b`.
#[derive(Debug, Clone, Default)]
pub struct BuildGraph {
    graph: DiGraph<Vertex, Edge>,
}

/// An input edge: which input slot of the consumer the producer fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub slot: usize,
}

/// One op with its ordered inputs and what a person needs to recognise it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vertex {
    pub op: Op,
    /// Inputs in slot order (the same information as the incoming edges).
    pub inputs: Vec<VertexId>,
    /// Progress name, e.g. `[build 2/5] RUN make`.
    pub description: String,
    /// Index of the stage (in Dockerfile order) that created the vertex; none
    /// for shared vertices such as the build context or scratch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stage: Option<usize>,
    /// Where the instruction that created the vertex starts.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub position: Option<SourcePos>,
    /// Names of build arguments (ARG) whose values this vertex depends on
    /// directly: the ones its expansion read, and for RUN every ARG in its
    /// environment. Used to explain cache misses.
    #[serde(skip_serializing_if = "is_empty_set", default)]
    pub build_args: Shared<BTreeSet<Shared<str>>>,
}

/// The operation a vertex performs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// An image from a registry or the local store (a FROM line or `--from=image`).
    Source(SourceOp),
    /// The empty filesystem.
    Scratch,
    /// The build context, or a named context given on the command line.
    Context(ContextOp),
    /// A RUN step.
    Exec(Box<ExecOp>),
    /// A COPY or ADD step.
    Copy(Box<CopyOp>),
    /// Directory creation for WORKDIR.
    Mkdir(MkdirOp),
}

/// An image reference with what the resolver knew about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceOp {
    /// The reference as written (after ARG expansion).
    pub reference: String,
    /// Fully qualified form (`docker.io/library/alpine:3.20`), when it parses.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub normalized: Option<String>,
    /// `os/arch[/variant]` the image is wanted for.
    pub platform: String,
    /// Manifest digest from the resolver; none means unresolved, and the
    /// solver must resolve the reference before it can compute a key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub digest: Option<String>,
}

impl SourceOp {
    pub fn is_resolved(&self) -> bool {
        self.digest.is_some()
    }
}

/// A local directory given to the build. `include` lists the paths and
/// patterns (relative to the context root, cleaned, sorted) that the build
/// reads; empty together with `all` means the whole context is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextOp {
    /// `context` for the main build context, else the name given with
    /// `--build-context NAME=DIR`.
    pub name: String,
    /// The context is read as a whole (a bind mount of its root, `COPY . .`).
    pub all: bool,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub include: Vec<String>,
}

/// Network mode of a RUN step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    #[default]
    Default,
    None,
    Host,
}

/// Security mode of a RUN step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    #[default]
    Sandbox,
    Insecure,
}

/// A RUN step: inputs are slot 0 the root filesystem, then one slot per
/// mount that reads another state (in mount order, see [`ExecMount::input`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    /// The program and its arguments, SHELL already applied.
    pub args: Vec<String>,
    /// `KEY=VALUE` in order: image ENV, then ARG values in scope.
    pub env: Shared<Vec<Shared<str>>>,
    /// Proxy variables from build args (`HTTP_PROXY`…): set at run time but
    /// left out of cache keys, as BuildKit does.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub proxy_env: Vec<String>,
    /// USER in effect; none means root.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<String>,
    /// Working directory (absolute).
    pub cwd: String,
    pub network: NetworkMode,
    pub security: SecurityMode,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub mounts: Vec<ExecMount>,
    /// Files that exist only for this step (a heredoc script with a `#!`
    /// line is written to `/dev/pipes/NAME` and run from there).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub files: Vec<InlineFile>,
}

/// A file whose content is part of the op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlineFile {
    pub path: String,
    pub mode: u32,
    pub content: String,
}

/// One `RUN --mount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecMount {
    /// Absolute mount point (empty for a secret exposed only through `env`).
    pub target: String,
    pub kind: ExecMountKind,
    /// Input slot of the state the mount reads (bind, or cache with `from=`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub input: Option<usize>,
    /// Path inside the input to mount (absolute, `/` for the whole state).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
    pub readonly: bool,
}

/// What a `RUN --mount` provides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExecMountKind {
    Bind,
    Cache {
        id: String,
        sharing: CacheSharing,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        mode: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        uid: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        gid: Option<u32>,
    },
    Tmpfs {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        size: Option<u64>,
    },
    Secret {
        id: String,
        required: bool,
        /// Expose the secret as this environment variable instead of (or as
        /// well as, when a target was given) a file.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        env: Option<String>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Ssh {
        id: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// Sharing mode of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    #[default]
    Shared,
    Private,
    Locked,
}

/// COPY or ADD. Inputs: slot 0 is the filesystem copied into; slot 1, when
/// any source is a path, is the state the paths are read from (the context,
/// a stage or an image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOp {
    pub add: bool,
    pub sources: Vec<CopySource>,
    /// Absolute destination; a trailing `/` means "into this directory".
    pub dest: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chmod: Option<Chmod>,
    pub link: bool,
    pub parents: bool,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub exclude: Vec<String>,
    /// Expected digest of a URL or git source (`ADD --checksum`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checksum: Option<String>,
    /// `--unpack`: whether archives are unpacked. None (ADD without the
    /// flag) means BuildKit's default: local archives are unpacked, downloads
    /// are not. COPY never unpacks (`Some(false)`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unpack: Option<bool>,
    pub keep_git_dir: bool,
}

/// One source of a COPY/ADD, in the order written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CopySource {
    /// A path or wildcard pattern in the input at slot 1, cleaned and
    /// absolute. With `--parents`, `pivot` is the part before `/./`.
    Path {
        path: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        pivot: Option<String>,
    },
    /// `ADD http(s)://…`: downloaded as `filename`.
    Url { url: String, filename: String },
    /// `ADD <git url>`.
    Git { url: String },
    /// A heredoc: a file named `name` with this content (mode 0644).
    Inline { name: String, content: String },
}

/// A `--chmod` value, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chmod {
    /// Octal permission bits, at most 0o7777.
    Octal(u32),
    /// A symbolic mode such as `u=rwx,g=rx,o=` (applied per file, like chmod).
    Symbolic(String),
}

/// WORKDIR: create `path` (with parents) owned by `user` when set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirOp {
    pub path: String,
    pub mode: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<String>,
}

impl PartialEq for BuildGraph {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .vertices()
                .zip(other.vertices())
                .all(|((_, a), (_, b))| a == b)
            && self.edges() == other.edges()
    }
}

impl BuildGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty graph with room for `vertices` vertices and twice as many edges.
    pub fn with_capacity(vertices: usize) -> Self {
        Self {
            graph: DiGraph::with_capacity(vertices, vertices * 2),
        }
    }

    /// Adds a vertex; an edge is added from every input, with its slot.
    ///
    /// # Panics
    /// When an input does not exist yet: vertices are added in topological
    /// order by construction.
    pub fn add(&mut self, vertex: Vertex) -> VertexId {
        let n = vertex.inputs.len();
        let id = self.graph.add_node(vertex);
        for slot in 0..n {
            let input = self.graph[id].inputs[slot];
            assert!(input < id.index(), "input {input} added after its consumer");
            self.graph
                .add_edge(NodeIndex::new(input), id, Edge { slot });
        }
        id.index()
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    pub fn vertex(&self, id: VertexId) -> &Vertex {
        &self.graph[NodeIndex::new(id)]
    }

    pub(crate) fn vertex_mut(&mut self, id: VertexId) -> &mut Vertex {
        &mut self.graph[NodeIndex::new(id)]
    }

    /// All vertices in id order, which is a topological order.
    pub fn vertices(&self) -> impl Iterator<Item = (VertexId, &Vertex)> {
        self.graph
            .node_indices()
            .map(|i| (i.index(), &self.graph[i]))
    }

    /// Edges as `(from, to, slot)`, sorted.
    pub fn edges(&self) -> Vec<(VertexId, VertexId, usize)> {
        let mut out: Vec<_> = self
            .graph
            .edge_references()
            .map(|e| (e.source().index(), e.target().index(), e.weight().slot))
            .collect();
        out.sort_unstable();
        out
    }

    /// The underlying petgraph graph (node index = [`VertexId`]).
    pub fn petgraph(&self) -> &DiGraph<Vertex, Edge> {
        &self.graph
    }

    /// Graphviz DOT: vertices labelled with their description and op kind,
    /// edges with their input slot.
    pub fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph build {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for (id, v) in self.vertices() {
            let kind = match &v.op {
                Op::Source(s) if s.is_resolved() => "source",
                Op::Source(_) => "source (unresolved)",
                Op::Scratch => "scratch",
                Op::Context(_) => "context",
                Op::Exec(_) => "exec",
                Op::Copy(c) if c.add => "add",
                Op::Copy(_) => "copy",
                Op::Mkdir(_) => "mkdir",
            };
            let style = match &v.op {
                Op::Source(s) if !s.is_resolved() => ", style=dashed",
                Op::Context(_) | Op::Scratch => ", shape=ellipse",
                _ => "",
            };
            out.push_str(&format!(
                "  v{id} [label=\"{}\\n({kind})\"{style}];\n",
                dot_escape(&v.description)
            ));
        }
        for (from, to, slot) in self.edges() {
            out.push_str(&format!("  v{from} -> v{to} [label=\"{slot}\"];\n"));
        }
        out.push_str("}\n");
        out
    }
}

fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The serde form: `{"vertices": [{"id": 0, ...}], "edges": [{"from", "to", "slot"}]}`.
#[derive(Serialize, Deserialize)]
struct GraphForm {
    vertices: Vec<NumberedVertex>,
    edges: Vec<EdgeForm>,
}

#[derive(Serialize, Deserialize)]
struct NumberedVertex {
    id: VertexId,
    #[serde(flatten)]
    vertex: Vertex,
}

#[derive(Serialize, Deserialize)]
struct EdgeForm {
    from: VertexId,
    to: VertexId,
    slot: usize,
}

impl Serialize for BuildGraph {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let form = GraphForm {
            vertices: self
                .vertices()
                .map(|(id, v)| NumberedVertex {
                    id,
                    vertex: v.clone(),
                })
                .collect(),
            edges: self
                .edges()
                .into_iter()
                .map(|(from, to, slot)| EdgeForm { from, to, slot })
                .collect(),
        };
        form.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for BuildGraph {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let form = GraphForm::deserialize(deserializer)?;
        let mut graph = BuildGraph::new();
        for (expected, nv) in form.vertices.into_iter().enumerate() {
            if nv.id != expected {
                return Err(D::Error::custom(format!(
                    "vertex ids must be 0..n in order, found {} at {expected}",
                    nv.id
                )));
            }
            if let Some(bad) = nv.vertex.inputs.iter().find(|i| **i >= expected) {
                return Err(D::Error::custom(format!(
                    "vertex {expected} has input {bad} that is not before it"
                )));
            }
            graph.add(nv.vertex);
        }
        let mut edges: Vec<_> = form
            .edges
            .into_iter()
            .map(|e| (e.from, e.to, e.slot))
            .collect();
        edges.sort_unstable();
        if edges != graph.edges() {
            return Err(D::Error::custom("edges do not match the vertices' inputs"));
        }
        Ok(graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vertex(op: Op, inputs: Vec<VertexId>, description: &str) -> Vertex {
        Vertex {
            op,
            inputs,
            description: description.into(),
            stage: None,
            position: None,
            build_args: Shared::default(),
        }
    }

    #[test]
    fn edges_follow_inputs_and_serde_round_trips() {
        let mut g = BuildGraph::new();
        let a = g.add(vertex(Op::Scratch, vec![], "scratch"));
        let b = g.add(vertex(
            Op::Context(ContextOp {
                name: "context".into(),
                all: false,
                include: vec!["a".into()],
            }),
            vec![],
            "context",
        ));
        let c = g.add(vertex(
            Op::Mkdir(MkdirOp {
                path: "/w".into(),
                mode: 0o755,
                user: None,
            }),
            vec![a, b],
            "x",
        ));
        assert_eq!(g.edges(), vec![(a, c, 0), (b, c, 1)]);
        let json = serde_json::to_string(&g).unwrap();
        let back: BuildGraph = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g);
        let dot = g.to_dot();
        assert!(dot.contains("v0 -> v2 [label=\"0\"]"), "{dot}");
        assert!(dot.contains("v1 -> v2 [label=\"1\"]"), "{dot}");
    }

    #[test]
    fn deserialize_rejects_forward_inputs() {
        let json = r#"{"vertices":[{"id":0,"op":{"op":"scratch"},"inputs":[1],"description":"x"}],"edges":[]}"#;
        assert!(serde_json::from_str::<BuildGraph>(json).is_err());
    }
}
