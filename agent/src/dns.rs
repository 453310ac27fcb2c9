//! The agent's DNS server: BOSH DNS's job, inside the agent.
//!
//! The director pushes the deployments' instances with `sync_dns` (a records document
//! modelled on BOSH DNS's `records.json`, see [`Records::parse`]) and every agent answers
//! queries about them on each of its network addresses, over UDP and TCP:
//!
//! ```text
//! <id>.<group>.<network>.<deployment>.bosh      the instance, whatever its health
//! <index>.<group>.<network>.<deployment>.bosh   the same, by index
//! q-s0.<group>.<network>.<deployment>.bosh      the group's healthy instances (q-s3 too)
//! q-s1.<group>.<network>.<deployment>.bosh      its unhealthy instances
//! q-s4.<group>.<network>.<deployment>.bosh      all of them
//! ```
//!
//! Names are compared without regard to case, with or without their trailing dot. `A`
//! questions are answered with IPv4 addresses, `AAAA` with IPv6 ones; a name that exists
//! without an address of the kind asked (or a group with no instance in the state asked)
//! is answered NOERROR with no answers. Every answer has a TTL of 0, so that a change of
//! health shows at once. A name under the records' domains that names nothing is NXDOMAIN,
//! except the names above ours (`<group>.<network>.<deployment>.bosh`, …, `bosh`), which
//! exist without records of their own (NOERROR, empty: RFC 8020 reads NXDOMAIN there as
//! "nothing below").
//!
//! **No recursion**: names outside the records' domains (and `bosh`, always ours) are
//! REFUSED. The VM's resolver has to ask its other servers for them itself; this server is
//! authoritative for the director's names and nothing else.
//!
//! **Own health overrides the record**: the agent's own instance (the record with the
//! applied spec's id, or with this agent's id) is healthy exactly while the agent's own job
//! state is `running`, whatever the director's health monitor last judged.
//!
//! On UDP an answer larger than 512 bytes (or than the EDNS payload size the query
//! advertises, at most 1232 bytes, the size that avoids IP fragmentation) is sent with TC
//! set and no answers, so that the client asks again over TCP.
//!
//! Pure parts: [`Records`] (parsed and indexed by group), [`resolve`] (a question to a
//! response code and addresses) and [`respond`] (a DNS message to the answer's bytes). The
//! effects are [`Server`]'s: tokio sockets that hand each message to `respond`; and
//! [`point_resolver_at`], which puts the server first in the VM's `/etc/resolv.conf` when the
//! agent is told to (`resolv_conf`, set by the CPIs whose VMs have a resolver file of their
//! own).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::{Error, Result};

/// The domain the director's names live under, served even when no record names it.
pub const DEFAULT_DOMAIN: &str = "bosh";

/// The largest UDP answer we send whatever the query advertises (DNS flag day 2020).
const UDP_PAYLOAD: u16 = 1232;
/// The largest UDP query we read.
const UDP_BUFFER: usize = 4096;
/// TCP connections served at once per address; more are closed at once.
const MAX_TCP_CONNECTIONS: usize = 128;
/// How long a TCP connection may stay silent, or take to send one message.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The pause after a failed `accept` or `recv` (out of file descriptors, …).
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// One instance on one network, as a records row names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The instance's id (lowercase).
    pub id: String,
    /// Its group (canonical: lowercase, `-` for `_`).
    pub instance_group: String,
    /// Its AZ, when it has one.
    pub az: Option<String>,
    /// The network (canonical).
    pub network: String,
    /// The deployment (canonical).
    pub deployment: String,
    /// Its address on that network.
    pub ip: IpAddr,
    /// The domain, lowercase and without its trailing dot (`bosh`).
    pub domain: String,
    /// The id of the instance's agent, when the row names it.
    pub agent_id: Option<String>,
    /// Its index in the group.
    pub instance_index: u64,
    /// The director's health monitor's judgement.
    pub healthy: bool,
}

/// Where the instances of one group on one network are found.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct GroupKey {
    domain: String,
    deployment: String,
    network: String,
    instance_group: String,
}

/// A parsed records document, indexed by group. The default has no instances and serves
/// [`DEFAULT_DOMAIN`] alone.
#[derive(Clone, Debug)]
pub struct Records {
    version: u64,
    instances: Vec<Instance>,
    groups: HashMap<GroupKey, Vec<usize>>,
    /// The domains served, as lowercase labels, the longest first.
    domains: Vec<Vec<String>>,
}

impl Default for Records {
    fn default() -> Records {
        Records {
            version: 0,
            instances: Vec::new(),
            groups: HashMap::new(),
            domains: vec![vec![DEFAULT_DOMAIN.to_string()]],
        }
    }
}

/// The document as the director writes it; keys it does not know are ignored.
#[derive(Deserialize)]
struct Document {
    version: u64,
    record_keys: Vec<String>,
    record_infos: Vec<Vec<Value>>,
}

/// Where each value is in a row of `record_infos`.
struct Columns {
    id: usize,
    instance_group: usize,
    az: Option<usize>,
    network: usize,
    deployment: usize,
    ip: usize,
    domain: usize,
    agent_id: Option<usize>,
    instance_index: usize,
    healthy: usize,
}

