//! What one process pays to parse its first reference, with this crate and
//! with oci-spec's regex (compiled on first use):
//! `cargo run --release -p reference --example first_parse -- [ours|oci-spec]`.

use std::time::Instant;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "ours".into());
    let names = [
        "busybox",
        "docker.io/library/stages:latest",
        "ghcr.io/o/r:1",
    ];
    let start = Instant::now();
    for name in names {
        let r = match which.as_str() {
            "oci-spec" => {
                oci_spec::distribution::Reference::try_from(name).map_err(|e| e.to_string())
            }
            _ => reference::parse(name).map_err(|e| e.to_string()),
        };
        assert!(r.is_ok(), "{name}: {r:?}");
    }
    println!(
        "{which}: first {} parses took {:?}",
        names.len(),
        start.elapsed()
    );
}
