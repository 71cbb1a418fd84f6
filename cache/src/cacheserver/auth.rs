//! Tokens of the cache server: the `--token-file` format and how a request
//! presents a token (bearer, or the password of basic auth).

use std::path::{Path, PathBuf};

use base64::Engine as _;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Pulls: GET and HEAD.
    ReadOnly,
    /// Pulls and pushes.
    ReadWrite,
}

/// An invalid token file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `ro TOKEN` or `rw TOKEN`")]
    BadLine { path: PathBuf, line: usize },
    #[error("token file {path} holds no token")]
    Empty { path: PathBuf },
}

/// The tokens of a token file.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<(String, Access)>,
}

impl Tokens {
    /// Reads a token file: one `ro TOKEN` or `rw TOKEN` a line; blank lines
    /// and lines starting with `#` are ignored.
    pub fn load(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let tokens = Tokens::parse(&text).map_err(|line| TokenFileError::BadLine {
            path: path.to_path_buf(),
            line,
        })?;
        if tokens.tokens.is_empty() {
            return Err(TokenFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(tokens)
    }

    /// Parses the text of a token file; the error is the 1-based number of
    /// the first bad line.
    pub fn parse(text: &str) -> Result<Tokens, usize> {
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let access = match words.next() {
                Some("ro") => Access::ReadOnly,
                Some("rw") => Access::ReadWrite,
                _ => return Err(i + 1),
            };
            let (Some(token), None) = (words.next(), words.next()) else {
                return Err(i + 1);
            };
            tokens.push((token.to_string(), access));
        }
        Ok(Tokens { tokens })
    }

    /// The access an `Authorization` header grants, if any. A token given
    /// twice with different rights grants the larger.
    pub fn check(&self, authorization: Option<&str>) -> Option<Access> {
        let presented = presented_token(authorization?)?;
        self.tokens
            .iter()
            .filter(|(t, _)| constant_time_eq(t.as_bytes(), presented.as_bytes()))
            .map(|(_, a)| *a)
            .max()
    }
}

/// The token of `Bearer TOKEN`, or the password of `Basic base64(user:pass)`.
fn presented_token(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (_, password) = decoded.split_once(':')?;
        return Some(password.to_string());
    }
    None
}

/// Compares without leaking through timing how long a common prefix is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_lines_and_reports_bad_ones() {
        let t = Tokens::parse("# team\nro reader\n\nrw writer\n").unwrap();
        assert_eq!(t.check(Some("Bearer reader")), Some(Access::ReadOnly));
        assert_eq!(t.check(Some("Bearer writer")), Some(Access::ReadWrite));
        assert_eq!(t.check(Some("Bearer other")), None);
        assert_eq!(t.check(None), None);
        assert_eq!(Tokens::parse("ro a\nrx b\n").unwrap_err(), 2);
        assert_eq!(Tokens::parse("rw a b\n").unwrap_err(), 1);
        assert_eq!(Tokens::parse("rw\n").unwrap_err(), 1);
    }

    #[test]
    fn basic_auth_password_is_the_token_whatever_the_user() {
        let t = Tokens::parse("rw s3cret\n").unwrap();
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(
            t.check(Some(&basic("anyone:s3cret"))),
            Some(Access::ReadWrite)
        );
        assert_eq!(t.check(Some(&basic("s3cret:wrong"))), None);
        assert_eq!(t.check(Some("Digest s3cret")), None);
    }
}
