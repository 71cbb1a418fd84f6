//! BuildKit's AST dump (the `result` format of its parser fixtures) and the
//! Go string quoting it relies on.

use unicode_general_category::{GeneralCategory, get_general_category};

use super::ast::{Ast, Node};

/// Renders the tree the way BuildKit's `Node.Dump` does, plus the final
/// newline its fixture files carry: one `(instruction ...)` line each.
pub fn dump(ast: &Ast) -> String {
    let mut out = String::with_capacity(ast.children.len() * 48);
    for child in &ast.children {
        out.push('(');
        dump_node(child, &mut out);
        out.push_str(")\n");
    }
    // The root's own dump is trimmed like every other node's, which removes
    // the newline after the last child; the fixture format then adds one back.
    trim_space_from(&mut out, 0);
    out.push('\n');
    out
}

/// Renders one node (an instruction, or an argument node that has children)
/// without the surrounding parentheses.
pub fn dump_node(node: &Node, out: &mut String) {
    let start = out.len();
    push_go_lower(out, &node.value);
    if !node.flags.is_empty() {
        out.push_str(" [");
        for (i, flag) in node.flags.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            push_go_quoted(out, flag);
        }
        out.push(']');
    }
    for child in &node.children {
        out.push('(');
        dump_node(child, out);
        out.push_str(")\n");
    }
    for arg in &node.next {
        out.push(' ');
        if arg.children.is_empty() {
            push_go_quoted(out, &arg.value);
        } else {
            dump_node(arg, out);
        }
    }
    trim_space_from(out, start);
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_go_quoted(&mut out, s);
    out
}

/// Appends `s` quoted as Go's `strconv.Quote` does: `\a \b \f \n \r \t \v`,
/// `\xHH` for other C0 controls and DEL, raw UTF-8 for what Go calls
/// printable, `\uHHHH`/`\UHHHHHHHH` for everything else.
pub fn push_go_quoted(out: &mut String, s: &str) {
    out.push('"');
    let mut plain_from = 0;
    for (i, c) in s.char_indices() {
        // Printable ASCII other than the two escaped characters is by far the
        // common case; copy such runs in one go.
        if (' '..='~').contains(&c) && c != '"' && c != '\\' {
            continue;
        }
        if !(c as u32 >= 0x80 && is_go_print(c)) {
            out.push_str(&s[plain_from..i]);
            plain_from = i + c.len_utf8();
            push_escaped(out, c);
        }
    }
    out.push_str(&s[plain_from..]);
    out.push('"');
}

fn push_escaped(out: &mut String, c: char) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        _ => {
            let v = c as u32;
            let (prefix, digits) = if v < 0x20 || v == 0x7f {
                ("\\x", 2)
            } else if v < 0x10000 {
                ("\\u", 4)
            } else {
                ("\\U", 8)
            };
            out.push_str(prefix);
            for shift in (0..digits).rev() {
                out.push(HEX[((v >> (shift * 4)) & 0xf) as usize] as char);
            }
        }
    }
}

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and
/// the ASCII space. U+00A0 and U+00AD are not printable.
pub fn is_go_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    use GeneralCategory as G;
    matches!(
        get_general_category(c),
        G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter
            | G::NonspacingMark
            | G::SpacingMark
            | G::EnclosingMark
            | G::DecimalNumber
            | G::LetterNumber
            | G::OtherNumber
            | G::ConnectorPunctuation
            | G::DashPunctuation
            | G::OpenPunctuation
            | G::ClosePunctuation
            | G::InitialPunctuation
            | G::FinalPunctuation
            | G::OtherPunctuation
            | G::MathSymbol
            | G::CurrencySymbol
            | G::ModifierSymbol
            | G::OtherSymbol
    )
}

/// Go's `unicode.ToLower` for one character: the simple (one-to-one) case
/// mapping. Rust's `char::to_lowercase` differs only for U+0130, which it
/// maps to two characters.
pub(crate) fn go_lower_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    if c == '\u{130}' {
        return 'i';
    }
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

/// Appends Go's `strings.ToLower(s)` (per-character simple mapping, so no
/// final-sigma rule as in Rust's `str::to_lowercase`).
pub(crate) fn push_go_lower(out: &mut String, s: &str) {
    if s.is_ascii() {
        out.extend(s.bytes().map(|b| b.to_ascii_lowercase() as char));
    } else {
        out.extend(s.chars().map(go_lower_char));
    }
}

/// Go's `strings.TrimSpace` applied to `out[start..]` in place.
fn trim_space_from(out: &mut String, start: usize) {
    let end = out[start..].trim_end().len() + start;
    out.truncate(end);
    let lead = out[start..].len() - out[start..].trim_start().len();
    if lead > 0 {
        out.drain(start..start + lead);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_go_for_controls_and_escapes() {
        assert_eq!(go_quote(""), r#""""#);
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote("\u{7}\u{8}\u{c}\n\r\t\u{b}"),
            r#""\a\b\f\n\r\t\v""#
        );
        assert_eq!(go_quote("\0\u{1}\u{1f}\u{7f}"), r#""\x00\x01\x1f\x7f""#);
    }

    #[test]
    fn quote_matches_go_for_non_ascii() {
        assert_eq!(go_quote("♥☃é"), "\"♥☃é\"");
        // Not printable in Go's sense: separators other than ASCII space,
        // format characters, private use, C1 controls.
        assert_eq!(go_quote("\u{a0}"), r#""\u00a0""#);
        assert_eq!(go_quote("\u{ad}"), r#""\u00ad""#);
        assert_eq!(go_quote("\u{85}"), r#""\u0085""#);
        assert_eq!(
            go_quote("\u{2028}\u{200b}\u{feff}"),
            r#""\u2028\u200b\ufeff""#
        );
        assert_eq!(go_quote("\u{e000}"), r#""\ue000""#);
        assert_eq!(go_quote("\u{f0000}"), r#""\U000f0000""#);
        assert_eq!(go_quote("\u{e0001}"), r#""\U000e0001""#);
        // Astral printable characters stay raw.
        assert_eq!(go_quote("😀𝔸"), "\"😀𝔸\"");
        // The replacement character is a symbol, hence printable.
        assert_eq!(go_quote("\u{fffd}"), "\"\u{fffd}\"");
    }

    #[test]
    fn lower_is_go_simple_mapping() {
        let mut s = String::new();
        push_go_lower(&mut s, "RUN\u{130}ΣΑΣ\u{212a}");
        assert_eq!(s, "runiσασk");
    }

    #[test]
    fn dump_trims_like_go() {
        let node = Node {
            value: "ONBUILD".into(),
            next: vec![Node {
                children: vec![Node {
                    value: "RUN".into(),
                    next: vec![Node {
                        value: "echo".into(),
                        ..Node::default()
                    }],
                    ..Node::default()
                }],
                ..Node::default()
            }],
            ..Node::default()
        };
        let ast = Ast {
            children: vec![node],
            ..Ast::default()
        };
        assert_eq!(dump(&ast), "(onbuild (run \"echo\"))\n");
        assert_eq!(dump(&Ast::default()), "\n");
    }
}
