//! Which Debian mirror to build from: the host's own APT sources, read in APT's order
//! (`/etc/apt/sources.list`, then `/etc/apt/sources.list.d/*.list` and deb822 `*.sources`
//! files by name), so a stemcell is built from the mirror the host already trusts and
//! reaches. No mirror URL is written in this code; `--mirror` overrides what is found.
//!
//! A source counts as a Debian archive when it is a binary (`deb`) source over http, https,
//! ftp or file, with the `main` component and a Debian suite (a codename such as
//! `bookworm`, or `stable`, `testing`, `sid`…, optionally with `-updates`, `-backports`,
//! `-proposed-updates`); a suite ending in `-security` (or the old `/updates`) marks the
//! security archive. That tells Debian from third-party repositories (`cloud-sdk-bookworm`,
//! `nodistro`) and from other distributions (`jammy`).
//!
//! Parsing is pure; [`read_host_sources`] is the one function that reads files.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One APT source entry (a one-line `deb` line, or one suite of a deb822 paragraph).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AptSource {
    /// `deb` or `deb-src`.
    pub kind: String,
    /// The archive's URI as written.
    pub uri: String,
    /// The suite (`bookworm`, `bookworm-security`).
    pub suite: String,
    /// The components (`main`, `contrib`).
    pub components: Vec<String>,
}

/// The Debian archives found in a list of sources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DebianMirrors {
    /// The first Debian archive (packages and point releases).
    pub archive: Option<String>,
    /// The first Debian security archive.
    pub security: Option<String>,
}

/// Debian's codenames and suite aliases, the base of every Debian suite name.
const DEBIAN_SUITES: &[&str] = &[
    "buzz",
    "rex",
    "bo",
    "hamm",
    "slink",
    "potato",
    "woody",
    "sarge",
    "etch",
    "lenny",
    "squeeze",
    "wheezy",
    "jessie",
    "stretch",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "experimental",
    "stable",
    "testing",
    "unstable",
    "oldstable",
    "oldoldstable",
];

/// Suffixes of Debian suites other than the security one.
const SUITE_SUFFIXES: &[&str] = &["", "-updates", "-backports", "-proposed-updates"];

/// Parses a one-line-style file (`sources.list`, `*.list`):
/// `deb [ option=value … ] uri suite [component …]`, `#` comments.
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace().peekable();
        let Some(kind) = words.next() else {
            continue;
        };
        // Options: `[arch=amd64 signed-by=/k.gpg]`, `[ arch=amd64 ]`.
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for word in words.by_ref() {
                if word.ends_with(']') {
                    break;
                }
            }
        }
        let Some(mut uri) = words.next().map(str::to_string) else {
            continue;
        };
        // `cdrom:[Debian GNU/Linux 12]/` has spaces inside its brackets.
        while uri.contains('[') && !uri.contains(']') {
            let Some(more) = words.next() else { break };
            uri.push(' ');
            uri.push_str(more);
        }
        let Some(suite) = words.next() else {
            continue;
        };
        sources.push(AptSource {
            kind: kind.to_string(),
            uri,
            suite: suite.to_string(),
            components: words.map(str::to_string).collect(),
        });
    }
    sources
}

/// Parses a deb822-style file (`*.sources`): paragraphs of `Types`, `URIs`, `Suites`,
/// `Components` and `Enabled` fields separated by blank lines; one entry per type, URI and
/// suite, in that order. Disabled paragraphs (`Enabled: no`) are left out.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for paragraph in paragraphs(text) {
        let field = |name: &str| -> Vec<String> {
            paragraph
                .iter()
                .filter(|(key, _)| key.eq_ignore_ascii_case(name))
                .flat_map(|(_, value)| value.split_whitespace().map(str::to_string))
                .collect()
        };
        if field("Enabled")
            .first()
            .is_some_and(|value| value.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let components = field("Components");
        for kind in field("Types") {
            for uri in field("URIs") {
                for suite in field("Suites") {
                    sources.push(AptSource {
                        kind: kind.clone(),
                        uri: uri.clone(),
                        suite,
                        components: components.clone(),
                    });
                }
            }
        }
    }
    sources
}

/// The paragraphs of a deb822 file as (field, value) pairs; continuation lines (starting
/// with a space or tab) extend the previous field, `#` lines are comments.
fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut paragraphs = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            current.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    paragraphs
}

