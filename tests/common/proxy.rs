//! A TCP proxy between test clients and the server that cuts connections
//! the way networks do: silently (no FIN, no reset: a phone that lost its
//! network, a NAT that forgot the flow) or with a reset.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the proxy treats the connections open when it is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Bytes flow both ways.
    No,
    /// Nothing more flows either way, and both sockets stay open.
    Silently,
    /// Both sockets are reset (RST, not FIN).
    Reset,
}

/// Forwards every connection made to [`Proxy::addr`] to the server, until
/// cut; stops (dropping every socket) when dropped. A cut applies to the
/// connections open then: later ones (a client reconnecting) go through.
pub struct Proxy {
    /// Where clients connect instead of the server.
    pub addr: SocketAddr,
    /// The latest cut, numbered: a connection heeds the cuts numbered after
    /// the one current when it was made.
    cut: watch::Sender<(u64, Cut)>,
    accept: JoinHandle<()>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// A proxy to `server` on a port of its own.
    pub async fn start(server: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (cut, cuts) = watch::channel((0, Cut::No));
        let links = Arc::new(Mutex::new(Vec::new()));
        let accepted = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(server).await else { continue };
                let born = cuts.borrow().0;
                let link = tokio::spawn(forward(client, upstream, cuts.clone(), born));
                accepted.lock().unwrap_or_else(|p| p.into_inner()).push(link);
            }
        });
        Proxy { addr, cut, accept, links }
    }

    /// Stops every connection open now without a word: no more bytes
    /// either way, no FIN, no reset. The peers find out only by timing out.
    pub fn cut_silently(&self) {
        self.cut.send_modify(|(epoch, cut)| (*epoch, *cut) = (*epoch + 1, Cut::Silently));
    }

    /// Resets every connection open now, both ways.
    pub fn reset(&self) {
        self.cut.send_modify(|(epoch, cut)| (*epoch, *cut) = (*epoch + 1, Cut::Reset));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.links.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            link.abort();
        }
    }
}

/// Copies both ways until a cut (or either side closes), then does what the
/// cut says with the two sockets.
async fn forward(mut client: TcpStream, mut upstream: TcpStream, mut cuts: watch::Receiver<(u64, Cut)>, born: u64) {
    let cut = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => return,
        cut = cuts.wait_for(|(epoch, _)| *epoch > born) => cut.map_or(Cut::Reset, |cut| cut.1),
    };
    match cut {
        Cut::Silently => {
            // Held open, unread and unwritten, until the proxy goes.
            std::future::pending::<()>().await;
        }
        Cut::No | Cut::Reset => {
            // Dropped right after with a zero linger: RST, not FIN.
            for socket in [&client, &upstream] {
                let _ = socket.set_zero_linger();
            }
        }
    }
}
