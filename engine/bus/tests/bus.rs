//! The bus, end to end: the director's [`Bus`] and its agent accounts against the embedded
//! broker and against Debian's `nats-server`, with the same checks written once.
//!
//! Each check gets a [`BusEnv`]: a broker, a director connected to it, and the accounts that
//! make agents. Agents are fake: small async-nats clients answering like the real agent.
//! The nats-server runs as its own process on a free port, with a configuration that
//! includes the director's authorization file and writes a pid file; it is killed when the
//! check ends. Without the `nats-server` binary the nats-server checks fail: they never skip.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_protocol::{Heartbeat, Reply, Request, TaskHandle, agent_subject, heartbeat_subject};
use director_bus::MbusConfig;
use director_bus::{
    AgentAccounts, AgentCredentials, Broker, BrokerEvent, BrokerHandle, BrokerOptions, Bus,
    BusError, BusLimits, NatsServerAccounts, Operation, Permissions, PublishRate,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const DIRECTOR_ID: &str = "d0";
const DIRECTOR_PASSWORD: &str = "director-password-7f3e";
const WAIT: Duration = Duration::from_secs(5);
const LOCALHOST: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

enum Backend {
    Embedded(BrokerHandle),
    NatsServer(NatsServer),
}

struct NatsServer {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NatsServer {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

struct BusEnv {
    director: Bus,
    accounts: Arc<dyn AgentAccounts>,
    url: String,
    backend: Backend,
}

impl BusEnv {
    async fn embedded() -> BusEnv {
        BusEnv::embedded_with(BrokerOptions::default()).await
    }

    async fn embedded_with(options: BrokerOptions) -> BusEnv {
        let broker = Broker::start_with("127.0.0.1:0", options).await.unwrap();
        broker.add_user("director", DIRECTOR_PASSWORD, Permissions::all());
        let director = Bus::connect(&broker.url(), "director", DIRECTOR_PASSWORD, DIRECTOR_ID)
            .await
            .unwrap();
        BusEnv {
            director,
            accounts: Arc::new(broker.clone()),
            url: broker.url(),
            backend: Backend::Embedded(broker),
        }
    }

    async fn nats_server() -> BusEnv {
        BusEnv::nats_server_with("").await
    }

    /// nats-server with `extra` lines in its configuration.
    async fn nats_server_with(extra: &str) -> BusEnv {
        let binary = nats_server_binary();
        let dir = tempfile::tempdir().unwrap();
        // A free port can be taken by someone else before nats-server binds it: try again.
        let mut attempt = 0;
        let (child, config, accounts, log) = loop {
            attempt += 1;
            match start_nats_server(&binary, dir.path(), extra).await {
                Ok(started) => break started,
                Err(log) if log.contains("address already in use") && attempt < 5 => {}
                Err(log) => panic!("nats-server did not start: {log}"),
            }
        };
        let server = NatsServer {
            child,
            log,
            _dir: dir,
        };
        let director = Bus::connect(&config.url, "director", DIRECTOR_PASSWORD, DIRECTOR_ID)
            .await
            .unwrap();
        BusEnv {
            director,
            accounts: Arc::new(accounts),
            url: config.url.clone(),
            backend: Backend::NatsServer(server),
        }
    }

    async fn close(self) {
        self.director.close().await;
        if let Backend::Embedded(broker) = &self.backend {
            broker.shutdown().await;
        }
    }

    /// Asserts that the broker itself recorded the refusal: the embedded broker's events,
    /// nats-server's log.
    async fn assert_broker_refused(&self, user: &str, operation: Operation, subject: &str) {
        let started = Instant::now();
        loop {
            let found = match &self.backend {
                Backend::Embedded(broker) => {
                    broker.events().contains(&BrokerEvent::PermissionViolation {
                        user: user.to_string(),
                        operation,
                        subject: subject.to_string(),
                    })
                }
                Backend::NatsServer(server) => {
                    let kind = match operation {
                        Operation::Publish => "Publish Violation",
                        Operation::Subscribe => "Subscription Violation",
                    };
                    server
                        .log()
                        .contains(&format!("{kind} - User \"{user}\", Subject \"{subject}\""))
                }
            };
            if found {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "the broker did not record that '{user}' was refused {operation:?} '{subject}'"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts nats-server on a free port with the director's authorization file included;
/// on failure, its log.
async fn start_nats_server(
    binary: &Path,
    dir: &Path,
    extra: &str,
) -> Result<(Child, MbusConfig, NatsServerAccounts, PathBuf), String> {
    let port = free_port();
    let config = MbusConfig {
        url: format!("nats://127.0.0.1:{port}"),
        agent_url: None,
        user: "director".to_string(),
        password: DIRECTOR_PASSWORD.to_string(),
        authorization_file: dir.join("director-users.conf"),
        pid_file: dir.join("nats-server.pid"),
    };
    // Written before nats-server starts (no pid file yet: nothing to reload).
    let accounts = NatsServerAccounts::open(&config).await.unwrap();
    let server_config = dir.join("nats-server.conf");
    std::fs::write(
        &server_config,
        format!(
            "listen: \"127.0.0.1:{port}\"\npid_file: \"{}\"\nmax_payload: 1048576\n{extra}\ninclude \"director-users.conf\"\n",
            config.pid_file.display()
        ),
    )
    .unwrap();
    let log = dir.join("nats-server.log");
    let output = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(binary)
        .arg("-c")
        .arg(&server_config)
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("exited ({status}): {text}"));
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Server is ready") && config.pid_file.exists() {
            return Ok((child, config, accounts, log));
        }
        if started.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("not ready after 5 s: {text}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nats-server binary (Debian puts it in /usr/sbin). Missing, the suite fails.
fn nats_server_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")]);
    for dir in candidates {
        let binary = dir.join("nats-server");
        if binary.is_file() {
            return binary;
        }
    }
    panic!(
        "nats-server is not installed: the bus suite runs against it and never skips; install it (`apt-get install nats-server`, as .ci/run does)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What a client saw from the server (`-ERR`s, disconnections), as text.
type Events = Arc<Mutex<Vec<String>>>;

async fn connect_as(
    url: &str,
    user: &str,
    password: &str,
) -> Result<(async_nats::Client, Events), async_nats::ConnectError> {
    let events: Events = Arc::default();
    let sink = events.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .event_callback(move |event| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(event.to_string()) }
        })
        .connect(url)
        .await?;
    Ok((client, events))
}

async fn wait_for_event(events: &Events, needle: &str) {
    let started = Instant::now();
    while !events.lock().unwrap().iter().any(|e| e.contains(needle)) {
        assert!(
            started.elapsed() < WAIT,
            "no event containing {needle:?}: {:?}",
            events.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that nothing arrives on `subscriber` for a while.
async fn assert_silent(subscriber: &mut async_nats::Subscriber) {
    let got = tokio::time::timeout(Duration::from_millis(300), subscriber.next()).await;
    if let Ok(Some(message)) = got {
        panic!(
            "a message got through on {}: {:?}",
            message.subject, message.payload
        );
    }
}

/// An agent as the director sees it: it answers `ping`, `echo`, `fail` (an exception),
/// `hang` (never), and the long calls `apply` (done after two polls), `forever` (never done)
/// and `explode` (fails while running), with `get_task` and `cancel_task`.
struct FakeAgent {
    credentials: AgentCredentials,
    client: async_nats::Client,
    events: Events,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAgent {
    async fn start(env: &BusEnv, agent_id: &str) -> FakeAgent {
        let credentials = env.accounts.add_agent(agent_id).await.unwrap();
        assert_eq!(credentials.user, format!("agent-{agent_id}"));
        assert_eq!(credentials.url, env.url);
        let (client, events) =
            connect_as(&credentials.url, &credentials.user, &credentials.password)
                .await
                .unwrap();
        let mut orders = client.subscribe(agent_subject(agent_id)).await.unwrap();
        client.flush().await.unwrap();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let seen = requests.clone();
        let answering = client.clone();
        let task = tokio::spawn(async move {
            let mut polls: HashMap<String, u32> = HashMap::new();
            while let Some(message) = orders.next().await {
                let request: Request = serde_json::from_slice(&message.payload).unwrap();
                seen.lock().unwrap().push(request.clone());
                let running = |id: &str| {
                    Reply::Value(
                        serde_json::to_value(TaskHandle {
                            agent_task_id: id.to_string(),
                            state: "running".to_string(),
                        })
                        .unwrap(),
                    )
                };
                let reply = match request.method.as_str() {
                    "ping" => Reply::Value(json!("pong")),
                    "echo" => Reply::Value(request.arguments[0].clone()),
                    "fail" => Reply::exception("disk full"),
                    "hang" => continue,
                    "apply" | "forever" | "explode" => running(&format!("{}-task", request.method)),
                    "get_task" => {
                        let id = request.arguments[0].as_str().unwrap().to_string();
                        let count = polls.entry(id.clone()).or_default();
                        *count += 1;
                        match id.as_str() {
                            "apply-task" if *count >= 2 => Reply::Value(json!("applied")),
                            "explode-task" => {
                                Reply::exception("Task explode-task result: packaging failed")
                            }
                            _ => running(&id),
                        }
                    }
                    "cancel_task" => Reply::Value(json!("canceled")),
                    other => Reply::exception(format!("unknown method {other}")),
                };
                answering
                    .publish(request.reply_to, serde_json::to_vec(&reply).unwrap().into())
                    .await
                    .unwrap();
            }
        });
        // Its subscription and the director's first request race (two connections): ping
        // until it answers, as the director does after creating a VM.
        env.director.wait_until_ready(agent_id, WAIT).await.unwrap();
        requests.lock().unwrap().clear();
        FakeAgent {
            credentials,
            client,
            events,
            requests,
            task,
        }
    }

    fn methods(&self) -> Vec<(String, Vec<Value>)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.method.clone(), r.arguments.clone()))
            .collect()
    }
}

/// Connects an agent without the fake agent's answering loop.
async fn bare_agent(env: &BusEnv, agent_id: &str) -> (async_nats::Client, Events) {
    let credentials = env.accounts.add_agent(agent_id).await.unwrap();
    connect_as(&credentials.url, &credentials.user, &credentials.password)
        .await
        .unwrap()
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        deployment: "hello".to_string(),
        job: "web".to_string(),
        index: 0,
        node_id: "0b9d1a52-9e7a-4d2c-8d37-3d2f9e4b9c11".to_string(),
        job_state: "running".to_string(),
        number_of_processes: 1,
        ..Heartbeat::default()
    }
}

// ---------------------------------------------------------------------------------------
// The checks.

async fn check_request_reply(env: &BusEnv) {
    assert_eq!(env.director.last_contact("a1"), None);
    let _agent = FakeAgent::start(env, "a1").await;
    let answer = env
        .director
        .request("a1", "ping", vec![], WAIT)
        .await
        .unwrap();
    assert_eq!(answer, json!("pong"));
    let spec = json!({"deployment": "hello", "jobs": [{"name": "web"}], "index": 0});
    let answer = env
        .director
        .request("a1", "echo", vec![spec.clone()], WAIT)
        .await
        .unwrap();
    assert_eq!(answer, spec);
    let contact = env.director.last_contact("a1").expect("a reply is contact");
    assert!(contact.elapsed() < WAIT);
}

async fn check_exceptions(env: &BusEnv) {
    let _agent = FakeAgent::start(env, "a1").await;
    let error = env
        .director
        .request("a1", "fail", vec![], WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, BusError::Agent { agent_id, method, message }
            if agent_id == "a1" && method == "fail" && message == "disk full"),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "agent 'a1' failed 'fail': disk full");
}

async fn check_long_calls(env: &BusEnv) {
    let agent = FakeAgent::start(env, "a1").await;
    let poll = Duration::from_millis(20);
    let answer = env
        .director
        .run_task("a1", "apply", vec![json!({"name": "web"})], poll, WAIT)
        .await
        .unwrap();
    assert_eq!(answer, json!("applied"));
    assert_eq!(
        agent.methods(),
        [
            ("apply".to_string(), vec![json!({"name": "web"})]),
            ("get_task".to_string(), vec![json!("apply-task")]),
            ("get_task".to_string(), vec![json!("apply-task")]),
        ]
    );
    // A plain answer needs no polling.
    let answer = env
        .director
        .run_task("a1", "ping", vec![], poll, WAIT)
        .await
        .unwrap();
    assert_eq!(answer, json!("pong"));
    // A task that fails is the long call's failure.
    let error = env
        .director
        .run_task("a1", "explode", vec![], poll, WAIT)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "agent 'a1' failed 'explode': Task explode-task result: packaging failed"
    );
}

async fn check_timeouts(env: &BusEnv) {
    let agent = FakeAgent::start(env, "a1").await;
    env.director
        .request("a1", "ping", vec![], WAIT)
        .await
        .unwrap();
    let error = env
        .director
        .request("a1", "hang", vec![], Duration::from_millis(300))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(
            "timed out after 300 ms waiting for agent 'a1' to answer 'hang' (last contact: "
        ) && message.ends_with(" ago)"),
        "{message}"
    );

    // An agent never heard from: say what to check.
    let message = env
        .director
        .request("ghost", "get_state", vec![], Duration::from_millis(200))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        format!(
            "timed out after 200 ms waiting for agent 'ghost' to answer 'get_state' (never heard from it: check that its VM is running and reaches the bus at {})",
            env.url
        )
    );
    assert!(!message.contains(DIRECTOR_PASSWORD));

    // Waiting for an agent that never comes up.
    let message = env
        .director
        .wait_until_ready("ghost", Duration::from_millis(1500))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(
            "timed out after 1.5 s waiting for agent 'ghost' to answer 'ping' (never heard from it"
        ),
        "{message}"
    );

    // A long call that does not finish in time is cancelled.
    let error = env
        .director
        .run_task(
            "a1",
            "forever",
            vec![],
            Duration::from_millis(20),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, BusError::Timeout { agent_task_id: Some(task), waited, .. }
            if task == "forever-task" && *waited == Duration::from_millis(500)),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("timed out after 500 ms")
            && message.contains(
                " waiting for agent 'a1' to finish 'forever' (agent task 'forever-task', asked to cancel; last contact: "
            ),
        "{message}"
    );
    assert_eq!(
        agent.methods().last().unwrap(),
        &("cancel_task".to_string(), vec![json!("forever-task")])
    );
}

