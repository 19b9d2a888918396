//! The DNS listener over real sockets: raw packets (good, malformed, outside the zone, oversized
//! TCP frames) and `dig` (bind9-dnsutils), a client nobody here wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use dns::{DnsServer, Records, Zone};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const ZONE: &str = "acme.test";
const TIMEOUT: Duration = Duration::from_secs(5);

struct Running {
    addr: SocketAddr,
    records: Records,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<dns::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store::DirStore::open(dir.path()).unwrap());
    let records = Records::new(store);
    let zone = Zone::new(ZONE, &["ns1.ops.test".into(), "ns2.ops.test".into()]).unwrap();
    let server = DnsServer::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        zone,
        records.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        records,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(fastrand_id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

fn fastrand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(100);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn udp_raw(addr: SocketAddr, packet: &[u8]) -> anyhow::Result<Vec<u8>> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    socket.connect(addr).await?;
    socket.send(packet).await?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf))
        .await
        .context("no UDP answer")??;
    buf.truncate(n);
    Ok(buf)
}

async fn udp(addr: SocketAddr, m: &Message) -> anyhow::Result<Message> {
    let answer = Message::from_vec(&udp_raw(addr, &m.to_vec()?).await?)?;
    ensure!(answer.id() == m.id(), "answer to another id");
    Ok(answer)
}

async fn tcp(addr: SocketAddr, m: &Message) -> anyhow::Result<Message> {
    let mut stream = TcpStream::connect(addr).await?;
    let bytes = m.to_vec()?;
    stream
        .write_all(&u16::try_from(bytes.len())?.to_be_bytes())
        .await?;
    stream.write_all(&bytes).await?;
    let mut len = [0u8; 2];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut len)).await??;
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut frame)).await??;
    Ok(Message::from_vec(&frame)?)
}

fn txt_values(m: &Message) -> Vec<String> {
    let mut values: Vec<String> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::TXT(txt) => Some(txt.to_string()),
            _ => None,
        })
        .collect();
    values.sort();
    values
}

#[tokio::test]
async fn answers_txt_soa_ns_and_negatives() {
    let s = start().await;
    let d = s.records.delegate("shop.test").await.unwrap();
    let target = d.target(ZONE);
    s.records.add_txt(&target, "value-one").await.unwrap();
    s.records.add_txt(&target, "value-two").await.unwrap();

    for answer in [
        udp(s.addr, &query(&target, RecordType::TXT)).await.unwrap(),
        tcp(s.addr, &query(&target, RecordType::TXT)).await.unwrap(),
    ] {
        assert_eq!(answer.response_code(), ResponseCode::NoError);
        assert!(answer.authoritative());
        assert_eq!(txt_values(&answer), ["value-one", "value-two"]);
        assert!(
            answer
                .answers()
                .iter()
                .all(|r| r.ttl() == dns::zone::TXT_TTL)
        );
    }
    // Case does not matter in names.
    let upper = udp(s.addr, &query(&target.to_uppercase(), RecordType::TXT))
        .await
        .unwrap();
    assert_eq!(txt_values(&upper).len(), 2);

    let soa = udp(s.addr, &query("acme.test.", RecordType::SOA))
        .await
        .unwrap();
    assert_eq!(soa.answers().len(), 1);
    assert_eq!(soa.answers()[0].record_type(), RecordType::SOA);
    let ns = udp(s.addr, &query("acme.test.", RecordType::NS))
        .await
        .unwrap();
    let mut names: Vec<String> = ns.answers().iter().map(|r| r.data().to_string()).collect();
    names.sort();
    assert_eq!(names, ["ns1.ops.test.", "ns2.ops.test."]);

    // NODATA: the name exists (TXT values), not with this type.
    let nodata = udp(s.addr, &query(&target, RecordType::A)).await.unwrap();
    assert_eq!(nodata.response_code(), ResponseCode::NoError);
    assert!(nodata.answers().is_empty());
    assert_eq!(nodata.name_servers()[0].record_type(), RecordType::SOA);
    // A delegation between orders: NODATA too, so resolvers do not cache its absence.
    s.records.remove_txt(&target, "value-one").await.unwrap();
    s.records.remove_txt(&target, "value-two").await.unwrap();
    let between = udp(s.addr, &query(&target, RecordType::TXT)).await.unwrap();
    assert_eq!(between.response_code(), ResponseCode::NoError);
    assert!(between.answers().is_empty());
    // NXDOMAIN inside the zone, with the SOA.
    let missing = udp(s.addr, &query("nobody.acme.test.", RecordType::TXT))
        .await
        .unwrap();
    assert_eq!(missing.response_code(), ResponseCode::NXDomain);
    assert!(missing.authoritative());
    assert_eq!(missing.name_servers()[0].record_type(), RecordType::SOA);
    // REFUSED outside it, also for the zone's parent and look-alike names.
    for outside in ["example.com.", "test.", "xacme.test.", "acme.test.evil."] {
        let refused = udp(s.addr, &query(outside, RecordType::TXT)).await.unwrap();
        assert_eq!(refused.response_code(), ResponseCode::Refused, "{outside}");
        assert!(refused.answers().is_empty());
    }
}

