//! `stemcell.MF`: what a stemcell tarball holds (`docs:build-stemcell.md`), read with every
//! problem reported at once with its line, column and field, and written in BOSH's key
//! order.
//!
//! Where we differ from BOSH: the `sha1` field holds `sha256:<hex>` of `image` for the
//! stemcells we build; a bare hex SHA-1 (BOSH's own stemcells) is still accepted and checked
//! as SHA-1.

use std::sync::Arc;

use serde_json::{Map as JsonMap, Value as Json};

use super::version::StemcellVersion;
use crate::diagnostics::Diagnostics;
use crate::manifest::decode::{Cx, MapView};
use crate::release::digest::ExpectedDigest;
use crate::yaml::{self, Map, Node, Span, Value, YamlPath};

/// The keys `stemcell.MF` may have, in the order BOSH writes them.
const KEYS: &[&str] = &[
    "name",
    "version",
    "bosh_protocol",
    "api_version",
    "sha1",
    "operating_system",
    "stemcell_formats",
    "cloud_properties",
];

/// A stemcell manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct StemcellManifest {
    /// Stemcell name (`bosh-docker-debian-bookworm`).
    pub name: String,
    /// Version as written (`12.8.20261126`); see [`StemcellManifest::version`] for ordering.
    pub version: String,
    /// `bosh_protocol` (deprecated in BOSH), as text, when present.
    pub bosh_protocol: Option<String>,
    /// The highest agent API version of the stemcell; 1 when absent, as in BOSH.
    pub api_version: u64,
    /// Digest of `image`: `sha256:<hex>`, or a legacy bare SHA-1 hex.
    pub sha1: String,
    /// Operating system (`debian-bookworm`), what manifests' `stemcells[].os` names.
    pub operating_system: String,
    /// Image formats, matched against a CPI's `stemcell_formats` (`docker-rootfs`, `local`).
    pub stemcell_formats: Vec<String>,
    /// Handed verbatim to the CPI's `create_stemcell`.
    pub cloud_properties: JsonMap<String, Json>,
}

impl StemcellManifest {
    /// The version, ordered (`version: latest` picks the highest).
    pub fn version(&self) -> StemcellVersion {
        StemcellVersion::parse(&self.version).expect("checked when the manifest was made")
    }

    /// Parses a manifest; `file` names it in diagnostics (e.g. `s.tgz/stemcell.MF`).
    /// Returns the manifest with its warnings (unknown keys), or every error found.
    pub fn parse(text: &str, file: &str) -> Result<(StemcellManifest, Diagnostics), Diagnostics> {
        let node = yaml::parse_document(text, Arc::from(file))?;
        let mut cx = Cx::default();
        let manifest = cx
            .map(&node, &YamlPath::root(), "a stemcell manifest")
            .and_then(|top| decode(&mut cx, &top, text));
        match manifest {
            Some(manifest) if !cx.diagnostics.has_errors() => {
                Ok((manifest, cx.diagnostics.sorted()))
            }
            _ => Err(cx.diagnostics.sorted()),
        }
    }

    /// The manifest as YAML, keys in BOSH's order, `bosh_protocol` only when set.
    pub fn to_yaml(&self) -> String {
        let span = Span::synthetic("stemcell.MF");
        let string = |text: &str| Node::string(text, span.clone());
        let mut map = Map::new();
        map.insert(string("name"), string(&self.name));
        map.insert(string("version"), string(&self.version));
        if let Some(protocol) = &self.bosh_protocol {
            map.insert(string("bosh_protocol"), string(protocol));
        }
        let api_version = i64::try_from(self.api_version).unwrap_or(i64::MAX);
        map.insert(
            string("api_version"),
            Node::new(Value::Int(api_version), span.clone()),
        );
        map.insert(string("sha1"), string(&self.sha1));
        map.insert(string("operating_system"), string(&self.operating_system));
        let formats = self.stemcell_formats.iter().map(|f| string(f)).collect();
        map.insert(
            string("stemcell_formats"),
            Node::new(Value::Seq(formats), span.clone()),
        );
        map.insert(
            string("cloud_properties"),
            Node::from_json(&Json::Object(self.cloud_properties.clone()), &span),
        );
        let mut out = String::new();
        yaml::emit_to(&Node::new(Value::Map(map), span), &mut out, false);
        out
    }
}