async fn check_heartbeats(env: &BusEnv) {
    let agent = FakeAgent::start(env, "a1").await;
    let mut heartbeats = Box::pin(env.director.heartbeats());
    agent
        .client
        .publish(
            heartbeat_subject("a1"),
            serde_json::to_vec(&heartbeat()).unwrap().into(),
        )
        .await
        .unwrap();
    let (agent_id, received) = tokio::time::timeout(WAIT, heartbeats.next())
        .await
        .expect("a heartbeat within 5 s")
        .unwrap();
    assert_eq!(agent_id, "a1");
    assert_eq!(received, heartbeat());
    assert!(env.director.last_contact("a1").is_some());
    // An agent cannot send heartbeats in another's name.
    let (other, events) = bare_agent(env, "a2").await;
    other
        .publish(
            heartbeat_subject("a1"),
            serde_json::to_vec(&heartbeat()).unwrap().into(),
        )
        .await
        .unwrap();
    wait_for_event(
        &events,
        "Permissions Violation for Publish to \"hm.agent.heartbeat.a1\"",
    )
    .await;
    let stray = tokio::time::timeout(Duration::from_millis(300), heartbeats.next()).await;
    assert!(stray.is_err(), "{stray:?}");
}

async fn check_agent_cannot_subscribe_to_another_agent(env: &BusEnv) {
    let victim = FakeAgent::start(env, "a1").await;
    let (spy, events) = bare_agent(env, "a2").await;
    let mut exact = spy.subscribe(agent_subject("a1")).await.unwrap();
    let mut wildcard = spy.subscribe("agent.*").await.unwrap();
    let mut everything = spy.subscribe(">").await.unwrap();
    spy.flush().await.unwrap();
    for subject in ["agent.a1", "agent.*", ">"] {
        wait_for_event(
            &events,
            &format!("Permissions Violation for Subscription to \"{subject}\""),
        )
        .await;
        env.assert_broker_refused("agent-a2", Operation::Subscribe, subject)
            .await;
    }
    let answer = env
        .director
        .request("a1", "echo", vec![json!("for a1 only")], WAIT)
        .await
        .unwrap();
    assert_eq!(answer, json!("for a1 only"));
    assert_silent(&mut exact).await;
    assert_silent(&mut wildcard).await;
    assert_silent(&mut everything).await;
    assert_eq!(victim.methods().len(), 1);
}

