//! The CPI JSON envelope (`docs:cpi-api-rpc.md`): one request on a CPI executable's stdin,
//! one response on its stdout. Both sides live here: [`crate::external::ExternalCpi`] writes
//! requests and reads responses, [`serve`] (behind the `cpi` binary) answers a request with
//! any [`Cpi`]. Nothing outside this crate sees these shapes.
//!
//! Error types are BOSH's class names (`Bosh::Clouds::VMNotFound`, …); a call the server
//! cannot make sense of answers `InvalidCall`, and an unknown method answers `InvalidCall`
//! with `Method is not known, got '<method>'`, which callers read as `NotImplemented`, as
//! BOSH's `external_cpi.rb` does.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Cpi, CpiError, ErrorKind};

/// The CPI API version we speak.
pub const API_VERSION: u32 = 2;

/// The error type of a call the server could not make sense of.
pub const INVALID_CALL: &str = "InvalidCall";

/// What the caller writes on the CPI's stdin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The method (`create_vm`, …).
    pub method: String,
    /// Positional arguments.
    #[serde(default)]
    pub arguments: Vec<Value>,
    /// `director_uuid`, `request_id` and the CPI config's properties.
    #[serde(default)]
    pub context: Map<String, Value>,
    /// `min(director, CPI)` API version; absent for v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<u32>,
}

/// What the CPI writes on its stdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The method's result (`null` on error).
    #[serde(default)]
    pub result: Value,
    /// The error, if the call failed.
    pub error: Option<WireError>,
    /// Log text for the director's CPI log.
    #[serde(default)]
    pub log: String,
}

/// The `error` of a response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// `Bosh::Clouds::VMNotFound`, `InvalidCall`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// What went wrong.
    pub message: String,
    /// Whether the director may retry.
    #[serde(default)]
    pub ok_to_retry: bool,
}

impl WireError {
    /// An `InvalidCall` error.
    pub fn invalid_call(message: impl Into<String>) -> WireError {
        WireError {
            kind: INVALID_CALL.to_string(),
            message: message.into(),
            ok_to_retry: false,
        }
    }
}

impl From<CpiError> for WireError {
    fn from(error: CpiError) -> WireError {
        WireError {
            kind: error_type(error.kind).to_string(),
            message: error.message,
            ok_to_retry: error.ok_to_retry,
        }
    }
}

/// BOSH's class name for an error kind.
pub fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::CpiError => "Bosh::Clouds::CpiError",
        ErrorKind::NotSupported => "Bosh::Clouds::NotSupported",
        ErrorKind::NotImplemented => "Bosh::Clouds::NotImplemented",
        ErrorKind::CloudError => "Bosh::Clouds::CloudError",
        ErrorKind::VmNotFound => "Bosh::Clouds::VMNotFound",
        ErrorKind::NetworkNotFound => "Bosh::Clouds::NetworkNotFound",
        ErrorKind::NoDiskSpace => "Bosh::Clouds::NoDiskSpace",
        ErrorKind::DiskNotAttached => "Bosh::Clouds::DiskNotAttached",
        ErrorKind::DiskNotFound => "Bosh::Clouds::DiskNotFound",
        ErrorKind::VmCreationFailed => "Bosh::Clouds::VMCreationFailed",
        ErrorKind::Unknown => "UnknownError",
    }
}

