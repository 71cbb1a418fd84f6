//! `--chmod` values: octal up to 07777, or symbolic modes like `u=rwx,g=rx,o=`.

use crate::graph::Chmod;

/// Parses a `--chmod` value as BuildKit accepts it.
pub(crate) fn parse(value: &str) -> Result<Chmod, String> {
    let octal_err = || {
        format!(
            "invalid chmod parameter: '{value}'. it should be octal string and between 0 and 07777"
        )
    };
    if value.starts_with(|c: char| c.is_ascii_digit()) {
        // Anything that looks numeric is held to the octal rule.
        return match u32::from_str_radix(value, 8) {
            Ok(m) if m <= 0o7777 => Ok(Chmod::Octal(m)),
            _ => Err(octal_err()),
        };
    }
    validate_symbolic(value).map_err(|why| format!("invalid chmod parameter: '{value}': {why}"))?;
    Ok(Chmod::Symbolic(value.to_string()))
}

/// `clause[,clause]...` with `clause = [ugoa]* ([-+=] ([rwxXst]* | [ugo]))+`.
fn validate_symbolic(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("empty mode".into());
    }
    for clause in value.split(',') {
        let mut chars = clause.chars().peekable();
        while chars.peek().is_some_and(|c| "ugoa".contains(*c)) {
            chars.next();
        }
        let mut ops = 0;
        while let Some(op) = chars.next() {
            if !"+-=".contains(op) {
                return Err(format!("unexpected character '{op}' in '{clause}'"));
            }
            ops += 1;
            if chars.peek().is_some_and(|c| "ugo".contains(*c)) {
                chars.next();
                continue;
            }
            while chars.peek().is_some_and(|c| "rwxXst".contains(*c)) {
                chars.next();
            }
        }
        if ops == 0 {
            return Err(format!("missing operator in '{clause}'"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_and_symbolic() {
        assert_eq!(parse("0644"), Ok(Chmod::Octal(0o644)));
        assert_eq!(parse("777"), Ok(Chmod::Octal(0o777)));
        assert_eq!(parse("0"), Ok(Chmod::Octal(0)));
        assert_eq!(parse("7777"), Ok(Chmod::Octal(0o7777)));
        for ok in [
            "go-w",
            "u=rw,g=r,o=r",
            "a+X",
            "u+rw,g+r,o-x,o+w",
            "u=rwx,g=rx,o=",
            "g=u",
            "+x",
            "=",
            "u+s,+t",
        ] {
            assert_eq!(parse(ok), Ok(Chmod::Symbolic(ok.into())), "{ok}");
        }
        assert_eq!(
            parse("64a").unwrap_err(),
            "invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777"
        );
        assert_eq!(
            parse("10000").unwrap_err(),
            "invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777"
        );
        assert!(parse("u").is_err());
        assert!(parse("u=rw,,g=r").is_err());
        assert!(parse("z+x").is_err());
        assert!(parse("").is_err());
    }
}
