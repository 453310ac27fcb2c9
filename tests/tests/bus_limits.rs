//! The bus limits end to end (issue 9, part 1 item 12): a real director with its embedded
//! broker, real agents on the local CPI, and a bus client that floods heartbeats with the
//! credentials of one of them, as a job on that VM could. The flooder is cut off; the
//! director keeps its connection and a deploy of another instance still succeeds.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use tests::User;
use tests::hello::{
    Hello, all_running, by_group, deploy, instances, set_cloud_config, upload_stemcell,
    write_manifest,
};

/// A bus client speaking the protocol by hand, as an agent's account.
struct Flooder {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Flooder {
    /// Connects to the embedded broker on `port` and logs in as `user`.
    fn login(port: u16, user: &str, password: &str) -> Flooder {
        let writer = TcpStream::connect(("127.0.0.1", port)).unwrap();
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut flooder = Flooder {
            reader: BufReader::new(writer.try_clone().unwrap()),
            writer,
        };
        let info = flooder.line().expect("the broker sends INFO");
        assert!(info.starts_with("INFO {"), "{info}");
        let (said, closed) = flooder.exchange(&format!(
            "CONNECT {{\"user\":\"{user}\",\"pass\":\"{password}\",\"verbose\":false}}\r\n"
        ));
        assert_eq!((said.as_slice(), closed), (&[][..], false), "login");
        flooder
    }

    /// The next line without its CRLF; `None` once the broker closed the connection.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches("\r\n").to_string()),
        }
    }

    /// Sends `text` and a `PING`: what the broker said before its `PONG`, and whether it
    /// hung up instead.
    fn exchange(&mut self, text: &str) -> (Vec<String>, bool) {
        // A broker that already hung up makes the write fail; what it said is still read.
        let _ = self.writer.write_all(format!("{text}PING\r\n").as_bytes());
        let mut said = Vec::new();
        loop {
            match self.line() {
                Some(line) if line == "PONG" => return (said, false),
                Some(line) => said.push(line),
                None => return (said, true),
            }
        }
    }

    /// Publishes `payload` to `subject` in batches of 20 (each answered before the next,
    /// so nothing is in flight when the broker hangs up) until the broker closes the
    /// connection, at most `max` messages; what it said last.
    fn flood(&mut self, subject: &str, payload: &str, max: usize) -> Vec<String> {
        let batch = format!("PUB {subject} {}\r\n{payload}\r\n", payload.len()).repeat(20);
        for _ in 0..max / 20 {
            let (said, closed) = self.exchange(&batch);
            if closed {
                return said;
            }
            assert!(said.is_empty(), "{said:?}");
        }
        panic!("still connected after {max} heartbeats");
    }
}

#[test]
fn an_agent_flooding_heartbeats_is_cut_off_and_a_deploy_of_another_instance_still_succeeds() {
    // Low enough that the flood ends soon (a few seconds' worth of refill would not let
    // it go on), high enough for what real agents do during a deploy.
    let user = User::with_director_config(
        "bus_limits: {publish_rate: {messages_per_second: 20, messages_burst: 200}}",
    );
    set_cloud_config(&user, 47);
    upload_stemcell(&user, "1", None);
    let release = user.hello_release();
    let one_server = Hello {
        servers: 1,
        ..Hello::default()
    };
    let (code, _, stderr) = deploy(&user, &write_manifest(&user, &release, &one_server), &[]);
    assert_eq!(code, 0, "{stderr}");

    // The server's agent account, from the dev broker's record of its accounts.
    let list = instances(&user);
    let server = by_group(&list, "hello-server")[0];
    let agent_id = server["agent_id"].as_str().unwrap().to_string();
    let accounts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(user.data_dir().join("bus-agents.json")).unwrap(),
    )
    .unwrap();
    let password = accounts[&agent_id].as_str().unwrap();
    let port: u16 = std::fs::read_to_string(user.data_dir().join("bus.port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let heartbeat = serde_json::json!({
        "deployment": "hello",
        "job": "hello-server",
        "index": 0,
        "node_id": server["id"],
        "job_state": "running",
        "number_of_processes": 1,
    })
    .to_string();
    let mut flooder = Flooder::login(port, &format!("agent-{agent_id}"), password);
    let last_words = flooder.flood(
        &format!("hm.agent.heartbeat.{agent_id}"),
        &heartbeat,
        20_000,
    );
    assert_eq!(last_words, ["-ERR 'Maximum Publish Rate Exceeded'"]);

    // The director still works: another instance is deployed, every agent answers.
    let two_servers = Hello {
        servers: 2,
        ..Hello::default()
    };
    let (code, _, stderr) = deploy(&user, &write_manifest(&user, &release, &two_servers), &[]);
    assert_eq!(code, 0, "{stderr}");
    let list = instances(&user);
    assert_eq!(by_group(&list, "hello-server").len(), 2);
    assert!(all_running(&list), "{list:#?}");

    // The director's log names the account.
    let log = std::fs::read_to_string(user.home.path().join("director.log")).unwrap();
    let expected =
        format!("bus: publish rate exceeded: disconnected user 'agent-{agent_id}' at 127.0.0.1:");
    assert!(log.contains(&expected), "{log}");
    assert!(
        !log.contains("user 'director'"),
        "the director was limited: {log}"
    );
}

/// Limits that cannot work, or that would be ignored (nats-server has its own), stop the
/// director at start with a message that says so.
#[test]
fn bus_limits_that_cannot_apply_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "bus_limits: {max_connections: 0}",
            "bus_limits: max_connections is 0, which no agent can work with",
        ),
        (
            "bus_limits: {publish_rate: {bytes_burst: 1000}}",
            "bus_limits: publish_rate.bytes_burst is 1000, less than the largest message (1048576 bytes)",
        ),
        (
            "mbus: {url: 'nats://127.0.0.1:1', user: director, password: p, authorization_file: users.conf, pid_file: nats.pid}\nbus_limits: {max_connections: 10}",
            "bus_limits sets the embedded broker's limits, and with mbus there is none",
        ),
    ];
    for (n, (extra, expected)) in cases.into_iter().enumerate() {
        let config = dir.path().join(format!("director-{n}.yml"));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:0\ndata_dir: {}\n{extra}\n",
                dir.path().join(format!("data-{n}")).display()
            ),
        )
        .unwrap();
        let log = dir.path().join(format!("director-{n}.log"));
        let mut director = tests::serve(&config, &log);
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = director.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = director.kill();
                let _ = director.wait();
                panic!(
                    "the director started with {extra:?}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "{extra:?}: {text}");
        assert!(text.contains(expected), "{extra:?}: {text}");
    }
}