#[tokio::test]
async fn malformed_packets_get_formerr_or_nothing_and_the_server_carries_on() {
    let s = start().await;
    // A header, then a question cut in the middle: FORMERR with the query's id.
    let mut cut = query("a.acme.test.", RecordType::TXT).to_vec().unwrap();
    cut[0] = 0x12;
    cut[1] = 0x34;
    cut.truncate(17);
    let answer = Message::from_vec(&udp_raw(s.addr, &cut).await.unwrap()).unwrap();
    assert_eq!(answer.id(), 0x1234);
    assert_eq!(answer.response_code(), ResponseCode::FormErr);
    // A label pointing at itself (compression loop).
    let mut looped = query("a.acme.test.", RecordType::TXT).to_vec().unwrap();
    looped.truncate(12);
    looped.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1]);
    let answer = Message::from_vec(&udp_raw(s.addr, &looped).await.unwrap()).unwrap();
    assert_eq!(answer.response_code(), ResponseCode::FormErr);
    // Shorter than a header, and random bytes: no answer at all (and no crash).
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    socket.send_to(&[1, 2, 3], s.addr).await.unwrap();
    socket.send_to(&[0xff; 300], s.addr).await.unwrap();
    // Still serving.
    let ok = udp(s.addr, &query("acme.test.", RecordType::SOA))
        .await
        .unwrap();
    assert_eq!(ok.response_code(), ResponseCode::NoError);
    // The same cut query over TCP: FORMERR in a frame.
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(&[0, 17]).await.unwrap();
    stream.write_all(&cut).await.unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut frame).await.unwrap();
    assert_eq!(
        Message::from_vec(&frame).unwrap().response_code(),
        ResponseCode::FormErr
    );
}

#[tokio::test]
async fn oversized_tcp_frames_close_the_connection() {
    let s = start().await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(&[0xff, 0xff]).await.unwrap();
    // The server closes without reading 64 KiB or answering.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
        .await
        .expect("the server closed the connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // A zero-length frame too.
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(&[0, 0]).await.unwrap();
    let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
        .await
        .expect("the server closed the connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Several queries on one connection work.
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    for _ in 0..3 {
        let bytes = query("acme.test.", RecordType::NS).to_vec().unwrap();
        stream
            .write_all(&u16::try_from(bytes.len()).unwrap().to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&bytes).await.unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.unwrap();
        let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut frame).await.unwrap();
        assert_eq!(Message::from_vec(&frame).unwrap().answers().len(), 2);
    }
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let s = start().await;
    let name = "big.acme.test";
    for i in 0..12 {
        s.records
            .add_txt(name, &format!("{i:02}{}", "x".repeat(150)))
            .await
            .unwrap();
    }
    let plain = udp(s.addr, &query(name, RecordType::TXT)).await.unwrap();
    assert!(plain.truncated());
    assert!(plain.answers().is_empty());
    let mut with_edns = query(name, RecordType::TXT);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    with_edns.set_edns(edns);
    let edns_answer = udp(s.addr, &with_edns).await.unwrap();
    assert!(edns_answer.truncated(), "12 x 152 bytes exceed 1232");
    let whole = tcp(s.addr, &query(name, RecordType::TXT)).await.unwrap();
    assert!(!whole.truncated());
    assert_eq!(whole.answers().len(), 12);
}

#[tokio::test]
async fn shutdown_stops_both_listeners() {
    let mut s = start().await;
    s.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(TIMEOUT, &mut s.task)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(s.addr).await.is_err());
}

/// `dig` output for a query, over UDP or TCP.
async fn dig(addr: SocketAddr, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args([
            "-p",
            &addr.port().to_string(),
            "+norec",
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .await
        .context("run dig (Debian package bind9-dnsutils)")?;
    ensure!(out.status.success(), "dig failed: {out:?}");
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn dig_sees_the_zone() {
    let s = start().await;
    let d = s.records.delegate("shop.test").await.unwrap();
    let target = d.target(ZONE);
    s.records.add_txt(&target, "abc").await.unwrap();
    s.records.add_txt(&target, "def").await.unwrap();
    for transport in ["+notcp", "+tcp"] {
        let short = dig(s.addr, &[transport, "+short", "TXT", &target])
            .await
            .unwrap();
        let mut lines: Vec<&str> = short.lines().collect();
        lines.sort();
        assert_eq!(lines, ["\"abc\"", "\"def\""], "{transport}");
        let full = dig(s.addr, &[transport, "TXT", &target]).await.unwrap();
        assert!(full.contains("status: NOERROR"), "{full}");
        assert!(full.contains("flags: qr aa"), "{full}");
    }
    let nx = dig(s.addr, &["TXT", "nope.acme.test"]).await.unwrap();
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    let refused = dig(s.addr, &["TXT", "shop.test"]).await.unwrap();
    assert!(refused.contains("status: REFUSED"), "{refused}");
    let soa = dig(s.addr, &["+short", "SOA", "acme.test"]).await.unwrap();
    assert!(
        soa.starts_with("ns1.ops.test. hostmaster.acme.test. 1 "),
        "{soa}"
    );
}