impl Columns {
    fn find(keys: &[String]) -> std::result::Result<Columns, String> {
        let optional = |name: &str| keys.iter().position(|key| key == name);
        let required = |name: &str| {
            optional(name).ok_or_else(|| format!("record_keys does not name {name:?}"))
        };
        Ok(Columns {
            id: required("id")?,
            instance_group: required("instance_group")?,
            az: optional("az"),
            network: required("network")?,
            deployment: required("deployment")?,
            ip: required("ip")?,
            domain: required("domain")?,
            agent_id: optional("agent_id"),
            instance_index: required("instance_index")?,
            healthy: required("healthy")?,
        })
    }
}

impl Records {
    /// Parses a records document:
    ///
    /// ```json
    /// {"version": 12,
    ///  "record_keys": ["id", "instance_group", "az", "network", "deployment", "ip",
    ///                  "domain", "agent_id", "instance_index", "healthy"],
    ///  "record_infos": [["6f1c…", "greeter", "z1", "default", "dns-test", "127.0.53.11",
    ///                    "bosh.", "agent-6f1c…", 0, true]]}
    /// ```
    ///
    /// Values are found by key name, in any order; other keys (and other top-level fields)
    /// are ignored. `az` and `agent_id` may be absent or null; every other key is required,
    /// with a string, `instance_index` a non-negative integer and `healthy` a boolean.
    /// Group, network and deployment names must be single DNS labels. One bad row rejects
    /// the whole document (`what` names it in the error): serving half a table would answer
    /// NXDOMAIN for instances that exist.
    pub fn parse(what: &str, bytes: &[u8]) -> Result<Records> {
        let failed = |reason: String| Error::DnsRecords {
            what: what.to_string(),
            reason,
        };
        let document: Document = serde_json::from_slice(bytes)
            .map_err(|e| failed(format!("not a records document: {e}")))?;
        let columns = Columns::find(&document.record_keys).map_err(failed)?;
        let mut records = Records {
            version: document.version,
            ..Records::default()
        };
        for (row_number, row) in document.record_infos.iter().enumerate() {
            let instance = parse_row(&columns, row)
                .map_err(|reason| failed(format!("record_infos[{row_number}]: {reason}")))?;
            let key = GroupKey {
                domain: instance.domain.clone(),
                deployment: instance.deployment.clone(),
                network: instance.network.clone(),
                instance_group: instance.instance_group.clone(),
            };
            records
                .groups
                .entry(key)
                .or_default()
                .push(records.instances.len());
            records.instances.push(instance);
        }
        let mut domains: BTreeSet<&str> = records
            .instances
            .iter()
            .map(|i| i.domain.as_str())
            .collect();
        domains.insert(DEFAULT_DOMAIN);
        records.domains = domains
            .into_iter()
            .map(|domain| domain.split('.').map(str::to_string).collect())
            .collect();
        records
            .domains
            .sort_by_key(|labels: &Vec<String>| std::cmp::Reverse(labels.len()));
        Ok(records)
    }

    /// The document's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every instance, in the document's order.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }
}

/// One row of `record_infos`.
fn parse_row(columns: &Columns, row: &[Value]) -> std::result::Result<Instance, String> {
    let cell = |column: usize, key: &str| {
        row.get(column)
            .ok_or_else(|| format!("{key:?} is missing (the row has {} values)", row.len()))
    };
    let text = |column: usize, key: &str| match cell(column, key)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("{key:?} is {}, not a string", shown(other))),
    };
    let optional_text = |column: Option<usize>, key: &str| match column.and_then(|c| row.get(c)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key:?} is {}, not a string", shown(other))),
    };
    let label = |column: usize, key: &str| {
        let value = text(column, key)?.to_ascii_lowercase();
        if value.is_empty() || value.contains('.') || value.len() > 63 {
            return Err(format!("{key:?} is {value:?}, not one DNS label"));
        }
        Ok(value)
    };
    let id = text(columns.id, "id")?.to_ascii_lowercase();
    if id.is_empty() || id.contains('.') {
        return Err(format!("\"id\" is {id:?}, not one DNS label"));
    }
    let instance_group = label(columns.instance_group, "instance_group")?;
    let az = optional_text(columns.az, "az")?;
    let network = label(columns.network, "network")?;
    let deployment = label(columns.deployment, "deployment")?;
    let ip_text = text(columns.ip, "ip")?;
    let ip: IpAddr = ip_text
        .trim()
        .parse()
        .map_err(|_| format!("\"ip\" is {ip_text:?}, not an IP address"))?;
    let domain_text = text(columns.domain, "domain")?;
    let domain = domain_text
        .strip_suffix('.')
        .unwrap_or(&domain_text)
        .to_ascii_lowercase();
    if domain.is_empty() || domain.split('.').any(str::is_empty) {
        return Err(format!("\"domain\" is {domain_text:?}, not a domain name"));
    }
    let agent_id = optional_text(columns.agent_id, "agent_id")?;
    let index_value = cell(columns.instance_index, "instance_index")?;
    let instance_index = index_value.as_u64().ok_or_else(|| {
        format!(
            "\"instance_index\" is {}, not a non-negative integer",
            shown(index_value)
        )
    })?;
    let healthy = match cell(columns.healthy, "healthy")? {
        Value::Bool(healthy) => *healthy,
        other => {
            return Err(format!(
                "\"healthy\" is {}, not true or false",
                shown(other)
            ));
        }
    };
    Ok(Instance {
        id,
        instance_group,
        az,
        network,
        deployment,
        ip,
        domain,
        agent_id,
        instance_index,
        healthy,
    })
}

