//! The files of a release directory that describe it: job specs, package specs,
//! `config/final.yml`. Each is decoded from a spanned YAML tree; every problem of a file is
//! reported at once, with its line, column and YAML path.

use crate::diagnostics::Diagnostics;
use crate::manifest::Spanned;
use crate::manifest::decode::{Cx, MapView};
use crate::yaml::{Node, YamlPath};

/// A job's `spec` (`docs:jobs.md`).
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// `name`, which must equal the job's directory name.
    pub name: Spanned<String>,
    /// `description`.
    pub description: Option<String>,
    /// `templates`: source under `templates/` → destination under the job's directory on a
    /// VM, in spec order.
    pub templates: Vec<(Spanned<String>, Spanned<String>)>,
    /// `packages` the job needs on its VM.
    pub packages: Vec<Spanned<String>>,
    /// `properties`, in spec order.
    pub properties: Vec<PropertySpec>,
    /// `provides` links.
    pub provides: Vec<LinkSpec>,
    /// `consumes` links.
    pub consumes: Vec<LinkSpec>,
}

/// One property of a job spec.
#[derive(Clone, Debug)]
pub struct PropertySpec {
    /// The dotted name (`tls.cert`).
    pub name: String,
    /// `description`.
    pub description: Option<String>,
    /// `default`, when there is one.
    pub default: Option<Node>,
    /// `example` (documentation only).
    pub example: Option<Node>,
    /// `type` (a convention, not enforced).
    pub property_type: Option<String>,
}

/// A link a job provides or consumes.
#[derive(Clone, Debug)]
pub struct LinkSpec {
    /// `name`.
    pub name: Spanned<String>,
    /// `type`.
    pub link_type: String,
    /// `optional` (consumers).
    pub optional: bool,
    /// `properties` exported through the link (providers).
    pub properties: Vec<Spanned<String>>,
}

/// A package's `spec` (`docs:packages.md`).
#[derive(Clone, Debug)]
pub struct PackageSpec {
    /// `name`, which must equal the package's directory name.
    pub name: Spanned<String>,
    /// `dependencies`: packages compiled before this one and visible to its packaging.
    pub dependencies: Vec<Spanned<String>>,
    /// `files`: globs matched under `src/` and then `blobs/`.
    pub files: Vec<Spanned<String>>,
    /// `excluded_files`: globs whose matches are taken out again.
    pub excluded_files: Vec<Spanned<String>>,
}

/// `config/final.yml`.
#[derive(Clone, Debug, Default)]
pub struct FinalConfig {
    /// `name` (or the older `final_name`).
    pub name: Option<Spanned<String>>,
    /// `blobstore.provider`.
    pub blobstore_provider: Option<String>,
    /// `blobstore.options.blobstore_path` of a `local` blobstore.
    pub blobstore_path: Option<String>,
}

const JOB_KEYS: &[&str] = &[
    "name",
    "description",
    "templates",
    "packages",
    "properties",
    "provides",
    "consumes",
];

const PACKAGE_KEYS: &[&str] = &["name", "dependencies", "files", "excluded_files"];

/// Whether `path` is a plain relative path: not empty, not absolute, no `..`.
pub(crate) fn is_relative_inside(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && path.split('/').all(|part| part != "..")
}

/// Decodes a job spec; `None` when it has errors (all of them in the diagnostics).
pub fn decode_job_spec(node: &Node) -> Result<(JobSpec, Diagnostics), Diagnostics> {
    let mut cx = Cx::default();
    let root = YamlPath::root();
    let spec = cx.map(node, &root, "a job spec").and_then(|map| {
        map.unknown_keys(&mut cx, JOB_KEYS);
        let name = map.req_string(&mut cx, "name", "the job's name");
        let description = map.opt_string(&mut cx, "description").map(|s| s.value);
        let templates = templates(&mut cx, &map);
        let packages = map.strings(&mut cx, "packages", "package names");
        let properties = properties(&mut cx, &map);
        let provides = links(&mut cx, &map, "provides");
        let consumes = links(&mut cx, &map, "consumes");
        Some(JobSpec {
            name: name?,
            description,
            templates,
            packages,
            properties,
            provides,
            consumes,
        })
    });
    finish(spec, cx.diagnostics)
}

