//! Digest strings as bosh-utils `crypto` writes them: SHA-1 as bare hex (legacy releases),
//! every other algorithm as `<algorithm>:<hex>` (`sha256:ab12…`). New digests are SHA-256.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256, Sha512};

/// The digest string of some bytes: `sha256:<hex>`.
pub fn sha256_string(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// The digest string of a file's content, with its size.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let size = io::copy(&mut file, &mut hasher)?;
    Ok((format!("sha256:{}", hex(&hasher.finalize())), size))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// A digest read from a release manifest or blobs index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedDigest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl ExpectedDigest {
    /// Parses `sha256:<hex>`, `sha512:<hex>`, bare (SHA-1) hex, or a `;`-separated list of
    /// these (bosh-utils "multiple digest"), keeping the strongest.
    pub fn parse(text: &str) -> Option<ExpectedDigest> {
        text.split(';')
            .map(|one| {
                let (algorithm, hex, length) = match one.split_once(':') {
                    None => (Algorithm::Sha1, one, 40),
                    Some(("sha256", hex)) => (Algorithm::Sha256, hex, 64),
                    Some(("sha512", hex)) => (Algorithm::Sha512, hex, 128),
                    Some(_) => return None,
                };
                let valid = hex.len() == length && hex.bytes().all(|b| b.is_ascii_hexdigit());
                valid.then(|| ExpectedDigest {
                    algorithm,
                    hex: hex.to_ascii_lowercase(),
                })
            })
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max_by_key(|d| d.algorithm)
    }

    /// The digest string of `reader`'s content in this digest's algorithm.
    pub fn compute(&self, reader: &mut dyn Read) -> io::Result<String> {
        Ok(match self.algorithm {
            Algorithm::Sha1 => {
                let mut hasher = openssl::sha::Sha1::new();
                let mut buffer = [0u8; 64 * 1024];
                loop {
                    let n = reader.read(&mut buffer)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buffer[..n]);
                }
                hex(&hasher.finish())
            }
            Algorithm::Sha256 => {
                let mut hasher = Sha256::new();
                io::copy(reader, &mut hasher)?;
                format!("sha256:{}", hex(&hasher.finalize()))
            }
            Algorithm::Sha512 => {
                let mut hasher = Sha512::new();
                io::copy(reader, &mut hasher)?;
                format!("sha512:{}", hex(&hasher.finalize()))
            }
        })
    }

    /// The digest string this stands for.
    pub fn as_string(&self) -> String {
        match self.algorithm {
            Algorithm::Sha1 => self.hex.clone(),
            Algorithm::Sha256 => format!("sha256:{}", self.hex),
            Algorithm::Sha512 => format!("sha512:{}", self.hex),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_strings_follow_bosh_utils() {
        // `printf data | sha256sum` and `| sha1sum`.
        assert_eq!(
            sha256_string(b"data"),
            "sha256:3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"
        );
        let sha1 = ExpectedDigest::parse("a17c9aaa61e80a1bf71d0d850af4e5baa9800bbd").unwrap();
        assert_eq!(
            sha1.compute(&mut &b"data"[..]).unwrap(),
            "a17c9aaa61e80a1bf71d0d850af4e5baa9800bbd"
        );
        let multiple = ExpectedDigest::parse(
            "a17c9aaa61e80a1bf71d0d850af4e5baa9800bbd;sha256:3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7",
        )
        .unwrap();
        assert_eq!(
            multiple.as_string(),
            "sha256:3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7"
        );
        assert_eq!(ExpectedDigest::parse("md5:abc"), None);
        assert_eq!(ExpectedDigest::parse("sha256:xyz"), None);
    }
}
