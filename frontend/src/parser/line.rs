//! One logical line → keyword, `--flags`, and the rest of the arguments.

use std::borrow::Cow;

/// A logical line cut into its parts. Offsets are byte offsets into the text
/// handed to [`split_command`].
#[derive(Debug)]
pub(crate) struct Split<'a> {
    pub(crate) keyword: &'a str,
    pub(crate) flags: Vec<String>,
    /// The arguments after the flags, trimmed. Borrowed except in the rare
    /// case described in [`rest_from`].
    pub(crate) rest: Cow<'a, str>,
    pub(crate) rest_offset: usize,
}

/// The separators of BuildKit's `reWhitespace` (`[\t\v\f\r ]`).
pub(crate) fn is_token_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\x0b' | b'\x0c' | b'\r')
}

/// Go's `unicode.IsSpace(rune(b))` for a single byte: upstream scans flags
/// and the HEALTHCHECK type byte by byte, so the UTF-8 continuation bytes
/// 0x85 and 0xA0 count as whitespace there.
pub(crate) fn is_byte_space(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r' | 0x85 | 0xa0
    )
}

/// Splits `line` at runs of `[\t\v\f\r ]` the way Go's `regexp.Split(s, -1)`
/// does: a leading or trailing run yields an empty piece.
pub(crate) fn split_token_space(s: &str) -> impl Iterator<Item = (usize, &str)> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let start = pos;
        while pos < bytes.len() && !is_token_space(bytes[pos]) {
            pos += 1;
        }
        let piece = (start, &s[start..pos]);
        if pos == bytes.len() {
            done = true;
        } else {
            while pos < bytes.len() && is_token_space(bytes[pos]) {
                pos += 1;
            }
        }
        Some(piece)
    })
}

/// BuildKit's `splitCommand`: trim, cut the keyword at the first run of
/// `[\t\v\f\r ]`, pull the leading `--flags` off the remainder, trim again.
pub(crate) fn split_command(line: &str, escape: char) -> Split<'_> {
    let trimmed = line.trim();
    let base = trimmed.as_ptr() as usize - line.as_ptr() as usize;
    let bytes = trimmed.as_bytes();
    let Some(kw_end) = bytes.iter().position(|&b| is_token_space(b)) else {
        return Split {
            keyword: trimmed,
            flags: Vec::new(),
            rest: Cow::Borrowed(""),
            rest_offset: line.len(),
        };
    };
    let mut after = kw_end;
    while after < bytes.len() && is_token_space(bytes[after]) {
        after += 1;
    }
    let remainder = &trimmed[after..];
    let (rest_start, flags) = extract_flags(remainder, escape);
    let (rest, rest_offset) = rest_from(remainder, rest_start);
    let (rest, rest_offset) = match rest {
        Cow::Borrowed(r) => {
            let t = r.trim();
            (
                Cow::Borrowed(t),
                rest_offset + (t.as_ptr() as usize - r.as_ptr() as usize),
            )
        }
        Cow::Owned(r) => (Cow::Owned(r.trim().to_owned()), rest_offset),
    };
    Split {
        keyword: &trimmed[..kw_end],
        flags,
        rest,
        rest_offset: base + after + rest_offset,
    }
}

/// `s[start..]` as upstream's byte slicing gives it. Because upstream treats
/// the bytes 0x85 and 0xA0 as spaces, `start` can fall inside a multi-byte
/// character; Go then keeps the orphan continuation bytes (and would print
/// them as `\xHH`). A `String` cannot hold them, so each becomes U+FFFD.
pub(crate) fn rest_from(s: &str, start: usize) -> (Cow<'_, str>, usize) {
    if s.is_char_boundary(start) {
        return (Cow::Borrowed(&s[start..]), start);
    }
    let mut next = start;
    while !s.is_char_boundary(next) {
        next += 1;
    }
    let mut owned = "\u{fffd}".repeat(next - start);
    owned.push_str(&s[next..]);
    (Cow::Owned(owned), start)
}