async fn check_agent_cannot_publish_to_another_agent(env: &BusEnv) {
    let victim = FakeAgent::start(env, "a1").await;
    let (forger, events) = bare_agent(env, "a2").await;
    let forged = Request {
        protocol: 3,
        method: "run_script".to_string(),
        arguments: vec![json!("pre-stop")],
        reply_to: format!("director.{DIRECTOR_ID}.a2.x"),
    };
    forger
        .publish(
            agent_subject("a1"),
            serde_json::to_vec(&forged).unwrap().into(),
        )
        .await
        .unwrap();
    // Nor answer in its name.
    let forged_reply = format!("director.{DIRECTOR_ID}.a1.r1");
    forger
        .publish(
            forged_reply.clone(),
            br#"{"value":"forged"}"#.to_vec().into(),
        )
        .await
        .unwrap();
    forger.flush().await.unwrap();
    wait_for_event(&events, "Permissions Violation for Publish to \"agent.a1\"").await;
    wait_for_event(
        &events,
        &format!("Permissions Violation for Publish to \"{forged_reply}\""),
    )
    .await;
    env.assert_broker_refused("agent-a2", Operation::Publish, "agent.a1")
        .await;
    env.director
        .request("a1", "ping", vec![], WAIT)
        .await
        .unwrap();
    assert_eq!(victim.methods(), [("ping".to_string(), vec![])]);
}

