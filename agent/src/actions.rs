//! Bus methods onto the agent: parses each request's positional arguments, runs short calls
//! at once and long calls as tasks, and turns results into replies.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::agent::Agent;
use crate::drain::DrainKind;
use crate::error::{Error, Result};
use agent_protocol::{ApplySpec, CompileRequest, Reply, Request};

/// Answers one request.
pub async fn handle(agent: &Arc<Agent>, request: Request) -> Reply {
    let method = request.method.clone();
    match dispatch(agent, &method, request.arguments).await {
        Ok(value) => Reply::Value(value),
        Err(error) => {
            agent_log!("{method} failed: {error}");
            Reply::exception(error.to_string())
        }
    }
}

async fn dispatch(agent: &Arc<Agent>, method: &str, args: Vec<Value>) -> Result<Value> {
    match method {
        "ping" => Ok(Value::from("pong")),
        "info" => Ok(json!({"api_version": 1})),
        "get_state" => Ok(serde_json::to_value(agent.state()).expect("states serialize")),
        "get_task" => reply_value(agent.tasks().get(&arg::<String>(method, &args, 0)?)),
        "cancel_task" => reply_value(agent.tasks().cancel(&arg::<String>(method, &args, 0)?)),
        "start" => agent.start().await,
        "list_disk" => Ok(agent.list_disk()),
        "update_settings" => agent.update_settings(args.first().unwrap_or(&Value::Null)),
        "sync_dns" => {
            let url: String = arg(method, &args, 0)?;
            let sha256: String = arg(method, &args, 1)?;
            let version: u64 = arg(method, &args, 2)?;
            if !url.contains("://") {
                return Err(Error::arguments(
                    method,
                    "argument 1: expected the URL of the records",
                ));
            }
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::arguments(
                    method,
                    format!("argument 2: {sha256:?} is not a sha256 in hex"),
                ));
            }
            agent.sync_dns(url, sha256, version).await
        }
        "apply" => {
            let spec: ApplySpec = arg(method, &args, 0)?;
            let worker = agent.clone();
            long(agent, method, async move { worker.apply(spec).await })
        }
        "prepare" => {
            let spec: ApplySpec = arg(method, &args, 0)?;
            let worker = agent.clone();
            long(agent, method, async move { worker.prepare(spec).await })
        }
        "stop" => {
            let worker = agent.clone();
            long(agent, method, async move { worker.stop().await })
        }
        "drain" => {
            let kind_text: String = arg(method, &args, 0)?;
            let kind = DrainKind::parse(&kind_text).ok_or_else(|| {
                Error::arguments(
                    method,
                    format!("{kind_text:?} is not update, shutdown or status"),
                )
            })?;
            let next: Option<ApplySpec> = optional_arg(method, &args, 1)?;
            let worker = agent.clone();
            long(agent, method, async move { worker.drain(kind, next).await })
        }
        "run_script" => {
            let name: String = arg(method, &args, 0)?;
            let env = script_env(method, args.get(1))?;
            let worker = agent.clone();
            long(
                agent,
                method,
                async move { worker.run_script(name, env).await },
            )
        }
        "run_errand" => {
            let only: Option<String> = optional_arg(method, &args, 0)?;
            let env = script_env(method, args.get(1))?;
            let worker = agent.clone();
            long(
                agent,
                method,
                async move { worker.run_errand(only, env).await },
            )
        }
        "compile_package" => {
            let request: CompileRequest = arg(method, &args, 0)?;
            let worker = agent.clone();
            long(agent, method, async move {
                worker.compile_package(request).await
            })
        }
        "mount_disk" => {
            let cid: String = arg(method, &args, 0)?;
            let worker = agent.clone();
            long(agent, method, async move { worker.mount_disk(cid).await })
        }
        "unmount_disk" => {
            let cid: String = arg(method, &args, 0)?;
            let worker = agent.clone();
            long(agent, method, async move { worker.unmount_disk(cid).await })
        }
        "migrate_disk" => {
            let old: String = arg(method, &args, 0)?;
            let new: String = arg(method, &args, 1)?;
            let worker = agent.clone();
            long(
                agent,
                method,
                async move { worker.migrate_disk(old, new).await },
            )
        }
        "fetch_logs" => {
            let url: String = arg(method, &args, 0)?;
            if !url.contains("://") {
                return Err(Error::arguments(
                    method,
                    "expected the URL to upload the logs to",
                ));
            }
            let worker = agent.clone();
            long(agent, method, async move { worker.fetch_logs(url).await })
        }
        _ => Err(Error::arguments(method, "unknown method")),
    }
}

/// Starts `work` as a task and answers its handle.
fn long<F>(agent: &Agent, method: &str, work: F) -> Result<Value>
where
    F: Future<Output = Result<Value>> + Send + 'static,
{
    Ok(serde_json::to_value(agent.tasks().spawn(method, work)).expect("handles serialize"))
}

fn reply_value(reply: Reply) -> Result<Value> {
    match reply {
        Reply::Value(value) => Ok(value),
        Reply::Exception(exception) => Err(Error::Process(exception.message)),
    }
}

fn arg<T: DeserializeOwned>(method: &str, args: &[Value], index: usize) -> Result<T> {
    let value = args
        .get(index)
        .ok_or_else(|| Error::arguments(method, format!("argument {} is missing", index + 1)))?;
    serde_json::from_value(value.clone())
        .map_err(|e| Error::arguments(method, format!("argument {}: {e}", index + 1)))
}

fn optional_arg<T: DeserializeOwned>(
    method: &str,
    args: &[Value],
    index: usize,
) -> Result<Option<T>> {
    match args.get(index) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => arg(method, args, index).map(Some),
    }
}

/// `run_script`'s environment: `{"env": {…}}` as BOSH sends it, or the map itself; scalar
/// values are passed as their text.
fn script_env(method: &str, value: Option<&Value>) -> Result<BTreeMap<String, String>> {
    let map = match value {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(map)) => match map.get("env") {
            Some(Value::Object(env)) if map.len() == 1 => env,
            _ => map,
        },
        Some(other) => {
            return Err(Error::arguments(
                method,
                format!("argument 2: expected an object, got {other}"),
            ));
        }
    };
    map.iter()
        .map(|(key, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => value.to_string(),
                Value::Null => String::new(),
                _ => {
                    return Err(Error::arguments(
                        method,
                        format!("env {key} is not a scalar"),
                    ));
                }
            };
            Ok((key.clone(), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_env_takes_both_shapes() {
        let boshs = json!({"env": {"BOSH_VM_NEXT_STATE": "keep", "N": 1}});
        let env = script_env("run_script", Some(&boshs)).unwrap();
        assert_eq!(env["BOSH_VM_NEXT_STATE"], "keep");
        assert_eq!(env["N"], "1");
        let plain = json!({"A": "b", "env": "x"});
        assert_eq!(script_env("run_script", Some(&plain)).unwrap()["env"], "x");
        assert!(script_env("run_script", None).unwrap().is_empty());
        assert_eq!(
            script_env("run_script", Some(&json!([1])))
                .unwrap_err()
                .to_string(),
            "bad arguments for run_script: argument 2: expected an object, got [1]"
        );
    }

    #[test]
    fn arguments_are_checked() {
        let error = arg::<String>("mount_disk", &[], 0).unwrap_err();
        assert_eq!(
            error.to_string(),
            "bad arguments for mount_disk: argument 1 is missing"
        );
        let none: Option<ApplySpec> =
            optional_arg("drain", &[json!("update"), Value::Null], 1).unwrap();
        assert!(none.is_none());
    }
}
