//! Every YAML file of bosh-deployment parses, and reads as what it is: ops files as ops,
//! cloud configs and runtime configs as valid configs, the CI deployment manifests as valid
//! manifests against the docker cloud config.

use std::path::{Path, PathBuf};

use director_core::interpolate::Ops;
use director_core::manifest::{self, Documents};
use director_core::yaml::{self, Node, Value};
use tests::bosh_deployment;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
}

fn parse(path: &Path) -> Node {
    let text = std::fs::read_to_string(path).unwrap();
    yaml::parse(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_file_parses_as_what_it_is() {
    let root = bosh_deployment();
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    assert!(files.len() > 150, "found only {} YAML files", files.len());
    let docker_cloud_config = parse(&root.join("docker/cloud-config.yml"));
    let (mut ops_files, mut cloud_configs, mut runtime_configs, mut manifests, mut links) =
        (0, 0, 0, 0, 0);
    for path in &files {
        let node = parse(path);
        let relative = path.strip_prefix(&root).unwrap().display().to_string();
        match &node.value {
            Value::Seq(_) | Value::Null => {
                Ops::from_node(&node).unwrap_or_else(|e| panic!("{relative}: {e}"));
                ops_files += 1;
            }
            // Git symlinks checked out as files hold the path of their target.
            Value::Str(target) => {
                assert!(
                    root.join(target.trim()).exists(),
                    "{relative} points at {target}"
                );
                links += 1;
            }
            Value::Map(map) if map.get("azs").is_some() => {
                manifest::validate_cloud_config(&node)
                    .unwrap_or_else(|e| panic!("{relative}:\n{e}"));
                cloud_configs += 1;
            }
            Value::Map(map) if map.get("name").is_none() => {
                manifest::validate_runtime_config(&node)
                    .unwrap_or_else(|e| panic!("{relative}:\n{e}"));
                runtime_configs += 1;
            }
            Value::Map(map)
                if map.get("instance_groups").is_some() && map.get("cloud_provider").is_none() =>
            {
                let documents = Documents {
                    manifest: Some(&node),
                    cloud_config: Some(&docker_cloud_config),
                    runtime_config: None,
                };
                manifest::validate(documents).unwrap_or_else(|e| panic!("{relative}:\n{e}"));
                manifests += 1;
            }
            // bosh.yml: a create-env manifest (cloud_provider, resource_pools); interpolated
            // in interpolate_bosh_deployment.rs.
            Value::Map(_) => {}
            other => panic!("{relative}: unexpected document {other:?}"),
        }
    }
    assert!(ops_files > 140, "{ops_files} ops files");
    assert!(cloud_configs >= 10, "{cloud_configs} cloud configs");
    assert_eq!(runtime_configs, 3);
    assert_eq!(manifests, 2);
    assert_eq!(links, 1);
}
