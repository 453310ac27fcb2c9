//! Job templates rendered per instance, on the director (Tera, not ERB).
//!
//! A template sees `spec` (the instance: name, id, index, az, ip, address, deployment,
//! bootstrap, networks, persistent_disk, release), `properties` and `links` (maps), and four
//! functions (Tera cannot follow a call with `.field`: `{% set db = link(name="db") %}`):
//! `p(name="a.b", default=…)`, `has_p(name="a.b")`, `link(name="x")` (an object with
//! `address`, `instances` and `properties`) and `has_link(name="x")`. Properties are the job
//! spec's declared properties, each the manifest's value or else the spec's default, nested
//! by their dotted names; a template asking for one with neither fails with an error that
//! names the job, the template and the property.
//!
//! Invariant: pure and deterministic. The same job, properties, links and spec always give
//! the same bytes, so the digest of what was rendered is what change detection compares.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map as JsonMap, Value as Json};
use sha2::{Digest, Sha256};

/// A declared property of a job spec.
#[derive(Clone, Debug, PartialEq)]
pub struct PropertyDecl {
    /// Dotted name (`tls.certificate`).
    pub name: String,
    /// Its default, if the spec gives one.
    pub default: Option<Json>,
}

/// A job as the renderer needs it: its spec's templates and properties, and the template
/// sources.
#[derive(Clone, Debug)]
pub struct JobTemplates {
    /// Job name.
    pub name: String,
    /// Source file (under `templates/`) → destination under `/var/vcap/jobs/<name>/`.
    pub templates: Vec<(String, String)>,
    /// Declared properties.
    pub properties: Vec<PropertyDecl>,
    /// Template source text by source file name.
    pub sources: BTreeMap<String, String>,
}

/// What a link looks like to a template.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkValue {
    /// The address of the group (the first instance's address).
    pub address: String,
    /// The provider's instances.
    pub instances: Vec<LinkInstance>,
    /// The provider's properties that its `provides` exports.
    pub properties: Json,
    /// The provider's deployment.
    pub deployment_name: String,
    /// The provider's instance group.
    pub instance_group: String,
}

/// One instance of a link provider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkInstance {
    /// Instance group name.
    pub name: String,
    /// Instance id.
    pub id: String,
    /// Index.
    pub index: u32,
    /// AZ.
    pub az: Option<String>,
    /// Address (its IP).
    pub address: String,
    /// Whether it is the bootstrap instance.
    pub bootstrap: bool,
}

/// What a template gets for one instance.
#[derive(Clone, Debug, Default)]
pub struct InstanceContext {
    /// `spec`, as a JSON object.
    pub spec: Json,
    /// The job's properties from the manifest (nested), before defaults.
    pub properties: Json,
    /// Links the job consumes, by name (absent: not linked, `has_link` is false).
    pub links: BTreeMap<String, LinkValue>,
}

/// A rendered job: destination path → content, and their digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedJob {
    /// Job name.
    pub name: String,
    /// Destination path (`config/bpm.yml`) → bytes.
    pub files: BTreeMap<String, Vec<u8>>,
    /// SHA-256 over every path and content, hex.
    pub digest: String,
}

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("job '{job}' template '{template}': {message}")]
pub struct RenderError {
    /// Job name.
    pub job: String,
    /// Template source file.
    pub template: String,
    /// What went wrong.
    pub message: String,
}

/// Looks up a dotted name in nested maps.
fn lookup<'a>(tree: &'a Json, dotted: &str) -> Option<&'a Json> {
    let mut current = tree;
    for part in dotted.split('.') {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// Sets a dotted name in nested maps, creating the maps on the way.
fn insert(tree: &mut JsonMap<String, Json>, dotted: &str, value: Json) {
    let mut parts = dotted.split('.').peekable();
    let mut current = tree;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_string(), value);
            return;
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| Json::Object(JsonMap::new()));
        if !entry.is_object() {
            *entry = Json::Object(JsonMap::new());
        }
        let Json::Object(next) = entry else { return };
        current = next;
    }
}

/// The job's effective properties: every declared property with the manifest's value or its
/// default (undeclared manifest properties are not visible, as in BOSH); a declared property
/// with neither is absent.
pub fn effective_properties(declared: &[PropertyDecl], manifest: &Json) -> Json {
    let mut tree = JsonMap::new();
    for property in declared {
        let value = lookup(manifest, &property.name)
            .filter(|v| !v.is_null())
            .cloned()
            .or_else(|| property.default.clone());
        if let Some(value) = value {
            insert(&mut tree, &property.name, value);
        }
    }
    Json::Object(tree)
}

/// The properties a provider exports through a link: `provides[].properties` of its spec.
pub fn link_properties(exported: &[String], effective: &Json) -> Json {
    let mut tree = JsonMap::new();
    for name in exported {
        if let Some(value) = lookup(effective, name) {
            insert(&mut tree, name, value.clone());
        }
    }
    Json::Object(tree)
}