fn templates(cx: &mut Cx, map: &MapView<'_>) -> Vec<(Spanned<String>, Spanned<String>)> {
    let Some(node) = map.get("templates") else {
        return Vec::new();
    };
    let path = map.at("templates");
    let Some(templates) = cx.map(node, &path, "templates (source: destination)") else {
        return Vec::new();
    };
    let mut found: Vec<(Spanned<String>, Spanned<String>)> = Vec::new();
    for (key, value) in templates.map.iter() {
        let Some(mut source) = cx.string(key, &path) else {
            continue;
        };
        let at = path.key(&source.value);
        source.path = at.clone();
        let Some(destination) = cx.string(value, &at) else {
            continue;
        };
        if !is_relative_inside(&source.value) {
            cx.error(
                &key.span,
                &at,
                format!(
                    "template '{}' must be a path inside templates/",
                    source.value
                ),
            );
            continue;
        }
        if !is_relative_inside(&destination.value) {
            cx.error(
                &value.span,
                &at,
                format!(
                    "destination '{}' must be a relative path inside the job's directory",
                    destination.value
                ),
            );
            continue;
        }
        if let Some((other, _)) = found.iter().find(|(_, d)| d.value == destination.value) {
            cx.error(
                &value.span,
                &at,
                format!(
                    "templates '{}' and '{}' both render to '{}'",
                    other.value, source.value, destination.value
                ),
            );
            continue;
        }
        found.push((source, destination));
    }
    found
}

fn properties(cx: &mut Cx, map: &MapView<'_>) -> Vec<PropertySpec> {
    let Some(node) = map.get("properties") else {
        return Vec::new();
    };
    let path = map.at("properties");
    let Some(properties) = cx.map(node, &path, "properties") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (key, value) in properties.map.iter() {
        let Some(name) = cx.string(key, &path) else {
            continue;
        };
        let at = path.key(&name.value);
        let mut property = PropertySpec {
            name: name.value,
            description: None,
            default: None,
            example: None,
            property_type: None,
        };
        if !value.is_null() {
            if let Some(fields) = cx.map(value, &at, "a property definition") {
                property.description = fields.opt_string(cx, "description").map(|s| s.value);
                property.default = fields.get("default").cloned();
                property.example = fields.get("example").cloned();
                property.property_type = fields.opt_string(cx, "type").map(|s| s.value);
            }
        }
        found.push(property);
    }
    found
}

fn links(cx: &mut Cx, map: &MapView<'_>, key: &str) -> Vec<LinkSpec> {
    let (items, path) = map.list(cx, key, "links");
    let mut found: Vec<LinkSpec> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let at = path.index(index);
        let Some(link) = cx.map(item, &at, "a link") else {
            continue;
        };
        link.unknown_keys(cx, &["name", "type", "optional", "properties"]);
        let name = link.req_string(cx, "name", "the link's name");
        let link_type = link.req_string(cx, "type", "the link's type");
        let optional = link.opt_bool(cx, "optional").unwrap_or(false);
        let properties = link.strings(cx, "properties", "property names");
        let (Some(name), Some(link_type)) = (name, link_type) else {
            continue;
        };
        if found.iter().any(|l| l.name.value == name.value) {
            cx.error(
                &name.span,
                &name.path,
                format!("link '{}' is listed twice in {key}", name.value),
            );
            continue;
        }
        found.push(LinkSpec {
            name,
            link_type: link_type.value,
            optional,
            properties,
        });
    }
    found
}

/// Decodes a package spec.
pub fn decode_package_spec(node: &Node) -> Result<(PackageSpec, Diagnostics), Diagnostics> {
    let mut cx = Cx::default();
    let spec = cx
        .map(node, &YamlPath::root(), "a package spec")
        .and_then(|map| {
            map.unknown_keys(&mut cx, PACKAGE_KEYS);
            let name = map.req_string(&mut cx, "name", "the package's name");
            let dependencies = map.strings(&mut cx, "dependencies", "package names");
            let files = map.strings(&mut cx, "files", "file patterns");
            let excluded_files = map.strings(&mut cx, "excluded_files", "file patterns");
            for pattern in files.iter().chain(&excluded_files) {
                if !is_relative_inside(&pattern.value) {
                    cx.error(
                        &pattern.span,
                        &pattern.path,
                        format!(
                            "pattern '{}' must be relative to src/ and blobs/, without '..'",
                            pattern.value
                        ),
                    );
                }
            }
            Some(PackageSpec {
                name: name?,
                dependencies,
                files,
                excluded_files,
            })
        });
    finish(spec, cx.diagnostics)
}

