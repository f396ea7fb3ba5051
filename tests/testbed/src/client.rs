//! Clients that run inside a host's namespace.

use crate::Host;
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

const REQUEST: &[u8] = b"hello\n";

/// A server's answer. `local` and `peer` come from the client's socket, so
/// `peer` is the address that actually answered (for UDP, the reply's source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub body: String,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl Reply {
    /// Role of the host whose server answered (first word of the body).
    pub fn server(&self) -> &str {
        self.body.split_whitespace().next().unwrap_or_default()
    }

    /// The client address as the server saw it (second word of the body).
    pub fn seen_client(&self) -> Option<SocketAddr> {
        self.body.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Host {
    /// One TCP connection: connect, send a line, read the reply to EOF.
    pub fn tcp_request(&self, dest: SocketAddr, timeout: Duration) -> Result<Reply> {
        self.run(|| tcp_once(dest, timeout))
            .with_context(|| format!("TCP request from {} to {dest}", self.role()))
    }

    /// `n` sequential connections, each from a new source port, all from one
    /// thread that enters the namespace once.
    pub fn tcp_requests(
        &self,
        dest: SocketAddr,
        n: usize,
        timeout: Duration,
    ) -> Vec<Result<Reply>> {
        self.run(|| {
            (0..n)
                .map(|i| {
                    tcp_once(dest, timeout)
                        .with_context(|| format!("TCP request #{i} from {} to {dest}", self.role()))
                })
                .collect()
        })
    }

    /// One UDP request/response from an unconnected socket, so a reply from
    /// an unexpected source is still received and shows up in `peer`.
    pub fn udp_request(&self, dest: SocketAddr, timeout: Duration) -> Result<Reply> {
        self.run(|| udp_once(dest, timeout))
            .with_context(|| format!("UDP request from {} to {dest}", self.role()))
    }

    /// `n` sequential UDP requests, each from a new socket (a new flow).
    pub fn udp_requests(
        &self,
        dest: SocketAddr,
        n: usize,
        timeout: Duration,
    ) -> Vec<Result<Reply>> {
        self.run(|| {
            (0..n)
                .map(|i| {
                    udp_once(dest, timeout)
                        .with_context(|| format!("UDP request #{i} from {} to {dest}", self.role()))
                })
                .collect()
        })
    }
}

/// Polls until `addr` accepts TCP connections from `host`. Each successful
/// probe counts as a connection on the server.
pub fn wait_for_tcp_port(host: &Host, addr: SocketAddr, timeout: Duration) -> Result<()> {
    host.run(|| {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left.clamp(Duration::from_millis(1), Duration::from_millis(200));
            match TcpStream::connect_timeout(&addr, attempt) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| {
                        format!(
                            "{addr} not reachable from {} within {timeout:?}",
                            host.role()
                        )
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

/// One TCP request from the calling thread's own namespace (inside [`Host::run`]), for tests
/// that must control the thread itself (its CPU, say).
pub fn tcp_once(dest: SocketAddr, timeout: Duration) -> Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&dest, timeout).context("connect")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;
    stream.write_all(REQUEST).context("send request")?;
    let mut body = String::new();
    stream.read_to_string(&mut body).context("read reply")?;
    if body.is_empty() {
        bail!("connection closed without a reply");
    }
    Ok(Reply { body, local, peer })
}

fn udp_once(dest: SocketAddr, timeout: Duration) -> Result<Reply> {
    // Bound to the route's source address rather than the wildcard so that
    // `local` reports the address the server will see.
    let socket = UdpSocket::bind((route_source(dest)?, 0)).context("bind")?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(REQUEST, dest).context("send request")?;
    let mut buf = [0u8; 2048];
    let (n, peer) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("no reply within {timeout:?}"))?;
    Ok(Reply {
        body: String::from_utf8_lossy(&buf[..n]).into_owned(),
        local: socket.local_addr()?,
        peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
    })
}

/// The source address the kernel would pick for `dest`: connecting a UDP
/// socket does the route lookup without sending anything.
fn route_source(dest: SocketAddr) -> Result<IpAddr> {
    let any: IpAddr = match dest {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let probe = UdpSocket::bind((any, 0))?;
    probe
        .connect(dest)
        .with_context(|| format!("no route to {dest}"))?;
    Ok(probe.local_addr()?.ip())
}