/// A JSON value for a message, cut when long.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// What the agent knows about its own instance, asked on every query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnInstance {
    /// The applied spec's instance id, once there is one.
    pub instance_id: Option<String>,
    /// This agent's id.
    pub agent_id: String,
    /// Whether the agent's job state is `running`.
    pub running: bool,
}

impl OwnInstance {
    fn is(&self, instance: &Instance) -> bool {
        let same_id = self
            .instance_id
            .as_deref()
            .is_some_and(|id| !id.is_empty() && id.eq_ignore_ascii_case(&instance.id));
        let same_agent = !self.agent_id.is_empty()
            && instance.agent_id.as_deref() == Some(self.agent_id.as_str());
        same_id || same_agent
    }

    /// `instance`'s health: ours is what the agent sees, others' what the records say.
    fn healthy(&self, instance: &Instance) -> bool {
        if self.is(instance) {
            self.running
        } else {
            instance.healthy
        }
    }
}

/// The kind of address asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryType {
    /// IPv4.
    A,
    /// IPv6.
    Aaaa,
    /// Anything else: names that exist answer it with nothing.
    Other,
}

/// The response code of a resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The name exists (the addresses may be none).
    NoError,
    /// The name is under our domain and names nothing.
    NxDomain,
    /// The name is not ours (no recursion).
    Refused,
}

/// A question's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The response code.
    pub code: Code,
    /// The addresses to answer with, of the kind asked.
    pub addresses: Vec<IpAddr>,
}

impl Resolution {
    fn code(code: Code) -> Resolution {
        Resolution {
            code,
            addresses: Vec::new(),
        }
    }
}

/// Which instances of a group a `q-` query asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HealthFilter {
    Healthy,
    Unhealthy,
    All,
}

impl HealthFilter {
    fn parse(label: &str) -> Option<HealthFilter> {
        match label {
            "q-s0" | "q-s3" => Some(HealthFilter::Healthy),
            "q-s1" => Some(HealthFilter::Unhealthy),
            "q-s4" => Some(HealthFilter::All),
            _ => None,
        }
    }

    fn admits(self, healthy: bool) -> bool {
        match self {
            HealthFilter::Healthy => healthy,
            HealthFilter::Unhealthy => !healthy,
            HealthFilter::All => true,
        }
    }
}

/// The labels of a name in text: `Q-S0.web.default.test.bosh.` → `[Q-S0, web, default,
/// test, bosh]` (the root, `.` or empty, has none).
pub fn labels(name: &str) -> Vec<&str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        Vec::new()
    } else {
        name.split('.').collect()
    }
}

/// Answers a question about the name made of `labels` (any case) from `records`, `own`
/// overriding the health of the agent's own instance. See the module's documentation for
/// the names and codes.
pub fn resolve<S: AsRef<str>>(
    records: &Records,
    labels: &[S],
    query_type: QueryType,
    own: &OwnInstance,
) -> Resolution {
    let labels: Vec<String> = labels
        .iter()
        .map(|label| label.as_ref().to_ascii_lowercase())
        .collect();
    let Some(domain) = records
        .domains
        .iter()
        .find(|domain| labels.ends_with(domain))
    else {
        return Resolution::code(Code::Refused);
    };
    let domain_name = domain.join(".");
    let rest = &labels[..labels.len() - domain.len()];
    let [first, instance_group, network, deployment] = rest else {
        return if is_above_a_group(records, &domain_name, rest) {
            Resolution::code(Code::NoError)
        } else {
            Resolution::code(Code::NxDomain)
        };
    };
    let key = GroupKey {
        domain: domain_name,
        deployment: deployment.clone(),
        network: network.clone(),
        instance_group: instance_group.clone(),
    };
    let Some(members) = records.groups.get(&key) else {
        return Resolution::code(Code::NxDomain);
    };
    let members = members.iter().filter_map(|&i| records.instances.get(i));
    let chosen: Vec<&Instance> = match HealthFilter::parse(first) {
        Some(filter) => members
            .filter(|instance| filter.admits(own.healthy(instance)))
            .collect(),
        None => {
            let index = first
                .parse::<u64>()
                .ok()
                .filter(|index| index.to_string() == *first);
            let found: Vec<&Instance> = members
                .filter(|instance| instance.id == *first || Some(instance.instance_index) == index)
                .collect();
            // An id wins over an index that happens to look the same.
            match found.iter().find(|instance| instance.id == *first) {
                Some(by_id) => vec![*by_id],
                None if found.is_empty() => return Resolution::code(Code::NxDomain),
                None => found,
            }
        }
    };
    let addresses = chosen
        .into_iter()
        .map(|instance| instance.ip)
        .filter(|ip| match query_type {
            QueryType::A => ip.is_ipv4(),
            QueryType::Aaaa => ip.is_ipv6(),
            QueryType::Other => false,
        })
        .collect();
    Resolution {
        code: Code::NoError,
        addresses,
    }
}