fn decode(cx: &mut Cx, top: &MapView<'_>, text: &str) -> Option<StemcellManifest> {
    top.unknown_keys(cx, KEYS);
    let name = top.req_string(cx, "name", "the stemcell's name");
    if let Some(name) = &name {
        if !valid_name(&name.value) {
            cx.error(
                &name.span,
                &name.path,
                format!(
                    "stemcell name '{}' may only contain letters, digits, '-', '_' and '.'",
                    name.value
                ),
            );
        }
    }
    let version = match top.get("version") {
        Some(node) => version_text(cx, node, &top.at("version"), text),
        None => {
            cx.error(
                &top.node.span,
                &top.path,
                "missing required key 'version' (the stemcell's version)",
            );
            None
        }
    };
    let bosh_protocol = top
        .get("bosh_protocol")
        .and_then(|node| cx.text(node, &top.at("bosh_protocol")))
        .map(|s| s.value);
    let api_version = top.opt_uint(cx, "api_version").map_or(1, |s| s.value);
    let sha1 = match top.get("sha1") {
        Some(node) => {
            let sha1 = as_written(node, text);
            if sha1.as_deref().and_then(ExpectedDigest::parse).is_none() {
                cx.error(
                    &node.span,
                    &top.at("sha1"),
                    format!(
                        "{} is not a digest of 'image' (expected sha256:<64 hex digits>, or a \
                         legacy sha1 of 40 hex digits)",
                        sha1.map_or_else(|| node.describe(), |s| format!("'{s}'"))
                    ),
                );
                None
            } else {
                sha1
            }
        }
        None => {
            cx.error(
                &top.node.span,
                &top.path,
                "missing required key 'sha1' (the digest of 'image')",
            );
            None
        }
    };
    let operating_system = top.req_string(cx, "operating_system", "e.g. debian-bookworm");
    if let Some(os) = &operating_system {
        if os.value.trim().is_empty() {
            cx.error(&os.span, &os.path, "the operating system is empty");
        }
    }
    let formats = match top.get("stemcell_formats") {
        Some(node) => {
            let path = top.at("stemcell_formats");
            let formats = cx.strings(node, &path, "image formats");
            if matches!(&node.value, Value::Seq(items) if items.is_empty()) {
                cx.error(
                    &node.span,
                    &path,
                    "no image format is listed; a CPI takes a stemcell only when it supports \
                     one of its formats (e.g. [docker-rootfs])",
                );
            }
            Some(formats.into_iter().map(|f| f.value).collect())
        }
        None => {
            cx.error(
                &top.node.span,
                &top.path,
                "missing required key 'stemcell_formats' (a list of image formats, e.g. \
                 [docker-rootfs])",
            );
            None
        }
    };
    let cloud_properties = match top.tree(cx, "cloud_properties") {
        Some(node) => match node.to_json() {
            Json::Object(map) => map,
            _ => JsonMap::new(),
        },
        None => JsonMap::new(),
    };
    Some(StemcellManifest {
        name: name?.value,
        version: version?,
        bosh_protocol,
        api_version,
        sha1: sha1?,
        operating_system: operating_system?.value,
        stemcell_formats: formats?,
        cloud_properties,
    })
}

/// A string or number scalar as the user wrote it. A plain `12.10` resolves to the float
/// 12.1, a plain `012` to the octal integer 10, and an all-digit SHA-1 to an integer; the
/// field is the text as written (what go-yaml gives a string field), so numbers are read
/// back from the source. `None` for anything but strings and numbers.
fn as_written(node: &Node, text: &str) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(_) | Value::Float(_) => {
            Some(plain_scalar_at(text, &node.span).unwrap_or_else(|| node.describe()))
        }
        _ => None,
    }
}

