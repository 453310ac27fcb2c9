//! `release.MF`: what a release tarball holds (`cli:release/manifest/release.go`). The same
//! document is kept as `dev_releases/<name>/<name>-<version>.yml` (or under `releases/`), so
//! a release can be rebuilt byte for byte from its record.
//!
//! A compiled release (what `director export-release` writes) lists `compiled_packages`
//! instead of `packages`: each a package's install target built on one stemcell. Only
//! [`ReleaseManifest::parse_tarball`] and [`ReleaseManifest::to_compiled_yaml`] deal with
//! them; the release directory's records never hold any.

use std::sync::Arc;

use serde::Serialize;

use crate::diagnostics::Diagnostics;
use crate::manifest::Spanned;
use crate::manifest::decode::Cx;
use crate::yaml::{self, Map, Node, Span, Value, YamlPath};

/// A release manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReleaseManifest {
    /// Release name.
    pub name: String,
    /// Release version (`0+dev.1`, `1`).
    pub version: String,
    /// Short git commit of the release directory, `non-git` or `empty`.
    pub commit_hash: String,
    /// Whether the release directory had uncommitted changes.
    pub uncommitted_changes: bool,
    /// Jobs, sorted by name.
    pub jobs: Vec<JobRecord>,
    /// Source packages, sorted by name.
    pub packages: Vec<PackageRecord>,
    /// The license (`LICENSE*`, `NOTICE*`), when the release has one.
    pub license: Option<LicenseRecord>,
}

/// A job of a release manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    /// Job name.
    pub name: String,
    /// Fingerprint (BOSH also writes it as `version`).
    pub fingerprint: String,
    /// Digest string of `jobs/<name>.tgz` (the field is called `sha1` for history's sake).
    pub sha1: String,
    /// Packages the job needs.
    pub packages: Vec<String>,
}

/// A package of a release manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PackageRecord {
    /// Package name.
    pub name: String,
    /// Fingerprint (BOSH also writes it as `version`).
    pub fingerprint: String,
    /// Digest string of `packages/<name>.tgz`.
    pub sha1: String,
    /// Names of the packages it depends on.
    pub dependencies: Vec<String>,
}

/// A compiled package of a compiled release's manifest (`compiled_packages`): the package's
/// install target built on one stemcell, as `compiled_packages/<name>.tgz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CompiledPackageRecord {
    /// Package name.
    pub name: String,
    /// `<fingerprint>.<build>` as this director writes it (BOSH writes the fingerprint).
    pub version: String,
    /// The source package's fingerprint.
    pub fingerprint: String,
    /// Digest string of `compiled_packages/<name>.tgz`.
    pub sha1: String,
    /// The stemcell it was compiled on, `os/version`.
    pub stemcell: String,
    /// Names of the packages it depends on (compiled with it).
    pub dependencies: Vec<String>,
}

impl CompiledPackageRecord {
    /// The stemcell's operating system and version (`stemcell` is checked to hold both
    /// when parsed).
    pub fn stemcell_os_version(&self) -> (&str, &str) {
        self.stemcell
            .split_once('/')
            .unwrap_or((&self.stemcell, ""))
    }

    /// The build number `version` carries after the fingerprint (`<fingerprint>.<build>`),
    /// if any.
    pub fn build(&self) -> Option<i64> {
        self.version
            .strip_prefix(&self.fingerprint)?
            .strip_prefix('.')?
            .parse()
            .ok()
            .filter(|build| *build >= 1)
    }
}

/// The license of a release manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LicenseRecord {
    /// Fingerprint.
    pub fingerprint: String,
    /// Digest string of `license.tgz`.
    pub sha1: String,
}

/// Where something was written: its span and YAML path.
pub type Place = (Span, YamlPath);

/// Where a job or package entry was written, and each name of its `packages` or
/// `dependencies`.
#[derive(Clone, Debug)]
pub struct EntryPlaces {
    /// The entry.
    pub entry: Place,
    /// Each package name it lists.
    pub names: Vec<Place>,
}