async fn check_removed_agent_is_disconnected(env: &BusEnv) {
    let agent = FakeAgent::start(env, "a1").await;
    env.director
        .request("a1", "ping", vec![], WAIT)
        .await
        .unwrap();
    env.accounts.remove_agent("a1").await.unwrap();
    wait_for_event(&agent.events, "disconnected").await;
    let credentials = agent.credentials.clone();
    drop(agent);
    let refused = connect_as(&credentials.url, &credentials.user, &credentials.password).await;
    assert!(
        matches!(&refused, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation),
        "{:?}",
        refused.map(|_| ())
    );
    // Removing it again is fine.
    env.accounts.remove_agent("a1").await.unwrap();
}

async fn check_wrong_password_is_refused(env: &BusEnv) {
    let wrong = "not-the-password-5b1";
    let error = Bus::connect(&env.url, "director", wrong, "d1")
        .await
        .unwrap_err();
    let message = error.to_string();
    assert_eq!(
        message,
        format!(
            "cannot connect to the bus at {} as 'director': the bus refused the user and password (authorization violation): check mbus.user and mbus.password",
            env.url
        )
    );
    assert!(!message.contains(wrong));
    let credentials = env.accounts.add_agent("a1").await.unwrap();
    let refused = connect_as(&credentials.url, &credentials.user, wrong).await;
    assert!(refused.is_err());
    // On the wire: nats-server's answer, then the connection closes.
    let address = env.url.strip_prefix("nats://").unwrap();
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("INFO "), "{line}");
    writer
        .write_all(format!("CONNECT {{\"user\":\"agent-a1\",\"pass\":\"{wrong}\",\"verbose\":false}}\r\nPING\r\n").as_bytes())
        .await
        .unwrap();
    line.clear();
    reader.read_line(&mut line).await.unwrap();
    assert_eq!(line, "-ERR 'Authorization Violation'\r\n");
    line.clear();
    let end = tokio::time::timeout(WAIT, reader.read_line(&mut line)).await;
    assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{end:?} {line:?}");
}

