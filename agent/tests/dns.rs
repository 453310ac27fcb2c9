//! The real `bosh-agent` serving the records `sync_dns` pushes, asked over UDP and TCP as a
//! VM's resolver asks.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::{Value, json};
use support::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The agent's network address in these tests (no other test uses 127.0.53.0/24).
const AGENT_IP: &str = "127.0.53.1";
const GROUP: &str = "q-s0.greeter.default.dns-test.bosh.";

/// A port free for both UDP and TCP at [`AGENT_IP`].
fn free_port() -> u16 {
    for _ in 0..20 {
        let tcp = std::net::TcpListener::bind((AGENT_IP, 0)).expect("bind 127.0.53.1");
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind((AGENT_IP, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP at {AGENT_IP}");
}

/// A records document: `(id, ip, index, healthy, agent_id)` rows of group `greeter`.
fn records(version: u64, rows: &[(&str, &str, u64, bool, &str)]) -> Vec<u8> {
    let infos: Vec<Value> = rows
        .iter()
        .map(|(id, ip, index, healthy, agent_id)| {
            json!([
                id, "greeter", "z1", "default", "dns-test", ip, "bosh.", agent_id, index, healthy
            ])
        })
        .collect();
    serde_json::to_vec(&json!({
        "version": version,
        "record_keys": ["id", "instance_group", "az", "network", "deployment", "ip", "domain",
                        "agent_id", "instance_index", "healthy"],
        "record_infos": infos,
    }))
    .unwrap()
}

fn question(name: &str, id: u16) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    message.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, name: &str) -> Message {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buffer = vec![0u8; 4096];
    // Three tries: the first datagram may beat the agent's socket after a restart.
    for attempt in 0..3u16 {
        let id = 0x5300 + attempt;
        socket.send_to(&question(name, id), server).await.unwrap();
        let received = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buffer)).await;
        if let Ok(Ok(length)) = received {
            let answer = Message::from_vec(&buffer[..length]).unwrap();
            assert_eq!(answer.metadata.id, id);
            return answer;
        }
    }
    panic!("no UDP answer from {server} for {name}");
}

