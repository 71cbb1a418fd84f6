//! The build graph: plain-data ops (source, context, exec, copy) in a petgraph DAG.
