//! Asking an agent's DNS server, as a VM's resolver asks: one A question over UDP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// The A records the DNS server at `server` answers for `name`, sorted; an error names the
/// response code when it is not NOERROR, or says that no answer came (three tries, 2 s
/// each).
pub fn resolve(server: SocketAddr, name: &str) -> Result<Vec<IpAddr>, String> {
    // Bound to any address, so the kernel picks the source the route to `server` needs (a
    // loopback source cannot reach a container's address).
    let any: IpAddr = match server {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((any, 0)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let name = Name::from_ascii(name).map_err(|e| format!("{name}: {e}"))?;
    let mut buffer = vec![0u8; 4096];
    for id in 0x4400..0x4403u16 {
        let mut question = Message::new(id, MessageType::Query, OpCode::Query);
        question.metadata.recursion_desired = true;
        question.add_query(Query::query(name.clone(), RecordType::A));
        let bytes = question.to_vec().map_err(|e| e.to_string())?;
        socket.send_to(&bytes, server).map_err(|e| e.to_string())?;
        let Ok(length) = socket.recv(&mut buffer) else {
            continue;
        };
        let answer = Message::from_vec(&buffer[..length]).map_err(|e| e.to_string())?;
        if answer.metadata.id != id {
            continue;
        }
        if answer.metadata.response_code != ResponseCode::NoError {
            return Err(format!("{name}: {}", answer.metadata.response_code));
        }
        let mut ips: Vec<IpAddr> = answer
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect();
        ips.sort();
        return Ok(ips);
    }
    Err(format!("no answer from {server} for {name}"))
}