/// Whether `rest` (`[group, network, deployment]`, `[network, deployment]`, `[deployment]`
/// or nothing) under `domain` is a name above some group's names.
fn is_above_a_group(records: &Records, domain: &str, rest: &[String]) -> bool {
    if rest.is_empty() {
        return true;
    }
    records.groups.keys().any(|key| {
        let path = [
            key.instance_group.as_str(),
            key.network.as_str(),
            key.deployment.as_str(),
        ];
        key.domain == domain
            && rest.len() <= path.len()
            && path[path.len() - rest.len()..]
                .iter()
                .zip(rest)
                .all(|(label, asked)| *label == asked.as_str())
    })
}

/// How a message came: UDP answers are limited in size, TCP ones are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A datagram.
    Udp,
    /// A TCP stream (length-prefixed messages).
    Tcp,
}

/// The answer to the DNS message `query`, or nothing when there is nothing to answer (a
/// response, or bytes without a DNS header).
pub fn respond(
    query: &[u8],
    transport: Transport,
    records: &Records,
    own: &OwnInstance,
) -> Option<Vec<u8>> {
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        Err(_) => return malformed(query),
    };
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        response.set_edns(edns);
    }
    let limit = match transport {
        Transport::Udp => usize::from(request.max_payload().min(UDP_PAYLOAD)),
        Transport::Tcp => usize::from(u16::MAX),
    };
    let question = match request.queries.as_slice() {
        _ if request.metadata.op_code != OpCode::Query => {
            response.metadata.response_code = ResponseCode::NotImp;
            return encode(response, limit);
        }
        [question] => question,
        _ => {
            response.metadata.response_code = ResponseCode::FormErr;
            return encode(response, limit);
        }
    };
    if question.query_class() != DNSClass::IN {
        response.metadata.response_code = ResponseCode::Refused;
        return encode(response, limit);
    }
    let labels: Vec<String> = question
        .name()
        .iter()
        .map(|label| String::from_utf8_lossy(label).into_owned())
        .collect();
    let query_type = match question.query_type() {
        RecordType::A => QueryType::A,
        RecordType::AAAA => QueryType::Aaaa,
        _ => QueryType::Other,
    };
    let resolution = resolve(records, &labels, query_type, own);
    response.metadata.authoritative = resolution.code != Code::Refused;
    response.metadata.response_code = match resolution.code {
        Code::NoError => ResponseCode::NoError,
        Code::NxDomain => ResponseCode::NXDomain,
        Code::Refused => ResponseCode::Refused,
    };
    for address in resolution.addresses {
        let data = match address {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        response.add_answer(Record::from_rdata(question.name().clone(), 0, data));
    }
    encode(response, limit)
}

