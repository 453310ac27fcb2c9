//! The API server's limits and the CLI's targets, through the real binaries: idle, slow and
//! stalled clients are closed and cannot take the director's file descriptors, downloads of
//! `upload-release URL` give up on a server that stalls, the dev director's token goes only
//! to the dev director this CLI started, `serve --dev` leaves a non-dev target alone, and a
//! director configured for the Docker CPI says so in `/info` or fails to start naming the
//! engine's socket.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::User;

/// Waits (bounded) until `condition` holds.
fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// A director of its own (`serve --config`, a free port, its own data directory) with
/// `limits`; killed on drop.
struct Director {
    dir: tempfile::TempDir,
    child: Child,
    address: String,
}

impl Director {
    fn start(limits: &str) -> Director {
        Director::start_with(&format!("limits: {limits}\n"))
    }

    /// A director whose `director.yml` ends with `settings` (YAML lines).
    fn start_with(settings: &str) -> Director {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("director.yml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\ndata_dir: {}\n{settings}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("director.log");
        let child = tests::serve(&config, &log);
        wait_for(
            || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on")),
            "the director to listen",
        );
        Director {
            dir,
            child,
            address: format!("127.0.0.1:{port}"),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `director ARGS…` against this director, with its token.
    fn run(&self, args: &[&str]) -> tests::Run {
        tests::run(
            tests::director()
                .env("HOME", self.dir.path())
                .env("XDG_DATA_HOME", self.dir.path().join("cli-data"))
                .env("XDG_CONFIG_HOME", self.dir.path().join("cli-config"))
                .env("DIRECTOR_URL", self.url())
                .env("DIRECTOR_TOKEN", self.token())
                .env_remove("DIRECTOR_CA_CERT")
                .args(args),
        )
    }

    /// How many sockets the director process has open.
    fn sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|fds| {
                fds.flatten()
                    .filter(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `stream` until the director closes it; answers what it sent, or `None` when it is
/// still open after a minute (far beyond any timeout the tests configure).
fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&received).into_owned());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

#[test]
fn idle_and_half_sent_requests_are_closed_and_the_director_keeps_serving() {
    let director = Director::start("{header_read_timeout: 2}");
    let mut idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&director.address).unwrap())
        .collect();
    let mut half: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(&director.address).unwrap();
            stream
                .write_all(b"GET /info HTTP/1.1\r\nHost: director\r\nAccept: ")
                .unwrap();
            stream
        })
        .collect();

    let status = director.run(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stdout.contains(&director.url()), "{}", status.stdout);