/// The version as written, checked.
fn version_text(cx: &mut Cx, node: &Node, path: &YamlPath, text: &str) -> Option<String> {
    let Some(version) = as_written(node, text) else {
        cx.error(
            &node.span,
            path,
            format!(
                "expected the stemcell's version (a string such as '12.8'), found {}",
                node.describe()
            ),
        );
        return None;
    };
    if StemcellVersion::parse(&version).is_none() {
        cx.error(
            &node.span,
            path,
            format!(
                "'{version}' is not a stemcell version (dot-separated numbers or words, e.g. \
                 '12.8.20261126')"
            ),
        );
        return None;
    }
    Some(version)
}

/// The text of the plain scalar starting at `span` in `text`, up to a comment, the end of
/// the line or a flow indicator.
fn plain_scalar_at(text: &str, span: &Span) -> Option<String> {
    let line = text
        .lines()
        .nth(usize::try_from(span.line).ok()?.checked_sub(1)?)?;
    let start = usize::try_from(span.col).ok()?.checked_sub(1)?;
    let rest: String = line.chars().skip(start).collect();
    let end = rest
        .find(" #")
        .into_iter()
        .chain(rest.find([',', ']', '}']))
        .min()
        .unwrap_or(rest.len());
    let scalar = rest[..end].trim();
    (!scalar.is_empty()).then(|| scalar.to_string())
}