/// Reads a response's error as BOSH's director does: known class names keep their kind
/// and message; `InvalidCall` for an unknown method is `NotImplemented`; anything else is
/// `Unknown`, with the type named in the message. `ok_to_retry` only counts for the
/// retriable kinds (`NoDiskSpace`, `DiskNotAttached`, `DiskNotFound`, `VMCreationFailed`).
pub fn cpi_error(error: &WireError) -> CpiError {
    let kind = match error.kind.as_str() {
        "Bosh::Clouds::CpiError" => ErrorKind::CpiError,
        "Bosh::Clouds::NotSupported" => ErrorKind::NotSupported,
        "Bosh::Clouds::NotImplemented" => ErrorKind::NotImplemented,
        "Bosh::Clouds::CloudError" => ErrorKind::CloudError,
        "Bosh::Clouds::VMNotFound" => ErrorKind::VmNotFound,
        "Bosh::Clouds::NetworkNotFound" => ErrorKind::NetworkNotFound,
        "Bosh::Clouds::NoDiskSpace" => ErrorKind::NoDiskSpace,
        "Bosh::Clouds::DiskNotAttached" => ErrorKind::DiskNotAttached,
        "Bosh::Clouds::DiskNotFound" => ErrorKind::DiskNotFound,
        "Bosh::Clouds::VMCreationFailed" => ErrorKind::VmCreationFailed,
        INVALID_CALL if error.message.starts_with("Method is not known, got") => {
            ErrorKind::NotImplemented
        }
        _ => ErrorKind::Unknown,
    };
    let retriable = matches!(
        kind,
        ErrorKind::NoDiskSpace
            | ErrorKind::DiskNotAttached
            | ErrorKind::DiskNotFound
            | ErrorKind::VmCreationFailed
    );
    let message = if kind == ErrorKind::Unknown {
        format!("cpi error '{}': {}", error.kind, error.message)
    } else {
        error.message.clone()
    };
    CpiError {
        kind,
        message,
        ok_to_retry: retriable && error.ok_to_retry,
    }
}

/// Answers one request with `cpi`: the response to write on stdout.
pub fn serve(cpi: &dyn Cpi, request: &Request) -> Response {
    match dispatch(cpi, &request.method, &request.arguments) {
        Ok(result) => Response {
            result,
            error: None,
            log: String::new(),
        },
        Err(error) => Response {
            result: Value::Null,
            error: Some(error),
            log: String::new(),
        },
    }
}

/// The response to a request that could not be read.
pub fn unreadable_request(details: impl std::fmt::Display) -> Response {
    Response {
        result: Value::Null,
        error: Some(WireError::invalid_call(format!(
            "Request cannot be deserialized, details: {details}"
        ))),
        log: String::new(),
    }
}

/// Calls the method a request names with its positional arguments.
fn dispatch(cpi: &dyn Cpi, method: &str, arguments: &[Value]) -> Result<Value, WireError> {
    let args = Arguments { method, arguments };
    let value = match method {
        "info" => to_value(cpi.info()?),
        "create_stemcell" => {
            let image: String = args.get(0)?;
            Value::from(cpi.create_stemcell(std::path::Path::new(&image), &args.raw(1))?)
        }
        "delete_stemcell" => {
            cpi.delete_stemcell(&args.get::<String>(0)?)?;
            Value::Null
        }
        "create_vm" => {
            let agent_id: String = args.get(0)?;
            let stemcell_cid: String = args.get(1)?;
            let disk_cids: Option<Vec<String>> = args.get(4)?;
            let (vm_cid, networks) = cpi.create_vm(
                &agent_id,
                &stemcell_cid,
                &args.raw(2),
                &args.raw(3),
                &disk_cids.unwrap_or_default(),
                &args.raw(5),
            )?;
            Value::Array(vec![Value::from(vm_cid), networks])
        }
        "delete_vm" => {
            cpi.delete_vm(&args.get::<String>(0)?)?;
            Value::Null
        }
        "has_vm" => Value::from(cpi.has_vm(&args.get::<String>(0)?)?),
        "reboot_vm" => {
            cpi.reboot_vm(&args.get::<String>(0)?)?;
            Value::Null
        }
        "set_vm_metadata" => {
            cpi.set_vm_metadata(&args.get::<String>(0)?, &args.raw(1))?;
            Value::Null
        }
        "create_disk" => {
            let size_mb: u64 = args.get(0)?;
            let vm_hint: Option<String> = args.get(2)?;
            Value::from(cpi.create_disk(size_mb, &args.raw(1), vm_hint.as_deref())?)
        }
        "delete_disk" => {
            cpi.delete_disk(&args.get::<String>(0)?)?;
            Value::Null
        }
        "has_disk" => Value::from(cpi.has_disk(&args.get::<String>(0)?)?),
        "attach_disk" => cpi.attach_disk(&args.get::<String>(0)?, &args.get::<String>(1)?)?,
        "detach_disk" => {
            cpi.detach_disk(&args.get::<String>(0)?, &args.get::<String>(1)?)?;
            Value::Null
        }
        "get_disks" => to_value(cpi.get_disks(&args.get::<String>(0)?)?),
        "set_disk_metadata" => {
            cpi.set_disk_metadata(&args.get::<String>(0)?, &args.raw(1))?;
            Value::Null
        }
        // Not BOSH's: lets an `ExternalCpi` in front of our own `cpi` binary explain an
        // agent that never answered, as a `LocalCpi` called directly does.
        "agent_log_tail" => {
            let lines: usize = args.get(1)?;
            to_value(cpi.agent_log_tail(&args.get::<String>(0)?, lines))
        }
        // Not BOSH's either: lets a director find the VM of an agent id after it died
        // before recording what `create_vm` answered.
        "find_vm_by_agent_id" => to_value(cpi.find_vm_by_agent_id(&args.get::<String>(0)?)?),
        _ => {
            return Err(WireError::invalid_call(format!(
                "Method is not known, got '{method}'"
            )));
        }
    };
    Ok(value)
}