    for (index, stream) in idle.iter_mut().chain(half.iter_mut()).enumerate() {
        let answer = read_until_closed(stream);
        assert!(
            answer.is_some(),
            "connection {index} is still open a minute after the 2 s header timeout"
        );
    }
    let again = director.run(&["status"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
}

#[test]
fn connections_beyond_the_cap_wait_in_the_backlog_not_in_the_director() {
    let director = Director::start("{max_connections: 8, header_read_timeout: 3}");
    let before = director.sockets();
    let clients: Vec<std::thread::JoinHandle<bool>> = (0..40)
        .map(|_| {
            let mut stream = TcpStream::connect(&director.address).unwrap();
            std::thread::spawn(move || read_until_closed(&mut stream).is_some())
        })
        .collect();
    // While the director works through them (8 at a time, each closed by its header
    // timeout), it never holds more than its cap of them.
    let mut most = 0;
    while clients.iter().any(|client| !client.is_finished()) {
        most = most.max(director.sockets().saturating_sub(before));
        std::thread::sleep(Duration::from_millis(10));
    }
    for client in clients {
        assert!(
            client.join().unwrap(),
            "every connection was served in turn"
        );
    }
    assert!(
        most <= 8,
        "the director held {most} client connections at once (cap 8)"
    );
    let status = director.run(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
}

#[test]
fn an_upload_whose_body_stalls_is_cut_and_its_connection_freed() {
    let director = Director::start("{idle_timeout: 2}");
    let mut stream = TcpStream::connect(&director.address).unwrap();
    write!(
        stream,
        "POST /releases HTTP/1.1\r\nHost: director\r\nAuthorization: Bearer {}\r\nContent-Type: application/gzip\r\nContent-Length: 1000000\r\n\r\n",
        director.token()
    )
    .unwrap();
    stream.write_all(&[0x1f; 1000]).unwrap();
    let answer = read_until_closed(&mut stream).expect("the director ends the stalled upload");
    assert!(
        answer.contains("no data of the request body for 2 s"),
        "{answer}"
    );
    assert!(
        std::fs::read_dir(director.dir.path().join("data/uploads"))
            .unwrap()
            .next()
            .is_none(),
        "the partial upload is removed"
    );
}

#[test]
fn a_download_that_stalls_fails_the_upload_instead_of_hanging() {
    let director = Director::start("{fetch_idle_timeout: 2}");
    // A server that answers the headers of a large release, a little of it, then nothing.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hello.tgz", server.local_addr().unwrap());
    let stalling = std::thread::spawn(move || {
        let (mut stream, _) = server.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
            .unwrap();
        stream.write_all(&[0x1f; 1000]).unwrap();
        // Held open (and silent) until the director gives up and closes it: longer than
        // the test waits for the upload to end.
        stream
            .set_read_timeout(Some(Duration::from_secs(600)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let mut upload = tests::director()
        .env("HOME", director.dir.path())
        .env("XDG_DATA_HOME", director.dir.path().join("cli-data"))
        .env("XDG_CONFIG_HOME", director.dir.path().join("cli-config"))
        .env("DIRECTOR_URL", director.url())
        .env("DIRECTOR_TOKEN", director.token())
        .args(["upload-release", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = upload.try_wait().unwrap() {
            break exit;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = upload.kill();
            let _ = upload.wait();
            panic!("upload-release of a stalled URL still runs after 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    upload
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stalling.join().unwrap();
    assert_eq!(exit.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the upload was interrupted"), "{stderr}");
}

/// A field of the dev director's record (`dev.yml`).
fn dev_record_field(user: &User, name: &str) -> String {
    let text = std::fs::read_to_string(user.data_dir().join("dev.yml")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("dev.yml has no {name}: {text}"))
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_string()
}

/// An HTTP server that answers every request as a dev director's `/info` would (plus a
/// made-up `proof`) and keeps every request it was sent.
fn impostor() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let kept = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let kept = kept.clone();
            std::thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut buffer = [0u8; 65536];
                let n = stream.read(&mut buffer).unwrap_or(0);
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buffer[..n]).into_owned());
                let body = r#"{"name":"dev","version":"0.1.0","user_authentication":"token","state":"sqlite","blobstore":"local","bus":"embedded","cpi":"local","dev":true,"proof":"00"}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (url, requests)
}

#[test]
fn the_dev_token_goes_only_to_the_dev_director_the_cli_started() {
    let user = User::new();
    assert_eq!(user.run(&["status"]).code, 0);
    let token = dev_record_field(&user, "token");
    let pid = user.dev_pid().unwrap();
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Another process took the dead dev director's port: the record (its URL, its token)
    // now leads there. (The record is pointed at the impostor's own free port, so the test
    // does not race other tests for the dead director's port.)
    let (url, requests) = impostor();
    let record = user.data_dir().join("dev.yml");
    let text = std::fs::read_to_string(&record).unwrap();
    let recorded_url = dev_record_field(&user, "url");
    std::fs::write(&record, text.replace(&recorded_url, &url)).unwrap();

    let stop = user.run(&["stop-server"]);
    let status = user.run(&["status"]);

    let seen = requests.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the CLI asked the impostor something");
    for request in &seen {
        assert!(
            !request.to_ascii_lowercase().contains("authorization") && !request.contains(&token),
            "the impostor was sent the token: {request}"
        );
    }
    let says = format!(
        "the listener at {url} is not the dev director this CLI started (its answer to the challenge does not prove it holds the dev director's token); the dev director's token was not sent to it"
    );
    assert_eq!(stop.code, 1, "{}", stop.stderr);
    assert!(stop.stderr.contains(&says), "{}", stop.stderr);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stderr.starts_with(&says), "{}", status.stderr);
    assert!(
        status.stderr.contains("Started a dev director at"),
        "{}",
        status.stderr
    );
    assert!(!status.stdout.contains(&url), "{}", status.stdout);
}

#[test]
fn serve_dev_leaves_a_non_dev_target_in_the_cli_config_alone() {
    let user = User::new();
    let config = user.home.path().join("config/director/config.yml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let production = "url: https://director.example:25555\ntoken: production-token\nca_cert: /etc/director/ca.pem\ndev: false\n";
    std::fs::write(&config, production).unwrap();

    let mut server = user
        .director()
        .args(["serve", "--dev"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server_pid = server.id();
    wait_for(
        || user.dev_pid() == Some(server_pid),
        "the dev director to record itself",
    );
    let dev_url = dev_record_field(&user, "url");
    let status = user.run(&["--director", "dev", "status"]);
    let stop = user.run(&["--director", "dev", "stop-server"]);
    let _ = server.kill();
    let _ = server.wait();
    let mut log = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();

    assert_eq!(std::fs::read_to_string(&config).unwrap(), production);
    assert!(
        log.contains(&format!(
            "the CLI config {} targets https://director.example:25555: left as it is; `director --director dev ...` (or DIRECTOR_URL=dev) talks to this dev director",
            config.display()
        )),
        "{log}"
    );
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status.stdout.contains(&format!("{dev_url} (dev)")),
        "{}",
        status.stdout
    );
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    assert!(
        stop.stderr
            .starts_with(&format!("stopped the dev director at {dev_url}")),
        "{}",
        stop.stderr
    );
}

#[test]
fn a_director_configured_for_docker_says_so_or_names_the_engine_it_cannot_reach() {
    let director = Director::start_with("cpi: {type: docker}\n");
    let out = director.run(&["status", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(info["cpi"], "docker", "{info}");

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-engine.sock");
    let config = dir.path().join("director.yml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ndata_dir: {}\ncpi: {{type: docker, socket: {}}}\n",
            dir.path().join("data").display(),
            socket.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("director.log");
    let mut child = tests::serve(&config, &log);
    let mut status = None;
    wait_for(
        || {
            status = child.try_wait().unwrap();
            status.is_some()
        },
        "the director to give up",
    );
    assert!(!status.unwrap().success());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("cpi (docker)") && log.contains(&socket.display().to_string()),
        "{log}"
    );
}