/// The base of a Debian suite name and whether it is the security suite; `None` when the
/// suite is not Debian's.
fn debian_suite(suite: &str) -> Option<bool> {
    let suite = suite.trim_end_matches('/');
    if let Some(base) = suite
        .strip_suffix("-security")
        .or_else(|| suite.strip_suffix("/updates"))
    {
        return DEBIAN_SUITES.contains(&base).then_some(true);
    }
    SUITE_SUFFIXES
        .iter()
        .any(|suffix| {
            suite
                .strip_suffix(suffix)
                .is_some_and(|base| DEBIAN_SUITES.contains(&base))
        })
        .then_some(false)
}

/// Whether debootstrap and APT can fetch from this URI.
fn fetchable(uri: &str) -> bool {
    ["http://", "https://", "ftp://", "file:/"]
        .iter()
        .any(|scheme| uri.starts_with(scheme))
}

/// The first Debian archive and the first Debian security archive among `sources`, in
/// order.
pub fn debian_mirrors(sources: &[AptSource]) -> DebianMirrors {
    let mut mirrors = DebianMirrors::default();
    for source in sources {
        if source.kind != "deb"
            || !fetchable(&source.uri)
            || !source.components.iter().any(|c| c == "main")
        {
            continue;
        }
        let slot = match debian_suite(&source.suite) {
            Some(true) => &mut mirrors.security,
            Some(false) => &mut mirrors.archive,
            None => continue,
        };
        if slot.is_none() {
            *slot = Some(source.uri.clone());
        }
    }
    mirrors
}

