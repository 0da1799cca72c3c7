//! [`Digest`]: the validated name of a blob.
//!
//! A digest is the only thing blob file names are built from, so validating it here (exactly
//! `sha256:` and 64 lowercase hex characters, nothing else) is what makes path traversal
//! impossible in the store: no `/`, no `..`, no NUL can ever reach a path.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use super::StoreError;

/// The one algorithm the store accepts.
const PREFIX: &str = "sha256:";
/// Hex characters of a SHA-256.
const HEX_LEN: usize = 64;

/// A validated `sha256:<64 lowercase hex>` digest.
///
/// Invariant: the inner string is always `sha256:` followed by exactly 64 characters of
/// `[0-9a-f]`. Every constructor ([`Digest::parse`], [`Digest::of`], deserializing) keeps it,
/// so [`Digest::hex`] is always safe to use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`, refusing anything else: other algorithms,
    /// uppercase hex, a wrong length, surrounding whitespace.
    pub fn parse(s: &str) -> Result<Digest, StoreError> {
        let invalid = |reason: &'static str| StoreError::InvalidDigest {
            input: s.chars().take(100).collect(),
            reason,
        };
        let hex = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| invalid("not a sha256: digest"))?;
        if hex.len() != HEX_LEN {
            return Err(invalid("expected 64 hex characters"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("expected lowercase hex characters"));
        }
        Ok(Digest(s.to_owned()))
    }

    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher computed.
    pub(crate) fn from_sha256(hasher: Sha256) -> Digest {
        let sum = hasher.finalize();
        let mut s = String::with_capacity(PREFIX.len() + HEX_LEN);
        s.push_str(PREFIX);
        for b in sum.iter() {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        }
        Digest(s)
    }

    /// The digest of a file name in the store (`<hex>` or `<hex>.<suffix>`), if it is one.
    pub(crate) fn from_file_stem(name: &str) -> Option<Digest> {
        let hex = name.split('.').next()?;
        Digest::parse(&format!("{PREFIX}{hex}")).ok()
    }

    /// The whole digest, `sha256:...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex characters (what blob files are named).
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Digest, StoreError> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    /// Deserializes from the string form, validated like [`Digest::parse`].
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(deserializer)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}
