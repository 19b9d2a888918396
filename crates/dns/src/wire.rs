//! The DNS wire format, through hickory-proto: a packet in, a [`Request`] or the error answer the
//! packet deserves; a [`Reply`] out, cut to the transport's size limit. Nothing here knows the
//! zone or the store.

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// Largest UDP answer to a query without EDNS (RFC 1035).
pub const UDP_PLAIN_LIMIT: usize = 512;
/// Largest UDP answer this server sends to EDNS queries, whatever they offer (DNS flag day 2020:
/// no fragmentation).
pub const UDP_EDNS_LIMIT: u16 = 1232;
/// Largest answer over TCP (the length prefix's range).
pub const TCP_LIMIT: usize = u16::MAX as usize;

/// One DNS message over a new TCP connection to `server` and the one message it answers, each
/// framed by its two-byte length (RFC 1035 4.2.2). `bytes` must fit the prefix (the callers say
/// what theirs is when it does not). No timeout here: the callers set their own.
pub(crate) async fn tcp_exchange(
    server: std::net::SocketAddr,
    len: u16,
    bytes: &[u8],
) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server).await?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await?;
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

/// A well-formed standard query for one name, class IN.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: u16,
    pub recursion_desired: bool,
    pub query: Query,
    /// The EDNS payload size the client offered; `None` without EDNS.
    pub edns_payload: Option<u16>,
}

impl Request {
    /// How large a UDP answer to this request may be.
    pub fn udp_limit(&self) -> usize {
        match self.edns_payload {
            None => UDP_PLAIN_LIMIT,
            Some(offered) => usize::from(offered.clamp(UDP_PLAIN_LIMIT as u16, UDP_EDNS_LIMIT)),
        }
    }
}

/// What a packet asks of us.
#[derive(Debug)]
pub enum Decoded {
    /// A query to answer from the zone.
    Query(Request),
    /// A packet that gets an error answer, already encoded (FORMERR, NOTIMP, REFUSED, BADVERS).
    Error { rcode: ResponseCode, bytes: Vec<u8> },
    /// Not worth an answer: shorter than a header, or itself a response (answering responses
    /// invites loops).
    Ignore,
}

/// Classify one packet.
pub fn decode(packet: &[u8]) -> Decoded {
    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
        return Decoded::Ignore;
    };
    if header.message_type() == MessageType::Response {
        return Decoded::Ignore;
    }
    let error = |rcode: ResponseCode, query: Option<&Query>| Decoded::Error {
        rcode,
        bytes: error_answer(&header, rcode, query),
    };
    if header.op_code() != OpCode::Query {
        return error(ResponseCode::NotImp, None);
    }
    let message = match Message::from_vec(packet) {
        Ok(message) => message,
        Err(_) => return error(ResponseCode::FormErr, None),
    };
    let [query] = message.queries() else {
        return error(ResponseCode::FormErr, None);
    };
    if let Some(edns) = message.extensions()
        && edns.version() > 0
    {
        return error(ResponseCode::BADVERS, Some(query));
    }
    if query.query_class() != DNSClass::IN {
        return error(ResponseCode::Refused, Some(query));
    }
    Decoded::Query(Request {
        id: header.id(),
        recursion_desired: header.recursion_desired(),
        query: query.clone(),
        edns_payload: message.extensions().as_ref().map(Edns::max_payload),
    })
}

/// The answer to one request, as the zone decided it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub rcode: ResponseCode,
    /// Authoritative answer: every answer from inside the zone.
    pub authoritative: bool,
    pub answers: Vec<Record>,
    /// The SOA of a negative answer, or the zone's NS records.
    pub authority: Vec<Record>,
}

/// Encode `reply` to `request`, within `limit` bytes: a reply that does not fit is sent
/// without records and with the TC bit, so the client asks again over TCP.
pub fn encode(request: &Request, reply: &Reply, limit: usize) -> Vec<u8> {
    let mut message = response_to(request, reply.rcode);
    message
        .set_authoritative(reply.authoritative)
        .add_answers(reply.answers.iter().cloned())
        .add_name_servers(reply.authority.iter().cloned());
    match message.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        Ok(_) => {
            let mut cut = response_to(request, reply.rcode);
            cut.set_authoritative(reply.authoritative)
                .set_truncated(true);
            cut.to_vec().unwrap_or_default()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a DNS answer");
            response_to(request, ResponseCode::ServFail)
                .to_vec()
                .unwrap_or_default()
        }
    }
}

/// A response header and question for `request`, EDNS answered with EDNS.
fn response_to(request: &Request, rcode: ResponseCode) -> Message {
    let mut message = Message::error_msg(request.id, OpCode::Query, rcode);
    message
        .set_recursion_desired(request.recursion_desired)
        .add_query(request.query.clone());
    if request.edns_payload.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_EDNS_LIMIT);
        message.set_edns(edns);
    }
    message
}

