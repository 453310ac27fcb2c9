//! `cpi`: a CPI of this crate as a BOSH CPI executable. Reads one JSON request from stdin,
//! calls it, writes one JSON response to stdout and exits 0 (failures are in the response,
//! as the protocol wants).
//!
//! `--type local` (the default) serves [`cpi::LocalCpi`]. Its root directory is, in this
//! order: `--root DIR`, the request's `context.root` (a CPI config property), or
//! `DIRECTOR_LOCAL_CPI_ROOT`.
//!
//! `--type docker` serves [`cpi::docker::DockerCpi`] (names prefixed `bosh-`). The engine's
//! socket is `--socket PATH`, the request's `context.socket`, or `/var/run/docker.sock`; the
//! director's id (a label on everything it makes) is the request's `context.director_uuid`,
//! which the director sends with every call.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use cpi::protocol::{self, Request, Response, WireError};
use cpi::{CpiError, ErrorKind, LocalCpi};

const USAGE: &str = "usage: cpi [--type local] [--root DIR] < request.json > response.json\n       \
                     cpi --type docker [--socket PATH] < request.json > response.json";

/// Which CPI to serve, from the command line.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// `--type local` and its `--root`.
    Local { root: Option<PathBuf> },
    /// `--type docker` and its `--socket`.
    Docker { socket: Option<PathBuf> },
}

fn main() -> ExitCode {
    let kind = match parse_arguments(std::env::args().skip(1)) {
        Ok(kind) => kind,
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
            Ok(request) => answer(kind, &request),
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

/// Makes the CPI `kind` names for `request` and answers it.
fn answer(kind: Kind, request: &Request) -> Response {
    match kind {
        Kind::Local { root: flag } => match root(flag, request) {
            Some(root) => protocol::serve(&LocalCpi::new(root), request),
            None => failure(CpiError::new(
                ErrorKind::CpiError,
                "the local cpi has no root directory: pass --root DIR, set context.root \
                 or DIRECTOR_LOCAL_CPI_ROOT",
            )),
        },
        Kind::Docker { socket } => serve_docker(socket, request),
    }
}

#[cfg(feature = "docker")]
fn serve_docker(socket: Option<PathBuf>, request: &Request) -> Response {
    use cpi::docker::{DockerConfig, DockerCpi};

    let Some(director_id) = request
        .context
        .get("director_uuid")
        .and_then(|id| id.as_str())
    else {
        return failure(CpiError::new(
            ErrorKind::CpiError,
            "the docker cpi needs the director's id: context.director_uuid is missing",
        ));
    };
    let mut config = DockerConfig::local(director_id);
    if let Some(socket) = socket.or_else(|| {
        request
            .context
            .get("socket")
            .and_then(|socket| socket.as_str())
            .map(PathBuf::from)
    }) {
        config.socket = socket;
    }
    match DockerCpi::new(config) {
        Ok(cpi) => protocol::serve(&cpi, request),
        Err(error) => failure(error),
    }
}

#[cfg(not(feature = "docker"))]
fn serve_docker(_socket: Option<PathBuf>, _request: &Request) -> Response {
    failure(CpiError::new(
        ErrorKind::CpiError,
        "this cpi was built without the docker feature",
    ))
}

fn parse_arguments(mut arguments: impl Iterator<Item = String>) -> Result<Kind, String> {
    let mut kind = None;
    let mut root = None;
    let mut socket = None;
    while let Some(argument) = arguments.next() {
        let (name, inline) = match argument.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_string(), Some(value)),
            _ => (argument.clone(), None),
        };
        let slot = match name.as_str() {
            "--type" => &mut kind,
            "--root" => &mut root,
            "--socket" => &mut socket,
            _ => return Err(format!("unexpected argument '{argument}'")),
        };
        let value = match inline {
            Some(value) => value.to_string(),
            None => arguments
                .next()
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        *slot = Some(value);
    }
    match kind.as_deref() {
        None | Some("local") if socket.is_none() => Ok(Kind::Local {
            root: root.map(PathBuf::from),
        }),
        None | Some("local") => Err("--socket is for --type docker".to_string()),
        Some("docker") if root.is_none() => Ok(Kind::Docker {
            socket: socket.map(PathBuf::from),
        }),
        Some("docker") => Err("--root is for --type local".to_string()),
        Some(other) => Err(format!(
            "unknown cpi type '{other}', expected 'local' or 'docker'"
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arguments: &[&str]) -> Result<Kind, String> {
        parse_arguments(arguments.iter().map(|argument| argument.to_string()))
    }

    #[test]
    fn the_type_chooses_the_cpi_and_its_options() {
        assert_eq!(parse(&[]), Ok(Kind::Local { root: None }));
        assert_eq!(
            parse(&["--root", "/r"]),
            Ok(Kind::Local {
                root: Some("/r".into())
            })
        );
        assert_eq!(
            parse(&["--type=docker", "--socket", "/s.sock"]),
            Ok(Kind::Docker {
                socket: Some("/s.sock".into())
            })
        );
        assert_eq!(
            parse(&["--type", "vsphere"]),
            Err("unknown cpi type 'vsphere', expected 'local' or 'docker'".to_string())
        );
        assert_eq!(
            parse(&["--type", "docker", "--root", "/r"]),
            Err("--root is for --type local".to_string())
        );
        assert_eq!(
            parse(&["--socket=/s"]),
            Err("--socket is for --type docker".to_string())
        );
        assert_eq!(parse(&["--type"]), Err("--type needs a value".to_string()));
        assert_eq!(
            parse(&["--bogus"]),
            Err("unexpected argument '--bogus'".to_string())
        );
    }
}