fn to_value<T: Serialize>(value: T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A request's positional arguments, read with the method named in errors.
struct Arguments<'a> {
    method: &'a str,
    arguments: &'a [Value],
}

impl Arguments<'_> {
    /// The argument at `index`, `null` when absent.
    fn raw(&self, index: usize) -> Value {
        self.arguments.get(index).cloned().unwrap_or(Value::Null)
    }

    /// The argument at `index` as a `T`.
    fn get<T: serde::de::DeserializeOwned>(&self, index: usize) -> Result<T, WireError> {
        serde_json::from_value(self.raw(index)).map_err(|error| {
            WireError::invalid_call(format!(
                "Arguments are not correct, details: argument {index} of '{}': {error}",
                self.method
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_survive_the_wire() {
        for kind in [
            ErrorKind::CpiError,
            ErrorKind::NotSupported,
            ErrorKind::NotImplemented,
            ErrorKind::CloudError,
            ErrorKind::VmNotFound,
            ErrorKind::NetworkNotFound,
            ErrorKind::NoDiskSpace,
            ErrorKind::DiskNotAttached,
            ErrorKind::DiskNotFound,
            ErrorKind::VmCreationFailed,
        ] {
            let error = CpiError::new(kind, "boom");
            assert_eq!(cpi_error(&WireError::from(error.clone())), error);
        }
    }

    #[test]
    fn unknown_methods_are_not_implemented_and_other_types_unknown() {
        let unknown_method = WireError::invalid_call("Method is not known, got 'resize_disk'");
        assert_eq!(cpi_error(&unknown_method).kind, ErrorKind::NotImplemented);
        let bad_arguments = WireError::invalid_call("Arguments are not correct");
        let error = cpi_error(&bad_arguments);
        assert_eq!(error.kind, ErrorKind::Unknown);
        assert_eq!(
            error.message,
            "cpi error 'InvalidCall': Arguments are not correct"
        );
    }

    #[test]
    fn ok_to_retry_counts_only_for_retriable_errors() {
        let retriable = WireError {
            kind: "Bosh::Clouds::VMCreationFailed".into(),
            message: "no capacity".into(),
            ok_to_retry: true,
        };
        assert!(cpi_error(&retriable).ok_to_retry);
        let not_retriable = WireError {
            kind: "Bosh::Clouds::CloudError".into(),
            ..retriable
        };
        assert!(!cpi_error(&not_retriable).ok_to_retry);
    }
}
