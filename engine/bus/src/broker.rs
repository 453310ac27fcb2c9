//! The embedded bus broker: a small server speaking the core NATS client protocol, for a dev
//! director that has no nats-server (decision 4). Production directors use nats-server
//! (decision 5); this one only has to be right for the director and its agents, and it is
//! tested against async-nats and against the same suite as nats-server.
//!
//! What it speaks: `INFO` (auth required, no headers, 1 MiB max payload), `CONNECT` with
//! user and password, `PUB`, `SUB` (with queue groups), `UNSUB` (with a message count),
//! `MSG`, `PING`/`PONG`, `+OK` for verbose clients and `-ERR` with nats-server's texts.
//! Subjects take the `*` and `>` wildcards. Each user has publish and subscribe allow lists;
//! a refused publish is not delivered and a refused subscription is not made, with the same
//! `-ERR 'Permissions Violation for …'` nats-server sends.
//!
//! Limits ([`BusLimits`], `bus_limits` in `director.yml`): agent connections are capped
//! (one more gets nats-server's `-ERR 'maximum connections exceeded'`), and so are each
//! connection's subscriptions and each agent account's publish rate (a token bucket shared
//! by the account's connections; an account that used up its burst is disconnected with
//! `-ERR 'Maximum Publish Rate Exceeded'`). The user allowed everything, the director, is
//! trusted: neither counted nor rate-limited, so a flooding agent never shuts it out.
//!
//! Concurrency: one task per connection, all in the accept loop's `JoinSet`, each stopped
//! by a child of the broker's cancellation token. A connection's outbound queue is bounded
//! in bytes; a client that falls behind is dropped (slow consumer), so a publisher never
//! waits for a subscriber. Noteworthy refusals (permissions, authorization, limits, slow
//! consumers, protocol errors) are kept as [`BrokerEvent`]s for whoever logs them
//! ([`BrokerHandle::events`], [`BrokerHandle::watch_events`]).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::accounts::Permissions;
use crate::error::BusError;
use crate::limits::{BusLimits, MAX_MESSAGE_BYTES, PublishRate, TokenBucket};
use crate::subject;

/// Limits and timers of the embedded broker. The defaults are nats-server's, and
/// [`BusLimits::default`] for what nats-server does not limit.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// The largest message payload (`max_payload`), 1 MiB.
    pub max_payload: usize,
    /// The longest protocol line.
    pub max_control_line: usize,
    /// Connections, subscriptions, pending bytes and the agents' publish rate.
    pub limits: BusLimits,
    /// How long a client has to send `CONNECT`.
    pub auth_timeout: Duration,
    /// How often the broker pings a client.
    pub ping_interval: Duration,
    /// Unanswered pings before the connection is closed as stale.
    pub max_pings_out: u32,
}

impl Default for BrokerOptions {
    fn default() -> BrokerOptions {
        BrokerOptions {
            max_payload: MAX_MESSAGE_BYTES,
            max_control_line: 4096,
            limits: BusLimits::default(),
            auth_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(120),
            max_pings_out: 2,
        }
    }
}

/// How many events the broker keeps.
const MAX_EVENTS: usize = 1000;
/// Events a slow watcher may fall behind before it misses some.
const EVENT_BUFFER: usize = 256;
/// Connections above `max_connections` that may be open before they say who they are:
/// room for the director to reconnect while agents fill the cap, and for agents that
/// reconnect all at once. Beyond it, even a new TCP connection is refused.
const HANDSHAKE_HEADROOM: usize = 64;
/// nats-server's answer to a connection over its `max_connections`.
const MAX_CONNECTIONS_EXCEEDED: &str = "maximum connections exceeded";
/// The answer to an agent account that publishes faster than its rate (nats-server has no
/// such limit; the wording follows its other limits').
const MAX_PUBLISH_RATE_EXCEEDED: &str = "Maximum Publish Rate Exceeded";
/// How long a closing connection may take to flush its last words (`-ERR …`).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How much a connection reads at a time.
const READ_CHUNK: usize = 32 * 1024;

/// Something the broker refused or gave up on, for the director's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerEvent {
    /// A publish or subscription outside the user's permissions (not delivered / not made).
    PermissionViolation {
        /// The user.
        user: String,
        /// Publish or subscribe.
        operation: Operation,
        /// The subject asked for.
        subject: String,
    },
    /// A `CONNECT` with an unknown user or a wrong password, or anything before `CONNECT`.
    AuthorizationViolation {
        /// The user it claimed to be.
        user: Option<String>,
        /// Where it came from.
        peer: SocketAddr,
    },
    /// A client that did not read its messages fast enough and was dropped.
    SlowConsumer {
        /// Its user.
        user: Option<String>,
        /// Its address.
        peer: SocketAddr,
    },
    /// A client that spoke something else than the protocol, or went silent.
    ProtocolError {
        /// Its user.
        user: Option<String>,
        /// Its address.
        peer: SocketAddr,
        /// What the broker answered.
        message: String,
    },
    /// A connection over `bus_limits.max_connections`, refused.
    MaxConnectionsExceeded {
        /// Its user, when it got as far as `CONNECT`.
        user: Option<String>,
        /// Where it came from.
        peer: SocketAddr,
    },
    /// An agent account that used up its publish burst: the connection that published
    /// was closed.
    PublishRateExceeded {
        /// The account.
        user: String,
        /// The connection's address.
        peer: SocketAddr,
    },
    /// A user removed while connected: its connections were closed.
    Disconnected {
        /// The user.
        user: String,
        /// How many connections it had.
        connections: usize,
    },
    /// Accepting a connection failed.
    AcceptFailed {
        /// The error.
        message: String,
    },
}

/// What a permission allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `PUB`.
    Publish,
    /// `SUB`.
    Subscribe,
}

impl fmt::Display for BrokerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = |user: &Option<String>| match user {
            Some(user) => format!("user '{user}'"),
            None => "a client".to_string(),
        };
        match self {
            BrokerEvent::PermissionViolation {
                user,
                operation: Operation::Publish,
                subject,
            } => write!(
                f,
                "permissions violation: user '{user}' may not publish to '{subject}'"
            ),
            BrokerEvent::PermissionViolation {
                user,
                operation: Operation::Subscribe,
                subject,
            } => write!(
                f,
                "permissions violation: user '{user}' may not subscribe to '{subject}'"
            ),
            BrokerEvent::AuthorizationViolation { user, peer } => {
                write!(f, "authorization violation: {} from {peer}", who(user))
            }
            BrokerEvent::SlowConsumer { user, peer } => write!(
                f,
                "slow consumer: dropped {} at {peer}, which did not read its messages",
                who(user)
            ),
            BrokerEvent::ProtocolError {
                user,
                peer,
                message,
            } => write!(f, "protocol error from {} at {peer}: {message}", who(user)),
            BrokerEvent::MaxConnectionsExceeded { user, peer } => write!(
                f,
                "maximum connections exceeded: refused {} at {peer} (bus_limits.max_connections)",
                who(user)
            ),
            BrokerEvent::PublishRateExceeded { user, peer } => write!(
                f,
                "publish rate exceeded: disconnected user '{user}' at {peer}, which kept publishing faster than bus_limits.publish_rate allows"
            ),
            BrokerEvent::Disconnected { user, connections } => write!(
                f,
                "user '{user}' removed: closed its {connections} connection(s)"
            ),
            BrokerEvent::AcceptFailed { message } => {
                write!(f, "cannot accept a bus connection: {message}")
            }
        }
    }
}

/// Starts embedded brokers.
pub struct Broker;

