//! A small stub-resolver client: one question to one recursive resolver, over UDP and again
//! over TCP when the answer was truncated. For `fleetgate dns check` and tests; the listener
//! does not use it.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

use crate::{Error, Result};

/// Bound on one query (each transport).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Ask `server` (a recursive resolver: RD is set) for `rtype` records of `name`. The answer is
/// returned whatever its rcode; only transport failures and unreadable answers are errors.
pub async fn query(server: SocketAddr, name: &str, rtype: RecordType) -> Result<Message> {
    let mut qname = Name::from_ascii(name)
        .map_err(|e| Error::Invalid(format!("invalid DNS name {name:?}: {e}")))?;
    qname.set_fqdn(true);
    let mut request = Message::new();
    let id = fastrand::u16(..);
    let mut edns = Edns::new();
    edns.set_max_payload(crate::wire::UDP_EDNS_LIMIT);
    request
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(qname, rtype))
        .set_edns(edns);
    let bytes = request
        .to_vec()
        .map_err(|e| Error::Invalid(format!("cannot encode a query for {name}: {e}")))?;
    let io = |what: &str| {
        let what = format!("{what} ({server})");
        move |source| Error::Io { what, source }
    };
    let timed_out = |what: &str| Error::Io {
        what: format!("{what} ({server})"),
        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"),
    };

    let bind_addr: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind_addr)
        .await
        .map_err(io("bind a UDP socket"))?;
    socket
        .connect(server)
        .await
        .map_err(io("reach the resolver"))?;
    socket.send(&bytes).await.map_err(io("send a query"))?;
    let mut buf = vec![0u8; 65535];
    let answer = tokio::time::timeout(QUERY_TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            // Stray or spoofed datagrams with another id are skipped.
            if let Ok(answer) = Message::from_vec(&buf[..n])
                && answer.id() == id
            {
                return Ok::<_, std::io::Error>(answer);
            }
        }
    })
    .await
    .map_err(|_| timed_out("wait for a DNS answer"))?
    .map_err(io("receive a DNS answer"))?;
    if !answer.truncated() {
        return Ok(answer);
    }

    let len = u16::try_from(bytes.len())
        .map_err(|_| Error::Invalid("query too long for TCP".to_string()))?;
    tokio::time::timeout(
        QUERY_TIMEOUT,
        crate::wire::tcp_exchange(server, len, &bytes),
    )
    .await
    .map_err(|_| timed_out("wait for a DNS answer over TCP"))?
    .map_err(io("query over TCP"))
    .and_then(|frame| {
        Message::from_vec(&frame)
            .map_err(|e| Error::Invalid(format!("unreadable DNS answer from {server}: {e}")))
    })
}
