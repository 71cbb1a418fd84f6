//! `builder images`: list the images of the local store, as `docker images` does.

use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use cache::gc::human_size;
use cache::images::{ImageStore, ImageSummary, parse_rfc3339};
use cache::store::Store;
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct ImagesArgs {
    /// Only show image IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Don't truncate output.
    #[arg(long)]
    no_trunc: bool,
}

/// Opens the image store of `--root`.
pub(crate) fn open(root: &Path) -> anyhow::Result<ImageStore> {
    let store = Store::open(root)
        .with_context(|| format!("cannot open the store at {}", root.display()))?;
    Ok(ImageStore::new(store))
}

pub(crate) fn run(root: &Path, args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let images = open(root)?;
    let mut rows = images.list()?;
    // Newest first, as docker lists them.
    rows.sort_by(|a, b| {
        let created = |r: &ImageSummary| r.created.as_deref().and_then(parse_rfc3339);
        created(b)
            .cmp(&created(a))
            .then_with(|| a.name.cmp(&b.name))
    });
    let id = |r: &ImageSummary| {
        if args.no_trunc {
            r.id.to_string()
        } else {
            r.id.hex()[..12].to_string()
        }
    };
    if args.quiet {
        for r in &rows {
            println!("{}", id(r));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut table = vec![["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"].map(String::from)];
    for r in &rows {
        let (repo, tag) = match &r.name {
            Some(n) => (n.familiar_repository(), n.tag().to_string()),
            None => ("<none>".to_string(), "<none>".to_string()),
        };
        let created = match r.created.as_deref().and_then(parse_rfc3339) {
            Some(t) => format!("{} ago", human_duration(now - t)),
            None => "N/A".to_string(),
        };
        table.push([repo, tag, id(r), created, human_size(r.size)]);
    }
    print!("{}", render_table(&table));
    Ok(ExitCode::SUCCESS)
}

/// Columns padded to their widest cell plus three spaces, like docker's tabwriter.
fn render_table(rows: &[[String; 5]]) -> String {
    let mut widths = [0usize; 5];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}", width = widths[i] + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// docker's (go-units) wording for how long ago something happened.
pub(crate) fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (minutes, hours) = (s / 60, (s as f64 / 3600.0).round() as i64);
    match () {
        _ if s < 1 => "Less than a second".to_string(),
        _ if s == 1 => "1 second".to_string(),
        _ if s < 60 => format!("{s} seconds"),
        _ if minutes == 1 => "About a minute".to_string(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".to_string(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1083953), "1.08MB");
        assert_eq!(human_size(77_800_000), "77.8MB");
        assert_eq!(human_size(5_000_000), "5MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
    }

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(30), "30 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(20 * 86400), "2 weeks");
        assert_eq!(human_duration(90 * 86400), "3 months");
        assert_eq!(human_duration(800 * 86400), "2 years");
    }

    #[test]
    fn table_columns_align() {
        let rows = vec![
            ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"].map(String::from),
            ["app", "1", "0123456789ab", "2 hours ago", "1.08MB"].map(String::from),
        ];
        assert_eq!(
            render_table(&rows),
            "REPOSITORY   TAG   IMAGE ID       CREATED       SIZE\napp          1     0123456789ab   2 hours ago   1.08MB\n"
        );
    }
}
