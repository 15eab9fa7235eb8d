//! A TCP proxy on 127.0.0.1 between a device and its broker, for the benches and tests: it adds a
//! one-way delay to every byte (a round trip of `2 * one_way`, as a cellular link has), and can
//! take the network away (every connection dropped, new ones refused) and give it back.

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A running proxy; it stops with the value.
pub struct Proxy {
    /// Where devices connect.
    pub port: u16,
    offline: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`target`, each direction delayed by `one_way`.
    pub fn start(target: u16, one_way: Duration) -> Result<Proxy> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = rt.block_on(TcpListener::bind(("127.0.0.1", 0))).context("binding the proxy")?;
        let port = listener.local_addr()?.port();
        let offline = Arc::new(AtomicBool::new(false));
        let (cut, cuts) = watch::channel(0u64);
        let off = offline.clone();
        rt.spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                if off.load(Ordering::SeqCst) {
                    continue; // no network: the connection is dropped at once
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged(); // only cuts from now on end this connection
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let _ = (down.set_nodelay(true), up.set_nodelay(true));
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::select! {
                        _ = pipe(dr, uw, one_way) => {}
                        _ = pipe(ur, dw, one_way) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy { port, offline, cut, _rt: rt })
    }

    /// `true`: the network is gone (connections dropped, new ones refused); `false`: back.
    pub fn set_offline(&self, off: bool) {
        self.offline.store(off, Ordering::SeqCst);
        if off {
            self.cut.send_modify(|g| *g += 1);
        }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read (order kept).
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((at, b)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&b).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((tokio::time::Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    // The reader's end closes the channel; the writer then flushes what is queued and ends.
    tokio::join!(reader, writer);
}
