//! A TCP proxy on 127.0.0.1 that can blackhole the link it carries: a network partition
//! between two daemons without root (no `iptables`, no namespaces). Point one daemon's peer
//! address at [`Blackhole::addr`] (`Lab::route_peer`) and the proxy forwards to the other's
//! listener.
//!
//! - [`Blackhole::cut`]: from now on no byte passes in either direction; open connections are
//!   held (neither closed nor answered, as when packets vanish on the way), new connections are
//!   accepted and held too. Bytes already read when the cut falls wait with the others.
//! - [`Blackhole::heal`]: bytes flow again, on the held connections as on new ones (as TCP
//!   retransmission delivers them after a real partition heals; a daemon that gave up on a
//!   connection in the meantime has closed it, and the proxy closes its other side).
//! - [`Blackhole::drop_connections`]: closes every connection the proxy carries or holds, on
//!   both sides (as a firewall or NAT that forgot them during a long partition): after the
//!   heal the daemons must dial again.
//!
//! Invariant: every task of the proxy ends when it is dropped (one `JoinSet`, aborted on drop),
//! so a test leaves no connection behind.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Blackhole {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    /// Bumped to close every current connection.
    generation: watch::Sender<u64>,
    _tasks: JoinSet<()>,
}

impl Blackhole {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, rx) = watch::channel(false);
        let (generation, gen_rx) = watch::channel(0);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, target, rx, gen_rx));
        Ok(Self { addr, cut, generation, _tasks: tasks })
    }

    /// Where the daemon on this side of the link should dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding, holding every connection.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Closes every connection open now (held or not); later ones are not affected.
    pub fn drop_connections(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    cut: watch::Receiver<bool>,
    generation: watch::Receiver<u64>,
) {
    // Connection tasks live in this set: aborting the accept loop (dropping the proxy) drops
    // the set, which aborts them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    let mut generation = generation.clone();
                    generation.mark_unchanged();
                    let cut = cut.clone();
                    conns.spawn(async move {
                        // Dropping the connection's future closes both of its sockets.
                        tokio::select! {
                            () = connection(client, target, cut) => {}
                            _ = generation.changed() => {}
                        }
                    });
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn connection(client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    // A connection made during a cut is held: the far side hears of it only after the heal.
    if cut.wait_for(|c| !*c).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else { return };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either direction ending ends the connection: the other side sees it closed.
    tokio::select! {
        () = pump(cr, sw, cut.clone()) => {}
        () = pump(sr, cw, cut) => {}
    }
}

/// Copies `from` to `to` while the link is not cut.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let read = tokio::select! {
            r = from.read(&mut buf) => Some(r),
            // A cut or heal: look again. Cancelling a read loses nothing (tokio's `read` is
            // cancel safe).
            _ = cut.changed() => None,
        };
        let n = match read {
            None => continue,
            Some(Ok(0) | Err(_)) => {
                let _ = to.shutdown().await;
                return;
            }
            Some(Ok(n)) => n,
        };
        // A cut that fell while reading holds these bytes too.
        if cut.wait_for(|c| !*c).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