fn arg_name(
    args: &std::collections::HashMap<String, tera::Value>,
    function: &str,
) -> tera::Result<String> {
    match args.get("name") {
        Some(tera::Value::String(name)) => Ok(name.clone()),
        _ => Err(tera::Error::msg(format!("{function}() needs name=\"…\""))),
    }
}

/// A compiled job: its templates parsed once, rendered for many instances.
pub struct CompiledJob {
    job: JobTemplates,
    tera: tera::Tera,
}

impl CompiledJob {
    /// Parses the job's templates.
    pub fn compile(job: &JobTemplates) -> Result<CompiledJob, RenderError> {
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        for (source, _) in &job.templates {
            let Some(text) = job.sources.get(source) else {
                return Err(RenderError {
                    job: job.name.clone(),
                    template: source.clone(),
                    message: "the job spec lists this template but the job has no such file"
                        .to_string(),
                });
            };
            tera.add_raw_template(source, text)
                .map_err(|e| RenderError {
                    job: job.name.clone(),
                    template: source.clone(),
                    message: error_chain(&e),
                })?;
        }
        Ok(CompiledJob {
            job: job.clone(),
            tera,
        })
    }

    /// Renders every template for one instance.
    pub fn render(&self, instance: &InstanceContext) -> Result<RenderedJob, RenderError> {
        let properties = effective_properties(&self.job.properties, &instance.properties);
        let mut tera = self.tera.clone();
        let job_name = self.job.name.clone();
        let for_p = properties.clone();
        tera.register_function("p", move |args: &std::collections::HashMap<String, tera::Value>| {
            let name = arg_name(args, "p")?;
            match lookup(&for_p, &name) {
                Some(value) => Ok(value.clone()),
                None => match args.get("default") {
                    Some(default) => Ok(default.clone()),
                    None => Err(tera::Error::msg(format!(
                        "property '{name}' is not set in the manifest and job '{job_name}' gives it no default"
                    ))),
                },
            }
        });
        let for_has_p = properties.clone();
        tera.register_function(
            "has_p",
            move |args: &std::collections::HashMap<String, tera::Value>| {
                let name = arg_name(args, "has_p")?;
                Ok(tera::Value::Bool(lookup(&for_has_p, &name).is_some()))
            },
        );
        let links: BTreeMap<String, Json> = instance
            .links
            .iter()
            .map(|(name, link)| {
                (
                    name.clone(),
                    serde_json::to_value(link).unwrap_or(Json::Null),
                )
            })
            .collect();
        let for_link = links.clone();
        let job_name = self.job.name.clone();
        tera.register_function("link", move |args: &std::collections::HashMap<String, tera::Value>| {
            let name = arg_name(args, "link")?;
            for_link.get(&name).cloned().ok_or_else(|| {
                tera::Error::msg(format!(
                    "job '{job_name}' has no link '{name}' (it is not consumed, optional and unprovided, or blocked); test with has_link(name=\"{name}\")"
                ))
            })
        });
        tera.register_function(
            "has_link",
            move |args: &std::collections::HashMap<String, tera::Value>| {
                let name = arg_name(args, "has_link")?;
                Ok(tera::Value::Bool(links.contains_key(&name)))
            },
        );
        let mut context = tera::Context::new();
        context.insert("spec", &instance.spec);
        context.insert("properties", &properties);
        context.insert("links", &instance.links);
        let mut files = BTreeMap::new();
        for (source, destination) in &self.job.templates {
            let text = tera.render(source, &context).map_err(|e| RenderError {
                job: self.job.name.clone(),
                template: source.clone(),
                message: error_chain(&e),
            })?;
            files.insert(destination.clone(), text.into_bytes());
        }
        let mut hasher = Sha256::new();
        for (path, content) in &files {
            hasher.update(path.as_bytes());
            hasher.update([0]);
            hasher.update((content.len() as u64).to_be_bytes());
            hasher.update(content);
        }
        let digest = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(RenderedJob {
            name: self.job.name.clone(),
            files,
            digest,
        })
    }
}

impl RenderedJob {
    /// The job's rendered files as a gzipped tarball, laid out as `/var/vcap/jobs/<name>`
    /// (`bin/ctl`, `config/bpm.yml`, …). Deterministic: sorted entries, no times, no owners,
    /// so the same files always make the same blob. Files under `bin/` are executable.
    pub fn archive(&self) -> std::io::Result<Vec<u8>> {
        let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut builder = tar::Builder::new(encoder);
        builder.mode(tar::HeaderMode::Deterministic);
        for (path, content) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            let executable = path.starts_with("bin/") || path.contains("/bin/");
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append_data(&mut header, path, content.as_slice())?;
        }
        builder.into_inner()?.finish()
    }
}