/// Where each job and package of a parsed manifest was written, for diagnostics.
#[derive(Clone, Debug, Default)]
pub struct ManifestSpans {
    /// The document.
    pub document: Option<Span>,
    /// Per job, in manifest order.
    pub jobs: Vec<EntryPlaces>,
    /// Per package, in manifest order.
    pub packages: Vec<EntryPlaces>,
    /// Per compiled package, in manifest order.
    pub compiled_packages: Vec<EntryPlaces>,
}

fn string(text: &str, span: &Span) -> Node {
    Node::string(text, span.clone())
}

fn strings(items: &[String], span: &Span) -> Node {
    Node::new(
        Value::Seq(items.iter().map(|s| string(s, span)).collect()),
        span.clone(),
    )
}

fn map(entries: Vec<(&str, Node)>, span: &Span) -> Node {
    let mut map = Map::new();
    for (key, value) in entries {
        map.insert(string(key, span), value);
    }
    Node::new(Value::Map(map), span.clone())
}

impl ReleaseManifest {
    /// The manifest as bosh-cli writes it: fields in struct order, `version` next to each
    /// fingerprint, `license` only when there is one.
    pub fn to_yaml(&self) -> String {
        self.to_compiled_yaml(&[])
    }

    /// The manifest of a compiled release: as [`ReleaseManifest::to_yaml`], with
    /// `compiled_packages` after `packages` (bosh-cli's field order; each entry `name`,
    /// `version`, `fingerprint`, `sha1`, `stemcell`, `dependencies`).
    pub fn to_compiled_yaml(&self, compiled: &[CompiledPackageRecord]) -> String {
        let span = Span::synthetic("release.MF");
        let jobs = self
            .jobs
            .iter()
            .map(|job| {
                map(
                    vec![
                        ("name", string(&job.name, &span)),
                        ("version", string(&job.fingerprint, &span)),
                        ("fingerprint", string(&job.fingerprint, &span)),
                        ("sha1", string(&job.sha1, &span)),
                        ("packages", strings(&job.packages, &span)),
                    ],
                    &span,
                )
            })
            .collect();
        let packages = self
            .packages
            .iter()
            .map(|package| {
                map(
                    vec![
                        ("name", string(&package.name, &span)),
                        ("version", string(&package.fingerprint, &span)),
                        ("fingerprint", string(&package.fingerprint, &span)),
                        ("sha1", string(&package.sha1, &span)),
                        ("dependencies", strings(&package.dependencies, &span)),
                    ],
                    &span,
                )
            })
            .collect();
        let mut entries = vec![
            ("name", string(&self.name, &span)),
            ("version", string(&self.version, &span)),
            ("commit_hash", string(&self.commit_hash, &span)),
            (
                "uncommitted_changes",
                Node::new(Value::Bool(self.uncommitted_changes), span.clone()),
            ),
        ];
        if !self.jobs.is_empty() {
            entries.push(("jobs", Node::new(Value::Seq(jobs), span.clone())));
        }
        if !self.packages.is_empty() {
            entries.push(("packages", Node::new(Value::Seq(packages), span.clone())));
        }
        if !compiled.is_empty() {
            let compiled = compiled
                .iter()
                .map(|package| {
                    map(
                        vec![
                            ("name", string(&package.name, &span)),
                            ("version", string(&package.version, &span)),
                            ("fingerprint", string(&package.fingerprint, &span)),
                            ("sha1", string(&package.sha1, &span)),
                            ("stemcell", string(&package.stemcell, &span)),
                            ("dependencies", strings(&package.dependencies, &span)),
                        ],
                        &span,
                    )
                })
                .collect();
            entries.push((
                "compiled_packages",
                Node::new(Value::Seq(compiled), span.clone()),
            ));
        }
        if let Some(license) = &self.license {
            entries.push((
                "license",
                map(
                    vec![
                        ("version", string(&license.fingerprint, &span)),
                        ("fingerprint", string(&license.fingerprint, &span)),
                        ("sha1", string(&license.sha1, &span)),
                    ],
                    &span,
                ),
            ));
        }
        let mut out = String::new();
        yaml::emit_to(&map(entries, &span), &mut out, false);
        out
    }

    /// Parses the manifest of a source release from its text; `file` names it in
    /// diagnostics (line and column included). `compiled_packages` is refused: a release
    /// directory's records describe source releases only.
    pub fn parse(text: &str, file: &str) -> Result<(ReleaseManifest, ManifestSpans), Diagnostics> {
        Self::parse_document(text, file, false).map(|(manifest, _, spans)| (manifest, spans))
    }

