//! Loopback addresses and ports for servers started by tests.
//!
//! nextest runs every test in its own process, so two tests may ask for a port at the same moment.
//! Giving each call its own `127.0.0.x` makes a collision need both the same address and the same
//! port, which is rare enough that tests never retry for it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_IP: AtomicU32 = AtomicU32::new(0);

/// A free TCP port on `127.0.0.1` (bound to `:0`, then released).
///
/// Another process may take it before the caller binds it; prefer [`free_addr`] on a
/// [`loopback_ip`] where the server can bind any address.
pub fn free_port() -> u16 {
    free_addr(Ipv4Addr::LOCALHOST).port()
}

/// A loopback address `127.0.0.x` with `x` in `2..=254`, different on each call within a process
/// (for 253 calls) and spread by process id across processes.
///
/// Linux routes all of `127.0.0.0/8` to `lo`, so servers can bind these without setup.
pub fn loopback_ip() -> Ipv4Addr {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    // 97 is coprime with 253, so consecutive pids (nextest starts tests one after another)
    // land far apart.
    let x = std::process::id().wrapping_mul(97).wrapping_add(n) % 253;
    // x < 253, so 2 + x <= 254 fits in u8.
    Ipv4Addr::new(127, 0, 0, 2 + x as u8)
}

/// A free TCP address on `ip`: binds `ip:0` and returns the address the kernel chose.
///
/// # Panics
/// If `ip` cannot be bound at all (e.g. not a local address): a broken test environment.
#[allow(clippy::expect_used)]
pub fn free_addr(ip: Ipv4Addr) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind a loopback address to port 0");
    listener
        .local_addr()
        .expect("local_addr of a bound listener")
}

/// A port on `ip` that is free for both TCP and UDP (for DNS servers, which bind both).
pub(crate) fn free_tcp_udp_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    for _ in 0..64 {
        let tcp = TcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free for both TCP and UDP on {ip} after 64 tries")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_ips_stay_in_range_and_differ() {
        let ips: Vec<_> = (0..253).map(|_| loopback_ip()).collect();
        for ip in &ips {
            let [a, b, c, d] = ip.octets();
            assert_eq!((a, b, c), (127, 0, 0));
            assert!((2..=254).contains(&d), "{ip}");
        }
        let distinct: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(distinct.len(), 253);
    }

    #[test]
    fn free_addr_binds_the_requested_ip() {
        let ip = loopback_ip();
        let addr = free_addr(ip);
        assert_eq!(addr.ip(), ip);
        assert_ne!(addr.port(), 0);
        TcpListener::bind(addr).unwrap();
    }
}