/// FORMERR for a query whose header reads but whose rest does not; nothing for anything
/// else (too short, or a response).
fn malformed(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let is_response = header.get(2).is_some_and(|flags| flags & 0x80 != 0);
    if is_response {
        return None;
    }
    let id = u16::from_be_bytes([*header.first()?, *header.get(1)?]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

/// `response`'s bytes; without its answers and with TC set when they exceed `limit`.
fn encode(mut response: Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = match response.to_vec() {
        Ok(bytes) => bytes,
        Err(_) => {
            let id = response.metadata.id;
            let op_code = response.metadata.op_code;
            return Message::error_msg(id, op_code, ResponseCode::ServFail)
                .to_vec()
                .ok();
        }
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    response.answers.clear();
    response.metadata.truncation = true;
    response.to_vec().ok()
}

/// What the server asks about the agent's own instance, on every query: it must be cheap.
pub type OwnInstanceSource = Arc<dyn Fn() -> OwnInstance + Send + Sync>;

/// What the sockets' tasks share.
struct Shared {
    records: RwLock<Option<Arc<Records>>>,
    own: OwnInstanceSource,
}

impl Shared {
    fn respond(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let records = self
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        respond(query, transport, &records, &(self.own)())
    }
}

/// The DNS server: the records in force and a UDP socket and a TCP listener per address.
pub struct Server {
    shared: Arc<Shared>,
    listening: Mutex<BTreeSet<SocketAddr>>,
    tasks: Mutex<JoinSet<()>>,
}

impl Server {
    /// A server with no records, listening nowhere yet; `own` tells about the agent's own
    /// instance.
    pub fn new(own: OwnInstanceSource) -> Server {
        Server {
            shared: Arc::new(Shared {
                records: RwLock::new(None),
                own,
            }),
            listening: Mutex::new(BTreeSet::new()),
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    /// The version of the records in force, if any.
    pub fn version(&self) -> Option<u64> {
        self.shared
            .records
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|records| records.version())
    }

    /// Serves `records` from now on.
    pub fn replace(&self, records: Records) {
        *self
            .shared
            .records
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(records));
    }

    /// Starts serving on each of `addresses` not served yet (UDP and TCP). A failure to
    /// bind is logged; calling again tries again.
    pub async fn listen(&self, addresses: &[SocketAddr]) {
        for &address in addresses {
            let served = self
                .listening
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&address);
            if served {
                continue;
            }
            let bound = async {
                let udp = UdpSocket::bind(address).await.map_err(|e| ("UDP", e))?;
                let tcp = TcpListener::bind(address).await.map_err(|e| ("TCP", e))?;
                Ok::<_, (&str, std::io::Error)>((udp, tcp))
            };
            match bound.await {
                Ok((udp, tcp)) => {
                    {
                        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
                        while tasks.try_join_next().is_some() {}
                        tasks.spawn(serve_udp(udp, self.shared.clone()));
                        tasks.spawn(serve_tcp(tcp, self.shared.clone()));
                    }
                    self.listening
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(address);
                    agent_log!("dns: serving on {address} (UDP and TCP)");
                }
                Err((protocol, e)) => {
                    agent_log!("dns: cannot listen on {address} ({protocol}): {e}")
                }
            }
        }
    }

    /// The addresses served, in order.
    pub fn serving(&self) -> Vec<SocketAddr> {
        let listening = self
            .listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        listening.iter().copied().collect()
    }

    /// Stops serving everywhere.
    pub fn stop(&self) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .abort_all();
        self.listening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buffer = vec![0u8; UDP_BUFFER];
    loop {
        let (length, peer) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                agent_log!("dns: receiving on UDP: {e}");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(query) = buffer.get(..length) else {
            continue;
        };
        if let Some(answer) = shared.respond(query, Transport::Udp) {
            // A client gone away is no reason to log: UDP has no connection to lose.
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let permits = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Over the limit the connection is closed at once: the client retries.
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        continue;
                    };
                    let shared = shared.clone();
                    connections.spawn(async move {
                        serve_connection(stream, &shared).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    agent_log!("dns: accepting on TCP: {e}");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Length-prefixed messages, answered in order, until the client closes or stays silent
/// for [`TCP_IDLE`].
async fn serve_connection(mut stream: TcpStream, shared: &Shared) {
    loop {
        let mut length = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut length)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(answer) = shared.respond(&query, Transport::Tcp) else {
            continue;
        };
        let Ok(answer_length) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&answer_length.to_be_bytes());
        framed.extend_from_slice(&answer);
        match tokio::time::timeout(TCP_IDLE, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// The resolver configuration `current` with `nameserver ip` as its first nameserver (the
/// VM's own DNS server first, as BOSH DNS puts itself): any line for `ip` already there is
/// moved, every other line kept in its order, so applying it twice changes nothing. glibc
/// moves on to the next nameserver when ours refuses a name outside the domain.
pub fn with_nameserver(current: &str, ip: IpAddr) -> String {
    let ours = format!("nameserver {ip}");
    let mut lines = vec![ours.as_str()];
    lines.extend(current.lines().filter(|line| {
        let mut words = line.split_whitespace();
        let names_ip = words.next() == Some("nameserver")
            && words.next().and_then(|word| word.parse::<IpAddr>().ok()) == Some(ip);
        !names_ip
    }));
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// Makes the resolver configuration at `path` name `ip` first. The file is rewritten in
/// place and never created: on a VM it may be a bind mount (Docker's, or the local CPI's
/// private copy), which a new file would not replace.
pub async fn point_resolver_at(path: &Path, ip: IpAddr) -> std::io::Result<bool> {
    let current = tokio::fs::read_to_string(path).await?;
    let wanted = with_nameserver(&current, ip);
    if wanted == current {
        return Ok(false);
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .await?;
    file.write_all(wanted.as_bytes()).await?;
    file.flush().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use serde_json::json;

    #[test]
    fn the_vms_resolver_asks_the_agent_first_and_keeps_the_rest() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let host = "# from the host\nsearch example.org\nnameserver 10.0.0.1\noptions ndots:1\n";
        let pointed = with_nameserver(host, ip);
        assert_eq!(
            pointed,
            "nameserver 10.0.0.5\n# from the host\nsearch example.org\nnameserver 10.0.0.1\noptions ndots:1\n"
        );
        assert_eq!(with_nameserver(&pointed, ip), pointed);
        let moved = with_nameserver("nameserver 10.0.0.1\nnameserver  10.0.0.5\n", ip);
        assert_eq!(moved, "nameserver 10.0.0.5\nnameserver 10.0.0.1\n");
        assert_eq!(with_nameserver("", ip), "nameserver 10.0.0.5\n");
    }

    const OTHER: &str = "agent-other";

    /// A document with the brief's keys in another order plus an unknown one.
    fn document(rows: &[Value]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "version": 7,
            "aliases": {},
            "record_keys": ["ip", "id", "instance_group", "az", "network", "deployment",
                            "domain", "agent_id", "instance_index", "healthy", "extra"],
            "record_infos": rows,
        }))
        .unwrap()
    }

    fn row(id: &str, group: &str, ip: &str, index: u64, healthy: bool) -> Value {
        json!([
            ip,
            id,
            group,
            "z1",
            "default",
            "dns-test",
            "bosh.",
            format!("agent-{id}"),
            index,
            healthy,
            "ignored"
        ])
    }

    /// greeter: g0 healthy, g1 unhealthy, g2 healthy on IPv6; worker: all unhealthy.
    fn records() -> Records {
        Records::parse(
            "test",
            &document(&[
                row("g0-uuid", "greeter", "127.0.53.10", 0, true),
                row("g1-uuid", "greeter", "127.0.53.11", 1, false),
                row("g2-uuid", "greeter", "fd00::12", 2, true),
                row("w0-uuid", "worker", "127.0.53.20", 0, false),
            ]),
        )
        .unwrap()
    }

    fn stranger() -> OwnInstance {
        OwnInstance {
            instance_id: Some("someone-else".to_string()),
            agent_id: OTHER.to_string(),
            running: true,
        }
    }

    /// The code and addresses for `name`.
    fn check(name: &str, query_type: QueryType, own: &OwnInstance) -> (Code, Vec<String>) {
        let resolution = resolve(&records(), &labels(name), query_type, own);
        let addresses = resolution.addresses.iter().map(|a| a.to_string()).collect();
        (resolution.code, addresses)
    }

    fn ok(addresses: &[&str]) -> (Code, Vec<String>) {
        (
            Code::NoError,
            addresses.iter().map(|a| a.to_string()).collect(),
        )
    }

    #[test]
    fn parsing_finds_values_by_key_and_tolerates_extras() {
        let records = records();
        assert_eq!(records.version(), 7);
        let first = &records.instances()[0];
        assert_eq!(first.id, "g0-uuid");
        assert_eq!(first.ip, "127.0.53.10".parse::<IpAddr>().unwrap());
        assert_eq!(first.domain, "bosh");
        assert_eq!(first.az.as_deref(), Some("z1"));
        assert_eq!(first.agent_id.as_deref(), Some("agent-g0-uuid"));
        // `az` null, and keys without `az` and `agent_id` at all.
        let minimal = json!({"version": 1,
            "record_keys": ["id", "instance_group", "network", "deployment", "ip", "domain",
                            "instance_index", "healthy"],
            "record_infos": [["A-B", "Web", "default", "dep", "10.0.0.1", "BOSH", 3, false]]});
        let records = Records::parse("m", &serde_json::to_vec(&minimal).unwrap()).unwrap();
        let only = &records.instances()[0];
        assert_eq!(
            (only.id.as_str(), only.instance_group.as_str()),
            ("a-b", "web")
        );
        assert_eq!((only.az.clone(), only.agent_id.clone()), (None, None));
        assert_eq!(only.domain, "bosh");
        let null_az = document(&[json!([
            "10.0.0.1", "i", "g", null, "n", "d", "bosh.", null, 0, true
        ])]);
        assert_eq!(
            Records::parse("t", &null_az).unwrap().instances()[0].az,
            None
        );
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        let error = |bytes: &[u8]| Records::parse("version 7", bytes).unwrap_err().to_string();
        assert!(
            error(b"{nope").starts_with("dns records version 7: not a records document: "),
            "{}",
            error(b"{nope")
        );
        assert!(error(b"[]").contains("not a records document"));
        let no_ip = json!({"version": 1, "record_keys": ["id"], "record_infos": []});
        assert_eq!(
            error(&serde_json::to_vec(&no_ip).unwrap()),
            "dns records version 7: record_keys does not name \"instance_group\""
        );
        let cases = [
            (
                row("i", "g", "not-an-ip", 0, true),
                "record_infos[0]: \"ip\" is \"not-an-ip\", not an IP address",
            ),
            (
                json!(["10.0.0.1", "i"]),
                "record_infos[0]: \"instance_group\" is missing (the row has 2 values)",
            ),
            (
                json!(["10.0.0.1", "i", "g", "z1", "n", "d", "bosh.", "a", -1, true]),
                "record_infos[0]: \"instance_index\" is -1, not a non-negative integer",
            ),
            (
                json!(["10.0.0.1", "i", "g", "z1", "n", "d", "bosh.", "a", 0, "yes"]),
                "record_infos[0]: \"healthy\" is \"yes\", not true or false",
            ),
            (
                json!([
                    "10.0.0.1", "i", "a.b", "z1", "n", "d", "bosh.", "a", 0, true
                ]),
                "record_infos[0]: \"instance_group\" is \"a.b\", not one DNS label",
            ),
            (
                json!(["10.0.0.1", "i", "g", 5, "n", "d", "bosh.", "a", 0, true]),
                "record_infos[0]: \"az\" is 5, not a string",
            ),
            (
                json!(["10.0.0.1", "i", "g", "z1", "n", "d", ".", "a", 0, true]),
                "record_infos[0]: \"domain\" is \".\", not a domain name",
            ),
        ];
        for (bad, expected) in cases {
            assert_eq!(
                error(&document(&[bad])),
                format!("dns records version 7: {expected}")
            );
        }
    }

    #[test]
    fn instances_by_id_and_index_whatever_their_health() {
        let own = stranger();
        let a = QueryType::A;
        assert_eq!(
            check("g1-uuid.greeter.default.dns-test.bosh.", a, &own),
            ok(&["127.0.53.11"])
        );
        assert_eq!(
            check("1.greeter.default.dns-test.bosh", a, &own),
            ok(&["127.0.53.11"])
        );
        assert_eq!(
            check("0.worker.default.dns-test.bosh", a, &own),
            ok(&["127.0.53.20"])
        );
        for missing in [
            "9.greeter.default.dns-test.bosh",
            "01.greeter.default.dns-test.bosh",
            "nobody.greeter.default.dns-test.bosh",
            "g0-uuid.worker.default.dns-test.bosh",
            "0.greeter.other-net.dns-test.bosh",
            "q-s2.greeter.default.dns-test.bosh",
            "x.0.greeter.default.dns-test.bosh",
        ] {
            assert_eq!(
                check(missing, a, &own),
                (Code::NxDomain, vec![]),
                "{missing}"
            );
        }
    }

    #[test]
    fn names_ignore_case_and_the_trailing_dot() {
        let own = stranger();
        for name in [
            "G0-UUID.Greeter.DEFAULT.dns-test.BOSH",
            "g0-uuid.greeter.default.dns-test.bosh.",
        ] {
            assert_eq!(
                check(name, QueryType::A, &own),
                ok(&["127.0.53.10"]),
                "{name}"
            );
        }
        assert_eq!(
            check("Q-S0.GREETER.default.DNS-TEST.Bosh.", QueryType::A, &own),
            ok(&["127.0.53.10"])
        );
    }

    #[test]
    fn group_queries_filter_by_health() {
        let own = stranger();
        let a = QueryType::A;
        let group = "greeter.default.dns-test.bosh";
        assert_eq!(
            check(&format!("q-s0.{group}"), a, &own),
            ok(&["127.0.53.10"])
        );
        assert_eq!(
            check(&format!("q-s3.{group}"), a, &own),
            ok(&["127.0.53.10"])
        );
        assert_eq!(
            check(&format!("q-s1.{group}"), a, &own),
            ok(&["127.0.53.11"])
        );
        assert_eq!(
            check(&format!("q-s4.{group}"), a, &own),
            ok(&["127.0.53.10", "127.0.53.11"])
        );
        assert_eq!(
            check(&format!("q-s4.{group}"), QueryType::Aaaa, &own),
            ok(&["fd00::12"])
        );
        // A known group with nothing healthy: NOERROR, no answers.
        assert_eq!(check("q-s0.worker.default.dns-test.bosh", a, &own), ok(&[]));
        assert_eq!(
            check("q-s0.nobody.default.dns-test.bosh", a, &own),
            (Code::NxDomain, vec![])
        );
    }

    #[test]
    fn address_families_and_other_types() {
        let own = stranger();
        let v6 = "2.greeter.default.dns-test.bosh";
        let v4 = "0.greeter.default.dns-test.bosh";
        assert_eq!(check(v6, QueryType::Aaaa, &own), ok(&["fd00::12"]));
        assert_eq!(check(v6, QueryType::A, &own), ok(&[]));
        assert_eq!(check(v4, QueryType::Aaaa, &own), ok(&[]));
        assert_eq!(check(v4, QueryType::Other, &own), ok(&[]));
    }

    #[test]
    fn other_names_are_nxdomain_or_refused() {
        let own = stranger();
        let a = QueryType::A;
        for ours in [
            "nothing.bosh",
            "a.b.c.d.e.f.bosh",
            "greeter.other.dns-test.bosh",
        ] {
            assert_eq!(check(ours, a, &own), (Code::NxDomain, vec![]), "{ours}");
        }
        // The names above a group's exist, without addresses.
        for above in [
            "bosh",
            "dns-test.bosh.",
            "default.dns-test.bosh",
            "greeter.default.dns-test.bosh",
        ] {
            assert_eq!(check(above, a, &own), ok(&[]), "{above}");
        }
        for theirs in ["example.com", "bosh.example.com", ".", "", "localhost"] {
            assert_eq!(check(theirs, a, &own), (Code::Refused, vec![]), "{theirs}");
        }
        // `bosh` is ours even with no records at all.
        assert_eq!(
            resolve(&Records::default(), &labels("x.bosh"), a, &own).code,
            Code::NxDomain
        );
        let empty = Records::parse("e", br#"{"version":1,"record_keys":["id","instance_group","network","deployment","ip","domain","instance_index","healthy"],"record_infos":[]}"#).unwrap();
        assert_eq!(
            resolve(&empty, &labels("q-s0.g.n.d.bosh"), a, &own).code,
            Code::NxDomain
        );
    }

    #[test]
    fn own_health_overrides_the_record() {
        let a = QueryType::A;
        let group = "q-s0.greeter.default.dns-test.bosh";
        // g1 is unhealthy in the records; it is us, by instance id, and we run.
        let us_running = OwnInstance {
            instance_id: Some("G1-UUID".to_string()),
            agent_id: OTHER.to_string(),
            running: true,
        };
        assert_eq!(
            check(group, a, &us_running),
            ok(&["127.0.53.10", "127.0.53.11"])
        );
        // g0 is healthy in the records; it is us, by agent id, and we do not run.
        let us_failing = OwnInstance {
            instance_id: None,
            agent_id: "agent-g0-uuid".to_string(),
            running: false,
        };
        assert_eq!(check(group, a, &us_failing), ok(&[]));
        assert_eq!(
            check("q-s1.greeter.default.dns-test.bosh", a, &us_failing),
            ok(&["127.0.53.10", "127.0.53.11"])
        );
        // Asked by name, we are there whatever our health.
        assert_eq!(
            check("0.greeter.default.dns-test.bosh", a, &us_failing),
            ok(&["127.0.53.10"])
        );
        // An empty id is no one's.
        let nobody = OwnInstance {
            instance_id: Some(String::new()),
            agent_id: String::new(),
            running: false,
        };
        assert_eq!(check(group, a, &nobody), ok(&["127.0.53.10"]));
    }

    fn query(name: &str, record_type: RecordType) -> Message {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        message
    }

    fn answer(message: &Message, transport: Transport, records: &Records) -> Message {
        let bytes = respond(&message.to_vec().unwrap(), transport, records, &stranger());
        Message::from_vec(&bytes.expect("an answer")).unwrap()
    }

    #[test]
    fn messages_copy_the_question_and_set_the_flags() {
        let question = query("Q-S0.greeter.default.dns-test.bosh.", RecordType::A);
        let response = answer(&question, Transport::Udp, &records());
        assert_eq!(response.metadata.id, 0x1234);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        assert!(response.metadata.authoritative);
        assert!(response.metadata.recursion_desired);
        assert!(!response.metadata.recursion_available);
        assert!(!response.metadata.truncation);
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert_eq!(response.queries, question.queries);
        assert_eq!(response.answers.len(), 1);
        let record = &response.answers[0];
        assert_eq!(record.ttl, 0);
        assert_eq!(record.name, question.queries[0].name().clone());
        assert_eq!(record.data, RData::A(A("127.0.53.10".parse().unwrap())));

        let aaaa = answer(
            &query("q-s4.greeter.default.dns-test.bosh.", RecordType::AAAA),
            Transport::Udp,
            &records(),
        );
        assert_eq!(
            aaaa.answers[0].data,
            RData::AAAA(AAAA("fd00::12".parse().unwrap()))
        );

        let missing = answer(
            &query("9.greeter.default.dns-test.bosh.", RecordType::A),
            Transport::Udp,
            &records(),
        );
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        assert!(missing.metadata.authoritative);

        let refused = answer(
            &query("example.com.", RecordType::A),
            Transport::Udp,
            &records(),
        );
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        assert!(!refused.metadata.authoritative);
        assert!(refused.answers.is_empty());
    }

    #[test]
    fn large_udp_answers_are_truncated_for_tcp() {
        let rows: Vec<Value> = (0..60)
            .map(|i| {
                row(
                    &format!("i{i}"),
                    "big",
                    &format!("10.0.{}.{}", i / 200, i % 200),
                    i,
                    true,
                )
            })
            .collect();
        let records = Records::parse("big", &document(&rows)).unwrap();
        let question = query("q-s0.big.default.dns-test.bosh.", RecordType::A);
        let udp = answer(&question, Transport::Udp, &records);
        assert!(udp.metadata.truncation);
        assert!(udp.answers.is_empty());
        assert_eq!(udp.queries, question.queries);
        let tcp = answer(&question, Transport::Tcp, &records);
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 60);
        // A client advertising a larger buffer gets it all over UDP.
        let mut with_edns = question.clone();
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        with_edns.set_edns(edns);
        let udp = answer(&with_edns, Transport::Udp, &records);
        assert!(!udp.metadata.truncation);
        assert_eq!(udp.answers.len(), 60);
        assert!(udp.edns.is_some());
    }

    #[test]
    fn odd_messages() {
        let records = records();
        let own = stranger();
        // Too short, and responses, are not answered.
        assert_eq!(respond(b"\x12\x34", Transport::Udp, &records, &own), None);
        let mut reply = query("0.greeter.default.dns-test.bosh.", RecordType::A);
        reply.metadata.message_type = MessageType::Response;
        assert_eq!(
            respond(&reply.to_vec().unwrap(), Transport::Udp, &records, &own),
            None
        );
        // A header and garbage: FORMERR with the id.
        let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        garbage.extend_from_slice(&[0xff; 5]);
        let bytes = respond(&garbage, Transport::Udp, &records, &own).unwrap();
        let response = Message::from_vec(&bytes).unwrap();
        assert_eq!(response.metadata.id, 0xabcd);
        assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
        // No question, or two: FORMERR; another opcode: NOTIMP.
        let none = Message::new(7, MessageType::Query, OpCode::Query);
        assert_eq!(
            answer(&none, Transport::Udp, &records)
                .metadata
                .response_code,
            ResponseCode::FormErr
        );
        let mut two = query("0.greeter.default.dns-test.bosh.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("bosh.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            answer(&two, Transport::Udp, &records)
                .metadata
                .response_code,
            ResponseCode::FormErr
        );
        let mut status = query("bosh.", RecordType::A);
        status.metadata.op_code = OpCode::Status;
        assert_eq!(
            answer(&status, Transport::Udp, &records)
                .metadata
                .response_code,
            ResponseCode::NotImp
        );
        // Another class is not ours.
        let mut chaos = query("0.greeter.default.dns-test.bosh.", RecordType::A);
        chaos.queries[0].set_query_class(DNSClass::CH);
        assert_eq!(
            answer(&chaos, Transport::Udp, &records)
                .metadata
                .response_code,
            ResponseCode::Refused
        );
    }
}