/// An error answer with the request's id, opcode and (when it was readable) question.
fn error_answer(header: &Header, rcode: ResponseCode, query: Option<&Query>) -> Vec<u8> {
    let mut message = Message::error_msg(header.id(), header.op_code(), rcode);
    message.set_recursion_desired(header.recursion_desired());
    if let Some(query) = query {
        message.add_query(query.clone());
    }
    if rcode.high() != 0 {
        // Extended rcodes (BADVERS) live partly in the OPT record.
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_EDNS_LIMIT);
        message.set_edns(edns);
    }
    message.to_vec().unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RecordType};

    fn query_bytes(edit: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .add_query(Query::query(
                Name::from_ascii("a.example.").unwrap(),
                RecordType::TXT,
            ));
        edit(&mut m);
        m.to_vec().unwrap()
    }

    fn rcode_of(bytes: &[u8]) -> ResponseCode {
        Message::from_vec(bytes).unwrap().response_code()
    }

    #[test]
    fn short_packets_and_responses_are_ignored() {
        assert!(matches!(decode(&[]), Decoded::Ignore));
        assert!(matches!(decode(&[0; 11]), Decoded::Ignore));
        let response = query_bytes(|m| {
            m.set_message_type(MessageType::Response);
        });
        assert!(matches!(decode(&response), Decoded::Ignore));
    }

    #[test]
    fn garbage_after_a_header_is_formerr_with_the_id() {
        let mut packet = query_bytes(|_| {});
        packet.truncate(15);
        let Decoded::Error { rcode, bytes } = decode(&packet) else {
            panic!("not an error answer")
        };
        assert_eq!(rcode, ResponseCode::FormErr);
        let answer = Message::from_vec(&bytes).unwrap();
        assert_eq!(answer.id(), 7);
        assert_eq!(answer.message_type(), MessageType::Response);
    }

    #[test]
    fn two_questions_are_formerr_other_opcodes_notimp_other_classes_refused() {
        let two = query_bytes(|m| {
            m.add_query(Query::query(
                Name::from_ascii("b.example.").unwrap(),
                RecordType::TXT,
            ));
        });
        assert!(matches!(
            decode(&two),
            Decoded::Error {
                rcode: ResponseCode::FormErr,
                ..
            }
        ));
        let update = query_bytes(|m| {
            m.set_op_code(OpCode::Update);
        });
        let Decoded::Error { rcode, bytes } = decode(&update) else {
            panic!("not an error answer")
        };
        assert_eq!(rcode, ResponseCode::NotImp);
        assert_eq!(rcode_of(&bytes), ResponseCode::NotImp);
        let chaos = query_bytes(|m| {
            m.queries_mut()[0].set_query_class(DNSClass::CH);
        });
        assert!(matches!(
            decode(&chaos),
            Decoded::Error {
                rcode: ResponseCode::Refused,
                ..
            }
        ));
    }

    #[test]
    fn edns_version_one_is_badvers() {
        let packet = query_bytes(|m| {
            let mut edns = Edns::new();
            edns.set_version(1);
            m.set_edns(edns);
        });
        let Decoded::Error { rcode, bytes } = decode(&packet) else {
            panic!("not an error answer")
        };
        assert_eq!(rcode, ResponseCode::BADVERS);
        // 16 is BADVERS in a response to an OPT and BADSIG to a TSIG; hickory reads it as BADSIG.
        assert_eq!(u16::from(rcode_of(&bytes)), 16);
    }

    proptest::proptest! {
        /// Any bytes: no panic, and an error answer is always a readable response.
        #[test]
        fn any_packet_is_classified_without_panic(packet in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            check_classified(&packet);
        }

        /// A valid query with bytes flipped (the likelier shape of a broken packet).
        #[test]
        fn corrupted_queries_are_classified_without_panic(
            flips in proptest::collection::vec((0usize..64, proptest::num::u8::ANY), 1..6),
            cut in 0usize..12,
        ) {
            let mut packet = query_bytes(|m| {
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                m.set_edns(edns);
            });
            for (at, byte) in flips {
                if let Some(b) = packet.get_mut(at) {
                    *b ^= byte;
                }
            }
            packet.truncate(packet.len().saturating_sub(cut));
            check_classified(&packet);
        }
    }

    fn check_classified(packet: &[u8]) {
        match decode(packet) {
            Decoded::Ignore => {}
            Decoded::Error { bytes, .. } => {
                let answer = Message::from_vec(&bytes).expect("error answers are readable");
                assert_eq!(answer.message_type(), MessageType::Response);
            }
            Decoded::Query(request) => {
                let reply = Reply {
                    rcode: ResponseCode::NoError,
                    authoritative: true,
                    answers: Vec::new(),
                    authority: Vec::new(),
                };
                let bytes = encode(&request, &reply, request.udp_limit());
                assert!(bytes.len() <= request.udp_limit());
                Message::from_vec(&bytes).expect("answers are readable");
            }
        }
    }

    #[test]
    fn udp_limit_follows_edns() {
        let Decoded::Query(plain) = decode(&query_bytes(|_| {})) else {
            panic!()
        };
        assert_eq!(plain.udp_limit(), 512);
        let Decoded::Query(big) = decode(&query_bytes(|m| {
            let mut edns = Edns::new();
            edns.set_max_payload(4096);
            m.set_edns(edns);
        })) else {
            panic!()
        };
        assert_eq!(big.udp_limit(), 1232);
    }
}
