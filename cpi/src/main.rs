//! `cpi`: the local CPI as a BOSH CPI executable. Reads one JSON request from stdin, calls
//! [`cpi::LocalCpi`], writes one JSON response to stdout and exits 0 (failures are in the
//! response, as the protocol wants).
//!
//! The CPI's root directory is, in this order: `--root DIR`, the request's `context.root`
//! (a CPI config property), or `DIRECTOR_LOCAL_CPI_ROOT`.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use cpi::protocol::{self, Request, Response, WireError};
use cpi::{CpiError, ErrorKind, LocalCpi};

const USAGE: &str = "usage: cpi [--root DIR] < request.json > response.json";

fn main() -> ExitCode {
    let root_flag = match parse_arguments(std::env::args().skip(1)) {
        Ok(root) => root,
        Err(message) => {
            eprintln!("cpi: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut input = Vec::new();
    let response = match std::io::stdin().read_to_end(&mut input) {
        Err(error) => protocol::unreadable_request(error),
        Ok(_) => match serde_json::from_slice::<Request>(&input) {
            Err(error) => protocol::unreadable_request(error),
            Ok(request) => match root(root_flag, &request) {
                Some(root) => protocol::serve(&LocalCpi::new(root), &request),
                None => failure(CpiError::new(
                    ErrorKind::CpiError,
                    "the local cpi has no root directory: pass --root DIR, set context.root \
                     or DIRECTOR_LOCAL_CPI_ROOT",
                )),
            },
        },
    };
    let mut stdout = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut stdout, &response)
        .map_err(std::io::Error::from)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cpi: cannot write the response: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse_arguments(mut arguments: impl Iterator<Item = String>) -> Result<Option<PathBuf>, String> {
    let mut root = None;
    while let Some(argument) = arguments.next() {
        if argument == "--root" {
            let value = arguments.next().ok_or("--root needs a directory")?;
            root = Some(PathBuf::from(value));
        } else if let Some(value) = argument.strip_prefix("--root=") {
            root = Some(PathBuf::from(value));
        } else {
            return Err(format!("unexpected argument '{argument}'"));
        }
    }
    Ok(root)
}

fn root(flag: Option<PathBuf>, request: &Request) -> Option<PathBuf> {
    flag.or_else(|| {
        request
            .context
            .get("root")
            .and_then(|root| root.as_str())
            .map(PathBuf::from)
    })
    .or_else(|| std::env::var_os("DIRECTOR_LOCAL_CPI_ROOT").map(PathBuf::from))
}

fn failure(error: CpiError) -> Response {
    Response {
        result: serde_json::Value::Null,
        error: Some(WireError::from(error)),
        log: String::new(),
    }
}