async fn ask_tcp(server: SocketAddr, name: &str) -> Message {
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let query = question(name, 0x7cb);
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    stream.write_all(&framed).await.unwrap();
    let mut length = [0u8; 2];
    let read = async {
        stream.read_exact(&mut length).await.unwrap();
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a TCP answer within 5 s");
    let answer = Message::from_vec(&answer).unwrap();
    assert_eq!(answer.metadata.id, 0x7cb);
    answer
}

/// The answer's addresses, checking what every answer of ours has.
fn addresses(answer: &Message) -> BTreeSet<String> {
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert!(!answer.metadata.truncation);
    answer
        .answers
        .iter()
        .map(|record| {
            assert_eq!(record.ttl, 0);
            match &record.data {
                RData::A(a) => a.0.to_string(),
                other => panic!("not an A record: {other:?}"),
            }
        })
        .collect()
}

fn set(ips: &[&str]) -> BTreeSet<String> {
    ips.iter().map(|ip| ip.to_string()).collect()
}

async fn sync(harness: &Harness, url: &str, sha256: &str, version: u64) -> Result<Value, String> {
    harness
        .call("sync_dns", vec![json!(url), json!(sha256), json!(version)])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_dns_serves_healthy_instances_over_udp_and_tcp() {
    let port = free_port();
    let mut harness =
        Harness::start_on_network(AGENT_IP, &[("BOSH_AGENT_DNS_PORT", &port.to_string())]).await;
    let server = SocketAddr::new(AGENT_IP.parse::<IpAddr>().unwrap(), port);
    let me = harness.agent_id.clone();

    // Version 1: g0 and g2 healthy, g1 not; the agent's own instance healthy on record,
    // but its job state is `stopped`.
    let v1 = harness.blobs.add(records(
        1,
        &[
            ("g0", "127.0.53.10", 0, true, "agent-g0"),
            ("g1", "127.0.53.11", 1, false, "agent-g1"),
            ("g2", "127.0.53.12", 2, true, "agent-g2"),
            ("me", "127.0.53.13", 3, true, me.as_str()),
        ],
    ));
    assert_eq!(sync(&harness, &v1.url, &v1.id, 1).await.unwrap(), "synced");
    assert!(harness.root.join("bosh/dns/records.json").is_file());
    let answer = ask_udp(server, GROUP).await;
    assert_eq!(answer.queries[0].name().to_ascii(), GROUP);
    assert!(answer.metadata.recursion_desired);
    assert_eq!(addresses(&answer), set(&["127.0.53.10", "127.0.53.12"]));
    // Asked by name, an unhealthy instance is there; names are case-insensitive.
    let g1 = ask_udp(server, "G1.Greeter.default.DNS-TEST.bosh").await;
    assert_eq!(addresses(&g1), set(&["127.0.53.11"]));
    let missing = ask_udp(server, "q-s0.nobody.default.dns-test.bosh.").await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    let elsewhere = ask_udp(server, "example.com.").await;
    assert_eq!(elsewhere.metadata.response_code, ResponseCode::Refused);

    // Once the agent's jobs run (none here), its own instance is healthy.
    assert_eq!(harness.ok("start", vec![]).await, "started");
    assert_eq!(
        addresses(&ask_udp(server, GROUP).await),
        set(&["127.0.53.10", "127.0.53.12", "127.0.53.13"])
    );

    // Version 2: g0 falls ill, g1 recovers.
    let v2 = harness.blobs.add(records(
        2,
        &[
            ("g0", "127.0.53.10", 0, false, "agent-g0"),
            ("g1", "127.0.53.11", 1, true, "agent-g1"),
            ("g2", "127.0.53.12", 2, true, "agent-g2"),
            ("me", "127.0.53.13", 3, true, me.as_str()),
        ],
    ));
    assert_eq!(sync(&harness, &v2.url, &v2.id, 2).await.unwrap(), "synced");
    let v2_answer = set(&["127.0.53.11", "127.0.53.12", "127.0.53.13"]);
    assert_eq!(addresses(&ask_udp(server, GROUP).await), v2_answer);

    // An older version is not even downloaded (the URL leads nowhere).
    let nowhere = format!("{}/blobs/missing?signature=s3cr3t", harness.blobs.base);
    assert_eq!(sync(&harness, &v1.url, &v1.id, 1).await.unwrap(), "synced");
    assert_eq!(sync(&harness, &nowhere, &v1.id, 2).await.unwrap(), "synced");
    assert_eq!(addresses(&ask_udp(server, GROUP).await), v2_answer);

    // A blob that does not hash to its id is refused; version 2 stays in force.
    let v3 = harness
        .blobs
        .add(records(3, &[("g0", "127.0.53.10", 0, true, "agent-g0")]));
    let error = sync(&harness, &v3.url, &v2.id, 3).await.unwrap_err();
    assert!(
        error.starts_with("dns records version 3: sha256 of the downloaded blob is"),
        "{error}"
    );
    assert!(!error.contains("s3cr3t"), "{error}");
    assert_eq!(addresses(&ask_udp(server, GROUP).await), v2_answer);
    // So do records that do not parse, or that are another version than asked.
    let broken = harness
        .blobs
        .add(b"{\"version\": 3, \"record_keys\": [\"id\"]".to_vec());
    let error = sync(&harness, &broken.url, &broken.id, 3)
        .await
        .unwrap_err();
    assert!(
        error.starts_with("dns records version 3: not a records document"),
        "{error}"
    );
    let error = sync(&harness, &v3.url, &v3.id, 4).await.unwrap_err();
    assert_eq!(
        error,
        "dns records version 4: the document says version 3, sync_dns asked for 4"
    );
    assert_eq!(addresses(&ask_udp(server, GROUP).await), v2_answer);

    // TCP answers the same.
    assert_eq!(addresses(&ask_tcp(server, GROUP).await), v2_answer);

    // A restarted agent serves the recorded version at once, before any sync.
    harness.kill_agent();
    harness.spawn_agent().await;
    assert_eq!(addresses(&ask_udp(server, GROUP).await), v2_answer);
    assert_eq!(addresses(&ask_tcp(server, GROUP).await), v2_answer);
    // It holds version 2: version 2 again is not downloaded.
    assert_eq!(sync(&harness, &nowhere, &v2.id, 2).await.unwrap(), "synced");

    // Arguments are checked.
    let error = sync(&harness, &v2.url, "not-hex", 5).await.unwrap_err();
    assert_eq!(
        error,
        "bad arguments for sync_dns: argument 2: \"not-hex\" is not a sha256 in hex"
    );
    let error = harness
        .call("sync_dns", vec![json!(v2.url), json!(v2.id), json!(-1)])
        .await
        .unwrap_err();
    assert!(
        error.starts_with("bad arguments for sync_dns: argument 3:"),
        "{error}"
    );

    // A corrupt records file does not keep a restarted agent from starting.
    std::fs::write(harness.root.join("bosh/dns/records.json"), "{corrupt").unwrap();
    harness.kill_agent();
    harness.spawn_agent().await;
    assert!(
        harness
            .agent_log()
            .contains("dns: ignoring the recorded records"),
        "{}",
        harness.agent_log()
    );
    let v6 = harness
        .blobs
        .add(records(6, &[("g2", "127.0.53.12", 2, true, "agent-g2")]));
    assert_eq!(sync(&harness, &v6.url, &v6.id, 6).await.unwrap(), "synced");
    assert_eq!(
        addresses(&ask_udp(server, GROUP).await),
        set(&["127.0.53.12"])
    );
}
