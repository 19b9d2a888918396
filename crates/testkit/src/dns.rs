//! A minimal DNS client (one A query over UDP), enough to check challtestsrv's answers.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tokio::net::UdpSocket;

/// Upper bound for one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// Asks `server` for the A records of `name`; an empty list is a valid (NODATA) answer.
pub async fn query_a(server: SocketAddr, name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    static NEXT_ID: AtomicU16 = AtomicU16::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16);
    let query = encode_query(id, name)?;
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    socket.connect(server).await?;
    socket.send(&query).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(QUERY_TIMEOUT, socket.recv(&mut buf))
        .await
        .with_context(|| format!("no DNS answer from {server} within {QUERY_TIMEOUT:?}"))??;
    decode_a_answers(id, &buf[..n])
}

fn encode_query(id: u16, name: &str) -> anyhow::Result<Vec<u8>> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QDCOUNT 1
    for label in name.trim_end_matches('.').split('.') {
        ensure!(
            !label.is_empty() && label.len() < 64,
            "bad DNS name {name:?}"
        );
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&TYPE_A.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

fn decode_a_answers(id: u16, msg: &[u8]) -> anyhow::Result<Vec<Ipv4Addr>> {
    let u16_at = |i: usize| -> anyhow::Result<u16> {
        let b = msg.get(i..i + 2).context("truncated DNS message")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    };
    ensure!(u16_at(0)? == id, "DNS answer for another query");
    let rcode = u16_at(2)? & 0x000f;
    ensure!(rcode == 0, "DNS rcode {rcode}");
    let (qdcount, ancount) = (u16_at(4)?, u16_at(6)?);
    let mut pos = 12;
    for _ in 0..qdcount {
        pos = skip_name(msg, pos)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..ancount {
        pos = skip_name(msg, pos)?;
        let (rtype, rdlen) = (u16_at(pos)?, usize::from(u16_at(pos + 8)?));
        let rdata = msg
            .get(pos + 10..pos + 10 + rdlen)
            .context("truncated DNS record")?;
        if rtype == TYPE_A && rdlen == 4 {
            addrs.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        pos += 10 + rdlen;
    }
    Ok(addrs)
}

/// The position after the (possibly compressed) name starting at `pos`.
fn skip_name(msg: &[u8], mut pos: usize) -> anyhow::Result<usize> {
    loop {
        let len = *msg.get(pos).context("truncated DNS name")?;
        match len {
            0 => return Ok(pos + 1),
            l if l & 0xc0 == 0xc0 => return Ok(pos + 2),
            l if l < 64 => pos += 1 + usize::from(l),
            _ => bail!("bad DNS label length {len}"),
        }
    }
}