/// Decodes `config/final.yml`.
pub fn decode_final_config(node: &Node) -> Result<(FinalConfig, Diagnostics), Diagnostics> {
    let mut cx = Cx::default();
    if node.is_null() {
        return Ok((FinalConfig::default(), Diagnostics::new()));
    }
    let config =
        cx.map(node, &YamlPath::root(), "a release config")
            .map(|map| {
                map.unknown_keys(
                    &mut cx,
                    &["name", "final_name", "blobstore", "no_compression"],
                );
                let name = map.opt_string(&mut cx, "name");
                let final_name = map.opt_string(&mut cx, "final_name");
                if let (Some(_), Some(final_name)) = (&name, &final_name) {
                    cx.error(
                        &final_name.span,
                        &final_name.path,
                        "set 'name' or 'final_name', not both",
                    );
                }
                let mut config = FinalConfig {
                    name: name.or(final_name),
                    ..FinalConfig::default()
                };
                if let Some(blobstore) = map
                    .get("blobstore")
                    .and_then(|node| cx.map(node, &map.at("blobstore"), "a blobstore config"))
                {
                    config.blobstore_provider = blobstore
                        .req_string(&mut cx, "provider", "local, s3, gcs, …")
                        .map(|s| s.value);
                    if let Some(options) = blobstore.get("options").and_then(|node| {
                        cx.map(node, &blobstore.at("options"), "blobstore options")
                    }) {
                        config.blobstore_path = options
                            .opt_string(&mut cx, "blobstore_path")
                            .map(|s| s.value);
                    }
                }
                config
            });
    finish(config, cx.diagnostics)
}

fn finish<T>(value: Option<T>, diagnostics: Diagnostics) -> Result<(T, Diagnostics), Diagnostics> {
    match value {
        Some(value) if !diagnostics.has_errors() => Ok((value, diagnostics)),
        _ => Err(diagnostics),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    #[test]
    fn a_job_spec_with_links_and_properties() {
        let node = yaml::parse(
            "name: web\ntemplates:\n  ctl.tera: bin/ctl\n  conf.tera: config/web.conf\npackages: [nginx]\n\
             provides:\n- {name: http, type: http, properties: [port]}\nconsumes:\n- {name: db, type: db, optional: true}\n\
             properties:\n  port:\n    default: 80\n  password: {}\n",
            "spec",
        )
        .unwrap();
        let (spec, warnings) = decode_job_spec(&node).unwrap();
        assert!(warnings.is_empty(), "{warnings}");
        assert_eq!(spec.name.value, "web");
        let templates: Vec<(&str, &str)> = spec
            .templates
            .iter()
            .map(|(s, d)| (s.value.as_str(), d.value.as_str()))
            .collect();
        assert_eq!(
            templates,
            [("ctl.tera", "bin/ctl"), ("conf.tera", "config/web.conf")]
        );
        assert_eq!(spec.provides[0].properties[0].value, "port");
        assert!(spec.consumes[0].optional);
        assert_eq!(spec.properties.len(), 2);
        assert!(spec.properties[1].default.is_none());
    }

    #[test]
    fn every_problem_of_a_job_spec_at_once() {
        let node = yaml::parse(
            "templates:\n  ../x: bin/x\n  a: /etc/passwd\n  b: bin/y\n  c: bin/y\npakages: []\nconsumes:\n- {name: db}\n",
            "jobs/web/spec",
        )
        .unwrap();
        let errors = decode_job_spec(&node).unwrap_err().sorted();
        insta::assert_snapshot!(errors.to_string());
    }

    #[test]
    fn package_patterns_stay_inside() {
        let node = yaml::parse(
            "name: p\nfiles: [p/**/*, ../etc/*]\nexcluded_files: [/abs]\n",
            "spec",
        )
        .unwrap();
        let errors = decode_package_spec(&node).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors}");
    }

    #[test]
    fn final_config_takes_name_or_final_name() {
        let node = yaml::parse(
            "final_name: hello\nblobstore:\n  provider: local\n  options: {blobstore_path: /tmp/b}\n",
            "final.yml",
        )
        .unwrap();
        let (config, _) = decode_final_config(&node).unwrap();
        assert_eq!(config.name.unwrap().value, "hello");
        assert_eq!(config.blobstore_path.as_deref(), Some("/tmp/b"));
        let both = yaml::parse("name: a\nfinal_name: b\n", "final.yml").unwrap();
        assert!(decode_final_config(&both).is_err());
    }
}
