//! Identity servers: each reply names the answering host and the client address
//! it saw, which is what load-balancer tests assert on.

use crate::{Host, lock};
use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often blocked server threads look at the stop flag: bounds how long
/// dropping a server (or a Lab) takes.
const TICK: Duration = Duration::from_millis(50);
/// A client that connects but never finishes its request line gets answered
/// anyway after this long.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

pub(crate) struct ServerCore {
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ServerCore {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Idempotent; called by the handle's Drop and by the Lab's.
    pub(crate) fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

#[derive(Default)]
struct Stats {
    count: AtomicUsize,
    peers: Mutex<Vec<SocketAddr>>,
}

impl Stats {
    // Recorded before the reply is sent, so a client holding a reply can rely
    // on the counters already including its request.
    fn record(&self, peer: SocketAddr) {
        self.count.fetch_add(1, Ordering::SeqCst);
        lock(&self.peers).push(peer);
    }
}

struct Handle {
    addr: SocketAddr,
    stats: Arc<Stats>,
    core: Arc<ServerCore>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.core.shutdown();
    }
}

/// A TCP server thread inside a host; stops when dropped or when its Lab is.
pub struct TcpServer(Handle);

impl TcpServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.0.stats.count.load(Ordering::SeqCst)
    }

    /// Client addresses of accepted connections, in order (IPv4-mapped IPv6
    /// addresses are shown as IPv4).
    pub fn peers(&self) -> Vec<SocketAddr> {
        lock(&self.0.stats.peers).clone()
    }

    pub fn stop(self) {}
}

/// A UDP server thread inside a host; stops when dropped or when its Lab is.
pub struct UdpServer(Handle);

impl UdpServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// Datagrams received so far.
    pub fn datagrams(&self) -> usize {
        self.0.stats.count.load(Ordering::SeqCst)
    }

    /// Sources of received datagrams, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        lock(&self.0.stats.peers).clone()
    }

    pub fn stop(self) {}
}

struct Ctx {
    role: String,
    stats: Arc<Stats>,
    core: Arc<ServerCore>,
}

impl Host {
    /// TCP identity server on 0.0.0.0:port.
    pub fn tcp_server(&self, port: u16) -> Result<TcpServer> {
        self.tcp_server_on((Ipv4Addr::UNSPECIFIED, port).into())
    }

    /// TCP identity server on any address, e.g. `[::]:8080` (dual-stack).
    /// Each connection gets `"{role} {client addr}\n"` after its request line.
    pub fn tcp_server_on(&self, addr: SocketAddr) -> Result<TcpServer> {
        let bind = move || {
            let listener = TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            let local = listener.local_addr()?;
            Ok((listener, local))
        };
        spawn(self, format!("tcp {addr}"), bind, serve_tcp).map(TcpServer)
    }

    /// UDP identity server on 0.0.0.0:port.
    pub fn udp_server(&self, port: u16) -> Result<UdpServer> {
        self.udp_server_on((Ipv4Addr::UNSPECIFIED, port).into())
    }

    /// UDP identity server on any address; answers each datagram's sender.
    pub fn udp_server_on(&self, addr: SocketAddr) -> Result<UdpServer> {
        let bind = move || {
            let socket = UdpSocket::bind(addr)?;
            socket.set_read_timeout(Some(TICK))?;
            let local = socket.local_addr()?;
            Ok((socket, local))
        };
        spawn(self, format!("udp {addr}"), bind, serve_udp).map(UdpServer)
    }
}

/// Starts a server thread in the host's namespace and waits until it has bound,
/// so callers can connect as soon as this returns.
fn spawn<S: 'static>(
    host: &Host,
    what: String,
    bind: impl FnOnce() -> io::Result<(S, SocketAddr)> + Send + 'static,
    serve: fn(S, &Ctx),
) -> Result<Handle> {
    let context = || format!("{what} server in {}", host.netns());
    let netns = File::open(host.netns_path()).with_context(context)?;
    let core = Arc::new(ServerCore {
        stop: AtomicBool::new(false),
        thread: Mutex::new(None),
    });
    let ctx = Ctx {
        role: host.role().to_string(),
        stats: Arc::default(),
        core: core.clone(),
    };
    let stats = ctx.stats.clone();
    let (tx, rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name(what.clone())
        .spawn(move || {
            let bound = setns(&netns, CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .and_then(|()| bind());
            match bound {
                Ok((socket, addr)) => {
                    let _ = tx.send(Ok(addr));
                    serve(socket, &ctx);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .with_context(context)?;
    *lock(&core.thread) = Some(thread);
    let addr = rx
        .recv()
        .context("server thread died")
        .with_context(context)?
        .with_context(context)?;
    let handle = Handle { addr, stats, core };
    host.register_server(&handle.core);
    Ok(handle)
}

fn serve_tcp(listener: TcpListener, ctx: &Ctx) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !ctx.core.stopped() {
        match listener.accept() {
            Ok((stream, peer)) => {
                let peer = canonical(peer);
                ctx.stats.record(peer);
                conns.retain(|c| !c.is_finished());
                let reply = identity(&ctx.role, peer);
                let core = ctx.core.clone();
                // A thread per connection so one slow client cannot stall the rest.
                conns.push(thread::spawn(move || {
                    let _ = answer_tcp(stream, &reply, &core);
                }));
            }
            // WouldBlock, or a transient error such as ECONNABORTED or EMFILE:
            // wait rather than spin.
            Err(_) => {
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(TICK.as_millis() as u16));
            }
        }
    }
    for conn in conns {
        let _ = conn.join();
    }
}

fn answer_tcp(mut stream: TcpStream, reply: &str, core: &ServerCore) -> io::Result<()> {
    // Accepted sockets may inherit the listener's O_NONBLOCK on some systems.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TICK))?;
    stream.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if buf[..n].contains(&b'\n') => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if core.stopped() || Instant::now() >= deadline {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.write_all(reply.as_bytes())
}

fn serve_udp(socket: UdpSocket, ctx: &Ctx) {
    let mut buf = [0u8; 2048];
    while !ctx.core.stopped() {
        // Errors are the read timeout that lets us see the stop flag.
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            let peer = canonical(from);
            ctx.stats.record(peer);
            let _ = socket.send_to(identity(&ctx.role, peer).as_bytes(), from);
        }
    }
}

fn identity(role: &str, peer: SocketAddr) -> String {
    format!("{role} {peer}\n")
}

/// Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d; tests compare
/// against plain IPv4 addresses.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