/// Tera's error and its causes, without Tera's generic "Failed to render" prefix noise.
fn error_chain(error: &tera::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.retain(|p| !p.is_empty());
    let last = parts.last().cloned().unwrap_or_default();
    if parts.len() > 1 {
        format!("{last} ({})", parts[0])
    } else {
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(templates: &[(&str, &str, &str)], properties: &[(&str, Option<Json>)]) -> JobTemplates {
        JobTemplates {
            name: "web".to_string(),
            templates: templates
                .iter()
                .map(|(s, d, _)| (s.to_string(), d.to_string()))
                .collect(),
            properties: properties
                .iter()
                .map(|(n, d)| PropertyDecl {
                    name: n.to_string(),
                    default: d.clone(),
                })
                .collect(),
            sources: templates
                .iter()
                .map(|(s, _, t)| (s.to_string(), t.to_string()))
                .collect(),
        }
    }

    #[test]
    fn properties_merge_defaults_and_manifest_values() {
        let declared = vec![
            PropertyDecl {
                name: "port".into(),
                default: Some(json!(8080)),
            },
            PropertyDecl {
                name: "tls.enabled".into(),
                default: Some(json!(false)),
            },
            PropertyDecl {
                name: "tls.cert".into(),
                default: None,
            },
            PropertyDecl {
                name: "greeting".into(),
                default: Some(json!("hello")),
            },
        ];
        let manifest = json!({"port": 9090, "tls": {"enabled": true}, "undeclared": 1});
        assert_eq!(
            effective_properties(&declared, &manifest),
            json!({"port": 9090, "tls": {"enabled": true}, "greeting": "hello"})
        );
    }

    #[test]
    fn renders_p_has_p_spec_and_links() {
        let compiled = CompiledJob::compile(&job(
            &[(
                "conf.tera",
                "config/app.conf",
                "ip={{ spec.ip }} port={{ p(name=\"port\") }} x={{ p(name=\"missing\", default=\"d\") }}{% if has_p(name=\"tls.cert\") %} tls{% endif %}{% if has_link(name=\"db\") %}{% set db = link(name=\"db\") %} db={{ db.address }}:{{ db.properties.port }}{% endif %}",
            )],
            &[("port", Some(json!(8080))), ("tls.cert", None)],
        ))
        .unwrap();
        let mut instance = InstanceContext {
            spec: json!({"ip": "127.0.10.10"}),
            properties: json!({}),
            links: BTreeMap::new(),
        };
        let plain = compiled.render(&instance).unwrap();
        assert_eq!(
            plain.files["config/app.conf"],
            b"ip=127.0.10.10 port=8080 x=d"
        );
        instance.links.insert(
            "db".to_string(),
            LinkValue {
                address: "127.0.10.20".into(),
                instances: vec![],
                properties: json!({"port": 5432}),
                deployment_name: "d".into(),
                instance_group: "db".into(),
            },
        );
        let linked = compiled.render(&instance).unwrap();
        assert_eq!(
            linked.files["config/app.conf"],
            b"ip=127.0.10.10 port=8080 x=d db=127.0.10.20:5432"
        );
        assert_ne!(plain.digest, linked.digest);
        assert_eq!(
            linked.digest,
            compiled.render(&instance).unwrap().digest,
            "deterministic"
        );
    }

    #[test]
    fn a_missing_property_names_job_template_and_property() {
        let compiled = CompiledJob::compile(&job(
            &[("conf.tera", "config/c", "{{ p(name=\"admin_password\") }}")],
            &[("admin_password", None)],
        ))
        .unwrap();
        let error = compiled.render(&InstanceContext::default()).unwrap_err();
        assert_eq!(error.job, "web");
        assert_eq!(error.template, "conf.tera");
        assert!(
            error.message.contains("property 'admin_password' is not set in the manifest and job 'web' gives it no default"),
            "{error}"
        );
    }

    #[test]
    fn archives_are_reproducible_and_keep_bin_executable() {
        let compiled = CompiledJob::compile(&job(
            &[
                (
                    "ctl.tera",
                    "bin/ctl",
                    "#!/bin/sh\necho {{ p(name=\"port\") }}\n",
                ),
                ("c.tera", "config/c.yml", "x: 1\n"),
            ],
            &[("port", Some(json!(1)))],
        ))
        .unwrap();
        let rendered = compiled.render(&InstanceContext::default()).unwrap();
        let first = rendered.archive().unwrap();
        assert_eq!(first, rendered.archive().unwrap());
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(first.as_slice()));
        let modes: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            modes,
            vec![
                ("bin/ctl".to_string(), 0o755),
                ("config/c.yml".to_string(), 0o644)
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_template() {
        let error = CompiledJob::compile(&job(&[("bad.tera", "bin/x", "{{ p(name=")], &[]))
            .err()
            .unwrap();
        assert_eq!(
            (error.job.as_str(), error.template.as_str()),
            ("web", "bad.tera")
        );
    }
}