/// BuildKit's `extractBuilderFlags`: reads the leading words that start with
/// `--`, removing quotes and escapes from them. Returns where the remaining
/// arguments start (`line.len()` when nothing remains) and the flags.
///
/// Upstream walks bytes and appends each byte as the character with that
/// value, so non-ASCII text in a flag comes out as Latin-1 mojibake; this is
/// copied for dump compatibility.
pub(crate) fn extract_flags(line: &str, escape: char) -> (usize, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let esc = escape as u32 as u8;
    let b = line.as_bytes();
    let mut flags = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = 0u8;
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= b.len() {
        let at_end = pos == b.len();
        let mut ch = if at_end { 0 } else { b[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if is_byte_space(ch) {
                pos += 1;
                continue;
            }
            if ch != b'-' || pos + 1 == b.len() || b[pos + 1] != b'-' {
                return (pos, flags);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                flags.push(word);
            }
            return (b.len(), flags);
        }
        if phase == Phase::Word {
            if is_byte_space(ch) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (pos, flags);
                }
                if blank_ok || !word.is_empty() {
                    flags.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == b'\'' || ch == b'"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == esc {
                if pos + 1 == b.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = b[pos];
            }
            word.push(ch as char);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == esc {
            if pos + 1 == b.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = b[pos];
        }
        word.push(ch as char);
        pos += 1;
    }
    (b.len(), flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(s: &str) -> (String, Vec<String>) {
        let (at, f) = extract_flags(s, '\\');
        (rest_from(s, at).0.into_owned(), f)
    }

    #[test]
    fn flags_and_double_dash() {
        assert_eq!(
            flags("--a=1 --b x y"),
            ("x y".into(), vec!["--a=1".into(), "--b".into()])
        );
        assert_eq!(flags("-- foo"), (" foo".into(), vec![]));
        assert_eq!(flags("--x --"), ("".into(), vec!["--x".into()]));
        assert_eq!(flags("--x=\"a b\" c"), ("c".into(), vec!["--x=a b".into()]));
        assert_eq!(flags("--x='' c"), ("c".into(), vec!["--x=".into()]));
        assert_eq!(flags("--x='a\\'b' c"), ("c".into(), vec!["--x=a'b".into()]));
        assert_eq!(flags("--x\\"), ("".into(), vec!["--x".into()]));
        assert_eq!(flags("--\"\" c"), (" c".into(), vec![]));
        assert_eq!(flags("-x"), ("-x".into(), vec![]));
        assert_eq!(
            flags("--x=\"unterminated"),
            ("".into(), vec!["--x=unterminated".into()])
        );
    }

    #[test]
    fn flags_are_scanned_bytewise() {
        // é is C3 A9: two Latin-1 characters.
        assert_eq!(flags("--x=é y").1, vec!["--x=\u{c3}\u{a9}".to_owned()]);
        // à is C3 A0, and A0 separates words.
        assert_eq!(flags("--x=àb").0, "b");
        // U+0800 is E0 A0 80: the rest starts with an orphan continuation
        // byte.
        assert_eq!(flags("--x=\u{800}b").0, "\u{fffd}b");
    }

    #[test]
    fn split_command_parts() {
        let s = split_command("  COPY --from=a\t src  dst  ", '\\');
        assert_eq!(s.keyword, "COPY");
        assert_eq!(s.flags, vec!["--from=a".to_owned()]);
        assert_eq!(s.rest, "src  dst");
        assert_eq!(s.rest_offset, 17);
        let s = split_command("FROM", '\\');
        assert_eq!((s.keyword, s.rest.as_ref()), ("FROM", ""));
    }

    #[test]
    fn token_space_split_is_go_regexp_split() {
        let v: Vec<_> = split_token_space("a  b\tc").map(|(_, p)| p).collect();
        assert_eq!(v, ["a", "b", "c"]);
        let v: Vec<_> = split_token_space(" a ").map(|(_, p)| p).collect();
        assert_eq!(v, ["", "a", ""]);
        let v: Vec<_> = split_token_space("a\u{a0}b").map(|(_, p)| p).collect();
        assert_eq!(v, ["a\u{a0}b"]);
    }
}