impl Broker {
    /// Listens on `address` (`127.0.0.1:0` takes a free port) with nats-server's limits.
    pub async fn start(address: &str) -> Result<BrokerHandle, BusError> {
        Broker::start_with(address, BrokerOptions::default()).await
    }

    /// Listens on `address` with the given limits (refused when they cannot work, see
    /// [`BusLimits::check`]).
    pub async fn start_with(
        address: &str,
        options: BrokerOptions,
    ) -> Result<BrokerHandle, BusError> {
        options
            .limits
            .check(options.max_payload)
            .map_err(BusError::Limits)?;
        let listen_error = |source| BusError::Listen {
            address: address.to_string(),
            source,
        };
        let listener = TcpListener::bind(address).await.map_err(listen_error)?;
        let local_address = listener.local_addr().map_err(listen_error)?;
        let shared = Arc::new(Shared {
            options,
            address: local_address,
            server_id: uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
            shutdown: CancellationToken::new(),
            users: RwLock::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            subscriptions: RwLock::new(SubscriptionTable::default()),
            next_client_id: AtomicU64::new(0),
            next_subscription_key: AtomicU64::new(0),
            queue_turn: AtomicUsize::new(0),
            events: Mutex::new(VecDeque::new()),
            watchers: broadcast::channel(EVENT_BUFFER).0,
        });
        let accept = tokio::spawn(accept_loop(shared.clone(), listener));
        Ok(BrokerHandle {
            inner: Arc::new(HandleInner {
                shared,
                accept: Mutex::new(Some(accept)),
            }),
        })
    }
}

/// A running embedded broker. Clones share it; it stops when [`BrokerHandle::shutdown`] is
/// called or the last clone is dropped.
#[derive(Clone)]
pub struct BrokerHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("url", &self.url())
            .finish()
    }
}

impl BrokerHandle {
    /// `nats://<ip>:<port>`, without credentials.
    pub fn url(&self) -> String {
        format!("nats://{}", self.inner.shared.address)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.shared.address
    }

    /// Adds a user, or replaces one: connected clients of a replaced user keep their
    /// connection with the new permissions (subscriptions no longer allowed are dropped),
    /// unless the password changed, which disconnects them. A user allowed everything
    /// ([`Permissions::all`], the director) is trusted: not counted against
    /// `max_connections` and not rate-limited. A replaced user keeps its publish budget.
    pub fn add_user(&self, name: &str, password: &str, permissions: Permissions) {
        let shared = &self.inner.shared;
        let trusted = permissions == Permissions::all();
        let permissions = Arc::new(permissions);
        let mut users = write(&shared.users);
        let publish_budget = if trusted {
            None
        } else {
            let kept = users.get(name).and_then(|user| user.publish_budget.clone());
            Some(kept.unwrap_or_else(|| {
                Arc::new(Mutex::new(TokenBucket::new(
                    &shared.options.limits.publish_rate,
                    Instant::now(),
                )))
            }))
        };
        let previous = users.insert(
            name.to_string(),
            User {
                password: password.to_string(),
                permissions: permissions.clone(),
                publish_budget: publish_budget.clone(),
            },
        );
        let Some(previous) = previous else { return };
        let connections = shared.connections_of(name);
        if !same_secret(&previous.password, password) {
            shared.evict(name, &connections);
            return;
        }
        for connection in connections {
            let mut session = write(&connection.session);
            if let Some(current) = session.as_ref() {
                *session = Some(Arc::new(Session {
                    permissions: permissions.clone(),
                    publish_budget: publish_budget.clone(),
                    ..Session::clone(current)
                }));
            }
            drop(session);
            let refused: Vec<Arc<Subscription>> = lock(&connection.subscriptions)
                .values()
                .filter(|s| !permissions.may_subscribe(&s.subject))
                .cloned()
                .collect();
            for subscription in refused {
                shared.unsubscribe(&subscription);
            }
        }
    }

    /// Removes a user and closes its connections. False when there was no such user.
    pub fn remove_user(&self, name: &str) -> bool {
        let shared = &self.inner.shared;
        let mut users = write(&shared.users);
        let removed = users.remove(name).is_some();
        let connections = shared.connections_of(name);
        shared.evict(name, &connections);
        removed
    }

    /// How many clients are connected (authenticated or not).
    pub fn connection_count(&self) -> usize {
        lock(&self.inner.shared.connections).len()
    }

    /// How many clients are connected as `user`.
    pub fn user_connection_count(&self, user: &str) -> usize {
        self.inner.shared.connections_of(user).len()
    }

    /// The latest events (up to 1000), oldest first.
    pub fn events(&self) -> Vec<BrokerEvent> {
        lock(&self.inner.shared.events).iter().cloned().collect()
    }

    /// Every event from now on, as it happens (a watcher that falls more than 256 behind
    /// is told how many it missed).
    pub fn watch_events(&self) -> broadcast::Receiver<BrokerEvent> {
        self.inner.shared.watchers.subscribe()
    }

    /// Stops accepting, closes every connection and waits for their tasks to end.
    pub async fn shutdown(&self) {
        self.inner.shared.shutdown.cancel();
        let accept = lock(&self.inner.accept).take();
        if let Some(accept) = accept {
            let _ = accept.await;
        }
    }
}

struct Shared {
    options: BrokerOptions,
    address: SocketAddr,
    server_id: String,
    shutdown: CancellationToken,
    // Lock order: users, connections, a connection's session, a connection's
    // subscriptions, the subscription table, events.
    users: RwLock<HashMap<String, User>>,
    connections: Mutex<HashMap<u64, Arc<Connection>>>,
    subscriptions: RwLock<SubscriptionTable>,
    next_client_id: AtomicU64,
    next_subscription_key: AtomicU64,
    queue_turn: AtomicUsize,
    events: Mutex<VecDeque<BrokerEvent>>,
    watchers: broadcast::Sender<BrokerEvent>,
}

struct User {
    password: String,
    permissions: Arc<Permissions>,
    /// What it may still publish, shared by its connections; `None` for a trusted user.
    publish_budget: Option<Arc<Mutex<TokenBucket>>>,
}

impl Shared {
    fn record(&self, event: BrokerEvent) {
        let mut events = lock(&self.events);
        if events.len() == MAX_EVENTS {
            events.pop_front();
        }
        events.push_back(event.clone());
        drop(events);
        // No watcher is not an error.
        let _ = self.watchers.send(event);
    }

    fn connections_of(&self, user: &str) -> Vec<Arc<Connection>> {
        lock(&self.connections)
            .values()
            .filter(|c| c.session().is_some_and(|s| s.user == user))
            .cloned()
            .collect()
    }

    /// Closes connections of a user that is gone: nothing they send counts any more.
    fn evict(&self, user: &str, connections: &[Arc<Connection>]) {
        if connections.is_empty() {
            return;
        }
        for connection in connections {
            *write(&connection.session) = None;
            connection.send_error(self, "Authorization Violation");
            connection.evicted.cancel();
        }
        self.record(BrokerEvent::Disconnected {
            user: user.to_string(),
            connections: connections.len(),
        });
    }

    fn info(&self, client_id: u64, peer: SocketAddr) -> Bytes {
        let info = serde_json::json!({
            "server_id": self.server_id,
            "server_name": "director-embedded-bus",
            "version": env!("CARGO_PKG_VERSION"),
            "proto": 1,
            "host": self.address.ip().to_string(),
            "port": self.address.port(),
            "headers": false,
            "auth_required": true,
            "max_payload": self.options.max_payload,
            "client_id": client_id,
            "client_ip": peer.ip().to_string(),
        });
        Bytes::from(format!("INFO {info}\r\n"))
    }

