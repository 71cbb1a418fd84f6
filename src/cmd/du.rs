//! `builder du`: the space the store uses, by kind, and what prune can reclaim.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use cache::gc::{self, Category, human_size};
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct DuArgs {
    /// Also list every cache record and cache mount.
    #[arg(short, long)]
    verbose: bool,
}

pub(crate) fn run(root: &Path, args: DuArgs) -> anyhow::Result<ExitCode> {
    let images = super::images::open(root)?;
    let usage = gc::usage(images.store()).context("cannot measure the store")?;
    let now = SystemTime::now();
    if args.verbose {
        if !usage.record_details.is_empty() {
            let mut table =
                vec![["ID", "PRIVATE", "SHARED", "LAST USED", "DESCRIPTION"].map(String::from)];
            for r in &usage.record_details {
                table.push([
                    r.key.hex()[..12].to_string(),
                    human_size(r.private_size),
                    human_size(r.shared_size),
                    ago(now, r.last_used),
                    r.description.clone(),
                ]);
            }
            print_table(&table);
            println!();
        }
        if !usage.mount_details.is_empty() {
            let mut table = vec![["CACHE MOUNT", "SIZE", "LAST USED"].map(String::from)];
            for m in &usage.mount_details {
                table.push([short_id(&m.id), human_size(m.size), ago(now, m.last_used)]);
            }
            print_table(&table);
            println!();
        }
    }
    let rows: [(&str, Category); 8] = [
        ("Images", usage.images),
        ("Layers (cache only)", usage.cache_layers),
        ("Layers (unreferenced)", usage.unreferenced_blobs),
        ("Snapshots", usage.snapshots),
        ("Cache records", usage.records),
        ("Cache mounts", usage.mounts),
        ("Context cache", usage.context_cache),
        ("Temporary files", usage.tmp),
    ];
    let mut table = vec![["TYPE", "COUNT", "SIZE", "RECLAIMABLE"].map(String::from)];
    for (name, c) in rows {
        table.push([
            name.to_string(),
            c.count.to_string(),
            human_size(c.size),
            human_size(c.reclaimable),
        ]);
    }
    print_table(&table);
    println!();
    println!("Build cache:\t{}", human_size(usage.build_cache()));
    println!("Reclaimable:\t{}", human_size(usage.reclaimable()));
    println!("Total:\t\t{}", human_size(usage.total()));
    Ok(ExitCode::SUCCESS)
}

/// Left-aligned columns, three spaces apart.
pub(crate) fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// The first 12 characters of a hexadecimal id (`sha256:` dropped), as
/// docker shows ids; other names whole.
pub(crate) fn short_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex[..12].to_string()
    } else {
        id.to_string()
    }
}

/// `5 seconds ago`, `3 hours ago`, as docker says it.
pub(crate) fn ago(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).map_or(0, |d| d.as_secs());
    let (n, unit) = match secs {
        0 => return "Less than a second ago".to_string(),
        1..60 => (secs, "second"),
        60..3600 => (secs / 60, "minute"),
        3600..86400 => (secs / 3600, "hour"),
        86400..1_209_600 => (secs / 86400, "day"),
        1_209_600..5_184_000 => (secs / 604_800, "week"),
        5_184_000..63_072_000 => (secs / 2_592_000, "month"),
        _ => (secs / 31_536_000, "year"),
    };
    if n == 1 {
        let article = if unit == "hour" { "An" } else { "1" };
        format!("{article} {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}
