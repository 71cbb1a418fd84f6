//! The exec (JSON array) form of RUN, CMD, COPY, ...: strict RFC 8259 with
//! the decoding quirks of Go's `encoding/json` that decide what upstream
//! accepts.

/// What an argument text that starts with `[` turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonArray {
    /// A valid array of strings: exec form.
    Strings(Vec<String>),
    /// A valid array with a non-string member, which upstream rejects
    /// outright. The offset is that member's, in bytes.
    NotStrings(usize),
    /// Not (acceptable) JSON: the instruction falls back to shell form.
    Invalid,
}

/// Go's scanner refuses to nest deeper than this.
const MAX_DEPTH: usize = 10_000;

/// Parses `s`, which must be exactly one JSON array followed by nothing but
/// JSON whitespace. Iterative, so deep nesting cannot overflow the stack.
pub(crate) fn parse_json_array(s: &str) -> JsonArray {
    enum State {
        Value { allow_close: bool },
        Key { allow_close: bool },
        After,
    }
    let b = s.as_bytes();
    if b.first() != Some(&b'[') {
        return JsonArray::Invalid;
    }
    let mut i = 1;
    let mut stack: Vec<u8> = vec![b'['];
    let mut strings = Vec::new();
    let mut non_string: Option<usize> = None;
    // Go's decoder reports a number out of float64 range as an error of the
    // whole decode, not as a non-string member: upstream then falls back to
    // shell form.
    let mut range_error = false;
    let mut state = State::Value { allow_close: true };
    loop {
        skip_ws(b, &mut i);
        match state {
            State::Value { allow_close } => {
                let Some(&c) = b.get(i) else {
                    return JsonArray::Invalid;
                };
                let element = stack.len() == 1;
                if c != b'"' && c != b']' && element && non_string.is_none() {
                    non_string = Some(i);
                }
                match c {
                    b']' if allow_close => {
                        i += 1;
                        stack.pop();
                        state = State::After;
                    }
                    b'"' => {
                        if element {
                            match decode_string(b, &mut i) {
                                Some(v) => strings.push(v),
                                None => return JsonArray::Invalid,
                            }
                        } else if !skip_string(b, &mut i) {
                            return JsonArray::Invalid;
                        }
                        state = State::After;
                    }
                    b'[' | b'{' => {
                        if stack.len() >= MAX_DEPTH {
                            return JsonArray::Invalid;
                        }
                        stack.push(c);
                        i += 1;
                        state = if c == b'[' {
                            State::Value { allow_close: true }
                        } else {
                            State::Key { allow_close: true }
                        };
                    }
                    b'-' | b'0'..=b'9' => {
                        let start = i;
                        if !skip_number(b, &mut i) {
                            return JsonArray::Invalid;
                        }
                        // The grammar was checked; only the range can fail.
                        if s[start..i].parse::<f64>().is_ok_and(f64::is_infinite) {
                            range_error = true;
                        }
                        state = State::After;
                    }
                    b't' | b'f' | b'n' => {
                        let word: &[u8] = match c {
                            b't' => b"true",
                            b'f' => b"false",
                            _ => b"null",
                        };
                        if !b[i..].starts_with(word) {
                            return JsonArray::Invalid;
                        }
                        i += word.len();
                        state = State::After;
                    }
                    _ => return JsonArray::Invalid,
                }
            }
            State::Key { allow_close } => match b.get(i) {
                Some(b'}') if allow_close => {
                    i += 1;
                    stack.pop();
                    state = State::After;
                }
                Some(b'"') => {
                    if !skip_string(b, &mut i) {
                        return JsonArray::Invalid;
                    }
                    skip_ws(b, &mut i);
                    if b.get(i) != Some(&b':') {
                        return JsonArray::Invalid;
                    }
                    i += 1;
                    state = State::Value { allow_close: false };
                }
                _ => return JsonArray::Invalid,
            },
            State::After => {
                let Some(&top) = stack.last() else {
                    if i != b.len() || range_error {
                        return JsonArray::Invalid;
                    }
                    return match non_string {
                        Some(at) => JsonArray::NotStrings(at),
                        None => JsonArray::Strings(strings),
                    };
                };
                match (top, b.get(i)) {
                    (b'[', Some(b',')) => state = State::Value { allow_close: false },
                    (b'{', Some(b',')) => state = State::Key { allow_close: false },
                    (b'[', Some(b']')) | (b'{', Some(b'}')) => {
                        stack.pop();
                    }
                    _ => return JsonArray::Invalid,
                }
                i += 1;
            }
        }
    }
}