    /// Parses the `release.MF` of a release tarball, source or compiled: the manifest, the
    /// compiled packages (empty for a source release), and where each entry was written.
    /// A compiled package's `stemcell` must read `os/version`.
    pub fn parse_tarball(
        text: &str,
        file: &str,
    ) -> Result<(ReleaseManifest, Vec<CompiledPackageRecord>, ManifestSpans), Diagnostics> {
        Self::parse_document(text, file, true)
    }

    fn parse_document(
        text: &str,
        file: &str,
        compiled_allowed: bool,
    ) -> Result<(ReleaseManifest, Vec<CompiledPackageRecord>, ManifestSpans), Diagnostics> {
        let node = yaml::parse_document(text, Arc::from(file))?;
        let mut cx = Cx::default();
        let mut spans = ManifestSpans::default();
        let root = YamlPath::root();
        let manifest = cx.map(&node, &root, "a release manifest").and_then(|top| {
            spans.document = Some(node.span.clone());
            top.unknown_keys(
                &mut cx,
                &[
                    "name",
                    "version",
                    "commit_hash",
                    "uncommitted_changes",
                    "jobs",
                    "packages",
                    "compiled_packages",
                    "license",
                ],
            );
            if let (Some(compiled), false) = (top.get("compiled_packages"), compiled_allowed) {
                cx.error(
                    &compiled.span,
                    &top.at("compiled_packages"),
                    "a compiled release is not expected here: this file describes a source release",
                );
            }
            let name = top.req_string(&mut cx, "name", "the release's name");
            let version = top.req_text(&mut cx, "version", "the release's version");
            let commit_hash = top
                .get("commit_hash")
                .and_then(|n| cx.text(n, &top.at("commit_hash")))
                .map(|s| s.value)
                .unwrap_or_default();
            let uncommitted_changes = top
                .opt_bool(&mut cx, "uncommitted_changes")
                .unwrap_or(false);
            let mut jobs = Vec::new();
            let (items, path) = top.list(&mut cx, "jobs", "jobs");
            for (index, item) in items.iter().enumerate() {
                let at = path.index(index);
                let Some(entry) = cx.map(item, &at, "a job") else {
                    continue;
                };
                let packages = entry.strings(&mut cx, "packages", "package names");
                let record = (
                    entry.req_string(&mut cx, "name", "the job's name"),
                    fingerprint(&mut cx, &entry),
                    entry.req_string(&mut cx, "sha1", "the digest of the job's archive"),
                );
                if let (Some(name), Some(fingerprint), Some(sha1)) = record {
                    spans.jobs.push(EntryPlaces {
                        entry: (item.span.clone(), at),
                        names: spanned(&packages),
                    });
                    jobs.push(JobRecord {
                        name: name.value,
                        fingerprint,
                        sha1: sha1.value,
                        packages: packages.into_iter().map(|p| p.value).collect(),
                    });
                }
            }
            let mut packages = Vec::new();
            let (items, path) = top.list(&mut cx, "packages", "packages");
            for (index, item) in items.iter().enumerate() {
                let at = path.index(index);
                let Some(entry) = cx.map(item, &at, "a package") else {
                    continue;
                };
                let dependencies = entry.strings(&mut cx, "dependencies", "package names");
                let record = (
                    entry.req_string(&mut cx, "name", "the package's name"),
                    fingerprint(&mut cx, &entry),
                    entry.req_string(&mut cx, "sha1", "the digest of the package's archive"),
                );
                if let (Some(name), Some(fingerprint), Some(sha1)) = record {
                    spans.packages.push(EntryPlaces {
                        entry: (item.span.clone(), at),
                        names: spanned(&dependencies),
                    });
                    packages.push(PackageRecord {
                        name: name.value,
                        fingerprint,
                        sha1: sha1.value,
                        dependencies: dependencies.into_iter().map(|d| d.value).collect(),
                    });
                }
            }
            let mut compiled = Vec::new();
            let (items, path) = if compiled_allowed {
                top.list(&mut cx, "compiled_packages", "compiled packages")
            } else {
                (&[][..], top.at("compiled_packages"))
            };
            for (index, item) in items.iter().enumerate() {
                let at = path.index(index);
                let Some(entry) = cx.map(item, &at, "a compiled package") else {
                    continue;
                };
                let dependencies = entry.strings(&mut cx, "dependencies", "package names");
                let version = entry.req_text(&mut cx, "version", "the compiled package's version");
                let fingerprint = match entry.get("fingerprint") {
                    Some(_) => entry.req_text(&mut cx, "fingerprint", "a fingerprint"),
                    None => version.clone(),
                };
                let stemcell = entry
                    .req_string(&mut cx, "stemcell", "the stemcell it was compiled on (os/version)")
                    .filter(|stemcell| {
                        let valid = stemcell
                            .value
                            .split_once('/')
                            .is_some_and(|(os, version)| !os.is_empty() && !version.is_empty());
                        if !valid {
                            cx.error(
                                &stemcell.span,
                                &stemcell.path,
                                format!(
                                    "'{}' is not a stemcell: expected os/version (e.g. ubuntu-jammy/1.406)",
                                    stemcell.value
                                ),
                            );
                        }
                        valid
                    });
                let record = (
                    entry.req_string(&mut cx, "name", "the package's name"),
                    version,
                    fingerprint,
                    entry.req_string(&mut cx, "sha1", "the digest of the compiled package's archive"),
                    stemcell,
                );
                if let (Some(name), Some(version), Some(fingerprint), Some(sha1), Some(stemcell)) =
                    record
                {
                    spans.compiled_packages.push(EntryPlaces {
                        entry: (item.span.clone(), at),
                        names: spanned(&dependencies),
                    });
                    compiled.push(CompiledPackageRecord {
                        name: name.value,
                        version: version.value,
                        fingerprint: fingerprint.value,
                        sha1: sha1.value,
                        stemcell: stemcell.value,
                        dependencies: dependencies.into_iter().map(|d| d.value).collect(),
                    });
                }
            }
            let license = top
                .get("license")
                .and_then(|node| cx.map(node, &top.at("license"), "the license"))
                .and_then(|entry| {
                    let fingerprint = fingerprint(&mut cx, &entry)?;
                    let sha1 = entry.req_string(&mut cx, "sha1", "the digest of license.tgz")?;
                    Some(LicenseRecord {
                        fingerprint,
                        sha1: sha1.value,
                    })
                });
            Some((
                ReleaseManifest {
                    name: name?.value,
                    version: version?.value,
                    commit_hash,
                    uncommitted_changes,
                    jobs,
                    packages,
                    license,
                },
                compiled,
            ))
        });
        match manifest {
            Some((manifest, compiled)) if !cx.diagnostics.has_errors() => {
                Ok((manifest, compiled, spans))
            }
            _ => Err(cx.diagnostics),
        }
    }
}