/// The files APT reads below `etc_apt` (normally `/etc/apt`), in APT's order:
/// `sources.list`, then the `.list` and `.sources` files of `sources.list.d` by name.
pub fn source_files(etc_apt: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let main = etc_apt.join("sources.list");
    if main.is_file() {
        files.push(main);
    }
    let dir = etc_apt.join("sources.list.d");
    if dir.is_dir() {
        let mut parts: Vec<PathBuf> = fs::read_dir(&dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<io::Result<_>>()?;
        parts.retain(|path| {
            path.is_file()
                && path
                    .extension()
                    .is_some_and(|ext| ext == "list" || ext == "sources")
        });
        parts.sort();
        files.extend(parts);
    }
    Ok(files)
}

/// Reads every source of the APT configuration below `etc_apt`, in APT's order.
pub fn read_host_sources(etc_apt: &Path) -> io::Result<Vec<AptSource>> {
    let mut sources = Vec::new();
    for file in source_files(etc_apt)? {
        let text = fs::read_to_string(&file)?;
        if file.extension().is_some_and(|ext| ext == "sources") {
            sources.extend(parse_deb822(&text));
        } else {
            sources.extend(parse_one_line(&text));
        }
    }
    Ok(sources)
}

/// The APT sources of the stemcell itself (deb822, for
/// `/etc/apt/sources.list.d/debian.sources`): the suite and its `-updates` from the archive,
/// `-security` from the security archive when there is one.
pub fn stemcell_sources(suite: &str, archive: &str, security: Option<&str>) -> String {
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let mut text = format!(
        "Types: deb\nURIs: {archive}\nSuites: {suite} {suite}-updates\nComponents: main\n\
         Signed-By: {keyring}\n"
    );
    if let Some(security) = security {
        text.push_str(&format!(
            "\nTypes: deb\nURIs: {security}\nSuites: {suite}-security\nComponents: main\n\
             Signed-By: {keyring}\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(kind: &str, uri: &str, suite: &str, components: &[&str]) -> AptSource {
        AptSource {
            kind: kind.into(),
            uri: uri.into(),
            suite: suite.into(),
            components: components.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn one_line_sources_with_options_and_comments() {
        let text = "\
# deb http://old.example/debian buster main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] https://a.example/debian bookworm main contrib
deb [ arch=amd64 ] http://b.example/debian bookworm-updates main # trailing comment
deb-src http://c.example/debian bookworm main

deb cdrom:[Debian GNU/Linux 12]/ bookworm main
";
        assert_eq!(
            parse_one_line(text),
            [
                source(
                    "deb",
                    "https://a.example/debian",
                    "bookworm",
                    &["main", "contrib"]
                ),
                source(
                    "deb",
                    "http://b.example/debian",
                    "bookworm-updates",
                    &["main"]
                ),
                source("deb-src", "http://c.example/debian", "bookworm", &["main"]),
                source("deb", "cdrom:[Debian GNU/Linux 12]/", "bookworm", &["main"]),
            ]
        );
    }

    #[test]
    fn deb822_paragraphs_expand_to_one_entry_per_suite() {
        // As Debian 12's installer and container images write it.
        let text = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://deb.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://deb.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGRd
 -----END PGP PUBLIC KEY BLOCK-----

Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
";
        assert_eq!(
            parse_deb822(text),
            [
                source("deb", "http://deb.example/debian", "bookworm", &["main"]),
                source(
                    "deb",
                    "http://deb.example/debian",
                    "bookworm-updates",
                    &["main"]
                ),
                source(
                    "deb",
                    "http://deb.example/debian-security",
                    "bookworm-security",
                    &["main"]
                ),
                source(
                    "deb-src",
                    "http://deb.example/debian-security",
                    "bookworm-security",
                    &["main"]
                ),
            ]
        );
    }

    #[test]
    fn the_first_debian_archive_and_security_archive_are_picked() {
        let sources = [
            source(
                "deb-src",
                "http://src.example/debian",
                "bookworm",
                &["main"],
            ),
            source(
                "deb",
                "https://packages.example/apt",
                "cloud-sdk-bookworm",
                &["main"],
            ),
            source(
                "deb",
                "https://deb.nodesource.example/node_20.x",
                "nodistro",
                &["main"],
            ),
            source(
                "deb",
                "http://archive.ubuntu.example/ubuntu",
                "jammy",
                &["main"],
            ),
            source(
                "deb",
                "https://docker.example/linux/debian",
                "bookworm",
                &["stable"],
            ),
            source("deb", "cdrom:[x]/", "bookworm", &["main"]),
            source(
                "deb",
                "http://mirror.example/debian",
                "trixie-updates",
                &["main"],
            ),
            source("deb", "http://other.example/debian", "bookworm", &["main"]),
            source(
                "deb",
                "http://sec.example/debian-security",
                "bookworm-security",
                &["main"],
            ),
            source(
                "deb",
                "http://sec2.example/debian-security",
                "buster/updates",
                &["main"],
            ),
        ];
        assert_eq!(
            debian_mirrors(&sources),
            DebianMirrors {
                archive: Some("http://mirror.example/debian".into()),
                security: Some("http://sec.example/debian-security".into()),
            }
        );
        assert_eq!(
            debian_mirrors(&sources[..6]),
            DebianMirrors::default(),
            "no Debian source among third-party, Ubuntu and cdrom ones"
        );
        assert_eq!(
            debian_mirrors(&sources[9..]).security.as_deref(),
            Some("http://sec2.example/debian-security")
        );
    }

    #[test]
    fn host_files_are_read_in_apt_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sources.list.d");
        fs::create_dir(&d).unwrap();
        fs::write(
            d.join("b.sources"),
            "Types: deb\nURIs: http://b.example/debian\nSuites: bookworm\nComponents: main\n",
        )
        .unwrap();
        fs::write(
            d.join("a.list"),
            "deb http://a.example/debian bookworm main\n",
        )
        .unwrap();
        fs::write(
            d.join("c.list.disabled"),
            "deb http://c.example/debian bookworm main\n",
        )
        .unwrap();
        let uris = |sources: Vec<AptSource>| -> Vec<String> {
            sources.into_iter().map(|s| s.uri).collect()
        };
        assert_eq!(
            uris(read_host_sources(dir.path()).unwrap()),
            ["http://a.example/debian", "http://b.example/debian"]
        );
        fs::write(
            dir.path().join("sources.list"),
            "deb http://main.example/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(
            uris(read_host_sources(dir.path()).unwrap())[0],
            "http://main.example/debian"
        );
    }

    #[test]
    fn the_stemcell_gets_updates_and_security_sources() {
        assert_eq!(
            stemcell_sources(
                "bookworm",
                "http://m.example/debian",
                Some("http://s.example/debian-security")
            ),
            "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: http://s.example/debian-security\nSuites: bookworm-security\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        assert!(
            !stemcell_sources("bookworm", "http://m.example/debian", None).contains("security")
        );
    }
}