    fn route(
        &self,
        from: &Connection,
        echo: bool,
        subject: &str,
        reply: Option<&str>,
        payload: &Bytes,
    ) {
        let matched = read(&self.subscriptions).matching(subject);
        let mut queues: HashMap<&str, Vec<&Arc<Subscription>>> = HashMap::new();
        for subscription in &matched {
            if !echo && subscription.connection.id == from.id {
                continue;
            }
            match &subscription.queue {
                None => self.deliver(subscription, subject, reply, payload),
                Some(queue) => queues.entry(queue).or_default().push(subscription),
            }
        }
        for members in queues.values() {
            let turn = self.queue_turn.fetch_add(1, Ordering::Relaxed);
            self.deliver(members[turn % members.len()], subject, reply, payload);
        }
    }

    fn deliver(
        &self,
        subscription: &Arc<Subscription>,
        subject: &str,
        reply: Option<&str>,
        payload: &Bytes,
    ) {
        let delivered = subscription.delivered.fetch_add(1, Ordering::Relaxed) + 1;
        let max = subscription.max.load(Ordering::Relaxed);
        if max > 0 {
            if delivered >= max {
                self.unsubscribe(subscription);
            }
            if delivered > max {
                return;
            }
        }
        let sid = &subscription.sid;
        let length = payload.len();
        let header = match reply {
            Some(reply) => format!("MSG {subject} {sid} {reply} {length}\r\n"),
            None => format!("MSG {subject} {sid} {length}\r\n"),
        };
        subscription.connection.send(
            self,
            Outbound::Message {
                header: Bytes::from(header),
                payload: payload.clone(),
            },
        );
    }

    fn unsubscribe(&self, subscription: &Arc<Subscription>) {
        let mut own = lock(&subscription.connection.subscriptions);
        if own
            .get(&subscription.sid)
            .is_some_and(|s| Arc::ptr_eq(s, subscription))
        {
            own.remove(&subscription.sid);
        }
        write(&self.subscriptions).remove(subscription);
    }

    fn forget(&self, connection: &Arc<Connection>) {
        lock(&self.connections).remove(&connection.id);
        let subscriptions: Vec<Arc<Subscription>> = lock(&connection.subscriptions)
            .drain()
            .map(|(_, s)| s)
            .collect();
        let mut table = write(&self.subscriptions);
        for subscription in &subscriptions {
            table.remove(subscription);
        }
    }
}

struct Connection {
    id: u64,
    peer: SocketAddr,
    /// Stops both halves at once: shutdown, slow consumer, write failure.
    closing: CancellationToken,
    /// Stops reading; what is queued (the `-ERR`) is still flushed, briefly.
    evicted: CancellationToken,
    outbound: mpsc::UnboundedSender<Outbound>,
    pending_bytes: AtomicUsize,
    max_pending_bytes: usize,
    session: RwLock<Option<Arc<Session>>>,
    subscriptions: Mutex<HashMap<String, Arc<Subscription>>>,
}

/// What `CONNECT` established.
#[derive(Clone)]
struct Session {
    user: String,
    permissions: Arc<Permissions>,
    /// The user's publish budget; `None` for the trusted director.
    publish_budget: Option<Arc<Mutex<TokenBucket>>>,
    verbose: bool,
    echo: bool,
}

impl Session {
    fn is_trusted(&self) -> bool {
        self.publish_budget.is_none()
    }

    /// Takes a publish of `size` bytes from the user's budget; false when it has none left.
    fn may_spend(&self, rate: &PublishRate, size: usize) -> bool {
        self.publish_budget
            .as_ref()
            .is_none_or(|budget| lock(budget).take(rate, size, Instant::now()))
    }
}

enum Outbound {
    Bytes(Bytes),
    Message { header: Bytes, payload: Bytes },
    Close,
}

impl Outbound {
    fn len(&self) -> usize {
        match self {
            Outbound::Bytes(bytes) => bytes.len(),
            Outbound::Message { header, payload } => header.len() + payload.len() + 2,
            Outbound::Close => 0,
        }
    }
}

impl Connection {
    fn session(&self) -> Option<Arc<Session>> {
        read(&self.session).clone()
    }

    fn user(&self) -> Option<String> {
        self.session().map(|s| s.user.clone())
    }

    /// Queues bytes for the client without ever waiting; a client whose queue is full is
    /// dropped as a slow consumer.
    fn send(&self, shared: &Shared, item: Outbound) {
        let size = item.len();
        let pending = self.pending_bytes.fetch_add(size, Ordering::Relaxed) + size;
        if pending > self.max_pending_bytes {
            self.pending_bytes.fetch_sub(size, Ordering::Relaxed);
            if !self.closing.is_cancelled() {
                shared.record(BrokerEvent::SlowConsumer {
                    user: self.user(),
                    peer: self.peer,
                });
                self.closing.cancel();
            }
            return;
        }
        if self.outbound.send(item).is_err() {
            self.pending_bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }

    fn send_static(&self, shared: &Shared, bytes: &'static [u8]) {
        self.send(shared, Outbound::Bytes(Bytes::from_static(bytes)));
    }

    fn send_error(&self, shared: &Shared, message: &str) {
        self.send(
            shared,
            Outbound::Bytes(Bytes::from(format!("-ERR '{message}'\r\n"))),
        );
    }

    fn close_after_flush(&self) {
        let _ = self.outbound.send(Outbound::Close);
    }
}

struct Subscription {
    key: u64,
    connection: Arc<Connection>,
    sid: String,
    subject: String,
    queue: Option<String>,
    delivered: AtomicU64,
    /// Deliveries after which it ends (`UNSUB sid max`); 0: no limit.
    max: AtomicU64,
}

/// Literal subscriptions by subject (agents' `agent.<id>`), wildcard ones in a list (the
/// director's few): a publish looks up one map entry and scans the short list.
#[derive(Default)]
struct SubscriptionTable {
    literal: HashMap<String, Vec<Arc<Subscription>>>,
    wildcard: Vec<Arc<Subscription>>,
}

impl SubscriptionTable {
    fn insert(&mut self, subscription: Arc<Subscription>) {
        if subject::is_literal(&subscription.subject) {
            self.literal
                .entry(subscription.subject.clone())
                .or_default()
                .push(subscription);
        } else {
            self.wildcard.push(subscription);
        }
    }

    fn remove(&mut self, subscription: &Subscription) {
        if subject::is_literal(&subscription.subject) {
            if let Some(list) = self.literal.get_mut(&subscription.subject) {
                list.retain(|s| s.key != subscription.key);
                if list.is_empty() {
                    self.literal.remove(&subscription.subject);
                }
            }
        } else {
            self.wildcard.retain(|s| s.key != subscription.key);
        }
    }

    fn matching(&self, subject: &str) -> Vec<Arc<Subscription>> {
        let mut matched: Vec<Arc<Subscription>> =
            self.literal.get(subject).cloned().unwrap_or_default();
        matched.extend(
            self.wildcard
                .iter()
                .filter(|s| subject::matches(&s.subject, subject))
                .cloned(),
        );
        matched
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve(shared.clone(), stream, peer));
                }
                Err(error) => {
                    // Out of file descriptors and the like: say so, and do not spin.
                    shared.record(BrokerEvent::AcceptFailed { message: error.to_string() });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    // Every connection's token is a child of the shutdown token: they are ending.
    while connections.join_next().await.is_some() {}
}

async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
    let (sender, receiver) = mpsc::unbounded_channel();
    let connection = Arc::new(Connection {
        id,
        peer,
        closing: shared.shutdown.child_token(),
        evicted: CancellationToken::new(),
        outbound: sender,
        pending_bytes: AtomicUsize::new(0),
        max_pending_bytes: shared.options.limits.max_pending_bytes,
        session: RwLock::new(None),
        subscriptions: Mutex::new(HashMap::new()),
    });
    if !admit(&shared, &connection) {
        shared.record(BrokerEvent::MaxConnectionsExceeded { user: None, peer });
        let refusal = [
            shared.info(id, peer),
            Bytes::from(format!("-ERR '{MAX_CONNECTIONS_EXCEEDED}'\r\n")),
        ]
        .concat();
        let _ = tokio::time::timeout(CLOSE_GRACE, stream.write_all(&refusal)).await;
        return;
    }
    connection.send(&shared, Outbound::Bytes(shared.info(id, peer)));

