//! "Did you mean …?" hints for misspelt instructions, flags, mount keys and targets.

/// Levenshtein distance over characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest option within two edits, if any. Very short words get no
/// suggestion: two edits would turn them into almost anything.
pub(crate) fn closest<'a>(
    value: &str,
    options: impl IntoIterator<Item = &'a str>,
    case_sensitive: bool,
) -> Option<&'a str> {
    let value = if case_sensitive {
        value.to_string()
    } else {
        value.to_lowercase()
    };
    let mut best: Option<(usize, &'a str)> = None;
    for opt in options {
        let cmp = if case_sensitive {
            opt.to_string()
        } else {
            opt.to_lowercase()
        };
        if cmp == value {
            continue;
        }
        let d = distance(&value, &cmp);
        if d <= 2 && d < value.chars().count() && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, opt));
        }
    }
    best.map(|(_, o)| o)
}

/// `message` with ` (did you mean X?)` appended when an option is close.
pub(crate) fn with_hint<'a>(
    message: String,
    value: &str,
    options: impl IntoIterator<Item = &'a str>,
    case_sensitive: bool,
) -> String {
    match closest(value, options, case_sensitive) {
        Some(s) => format!("{message} (did you mean {s}?)"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(closest("bulid", ["build", "base"], true), Some("build"));
        assert_eq!(
            closest("mont", ["mount", "network", "security"], true),
            Some("mount")
        );
        assert_eq!(
            closest("FNTRYPOINT", ["ENTRYPOINT", "RUN"], true),
            Some("ENTRYPOINT")
        );
        assert_eq!(
            closest("tmp", ["bind", "cache", "tmpfs", "secret", "ssh"], true),
            Some("tmpfs")
        );
        assert_eq!(closest("zzzzzz", ["build"], true), None);
        assert_eq!(closest("ab", ["cd"], true), None);
    }
}
