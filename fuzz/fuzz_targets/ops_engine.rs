//! Any ops file applied to any document, then interpolated with variables: results or
//! diagnostics, never a panic.
#![no_main]

use director_core::interpolate::{self, Expectations, Ops, VarSource, VarSources};
use director_core::yaml::{self, Value};
use libfuzzer_sys::fuzz_target;

const DOC: &str = "name: d\ninstance_groups:\n- name: web\n  instances: 2\n  jobs: [{name: a, release: r, properties: {p: ((v))}}]\n- name: db\n  azs: [z1]\nlist: [1, 2, 3]\nmap: {k: v}\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The input is an ops file, optionally followed by "\n---doc\n" and a document.
    let (ops_text, doc_text) = text.split_once("\n---doc\n").unwrap_or((text, DOC));
    let Ok(ops_node) = yaml::parse(ops_text, "ops.yml") else { return };
    let Ok(ops) = Ops::from_node(&ops_node) else { return };
    let Ok(doc) = yaml::parse(doc_text, "doc.yml") else { return };
    let mut sources = VarSources::new();
    if let Value::Map(values) = yaml::parse("v: {x: 1}\ns: text\n", "vars.yml").unwrap().value {
        sources.push(VarSource { origin: "vars".into(), values });
    }
    if let Ok(result) = interpolate::evaluate(doc, &ops, &sources, None, Expectations::default()) {
        let _ = yaml::emit(&result);
    }
});