    let (reader, writer) = stream.into_split();
    let mut writing = pin!(write_loop(&connection, receiver, writer));
    let reader_finished = tokio::select! {
        () = read_loop(&shared, &connection, reader) => true,
        () = &mut writing => false,
    };
    if reader_finished {
        connection.close_after_flush();
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut writing).await;
    }
    connection.closing.cancel();
    shared.forget(&connection);
}

/// Registers a new connection, unless the connections that are not the director's (agents'
/// and those that have not sent `CONNECT` yet) already fill `max_connections` and its
/// headroom. Who a new connection is is not known before `CONNECT`, so a cap on all of them
/// would shut the director out: the agents' cap proper is checked at `CONNECT`, this one
/// only bounds what open sockets cost.
fn admit(shared: &Shared, connection: &Arc<Connection>) -> bool {
    let mut connections = lock(&shared.connections);
    let untrusted = connections
        .values()
        .filter(|c| !c.session().is_some_and(|s| s.is_trusted()))
        .count();
    if untrusted >= shared.options.limits.max_connections + HANDSHAKE_HEADROOM {
        return false;
    }
    connections.insert(connection.id, connection.clone());
    true
}

async fn read_loop(shared: &Shared, connection: &Arc<Connection>, mut reader: OwnedReadHalf) {
    let options = &shared.options;
    let mut parser = Parser::new(options.max_payload, options.max_control_line);
    let mut pings_out = 0;
    let mut auth_deadline = pin!(tokio::time::sleep(options.auth_timeout));
    let mut pings = tokio::time::interval_at(
        tokio::time::Instant::now() + options.ping_interval,
        options.ping_interval,
    );
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        loop {
            match parser.next() {
                Ok(Some(op)) => {
                    if let Flow::Close = handle(shared, connection, op, &mut pings_out) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let message = error.client_message();
                    connection.send_error(shared, &message);
                    shared.record(BrokerEvent::ProtocolError {
                        user: connection.user(),
                        peer: connection.peer,
                        message,
                    });
                    return;
                }
            }
        }
        let authenticated = connection.session().is_some();
        tokio::select! {
            () = connection.closing.cancelled() => return,
            () = connection.evicted.cancelled() => return,
            () = &mut auth_deadline, if !authenticated => {
                connection.send_error(shared, "Authentication Timeout");
                shared.record(BrokerEvent::ProtocolError {
                    user: None,
                    peer: connection.peer,
                    message: "Authentication Timeout".to_string(),
                });
                return;
            }
            _ = pings.tick(), if authenticated => {
                if pings_out >= options.max_pings_out {
                    connection.send_error(shared, "Stale Connection");
                    shared.record(BrokerEvent::ProtocolError {
                        user: connection.user(),
                        peer: connection.peer,
                        message: "Stale Connection".to_string(),
                    });
                    return;
                }
                pings_out += 1;
                connection.send_static(shared, b"PING\r\n");
            }
            read = reader.read_buf(parser.buffer()) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

async fn write_loop(
    connection: &Connection,
    mut receiver: mpsc::UnboundedReceiver<Outbound>,
    writer: OwnedWriteHalf,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    loop {
        let first = tokio::select! {
            () = connection.closing.cancelled() => return,
            item = receiver.recv() => item,
        };
        let Some(first) = first else { return };
        let keep_going = tokio::select! {
            () = connection.closing.cancelled() => return,
            written = write_batch(connection, &mut receiver, &mut writer, first) => written,
        };
        if !matches!(keep_going, Ok(true)) {
            return;
        }
    }
}

/// Writes `first` and whatever else is queued, then flushes. `Ok(false)` after `Close`.
async fn write_batch(
    connection: &Connection,
    receiver: &mut mpsc::UnboundedReceiver<Outbound>,
    writer: &mut BufWriter<OwnedWriteHalf>,
    first: Outbound,
) -> io::Result<bool> {
    let mut next = Some(first);
    let mut written = 0;
    while let Some(item) = next.take() {
        let size = item.len();
        match item {
            Outbound::Close => {
                writer.flush().await?;
                let _ = writer.shutdown().await;
                return Ok(false);
            }
            Outbound::Bytes(bytes) => writer.write_all(&bytes).await?,
            Outbound::Message { header, payload } => {
                writer.write_all(&header).await?;
                writer.write_all(&payload).await?;
                writer.write_all(b"\r\n").await?;
            }
        }
        connection.pending_bytes.fetch_sub(size, Ordering::Relaxed);
        written += 1;
        if written < 1024 {
            next = receiver.try_recv().ok();
        }
    }
    writer.flush().await?;
    Ok(true)
}

enum Flow {
    Continue,
    Close,
}

fn handle(
    shared: &Shared,
    connection: &Arc<Connection>,
    op: ClientOp,
    pings_out: &mut u32,
) -> Flow {
    let Some(session) = connection.session() else {
        if let ClientOp::Connect(options) = op {
            return connect(shared, connection, &options);
        }
        return refuse_client(shared, connection, None);
    };
    match op {
        ClientOp::Connect(_) => acknowledge(shared, connection, &session),
        ClientOp::Ping => connection.send_static(shared, b"PONG\r\n"),
        ClientOp::Pong => *pings_out = 0,
        ClientOp::Pub {
            subject,
            reply,
            payload,
        } => {
            // Every publish counts, refused ones too: they cost the broker as much.
            if !session.may_spend(&shared.options.limits.publish_rate, payload.len()) {
                connection.send_error(shared, MAX_PUBLISH_RATE_EXCEEDED);
                shared.record(BrokerEvent::PublishRateExceeded {
                    user: session.user.clone(),
                    peer: connection.peer,
                });
                return Flow::Close;
            }
            if !subject::is_literal(&subject)
                || reply.as_deref().is_some_and(|r| !subject::is_literal(r))
            {
                connection.send_error(shared, "Invalid Publish Subject");
                return Flow::Continue;
            }
            if !session.permissions.may_publish(&subject) {
                refuse(shared, connection, &session, Operation::Publish, subject);
                return Flow::Continue;
            }
            shared.route(
                connection,
                session.echo,
                &subject,
                reply.as_deref(),
                &payload,
            );
            acknowledge(shared, connection, &session);
        }
        ClientOp::Sub {
            subject,
            queue,
            sid,
        } => {
            if !subject::is_valid(&subject) {
                connection.send_error(shared, "Invalid Subject");
                return Flow::Continue;
            }
            if !session.permissions.may_subscribe(&subject) {
                refuse(shared, connection, &session, Operation::Subscribe, subject);
                return Flow::Continue;
            }
            let mut own = lock(&connection.subscriptions);
            if !own.contains_key(&sid) {
                if own.len() >= shared.options.limits.max_subscriptions {
                    drop(own);
                    connection.send_error(shared, "Maximum Subscriptions Exceeded");
                    return Flow::Continue;
                }
                let subscription = Arc::new(Subscription {
                    key: shared.next_subscription_key.fetch_add(1, Ordering::Relaxed),
                    connection: connection.clone(),
                    sid: sid.clone(),
                    subject,
                    queue,
                    delivered: AtomicU64::new(0),
                    max: AtomicU64::new(0),
                });
                own.insert(sid, subscription.clone());
                write(&shared.subscriptions).insert(subscription);
            }
            drop(own);
            acknowledge(shared, connection, &session);
        }
        ClientOp::Unsub { sid, max } => {
            let subscription = lock(&connection.subscriptions).get(&sid).cloned();
            if let Some(subscription) = subscription {
                match max {
                    Some(max)
                        if max > 0 && subscription.delivered.load(Ordering::Relaxed) < max =>
                    {
                        subscription.max.store(max, Ordering::Relaxed);
                    }
                    _ => shared.unsubscribe(&subscription),
                }
            }
            acknowledge(shared, connection, &session);
        }
    }
    Flow::Continue
}

/// `+OK` after a successful `CONNECT`, `PUB`, `SUB` or `UNSUB`, for verbose clients.
fn acknowledge(shared: &Shared, connection: &Connection, session: &Session) {
    if session.verbose {
        connection.send_static(shared, b"+OK\r\n");
    }
}

/// The fields of `CONNECT` the broker reads. Like nats-server, `verbose` and `echo` default
/// to true when a client leaves them out.
#[derive(Deserialize)]
struct ConnectOptions {
    #[serde(default = "yes")]
    verbose: bool,
    #[serde(default = "yes")]
    echo: bool,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    pass: Option<String>,
}

fn yes() -> bool {
    true
}

fn connect(shared: &Shared, connection: &Arc<Connection>, options: &[u8]) -> Flow {
    let options: ConnectOptions = match serde_json::from_slice(options) {
        Ok(options) => options,
        Err(error) => {
            let message = format!("Invalid CONNECT: {error}");
            connection.send_error(shared, &message);
            shared.record(BrokerEvent::ProtocolError {
                user: None,
                peer: connection.peer,
                message,
            });
            return Flow::Close;
        }
    };
    // The users lock is held until the session is set, so a user removed meanwhile either
    // refuses this CONNECT or finds the session and closes it.
    let users = read(&shared.users);
    let user = match (&options.user, &options.pass) {
        (Some(name), Some(password)) => users
            .get(name)
            .filter(|user| same_secret(&user.password, password)),
        _ => None,
    };
    let Some(user) = user else {
        drop(users);
        return refuse_client(shared, connection, options.user);
    };
    let session = Session {
        user: options.user.unwrap_or_default(),
        permissions: user.permissions.clone(),
        publish_budget: user.publish_budget.clone(),
        verbose: options.verbose,
        echo: options.echo,
    };
    // The connections lock is held from the count until the session is set, so agents
    // connecting at once cannot all slip under the cap.
    let connections = lock(&shared.connections);
    if !session.is_trusted() {
        let agents = connections
            .values()
            .filter(|c| c.session().is_some_and(|s| !s.is_trusted()))
            .count();
        if agents >= shared.options.limits.max_connections {
            drop(connections);
            drop(users);
            connection.send_error(shared, MAX_CONNECTIONS_EXCEEDED);
            shared.record(BrokerEvent::MaxConnectionsExceeded {
                user: Some(session.user),
                peer: connection.peer,
            });
            return Flow::Close;
        }
    }
    *write(&connection.session) = Some(Arc::new(session));
    drop(connections);
    drop(users);
    if options.verbose {
        connection.send_static(shared, b"+OK\r\n");
    }
    Flow::Continue
}

fn refuse_client(shared: &Shared, connection: &Connection, user: Option<String>) -> Flow {
    connection.send_error(shared, "Authorization Violation");
    shared.record(BrokerEvent::AuthorizationViolation {
        user,
        peer: connection.peer,
    });
    Flow::Close
}

fn refuse(
    shared: &Shared,
    connection: &Connection,
    session: &Session,
    operation: Operation,
    subject: String,
) {
    let what = match operation {
        Operation::Publish => "Publish",
        Operation::Subscribe => "Subscription",
    };
    connection.send_error(
        shared,
        &format!("Permissions Violation for {what} to \"{subject}\""),
    );
    shared.record(BrokerEvent::PermissionViolation {
        user: session.user.clone(),
        operation,
        subject,
    });
}

/// Compares passwords without an early exit on the first differing byte.
fn same_secret(expected: &str, given: &str) -> bool {
    expected.len() == given.len() && openssl::memcmp::eq(expected.as_bytes(), given.as_bytes())
}

/// A client's protocol operation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ClientOp {
    /// `CONNECT {json}`: the JSON.
    Connect(Bytes),
    /// `PUB subject [reply-to] #bytes` and its payload.
    Pub {
        subject: String,
        reply: Option<String>,
        payload: Bytes,
    },
    /// `SUB subject [queue] sid`.
    Sub {
        subject: String,
        queue: Option<String>,
        sid: String,
    },
    /// `UNSUB sid [max_msgs]`.
    Unsub { sid: String, max: Option<u64> },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
}

/// Why a connection is closed: each answers the client with nats-server's text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    UnknownOperation,
    MaxControlLine,
    MaxPayload,
    Arguments(&'static str),
    PayloadEnd,
    NotText,
}

impl ProtocolError {
    fn client_message(&self) -> String {
        match self {
            ProtocolError::UnknownOperation => "Unknown Protocol Operation".to_string(),
            ProtocolError::MaxControlLine => "Maximum Control Line Exceeded".to_string(),
            ProtocolError::MaxPayload => "Maximum Payload Violation".to_string(),
            ProtocolError::Arguments(usage) => format!("Parse Error: expected {usage}"),
            ProtocolError::PayloadEnd => "Parse Error: payload not followed by CRLF".to_string(),
            ProtocolError::NotText => "Parse Error: control line is not UTF-8".to_string(),
        }
    }
}

/// Splits what a client sends into operations, whatever the frames it arrives in. The
/// buffer never holds more than one control line and one payload past the limits.
pub(crate) struct Parser {
    buffer: BytesMut,
    max_payload: usize,
    max_control_line: usize,
}

impl Parser {
    pub(crate) fn new(max_payload: usize, max_control_line: usize) -> Parser {
        Parser {
            buffer: BytesMut::with_capacity(READ_CHUNK),
            max_payload,
            max_control_line,
        }
    }

    /// Where the next read goes.
    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        self.buffer.reserve(READ_CHUNK);
        &mut self.buffer
    }

    /// The next complete operation, `None` when more bytes are needed.
    pub(crate) fn next(&mut self) -> Result<Option<ClientOp>, ProtocolError> {
        let window = self.buffer.len().min(self.max_control_line + 2);
        let Some(newline) = self.buffer[..window].iter().position(|&b| b == b'\n') else {
            if self.buffer.len() >= self.max_control_line + 2 {
                return Err(ProtocolError::MaxControlLine);
            }
            return Ok(None);
        };
        let line_end = if newline > 0 && self.buffer[newline - 1] == b'\r' {
            newline - 1
        } else {
            newline
        };
        let line =
            std::str::from_utf8(&self.buffer[..line_end]).map_err(|_| ProtocolError::NotText)?;
        let mut words = line.split_ascii_whitespace();
        let verb = words.next().unwrap_or_default();
        let consumed = newline + 1;
        let op = if verb.eq_ignore_ascii_case("PUB") {
            const USAGE: &str = "PUB <subject> [reply-to] <#bytes>";
            let (subject, reply, size) = match (words.next(), words.next(), words.next()) {
                (Some(subject), Some(size), None) => (subject, None, size),
                (Some(subject), Some(reply), Some(size)) if words.next().is_none() => {
                    (subject, Some(reply), size)
                }
                _ => return Err(ProtocolError::Arguments(USAGE)),
            };
            let size: usize = size.parse().map_err(|_| ProtocolError::Arguments(USAGE))?;
            if size > self.max_payload {
                return Err(ProtocolError::MaxPayload);
            }
            let total = consumed + size + 2;
            if self.buffer.len() < total {
                return Ok(None);
            }
            if &self.buffer[consumed + size..total] != b"\r\n" {
                return Err(ProtocolError::PayloadEnd);
            }
            let subject = subject.to_string();
            let reply = reply.map(str::to_string);
            self.buffer.advance(consumed);
            let payload = self.buffer.split_to(size).freeze();
            self.buffer.advance(2);
            return Ok(Some(ClientOp::Pub {
                subject,
                reply,
                payload,
            }));
        } else if verb.eq_ignore_ascii_case("SUB") {
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some(subject), Some(sid), None, None) => ClientOp::Sub {
                    subject: subject.to_string(),
                    queue: None,
                    sid: sid.to_string(),
                },
                (Some(subject), Some(queue), Some(sid), None) => ClientOp::Sub {
                    subject: subject.to_string(),
                    queue: Some(queue.to_string()),
                    sid: sid.to_string(),
                },
                _ => return Err(ProtocolError::Arguments("SUB <subject> [queue] <sid>")),
            }
        } else if verb.eq_ignore_ascii_case("UNSUB") {
            const USAGE: &str = "UNSUB <sid> [max_msgs]";
            match (words.next(), words.next(), words.next()) {
                (Some(sid), max, None) => ClientOp::Unsub {
                    sid: sid.to_string(),
                    max: max
                        .map(str::parse)
                        .transpose()
                        .map_err(|_| ProtocolError::Arguments(USAGE))?,
                },
                _ => return Err(ProtocolError::Arguments(USAGE)),
            }
        } else if verb.eq_ignore_ascii_case("PING") {
            ClientOp::Ping
        } else if verb.eq_ignore_ascii_case("PONG") {
            ClientOp::Pong
        } else if verb.eq_ignore_ascii_case("CONNECT") {
            ClientOp::Connect(Bytes::copy_from_slice(line[verb.len()..].trim().as_bytes()))
        } else {
            return Err(ProtocolError::UnknownOperation);
        };
        self.buffer.advance(consumed);
        Ok(Some(op))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    fn parse_all(parser: &mut Parser) -> Result<Vec<ClientOp>, ProtocolError> {
        let mut ops = Vec::new();
        while let Some(op) = parser.next()? {
            ops.push(op);
        }
        Ok(ops)
    }

    fn parse(input: &[u8]) -> Result<Vec<ClientOp>, ProtocolError> {
        let mut parser = Parser::new(1024, 64);
        parser.buffer().extend_from_slice(input);
        parse_all(&mut parser)
    }

    const SESSION: &[u8] = b"CONNECT {\"user\":\"u\",\"pass\":\"p\"}\r\nPUB a.b 5\r\nhello\r\npub a.b reply.x 0\r\n\r\nsub a.* q 1\r\nSUB  >\t2\r\nUNSUB 1 10\r\nUNSUB 2\r\nPING\r\nPONG\n";

    fn session_ops() -> Vec<ClientOp> {
        vec![
            ClientOp::Connect(Bytes::from_static(b"{\"user\":\"u\",\"pass\":\"p\"}")),
            ClientOp::Pub {
                subject: "a.b".into(),
                reply: None,
                payload: Bytes::from_static(b"hello"),
            },
            ClientOp::Pub {
                subject: "a.b".into(),
                reply: Some("reply.x".into()),
                payload: Bytes::new(),
            },
            ClientOp::Sub {
                subject: "a.*".into(),
                queue: Some("q".into()),
                sid: "1".into(),
            },
            ClientOp::Sub {
                subject: ">".into(),
                queue: None,
                sid: "2".into(),
            },
            ClientOp::Unsub {
                sid: "1".into(),
                max: Some(10),
            },
            ClientOp::Unsub {
                sid: "2".into(),
                max: None,
            },
            ClientOp::Ping,
            ClientOp::Pong,
        ]
    }

    #[test]
    fn parses_a_session_in_one_piece() {
        assert_eq!(parse(SESSION).unwrap(), session_ops());
    }

    #[test]
    fn parses_a_session_split_anywhere() {
        for split in 0..SESSION.len() {
            let mut parser = Parser::new(1024, 64);
            parser.buffer().extend_from_slice(&SESSION[..split]);
            let mut ops = parse_all(&mut parser).unwrap();
            parser.buffer().extend_from_slice(&SESSION[split..]);
            ops.extend(parse_all(&mut parser).unwrap());
            assert_eq!(ops, session_ops(), "split at {split}");
        }
        let mut parser = Parser::new(1024, 64);
        let mut ops = Vec::new();
        for byte in SESSION {
            parser.buffer().extend_from_slice(&[*byte]);
            ops.extend(parse_all(&mut parser).unwrap());
        }
        assert_eq!(ops, session_ops(), "byte by byte");
    }

    #[test]
    fn waits_for_the_whole_payload() {
        let mut parser = Parser::new(1024, 64);
        for (chunk, complete) in [
            (&b"PUB a 5\r\nhel"[..], false),
            (b"lo\r", false),
            (b"\n", true),
        ] {
            parser.buffer().extend_from_slice(chunk);
            assert_eq!(parser.next().unwrap().is_some(), complete, "{chunk:?}");
        }
    }

    #[test]
    fn bad_lines_are_protocol_errors() {
        let long_line = vec![b'x'; 100];
        let cases: [(&[u8], ProtocolError); 13] = [
            (b"FOO\r\n", ProtocolError::UnknownOperation),
            (b"\r\n", ProtocolError::UnknownOperation),
            (b"MSG a 1 0\r\n\r\n", ProtocolError::UnknownOperation),
            (b"PUB a\r\n", ProtocolError::Arguments("")),
            (b"PUB a b c d\r\n", ProtocolError::Arguments("")),
            (b"PUB a x\r\n", ProtocolError::Arguments("")),
            (b"PUB a -1\r\n", ProtocolError::Arguments("")),
            (b"PUB a 2000\r\n", ProtocolError::MaxPayload),
            (b"PUB a 3\r\nabcd\r\n", ProtocolError::PayloadEnd),
            (b"SUB a\r\n", ProtocolError::Arguments("")),
            (b"UNSUB 1 x\r\n", ProtocolError::Arguments("")),
            (&long_line, ProtocolError::MaxControlLine),
            (b"PUB \xff 1\r\n", ProtocolError::NotText),
        ];
        for (input, expected) in cases {
            let got = parse(input).unwrap_err();
            let same = match (&got, &expected) {
                (ProtocolError::Arguments(_), ProtocolError::Arguments(_)) => true,
                (got, expected) => got == expected,
            };
            assert!(same, "{:?}: {got:?}", String::from_utf8_lossy(input));
        }
        // A control line at the limit is fine; one byte more is not.
        let mut at_limit = b"SUB ".to_vec();
        at_limit.extend(vec![b'a'; 58]);
        at_limit.extend(b" 1\r\n");
        assert_eq!(parse(&at_limit).unwrap().len(), 1);
        at_limit.insert(4, b'a');
        assert_eq!(parse(&at_limit), Err(ProtocolError::MaxControlLine));
        assert_eq!(
            ProtocolError::MaxPayload.client_message(),
            "Maximum Payload Violation"
        );
    }

    /// A client speaking the protocol by hand.
    struct Raw {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl Raw {
        async fn connect(broker: &BrokerHandle) -> Raw {
            let stream = TcpStream::connect(broker.local_addr()).await.unwrap();
            let (reader, writer) = stream.into_split();
            let mut raw = Raw {
                reader: BufReader::new(reader),
                writer,
            };
            let info = raw.line().await;
            assert!(info.starts_with("INFO {"), "{info}");
            let info: serde_json::Value = serde_json::from_str(&info[5..]).unwrap();
            assert_eq!(info["auth_required"], true);
            assert_eq!(info["headers"], false);
            assert_eq!(info["max_payload"], broker.inner.shared.options.max_payload);
            raw
        }

        async fn login(broker: &BrokerHandle, user: &str, password: &str) -> Raw {
            let mut raw = Raw::connect(broker).await;
            raw.send(&format!(
                "CONNECT {{\"user\":\"{user}\",\"pass\":\"{password}\",\"verbose\":false}}\r\nPING\r\n"
            ))
            .await;
            raw.expect("PONG").await;
            raw
        }

        async fn send(&mut self, text: &str) {
            self.writer.write_all(text.as_bytes()).await.unwrap();
        }

        /// The next line without its CRLF; empty at the end of the stream.
        async fn line(&mut self) -> String {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut line))
                .await
                .expect("the broker answers within 5 s")
                .unwrap_or(0);
            line.trim_end_matches("\r\n").to_string()
        }

        async fn expect(&mut self, expected: &str) {
            assert_eq!(self.line().await, expected);
        }

        /// Every message line and payload up to the answer to a PING.
        async fn drain(&mut self) -> Vec<String> {
            self.send("PING\r\n").await;
            let mut lines = Vec::new();
            loop {
                let line = self.line().await;
                match line.as_str() {
                    "PONG" => return lines,
                    "" => panic!("connection closed after {lines:?}"),
                    _ => lines.push(line),
                }
            }
        }

        async fn expect_closed(&mut self) {
            assert_eq!(self.line().await, "");
        }
    }

    async fn broker_with(options: BrokerOptions) -> BrokerHandle {
        let broker = Broker::start_with("127.0.0.1:0", options).await.unwrap();
        broker.add_user("director", "pw", Permissions::all());
        broker
    }

    async fn broker() -> BrokerHandle {
        broker_with(BrokerOptions::default()).await
    }

    #[tokio::test]
    async fn refuses_bad_credentials_and_anything_before_connect() {
        let broker = broker().await;
        let mut raw = Raw::connect(&broker).await;
        raw.send("CONNECT {\"user\":\"director\",\"pass\":\"wrong\"}\r\nPING\r\n")
            .await;
        raw.expect("-ERR 'Authorization Violation'").await;
        raw.expect_closed().await;

        let mut raw = Raw::connect(&broker).await;
        raw.send("PING\r\n").await;
        raw.expect("-ERR 'Authorization Violation'").await;
        raw.expect_closed().await;

        let mut raw = Raw::connect(&broker).await;
        raw.send("CONNECT {\"user\":\"nobody\",\"pass\":\"pw\"}\r\n")
            .await;
        raw.expect("-ERR 'Authorization Violation'").await;
        raw.expect_closed().await;

        let events = broker.events();
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(
            &events[0],
            BrokerEvent::AuthorizationViolation { user: Some(user), .. } if user == "director"
        ));
        assert!(!events[0].to_string().contains("wrong"));
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn verbose_is_the_default_as_in_nats_server() {
        let broker = broker().await;
        let mut raw = Raw::connect(&broker).await;
        raw.send("CONNECT {\"user\":\"director\",\"pass\":\"pw\"}\r\nSUB a 1\r\nPUB b 0\r\n\r\nUNSUB 1\r\nPING\r\n")
            .await;
        for expected in ["+OK", "+OK", "+OK", "+OK", "PONG"] {
            raw.expect(expected).await;
        }
        raw.send("SUB a..b 2\r\nPUB a.* 0\r\n\r\nBOGUS\r\n").await;
        raw.expect("-ERR 'Invalid Subject'").await;
        raw.expect("-ERR 'Invalid Publish Subject'").await;
        raw.expect("-ERR 'Unknown Protocol Operation'").await;
        raw.expect_closed().await;
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn routes_by_wildcards_queues_and_unsubscribe_limits() {
        let broker = broker().await;
        let mut subscriber = Raw::login(&broker, "director", "pw").await;
        let mut publisher = Raw::login(&broker, "director", "pw").await;
        subscriber
            .send("SUB a.b 1\r\nSUB a.* 2\r\nSUB a.> 3\r\nSUB > 4\r\nSUB b.* 5\r\n")
            .await;
        subscriber.drain().await;
        publisher.send("PUB a.b r.1 2\r\nhi\r\n").await;
        publisher.drain().await;
        let mut lines = subscriber.drain().await;
        lines.sort();
        assert_eq!(
            lines,
            [
                "MSG a.b 1 r.1 2",
                "MSG a.b 2 r.1 2",
                "MSG a.b 3 r.1 2",
                "MSG a.b 4 r.1 2",
                "hi",
                "hi",
                "hi",
                "hi"
            ]
        );

        // A queue group gets each message once, spread over its members.
        let mut first = Raw::login(&broker, "director", "pw").await;
        let mut second = Raw::login(&broker, "director", "pw").await;
        first.send("SUB work workers 1\r\n").await;
        second.send("SUB work workers 7\r\nSUB work 8\r\n").await;
        first.drain().await;
        second.drain().await;
        for _ in 0..10 {
            publisher.send("PUB work 1\r\nx\r\n").await;
        }
        publisher.drain().await;
        let first_lines = first.drain().await;
        let second_lines = second.drain().await;
        let queued = first_lines.iter().filter(|l| l.starts_with("MSG")).count()
            + second_lines
                .iter()
                .filter(|l| l.starts_with("MSG work 7"))
                .count();
        let plain = second_lines
            .iter()
            .filter(|l| l.starts_with("MSG work 8"))
            .count();
        assert_eq!((queued, plain), (10, 10));
        assert!(!first_lines.is_empty() && second_lines.len() > 20);

        // UNSUB with a count ends the subscription after that many messages.
        subscriber.send("UNSUB 4\r\nSUB c 9\r\nUNSUB 9 2\r\n").await;
        subscriber.drain().await;
        for _ in 0..3 {
            publisher.send("PUB c 1\r\nx\r\n").await;
        }
        publisher.drain().await;
        assert_eq!(
            subscriber.drain().await,
            ["MSG c 9 1", "x", "MSG c 9 1", "x"]
        );
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn permissions_refuse_like_nats_server() {
        let broker = broker().await;
        broker.add_user("agent-a1", "pw1", crate::accounts::agent_permissions("a1"));
        let mut director = Raw::login(&broker, "director", "pw").await;
        director.send("SUB agent.a2 1\r\nSUB hm.> 2\r\n").await;
        director.drain().await;
        let mut agent = Raw::login(&broker, "agent-a1", "pw1").await;
        agent
            .send("SUB agent.a2 1\r\nSUB agent.* 2\r\nSUB agent.a1 3\r\nPUB agent.a2 1\r\nx\r\nPUB hm.agent.heartbeat.a1 1\r\nh\r\n")
            .await;
        assert_eq!(
            agent.drain().await,
            [
                "-ERR 'Permissions Violation for Subscription to \"agent.a2\"'",
                "-ERR 'Permissions Violation for Subscription to \"agent.*\"'",
                "-ERR 'Permissions Violation for Publish to \"agent.a2\"'",
            ]
        );
        // The forged order went nowhere; the heartbeat arrived.
        assert_eq!(
            director.drain().await,
            ["MSG hm.agent.heartbeat.a1 2 1", "h"]
        );
        // Its own subject works.
        director.send("PUB agent.a1 1\r\no\r\n").await;
        director.drain().await;
        assert_eq!(agent.drain().await, ["MSG agent.a1 3 1", "o"]);

        let violations: Vec<String> = broker
            .events()
            .iter()
            .filter(|e| matches!(e, BrokerEvent::PermissionViolation { .. }))
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            violations,
            [
                "permissions violation: user 'agent-a1' may not subscribe to 'agent.a2'",
                "permissions violation: user 'agent-a1' may not subscribe to 'agent.*'",
                "permissions violation: user 'agent-a1' may not publish to 'agent.a2'",
            ]
        );

        // New permissions apply to the connected client and drop what they no longer allow.
        broker.add_user("agent-a1", "pw1", crate::accounts::agent_permissions("a9"));
        director.send("PUB agent.a1 1\r\no\r\n").await;
        director.drain().await;
        assert_eq!(agent.drain().await, Vec::<String>::new());
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn oversized_payloads_close_the_connection() {
        let broker = broker_with(BrokerOptions {
            max_payload: 16,
            ..BrokerOptions::default()
        })
        .await;
        let mut raw = Raw::login(&broker, "director", "pw").await;
        raw.send("PUB a 17\r\n").await;
        raw.expect("-ERR 'Maximum Payload Violation'").await;
        raw.expect_closed().await;
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn slow_consumers_are_dropped_without_holding_up_others() {
        let broker = broker_with(BrokerOptions {
            limits: BusLimits {
                max_pending_bytes: 4 * 1024 * 1024,
                ..BusLimits::default()
            },
            ..BrokerOptions::default()
        })
        .await;
        let mut slow = Raw::login(&broker, "director", "pw").await;
        slow.send("SUB s 1\r\n").await;
        slow.drain().await;
        let mut fast = Raw::login(&broker, "director", "pw").await;
        fast.send("SUB s 1\r\n").await;
        fast.drain().await;
        const COUNT: usize = 800;
        const SIZE: usize = 64 * 1024;
        let (counter, read) = tokio::sync::watch::channel(0);
        let reading = tokio::spawn(async move {
            let mut payload = vec![0; SIZE + 2];
            for count in 1..=COUNT {
                assert_eq!(fast.line().await, format!("MSG s 1 {SIZE}"));
                fast.reader.read_exact(&mut payload).await.unwrap();
                counter.send_replace(count);
            }
            fast
        });
        let mut publisher = Raw::login(&broker, "director", "pw").await;
        let message = format!("PUB s {SIZE}\r\n{}\r\n", "x".repeat(SIZE));
        // Paced by the fast reader (which a debug-built test reads slowly), never by the
        // slow one.
        for sent in 1..=COUNT {
            publisher.send(&message).await;
            if sent % 8 == 0 {
                let mut read = read.clone();
                tokio::time::timeout(Duration::from_secs(10), read.wait_for(|n| *n >= sent))
                    .await
                    .expect("the fast subscriber keeps getting messages")
                    .unwrap();
            }
        }
        publisher.drain().await;
        let mut fast = tokio::time::timeout(Duration::from_secs(30), reading)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fast.drain().await, Vec::<String>::new());
        assert!(
            broker
                .events()
                .iter()
                .any(|e| matches!(e, BrokerEvent::SlowConsumer { .. })),
            "{:?}",
            broker.events()
        );
        assert_eq!(broker.connection_count(), 2);
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn removing_a_user_disconnects_it() {
        let broker = broker().await;
        broker.add_user("agent-a1", "pw1", crate::accounts::agent_permissions("a1"));
        let mut agent = Raw::login(&broker, "agent-a1", "pw1").await;
        assert_eq!(broker.user_connection_count("agent-a1"), 1);
        assert!(broker.remove_user("agent-a1"));
        agent.expect("-ERR 'Authorization Violation'").await;
        agent.expect_closed().await;
        assert_eq!(broker.user_connection_count("agent-a1"), 0);
        let mut again = Raw::connect(&broker).await;
        again
            .send("CONNECT {\"user\":\"agent-a1\",\"pass\":\"pw1\"}\r\n")
            .await;
        again.expect("-ERR 'Authorization Violation'").await;
        assert!(!broker.remove_user("agent-a1"));
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn sockets_past_the_cap_and_its_headroom_are_refused_before_connect() {
        let broker = broker_with(BrokerOptions {
            limits: BusLimits {
                max_connections: 1,
                ..BusLimits::default()
            },
            auth_timeout: Duration::from_secs(60),
            ..BrokerOptions::default()
        })
        .await;
        // The director's connections do not count.
        let mut director = Raw::login(&broker, "director", "pw").await;
        let mut waiting = Vec::new();
        for _ in 0..1 + HANDSHAKE_HEADROOM {
            waiting.push(Raw::connect(&broker).await);
        }
        let mut refused = Raw::connect(&broker).await;
        refused.expect("-ERR 'maximum connections exceeded'").await;
        refused.expect_closed().await;
        assert_eq!(
            broker.events(),
            [BrokerEvent::MaxConnectionsExceeded {
                user: None,
                peer: refused.writer.local_addr().unwrap(),
            }]
        );
        assert_eq!(
            broker.events()[0].to_string(),
            format!(
                "maximum connections exceeded: refused a client at {} (bus_limits.max_connections)",
                refused.writer.local_addr().unwrap()
            )
        );
        assert_eq!(director.drain().await, Vec::<String>::new());
        // One that goes makes room for one more.
        drop(waiting.pop());
        let started = std::time::Instant::now();
        while broker.connection_count() > 1 + HANDSHAKE_HEADROOM {
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut admitted = Raw::connect(&broker).await;
        admitted
            .send("CONNECT {\"user\":\"director\",\"pass\":\"pw\",\"verbose\":false}\r\n")
            .await;
        assert_eq!(admitted.drain().await, Vec::<String>::new());
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn limits_that_cannot_work_are_refused_at_start() {
        let error = Broker::start_with(
            "127.0.0.1:0",
            BrokerOptions {
                limits: BusLimits {
                    max_connections: 0,
                    ..BusLimits::default()
                },
                ..BrokerOptions::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "bus_limits: max_connections is 0, which no agent can work with"
        );
    }

    #[tokio::test]
    async fn silent_clients_time_out() {
        let broker = broker_with(BrokerOptions {
            auth_timeout: Duration::from_millis(100),
            ping_interval: Duration::from_millis(100),
            ..BrokerOptions::default()
        })
        .await;
        let mut raw = Raw::connect(&broker).await;
        raw.expect("-ERR 'Authentication Timeout'").await;
        raw.expect_closed().await;

        let mut raw = Raw::login(&broker, "director", "pw").await;
        raw.expect("PING").await;
        raw.send("PONG\r\n").await;
        raw.expect("PING").await;
        raw.expect("PING").await;
        raw.expect("-ERR 'Stale Connection'").await;
        raw.expect_closed().await;
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_closes_every_connection() {
        let broker = broker().await;
        let mut first = Raw::login(&broker, "director", "pw").await;
        let mut second = Raw::connect(&broker).await;
        tokio::time::timeout(Duration::from_secs(5), broker.shutdown())
            .await
            .unwrap();
        first.expect_closed().await;
        second.expect_closed().await;
        assert!(TcpStream::connect(broker.local_addr()).await.is_err());
    }
}
