//! Any text given as a manifest, cloud config or runtime config: parsing, validation and
//! emitting must return values or diagnostics, never panic, and what we print must read back
//! as the same document.
#![no_main]

use director_core::manifest::{self, Documents};
use director_core::yaml::{self, Node, Value};
use libfuzzer_sys::fuzz_target;

/// Equality up to go-yaml's float printing: a float with an integral value prints without a
/// fraction (`1.0` as `1`, as bosh-cli prints it) and so reads back as an integer.
fn same(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Float(f), Value::Int(i)) | (Value::Int(i), Value::Float(f)) => *f == *i as f64,
        (Value::Seq(x), Value::Seq(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q)),
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|((k1, v1), (k2, v2))| same(k1, k2) && same(v1, v2))
        }
        _ => a.same_value(b),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(node) = yaml::parse(text, "fuzz.yml") else { return };
    let _ = manifest::validate(Documents { manifest: Some(&node), cloud_config: Some(&node), runtime_config: Some(&node) });
    let mut emitted = String::new();
    yaml::emit_to(&node, &mut emitted, false);
    let again = yaml::parse(&emitted, "emitted.yml").expect("emitted YAML parses");
    assert!(same(&again, &node), "emit/parse round trip changed the document:\n{emitted}");
    let _ = yaml::emit(&node);
});