fn spanned(items: &[Spanned<String>]) -> Vec<Place> {
    items
        .iter()
        .map(|s| (s.span.clone(), s.path.clone()))
        .collect()
}

/// `fingerprint`, or `version` in manifests written before fingerprints had their own key.
fn fingerprint(cx: &mut Cx, entry: &crate::manifest::decode::MapView<'_>) -> Option<String> {
    match entry.get("fingerprint") {
        Some(_) => entry.req_text(cx, "fingerprint", "a fingerprint"),
        None => entry.req_text(cx, "version", "a fingerprint"),
    }
    .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> ReleaseManifest {
        ReleaseManifest {
            name: "hello".into(),
            version: "1".into(),
            commit_hash: "0a1b2c3".into(),
            uncommitted_changes: false,
            jobs: vec![JobRecord {
                name: "web".into(),
                fingerprint: "aa".into(),
                sha1: "sha256:bb".into(),
                packages: vec!["nginx".into()],
            }],
            packages: vec![PackageRecord {
                name: "nginx".into(),
                fingerprint: "cc".into(),
                sha1: "sha256:dd".into(),
                dependencies: vec![],
            }],
            license: None,
        }
    }

    #[test]
    fn written_as_bosh_cli_writes_it_and_read_back() {
        let text = example().to_yaml();
        insta::assert_snapshot!(text);
        let (back, _) = ReleaseManifest::parse(&text, "release.MF").unwrap();
        assert_eq!(back, example());
    }

    fn compiled() -> Vec<CompiledPackageRecord> {
        vec![
            CompiledPackageRecord {
                name: "app".into(),
                version: "ee.3".into(),
                fingerprint: "ee".into(),
                sha1: "sha256:ff".into(),
                stemcell: "debian-bookworm/12.8".into(),
                dependencies: vec!["nginx".into()],
            },
            CompiledPackageRecord {
                name: "nginx".into(),
                version: "cc.1".into(),
                fingerprint: "cc".into(),
                sha1: "sha256:11".into(),
                stemcell: "debian-bookworm/12.8".into(),
                dependencies: vec![],
            },
        ]
    }

    #[test]
    fn a_compiled_release_is_written_in_bosh_cli_order_and_read_back() {
        let manifest = ReleaseManifest {
            packages: vec![],
            ..example()
        };
        let text = manifest.to_compiled_yaml(&compiled());
        insta::assert_snapshot!(text);
        let (back, back_compiled, spans) =
            ReleaseManifest::parse_tarball(&text, "release.MF").unwrap();
        assert_eq!(back, manifest);
        assert_eq!(back_compiled, compiled());
        assert_eq!(spans.compiled_packages.len(), 2);
        assert_eq!(spans.compiled_packages[0].names.len(), 1);
        // A source release reads the same through both entry points, with no compiled package.
        let source = example().to_yaml();
        let (through_tarball, none, _) =
            ReleaseManifest::parse_tarball(&source, "release.MF").unwrap();
        assert_eq!(through_tarball, example());
        assert!(none.is_empty());
    }

    #[test]
    fn compiled_package_versions_carry_the_build() {
        let [app, _] = <[CompiledPackageRecord; 2]>::try_from(compiled()).unwrap();
        assert_eq!(app.build(), Some(3));
        assert_eq!(app.stemcell_os_version(), ("debian-bookworm", "12.8"));
        // BOSH writes the fingerprint alone: no build to keep.
        let bosh = CompiledPackageRecord {
            version: "ee".into(),
            ..app.clone()
        };
        assert_eq!(bosh.build(), None);
        for version in ["ee.0", "ee.x", "ff.3", "ee3"] {
            let odd = CompiledPackageRecord {
                version: version.into(),
                ..app.clone()
            };
            assert_eq!(odd.build(), None, "{version}");
        }
    }

    #[test]
    fn a_compiled_package_without_fingerprint_takes_its_version() {
        let text = "name: a\nversion: 1\ncompiled_packages:\n- name: p\n  version: ab12\n  \
                    sha1: sha256:00\n  stemcell: os/1\n";
        let (_, compiled, _) = ReleaseManifest::parse_tarball(text, "release.MF").unwrap();
        assert_eq!(compiled[0].fingerprint, "ab12");
        assert_eq!(compiled[0].dependencies, Vec::<String>::new());
    }

    #[test]
    fn compiled_package_problems_are_diagnostics_with_places() {
        let text = "name: a\nversion: 1\ncompiled_packages:\n- name: p\n  version: f.1\n  \
                    fingerprint: f\n  sha1: sha256:00\n  stemcell: bookworm\n\
                    - name: q\n  version: g.1\n  stemcell: os/1\n";
        let error = ReleaseManifest::parse_tarball(text, "x/release.MF")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x/release.MF:8:")
                && error.contains(
                    "'bookworm' is not a stemcell: expected os/version (e.g. ubuntu-jammy/1.406)"
                ),
            "{error}"
        );
        assert!(error.contains("missing required key 'sha1'"), "{error}");
    }

    #[test]
    fn a_source_release_record_refuses_compiled_packages() {
        let text = "name: a\nversion: 1\ncompiled_packages: []\n";
        let error = ReleaseManifest::parse(text, "r.yml")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("a compiled release is not expected here"),
            "{error}"
        );
    }

    #[test]
    fn not_yaml_is_a_diagnostic_with_a_place() {
        let error =
            ReleaseManifest::parse("name: [unclosed\nversion: 1\n", "x/release.MF").unwrap_err();
        assert!(error.to_string().starts_with("x/release.MF:"), "{error}");
    }
}
