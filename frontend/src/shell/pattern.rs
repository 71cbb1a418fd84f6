//! Shell patterns of `${V#p}`, `${V%p}` and `${V/p/r}`, matched through a
//! regex translation as BuildKit does: `*`, `?` and `\` escapes, no brackets.

use regex::Regex;

/// Translates `pattern` to a regex. `greedy` decides whether `*` takes the
/// longest or the shortest run; `anchored` pins the match to the start.
fn to_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, String> {
    let mut out = String::with_capacity(pattern.len() + 8);
    if anchored {
        out.push('^');
    }
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(if greedy { ".*" } else { ".*?" }),
            '?' => out.push('.'),
            '\\' => {
                // `\}` and `\/` only kept the brace or slash from ending the
                // substitution; the character itself is an ordinary one.
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(e @ ('*' | '?' | '\\')) => {
                        out.push_str(&regex::escape(e.encode_utf8(&mut [0; 4])))
                    }
                    Some(e) => return Err(format!("invalid escape '\\{e}'")),
                    None => return Err("escape character at the end of the pattern".to_owned()),
                }
            }
            _ => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    Regex::new(&out).map_err(|e| e.to_string())
}

/// `${V#p}` and `${V##p}`: removes the shortest (longest if `greedy`) prefix
/// of `value` that matches.
pub(super) fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let re = to_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_owned(),
        None => value.to_owned(),
    })
}

/// `${V%p}` and `${V%%p}`: removes the shortest (longest if `greedy`) suffix
/// of `value` that matches.
pub(super) fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    // A regex finds the leftmost match, not the shortest rightmost one, so
    // reverse both sides and trim a prefix instead.
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverses a pattern while keeping each `\x` escape pair in order.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let len = if chars[i] == '\\' && i + 1 < chars.len() {
            2
        } else {
            1
        };
        tokens.push(&chars[i..i + len]);
        i += len;
    }
    tokens.iter().rev().flat_map(|t| t.iter()).collect()
}

/// `${V/p/r}` (first match) and `${V//p/r}` (all matches). As in BuildKit,
/// replacing all matches goes through the regex template, so `$0` in the
/// replacement stands for the match; replacing the first is literal.
pub(super) fn replace(
    pattern: &str,
    value: &str,
    replacement: &str,
    all: bool,
) -> Result<String, String> {
    let re = to_regex(pattern, true, false)?;
    if !all {
        return Ok(match re.find(value) {
            Some(m) => format!("{}{replacement}{}", &value[..m.start()], &value[m.end()..]),
            None => value.to_owned(),
        });
    }
    // Go's ReplaceAll: an empty match right after a match is not replaced,
    // and the search always moves on by at least one character.
    let mut out = String::with_capacity(value.len());
    let mut last_end = 0;
    let mut search = 0;
    while search <= value.len() {
        let Some(caps) = re.captures_at(value, search) else {
            break;
        };
        let m = caps.get(0).expect("group 0 always participates");
        out.push_str(&value[last_end..m.start()]);
        if m.end() > last_end || m.start() == 0 {
            caps.expand(replacement, &mut out);
        }
        last_end = m.end();
        let width = value[search..].chars().next().map_or(1, char::len_utf8);
        search = if search + width > m.end() {
            search + width
        } else {
            m.end()
        };
    }
    out.push_str(&value[last_end..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_keeps_escape_pairs() {
        assert_eq!(reverse_pattern(r"a\*c"), r"c\*a");
        assert_eq!(reverse_pattern(r"ab\"), r"\ba");
        assert_eq!(reverse_pattern(""), "");
    }

    #[test]
    fn trims() {
        assert_eq!(trim_prefix("*x", "xxyy", false).unwrap(), "xyy");
        assert_eq!(trim_prefix("*x", "xxyy", true).unwrap(), "yy");
        assert_eq!(trim_suffix("y*", "xxyy", false).unwrap(), "xxy");
        assert_eq!(trim_suffix("y*", "xxyy", true).unwrap(), "xx");
        assert_eq!(trim_prefix("[a]", "[a]b", false).unwrap(), "b");
        assert!(trim_prefix(r"\#", "#", false).is_err());
    }

    #[test]
    fn replace_all_like_go() {
        assert_eq!(replace("", "ab", "-", true).unwrap(), "-a-b-");
        // `*` is a shell star (`.*`), so it eats the rest; the empty match at
        // the end abuts it and is not replaced again.
        assert_eq!(replace("x*", "abxxc", "-", true).unwrap(), "ab-");
        assert_eq!(replace("*", "abc", "-", true).unwrap(), "-");
        assert_eq!(replace("b", "abcb", "[$0]", true).unwrap(), "a[b]c[b]");
        assert_eq!(replace("b", "abcb", "[$0]", false).unwrap(), "a[$0]cb");
        assert_eq!(replace("é", "aébé", "e", true).unwrap(), "aebe");
    }
}