async fn check_concurrent_requests(env: &BusEnv) {
    let _agent = FakeAgent::start(env, "a1").await;
    let requests = (0..100).map(|n| {
        let director = env.director.clone();
        async move {
            let answer = director
                .request("a1", "echo", vec![json!({"n": n})], WAIT)
                .await
                .unwrap();
            (n, answer)
        }
    });
    for (n, answer) in futures::future::join_all(requests).await {
        assert_eq!(answer, json!({"n": n}));
    }
}

async fn check_large_messages_are_refused(env: &BusEnv) {
    let _agent = FakeAgent::start(env, "a1").await;
    let huge = "x".repeat(2 * 1024 * 1024);
    let error = env
        .director
        .request("a1", "echo", vec![json!(huge)], WAIT)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("the 'echo' request for agent 'a1' is 2097")
            && message.ends_with(
                "bytes, more than the bus carries (1048576 bytes): send large data as a blob"
            ),
        "{message}"
    );
    // Just under the limit goes through.
    let big = "y".repeat(1024 * 1024 - 200);
    let answer = env
        .director
        .request("a1", "echo", vec![json!(big)], WAIT)
        .await
        .unwrap();
    assert_eq!(answer, json!(big));
}

async fn check_agent_ids_are_checked(env: &BusEnv) {
    for bad in ["a.b", "*", ">", "a b", ""] {
        let error = env.accounts.add_agent(bad).await.unwrap_err();
        assert!(
            matches!(error, BusError::InvalidId { .. }),
            "{bad:?}: {error}"
        );
        let error = env
            .director
            .request(bad, "ping", vec![], WAIT)
            .await
            .unwrap_err();
        assert!(
            matches!(error, BusError::InvalidId { .. }),
            "{bad:?}: {error}"
        );
    }
}

