//! Canonical JSON: keys sorted, no insignificant whitespace, so digests are reproducible.
//!
//! Only documents this crate creates go through here. Documents read from an
//! archive or a registry are kept as the exact bytes that were received: a
//! manifest's digest is the digest of those bytes, and re-serializing them
//! (even canonically) would give the image another identity.

use serde::Serialize;

/// A value that could not be turned into JSON.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize to canonical json")]
pub struct JsonError(#[source] serde_json::Error);

/// Serializes `value` with object keys sorted and no whitespace.
///
/// The round trip through [`serde_json::Value`] is what sorts the keys: the
/// workspace never enables serde_json's `preserve_order`, so its maps are
/// `BTreeMap`s, whatever order the struct fields or a `HashMap` had.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, JsonError> {
    let value = serde_json::to_value(value).map_err(JsonError)?;
    serde_json::to_vec(&value).map_err(JsonError)
}

/// Like [`to_vec`], as a string.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, JsonError> {
    let bytes = to_vec(value)?;
    // serde_json only ever writes UTF-8.
    Ok(String::from_utf8(bytes).expect("serde_json writes utf-8"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Serialize)]
    struct Unsorted {
        zeta: u32,
        alpha: &'static str,
        nested: HashMap<&'static str, Vec<u32>>,
    }

    #[test]
    fn sorts_keys_at_every_level_without_whitespace() {
        let mut nested = HashMap::new();
        for (i, k) in ["d", "b", "c", "a", "e", "f", "g"].into_iter().enumerate() {
            nested.insert(k, vec![i as u32, 0]);
        }
        let v = Unsorted {
            zeta: 1,
            alpha: "x y",
            nested,
        };
        assert_eq!(
            to_string(&v).unwrap(),
            r#"{"alpha":"x y","nested":{"a":[3,0],"b":[1,0],"c":[2,0],"d":[0,0],"e":[4,0],"f":[5,0],"g":[6,0]},"zeta":1}"#
        );
    }

    #[test]
    fn same_value_gives_same_bytes_whatever_the_insertion_order() {
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for i in 0..50 {
            a.insert(format!("k{i}"), i);
            b.insert(format!("k{}", 49 - i), 49 - i);
        }
        assert_eq!(to_vec(&a).unwrap(), to_vec(&b).unwrap());
    }

    #[test]
    fn escapes_strings_as_json() {
        assert_eq!(to_string(&"a\"b\n").unwrap(), r#""a\"b\n""#);
    }
}