fn skip_ws(b: &[u8], i: &mut usize) {
    while matches!(b.get(*i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        *i += 1;
    }
}

fn skip_number(b: &[u8], i: &mut usize) -> bool {
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if b.get(*i) == Some(&b'-') {
        *i += 1;
    }
    match b.get(*i) {
        Some(b'0') => *i += 1,
        Some(b'1'..=b'9') => {
            digits(i);
        }
        _ => return false,
    }
    if b.get(*i) == Some(&b'.') {
        *i += 1;
        if !digits(i) {
            return false;
        }
    }
    if matches!(b.get(*i), Some(b'e' | b'E')) {
        *i += 1;
        if matches!(b.get(*i), Some(b'+' | b'-')) {
            *i += 1;
        }
        if !digits(i) {
            return false;
        }
    }
    true
}

/// Checks a string token starting at the opening quote and moves past it.
fn skip_string(b: &[u8], i: &mut usize) -> bool {
    let mut j = *i + 1;
    loop {
        match b.get(j) {
            None => return false,
            Some(b'"') => {
                *i = j + 1;
                return true;
            }
            Some(b'\\') => match b.get(j + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                Some(b'u') => {
                    if hex4(b, j + 2).is_none() {
                        return false;
                    }
                    j += 6;
                }
                _ => return false,
            },
            Some(&c) if c < 0x20 => return false,
            Some(_) => j += 1,
        }
    }
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let digits = b.get(at..at + 4)?;
    let mut v = 0;
    for &d in digits {
        v = v * 16 + (d as char).to_digit(16)?;
    }
    Some(v)
}

/// Reads `\uXXXX` at `at`, as Go's `getu4` does.
fn escaped_u4(b: &[u8], at: usize) -> Option<u32> {
    if b.get(at) == Some(&b'\\') && b.get(at + 1) == Some(&b'u') {
        hex4(b, at + 2)
    } else {
        None
    }
}

/// Decodes a string token starting at the opening quote and moves past it.
/// Lone or mismatched surrogate escapes become U+FFFD, as in Go.
fn decode_string(b: &[u8], i: &mut usize) -> Option<String> {
    let mut out = String::new();
    let mut j = *i + 1;
    let mut plain_from = j;
    loop {
        match *b.get(j)? {
            b'"' => {
                out.push_str(str_of(&b[plain_from..j]));
                *i = j + 1;
                return Some(out);
            }
            b'\\' => {
                out.push_str(str_of(&b[plain_from..j]));
                let esc = *b.get(j + 1)?;
                j += 2;
                let c = match esc {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        let first = hex4(b, j)?;
                        j += 4;
                        if (0xd800..0xe000).contains(&first) {
                            match escaped_u4(b, j) {
                                Some(second)
                                    if first < 0xdc00 && (0xdc00..0xe000).contains(&second) =>
                                {
                                    j += 6;
                                    char::from_u32(
                                        0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00),
                                    )?
                                }
                                _ => '\u{fffd}',
                            }
                        } else {
                            char::from_u32(first)?
                        }
                    }
                    _ => return None,
                };
                out.push(c);
                plain_from = j;
            }
            c if c < 0x20 => return None,
            _ => j += 1,
        }
    }
}

/// The bytes between escapes are whole characters: the token boundaries are
/// ASCII and the input is a `str`.
fn str_of(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("\u{fffd}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> JsonArray {
        JsonArray::Strings(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn valid_arrays() {
        assert_eq!(parse_json_array("[]"), strings(&[]));
        assert_eq!(
            parse_json_array("[ \"a\" ,\n\"b\"\r]\t "),
            strings(&["a", "b"])
        );
        assert_eq!(
            parse_json_array(r#"["\u00e9\ud83d\ude00\/"]"#),
            strings(&["é😀/"])
        );
        assert_eq!(parse_json_array(r#"["\ud800"]"#), strings(&["\u{fffd}"]));
        assert_eq!(
            parse_json_array(r#"["\udc00\ud800x"]"#),
            strings(&["\u{fffd}\u{fffd}x"])
        );
        assert_eq!(
            parse_json_array(r#"["\ud800\u0041"]"#),
            strings(&["\u{fffd}A"])
        );
    }

    #[test]
    fn invalid_arrays_fall_back() {
        for s in [
            "[",
            "[\"a\"",
            "[\"a\",]",
            "[,]",
            "['a']",
            "[\"a\"] x",
            "[\"a\"]]",
            "[\"\t\"]",
            "[\"\\x\"]",
            "[\"\\u12\"]",
            "[01]",
            "[1.]",
            "[-]",
            "[1e]",
            "[tru]",
            "[{\"a\" 1}]",
            "[{\"a\":}]",
            "[{,}]",
            "[\"a\", 1e999]",
            "[\"a\", [[-1e400]]]",
        ] {
            assert_eq!(parse_json_array(s), JsonArray::Invalid, "{s}");
        }
    }

    #[test]
    fn non_string_members_are_reported() {
        assert_eq!(parse_json_array("[\"a\", 42]"), JsonArray::NotStrings(6));
        assert_eq!(
            parse_json_array("[{\"a\": [1, \"b\"]}]"),
            JsonArray::NotStrings(1)
        );
        assert_eq!(parse_json_array("[null]"), JsonArray::NotStrings(1));
        assert_eq!(parse_json_array("[1e-999]"), JsonArray::NotStrings(1));
    }

    #[test]
    fn nesting_limit_is_gos() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(parse_json_array(&ok), JsonArray::NotStrings(1));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(parse_json_array(&deep), JsonArray::Invalid);
    }
}