/// Runs each check against both brokers, each in a fresh environment.
macro_rules! on_both_brokers {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let env = super::BusEnv::embedded().await;
                    super::$check(&env).await;
                    env.close().await;
                }
            )*
        }
        mod nats_server {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let env = super::BusEnv::nats_server().await;
                    super::$check(&env).await;
                    env.close().await;
                }
            )*
        }
    };
}

on_both_brokers!(
    check_request_reply,
    check_exceptions,
    check_long_calls,
    check_timeouts,
    check_heartbeats,
    check_agent_cannot_subscribe_to_another_agent,
    check_agent_cannot_publish_to_another_agent,
    check_removed_agent_is_disconnected,
    check_wrong_password_is_refused,
    check_concurrent_requests,
    check_large_messages_are_refused,
    check_agent_ids_are_checked,
);

/// The authorization file nats-server reads is the director's record of its agents.
#[tokio::test]
async fn nats_server_accounts_survive_a_director_restart() {
    let env = BusEnv::nats_server().await;
    let agent = FakeAgent::start(&env, "a1").await;
    let Backend::NatsServer(server) = &env.backend else {
        unreachable!()
    };
    let dir = server.log.parent().unwrap();
    let config = MbusConfig {
        url: env.url.clone(),
        agent_url: None,
        user: "director".to_string(),
        password: DIRECTOR_PASSWORD.to_string(),
        authorization_file: dir.join("director-users.conf"),
        pid_file: dir.join("nats-server.pid"),
    };
    let reopened = NatsServerAccounts::open(&config).await.unwrap();
    assert_eq!(reopened.agents().await, ["a1"]);
    // Reopening left the agent's account alone: it still answers.
    env.director
        .request("a1", "ping", vec![], WAIT)
        .await
        .unwrap();
    assert!(file_mode(&config.authorization_file) & 0o077 == 0);
    drop(agent);
    env.close().await;
}

fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode()
}

/// A dev director's embedded broker records every agent's account, however many VMs are
/// created at once: after a restart each agent gets back in with the password it was given.
/// Registrations run on many worker threads at once, so that a save carrying an older map
/// landing after a newer one (the file would then lack an agent) shows up in every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn embedded_accounts_registered_concurrently_survive_a_director_restart() {
    const ROUNDS: usize = 5;
    const AGENTS_PER_ROUND: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let mut registered: Vec<AgentCredentials> = Vec::new();
    for round in 0..ROUNDS {
        let director = director_bus::DirectorBus::start_embedded(
            dir.path(),
            LOCALHOST,
            DIRECTOR_ID,
            BusLimits::default(),
        )
        .await
        .unwrap();
        let mut registrations = tokio::task::JoinSet::new();
        for agent in 0..AGENTS_PER_ROUND {
            let accounts = director.accounts.clone();
            registrations.spawn(async move {
                accounts
                    .add_agent(&format!("round{round}-agent{agent}"))
                    .await
                    .unwrap()
            });
        }
        registered.extend(registrations.join_all().await);
        director.shutdown().await;
    }

    let restarted = director_bus::DirectorBus::start_embedded(
        dir.path(),
        LOCALHOST,
        DIRECTOR_ID,
        BusLimits::default(),
    )
    .await
    .unwrap();
    let url = restarted.broker().unwrap().url();
    let recorded: HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("bus-agents.json")).unwrap())
            .unwrap();
    let missing: Vec<&str> = registered
        .iter()
        .map(|credentials| credentials.user.as_str())
        .filter(|user| !recorded.contains_key(user.trim_start_matches("agent-")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} accounts were lost across the restart: {missing:?}",
        missing.len(),
        registered.len()
    );
    for credentials in &registered {
        let user = &credentials.user;
        assert_eq!(
            recorded[user.trim_start_matches("agent-")],
            credentials.password,
            "{user}"
        );
        let (client, _events) = connect_as(&url, user, &credentials.password)
            .await
            .unwrap_or_else(|error| panic!("{user} cannot reconnect after the restart: {error}"));
        client.drain().await.unwrap();
    }
    assert!(file_mode(&dir.path().join("bus-agents.json")) & 0o077 == 0);
    restarted.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Limits (issue 9, item 12): the embedded broker caps agent connections and each agent
// account's publish rate; the director is never limited. nats-server has no publish rate
// limit; its connection cap answers with the same `-ERR`.