/// Whether `name` can name a stemcell: it becomes part of file names and blob keys.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> StemcellManifest {
        let mut cloud_properties = JsonMap::new();
        cloud_properties.insert("infrastructure".into(), "docker".into());
        cloud_properties.insert("version".into(), "12.8.20261126".into());
        cloud_properties.insert("disk".into(), 3072.into());
        StemcellManifest {
            name: "bosh-docker-debian-bookworm".into(),
            version: "12.8.20261126".into(),
            bosh_protocol: None,
            api_version: 3,
            sha1: format!("sha256:{}", "ab".repeat(32)),
            operating_system: "debian-bookworm".into(),
            stemcell_formats: vec!["docker-rootfs".into()],
            cloud_properties,
        }
    }

    fn errors(text: &str) -> String {
        StemcellManifest::parse(text, "s.tgz/stemcell.MF")
            .map(|(m, _)| format!("accepted: {m:?}"))
            .unwrap_or_else(|d| d.to_string())
    }

    const VALID: &str = "name: s\nversion: '1.2'\nsha1: 0123456789abcdef0123456789abcdef01234567\n\
                         operating_system: debian-bookworm\nstemcell_formats: [local]\n";

    #[test]
    fn written_in_bosh_order_and_read_back() {
        let text = example().to_yaml();
        assert_eq!(
            text,
            format!(
                "name: bosh-docker-debian-bookworm\nversion: 12.8.20261126\napi_version: 3\n\
                 sha1: sha256:{}\noperating_system: debian-bookworm\nstemcell_formats:\n\
                 - docker-rootfs\ncloud_properties:\n  infrastructure: docker\n  \
                 version: 12.8.20261126\n  disk: 3072\n",
                "ab".repeat(32)
            )
        );
        let (back, warnings) = StemcellManifest::parse(&text, "stemcell.MF").unwrap();
        assert_eq!(back, example());
        assert!(warnings.is_empty());
    }

    #[test]
    fn a_version_that_reads_as_a_number_is_quoted_when_written() {
        let manifest = StemcellManifest {
            version: "12.10".into(),
            ..example()
        };
        let text = manifest.to_yaml();
        assert!(text.contains("version: \"12.10\"\n"), "{text}");
        let (back, _) = StemcellManifest::parse(&text, "stemcell.MF").unwrap();
        assert_eq!(back.version, "12.10");
    }

    #[test]
    fn an_unquoted_numeric_version_keeps_its_text() {
        for (written, expected) in [
            ("12.10", "12.10"),
            ("12.10 # a comment", "12.10"),
            ("0621", "0621"),
            ("621.74", "621.74"),
        ] {
            let text = VALID.replace("version: '1.2'", &format!("version: {written}"));
            let (manifest, _) = StemcellManifest::parse(&text, "stemcell.MF").unwrap();
            assert_eq!(manifest.version, expected, "{written}");
        }
        let (flow, _) = StemcellManifest::parse(
            "{name: s, version: 12.10, sha1: 0123456789abcdef0123456789abcdef01234567, \
             operating_system: o, stemcell_formats: [local]}",
            "stemcell.MF",
        )
        .unwrap();
        assert_eq!(flow.version, "12.10");
        assert_eq!(flow.api_version, 1);
    }

    #[test]
    fn every_missing_field_is_named_with_its_place() {
        assert_eq!(
            errors("api_version: 3\n"),
            "s.tgz/stemcell.MF:1:1: missing required key 'name' (the stemcell's name)\n\
             s.tgz/stemcell.MF:1:1: missing required key 'version' (the stemcell's version)\n\
             s.tgz/stemcell.MF:1:1: missing required key 'sha1' (the digest of 'image')\n\
             s.tgz/stemcell.MF:1:1: missing required key 'operating_system' (e.g. \
             debian-bookworm)\n\
             s.tgz/stemcell.MF:1:1: missing required key 'stemcell_formats' (a list of image \
             formats, e.g. [docker-rootfs])"
        );
    }

    #[test]
    fn wrong_values_are_named_with_their_field() {
        assert_eq!(
            errors(&VALID.replace("stemcell_formats: [local]", "stemcell_formats: local")),
            "s.tgz/stemcell.MF:5:19: stemcell_formats: expected a list of image formats, found \
             \"local\""
        );
        assert_eq!(
            errors(&VALID.replace("stemcell_formats: [local]", "stemcell_formats: []")),
            "s.tgz/stemcell.MF:5:19: stemcell_formats: no image format is listed; a CPI takes \
             a stemcell only when it supports one of its formats (e.g. [docker-rootfs])"
        );
        assert_eq!(
            errors(&VALID.replace("version: '1.2'", "version: '1..2'")),
            "s.tgz/stemcell.MF:2:10: version: '1..2' is not a stemcell version (dot-separated \
             numbers or words, e.g. '12.8.20261126')"
        );
        assert_eq!(
            errors(&VALID.replace("version: '1.2'", "version: [1]")),
            "s.tgz/stemcell.MF:2:10: version: expected the stemcell's version (a string such \
             as '12.8'), found an array"
        );
        assert_eq!(
            errors(&VALID.replace("sha1: 0123", "sha1: md5:0123")),
            "s.tgz/stemcell.MF:3:7: sha1: 'md5:0123456789abcdef0123456789abcdef01234567' is \
             not a digest of 'image' (expected sha256:<64 hex digits>, or a legacy sha1 of 40 \
             hex digits)"
        );
        assert_eq!(
            errors(&VALID.replace("name: s", "name: ../s")),
            "s.tgz/stemcell.MF:1:7: name: stemcell name '../s' may only contain letters, \
             digits, '-', '_' and '.'"
        );
        assert_eq!(
            errors(&format!("{VALID}cloud_properties: [a]\napi_version: -1\n")),
            "s.tgz/stemcell.MF:6:19: cloud_properties: expected 'cloud_properties' (a map), \
             found an array\n\
             s.tgz/stemcell.MF:7:14: api_version: expected a non-negative integer, found -1"
        );
    }

    #[test]
    fn not_yaml_is_a_diagnostic_with_a_place() {
        let error = errors("name: [unclosed\nversion: 1\n");
        assert!(error.starts_with("s.tgz/stemcell.MF:"), "{error}");
        assert_eq!(
            errors("- a\n"),
            "s.tgz/stemcell.MF:1:1: expected a stemcell manifest (a map), found an array"
        );
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let (_, warnings) =
            StemcellManifest::parse(&format!("{VALID}operating_sytem: x\n"), "stemcell.MF")
                .unwrap();
        assert_eq!(
            warnings.to_string(),
            "stemcell.MF:6:1: warning: operating_sytem: unknown key 'operating_sytem' is \
             ignored (did you mean 'operating_system'?)"
        );
    }
}