/// A client speaking the protocol by hand, to see exactly what the broker answers.
struct RawClient {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl RawClient {
    /// Connects and reads the broker's `INFO`.
    async fn connect(url: &str) -> RawClient {
        let address = url.strip_prefix("nats://").unwrap();
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (reader, writer) = stream.into_split();
        let mut client = RawClient {
            reader: BufReader::new(reader),
            writer,
        };
        let info = client.line().await.expect("the broker sends INFO");
        assert!(info.starts_with("INFO {"), "{info}");
        client
    }

    /// The next line without its CRLF; `None` when the broker closed the connection.
    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match tokio::time::timeout(WAIT, self.reader.read_line(&mut line)).await {
            Ok(Ok(0) | Err(_)) => None,
            Ok(Ok(_)) => Some(line.trim_end_matches("\r\n").to_string()),
            Err(_) => panic!("the broker neither answered nor closed within 5 s"),
        }
    }

    /// Sends `text` and a `PING`; what the broker answered before its `PONG`, and whether
    /// it closed the connection instead of answering the `PING`.
    async fn exchange(&mut self, text: &str) -> (Vec<String>, bool) {
        // A broker that already closed makes the write fail; what it said is still read.
        let _ = self
            .writer
            .write_all(format!("{text}PING\r\n").as_bytes())
            .await;
        let mut lines = Vec::new();
        loop {
            match self.line().await {
                Some(line) if line == "PONG" => return (lines, false),
                Some(line) => lines.push(line),
                None => return (lines, true),
            }
        }
    }

    /// `CONNECT` as `user` (not verbose) and what the broker answered.
    async fn login(&mut self, user: &str, password: &str) -> (Vec<String>, bool) {
        self.exchange(&format!(
            "CONNECT {{\"user\":\"{user}\",\"pass\":\"{password}\",\"verbose\":false}}\r\n"
        ))
        .await
    }
}

/// Publishes `payload` to `subject` as fast as the broker takes it (batches of 20, each
/// followed by a `PING`, so nothing is in flight when the broker hangs up) until the broker
/// closes the connection; what it said last. At most `max` messages.
async fn flood_until_closed(
    client: &mut RawClient,
    subject: &str,
    payload: &[u8],
    max: usize,
) -> Vec<String> {
    let message = format!(
        "PUB {subject} {}\r\n{}\r\n",
        payload.len(),
        String::from_utf8_lossy(payload)
    );
    let batch = message.repeat(20);
    for _ in 0..max / 20 {
        let (lines, closed) = client.exchange(&batch).await;
        if closed {
            return lines;
        }
        assert!(lines.is_empty(), "{lines:?}");
    }
    panic!("still connected after {max} messages");
}

fn limited(limits: BusLimits) -> BrokerOptions {
    BrokerOptions {
        limits,
        // Long enough for the raw clients of these tests.
        auth_timeout: Duration::from_secs(60),
        ..BrokerOptions::default()
    }
}

/// One agent floods heartbeats: that agent is disconnected with a clear `-ERR` and an
/// event naming its account; the director keeps its connection and still gets answers from
/// another agent; the director itself may publish as fast as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_flooding_agent_is_disconnected_and_the_director_is_not() {
    // One message a second with a burst of 100: refilling what the flood takes would take
    // minutes, so the counts below do not depend on how fast this machine is.
    let env = BusEnv::embedded_with(limited(BusLimits {
        publish_rate: PublishRate {
            messages_per_second: 1,
            messages_burst: 100,
            ..PublishRate::default()
        },
        ..BusLimits::default()
    }))
    .await;
    let Backend::Embedded(broker) = &env.backend else {
        unreachable!()
    };
    let answering = FakeAgent::start(&env, "a2").await;
    let flooder = env.accounts.add_agent("a1").await.unwrap();
    let heartbeat = serde_json::to_vec(&heartbeat()).unwrap();

    let mut client = RawClient::connect(&env.url).await;
    assert_eq!(
        client.login(&flooder.user, &flooder.password).await,
        (vec![], false)
    );
    let last_words =
        flood_until_closed(&mut client, &heartbeat_subject("a1"), &heartbeat, 2000).await;
    assert_eq!(last_words, ["-ERR 'Maximum Publish Rate Exceeded'"]);
    let exceeded: Vec<String> = broker
        .events()
        .iter()
        .filter(|e| matches!(e, BrokerEvent::PublishRateExceeded { .. }))
        .map(ToString::to_string)
        .collect();
    assert_eq!(exceeded.len(), 1, "{exceeded:?}");
    assert!(
        exceeded[0]
            .starts_with("publish rate exceeded: disconnected user 'agent-a1' at 127.0.0.1:"),
        "{}",
        exceeded[0]
    );

    // The director was not touched: same connection, still answered by the other agent.
    assert_eq!(broker.user_connection_count("director"), 1);
    assert_eq!(
        env.director
            .request("a2", "echo", vec![json!("still here")], WAIT)
            .await
            .unwrap(),
        json!("still here")
    );
    assert!(
        !broker
            .events()
            .iter()
            .any(|e| e.to_string().contains("'director'")),
        "{:?}",
        broker.events()
    );
    assert_eq!(answering.methods().len(), 1);

    // The budget is the account's, not the connection's: reconnecting gives none back.
    let mut again = RawClient::connect(&env.url).await;
    assert_eq!(
        again.login(&flooder.user, &flooder.password).await,
        (vec![], false)
    );
    let burst = format!(
        "PUB {} {}\r\n{}\r\n",
        heartbeat_subject("a1"),
        heartbeat.len(),
        String::from_utf8_lossy(&heartbeat)
    )
    .repeat(50);
    assert_eq!(
        again.exchange(&burst).await,
        (
            vec!["-ERR 'Maximum Publish Rate Exceeded'".to_string()],
            true
        )
    );

    // The director's user is never rate-limited.
    let mut director = RawClient::connect(&env.url).await;
    assert_eq!(
        director.login("director", DIRECTOR_PASSWORD).await,
        (vec![], false)
    );
    let many = "PUB nobody.listens 1\r\nx\r\n".repeat(1000);
    assert_eq!(director.exchange(&many).await, (vec![], false));
    env.close().await;
}

/// Agents over `max_connections` are refused with nats-server's `-ERR`; the director's
/// connections are not counted; a slot that frees up is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_the_connection_cap_refuses_agents_but_never_the_director() {
    let env = BusEnv::embedded_with(limited(BusLimits {
        max_connections: 2,
        ..BusLimits::default()
    }))
    .await;
    let Backend::Embedded(broker) = &env.backend else {
        unreachable!()
    };
    let _answering = FakeAgent::start(&env, "a1").await;
    let (second, _events) = bare_agent(&env, "a2").await;
    let third = env.accounts.add_agent("a3").await.unwrap();

    let refused = connect_as(&env.url, &third.user, &third.password)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        refused.to_string().contains("maximum connections exceeded"),
        "{refused}"
    );
    let mut raw = RawClient::connect(&env.url).await;
    assert_eq!(
        raw.login(&third.user, &third.password).await,
        (
            vec!["-ERR 'maximum connections exceeded'".to_string()],
            true
        )
    );
    assert!(
        broker.events().iter().any(|e| matches!(e,
            BrokerEvent::MaxConnectionsExceeded { user: Some(user), .. } if user == "agent-a3")),
        "{:?}",
        broker.events()
    );

    // The director is not counted: more of its connections get in, and it reaches agents.
    let mut directors = Vec::new();
    for n in 0..3 {
        directors.push(
            Bus::connect(
                &env.url,
                "director",
                DIRECTOR_PASSWORD,
                &format!("extra{n}"),
            )
            .await
            .unwrap(),
        );
    }
    assert_eq!(broker.user_connection_count("director"), 4);
    env.director
        .request("a1", "ping", vec![], WAIT)
        .await
        .unwrap();
    for director in directors {
        director.close().await;
    }

    // A slot that frees up is taken again.
    second.drain().await.unwrap();
    drop(second);
    let started = Instant::now();
    while broker.user_connection_count("agent-a2") > 0 {
        assert!(started.elapsed() < WAIT, "agent a2 did not leave");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (client, _events) = connect_as(&env.url, &third.user, &third.password)
        .await
        .unwrap();
    client.drain().await.unwrap();
    env.close().await;
}

/// nats-server over its `max_connections` answers with the text the embedded broker uses.
/// It refuses right after `INFO`, counting every connection, the director's too: which is
/// why the embedded broker counts agents only, at `CONNECT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_over_its_connection_cap_answers_as_the_embedded_broker() {
    // The director, and the agent (its account is checked by connecting once as it).
    let env = BusEnv::nats_server_with("max_connections: 2").await;
    let (_agent, _events) = bare_agent(&env, "a1").await;
    let mut raw = RawClient::connect(&env.url).await;
    assert_eq!(
        raw.line().await.as_deref(),
        Some("-ERR 'maximum connections exceeded'")
    );
    assert_eq!(raw.line().await, None);
    env.close().await;
}
