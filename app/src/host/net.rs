//! The host board's transports: MQTT over TCP or TLS (rustls), downloads over HTTP(S) (ureq).

use crate::driver::{Clock, Http};
use embedded_io_adapters::tokio_1::FromTokio;
use shared::ota::HttpError;
use shared::time::Instant;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Opens the MQTT byte stream.
pub async fn connect(host: &str, port: u16, tls: bool, ca: Option<&std::path::Path>) -> Result<Box<dyn Io>, String> {
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| format!("cannot reach {host}:{port}: {e}"))?;
    tcp.set_nodelay(true).ok();
    if !tls {
        return Ok(Box::new(tcp));
    }
    let config = tls_config(ca)?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
    Ok(Box::new(tls))
}

/// The TLS client settings of MQTT and HTTPS alike: the Mozilla roots (GlobalSign R1 and friends,
/// Aliyun's 1883/443 endpoints), Aliyun's IoT root CA (8883), plus `ca` (PEM) if given.
pub fn tls_config(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let aliyun =
        CertificateDer::from_pem_slice(crate::ALIYUN_IOT_ROOT_CA).map_err(|e| format!("built-in Aliyun CA: {e}"))?;
    roots.add(aliyun).map_err(|e| format!("built-in Aliyun CA: {e}"))?;
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("reading CA {}: {e}", ca.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("reading CA {}: {e}", ca.display()))?;
            roots.add(c).map_err(|e| format!("CA {}: {e}", ca.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The host device's own link: TCP or TLS from this process (with `modem`, the device uses
/// `crate::cellular::ModemLink` instead).
pub struct HostLink<'a> {
    pub host: &'a str,
    pub port: u16,
    pub tls: bool,
    pub ca: Option<&'a std::path::Path>,
}

impl crate::driver::Link for HostLink<'_> {
    type Io<'b>
        = FromTokio<Box<dyn Io>>
    where
        Self: 'b;
    type Error = String;

    async fn open(&mut self) -> Result<FromTokio<Box<dyn Io>>, String> {
        connect(self.host, self.port, self.tls, self.ca).await.map(FromTokio::new)
    }
}

/// The modem's UART: a serial port (a path: the modem simulator's pty, or a real module's USB
/// serial port), opened at the MCU's power-on rate and then set by the modem driver; or a TCP
/// connection to the simulator (`host:port`), a line without a rate.
pub enum ModemPort {
    Serial(FromTokio<tokio_serial::SerialStream>),
    Tcp(FromTokio<TcpStream>),
}

/// Opens the modem's UART (a TCP one retried while the simulator starts).
pub async fn modem_uart(addr: &str) -> Result<ModemPort, String> {
    if addr.starts_with('/') {
        use tokio_serial::SerialPortBuilderExt;
        let port = tokio_serial::new(addr, crate::modem::POWER_ON_RATE)
            .open_native_async()
            .map_err(|e| format!("cannot open the modem UART {addr}: {e}"))?;
        return Ok(ModemPort::Serial(FromTokio::new(port)));
    }
    let mut last = String::new();
    for _ in 0..50 {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                tcp.set_nodelay(true).ok();
                return Ok(ModemPort::Tcp(FromTokio::new(tcp)));
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(format!("cannot reach the modem UART {addr}: {last}"))
}

impl embedded_io_async::ErrorType for ModemPort {
    type Error = std::io::Error;
}

impl embedded_io_async::Read for ModemPort {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        match self {
            ModemPort::Serial(p) => p.read(buf).await,
            ModemPort::Tcp(p) => p.read(buf).await,
        }
    }
}

impl embedded_io_async::Write for ModemPort {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, std::io::Error> {
        match self {
            ModemPort::Serial(p) => p.write(buf).await,
            ModemPort::Tcp(p) => p.write(buf).await,
        }
    }
    async fn flush(&mut self) -> Result<(), std::io::Error> {
        match self {
            ModemPort::Serial(p) => p.flush().await,
            ModemPort::Tcp(p) => p.flush().await,
        }
    }
}

impl crate::modem::LineRate for ModemPort {
    fn set_rate(&mut self, baud: u32) {
        if let ModemPort::Serial(p) = self {
            use tokio_serial::SerialPort;
            if let Err(e) = p.inner_mut().set_baud_rate(baud) {
                log::warn!("modem UART: cannot set {baud} baud: {e}");
            }
        }
    }
}

pub struct TokioClock(pub tokio::time::Instant);

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::from_millis(self.0.elapsed().as_millis() as u64)
    }
    async fn sleep_until(&self, t: Instant) {
        tokio::time::sleep_until(self.0 + std::time::Duration::from_millis(t.as_millis())).await
    }
}

enum Chunk {
    Head(u16, Option<u32>),
    Body(Vec<u8>),
    End,
    Fail(String),
}

/// HTTP(S) GET with Range, streamed from a blocking ureq call on a worker thread.
pub struct HostHttp {
    agent: ureq::Agent,
    rx: Option<mpsc::Receiver<Chunk>>,
    left: Vec<u8>,
}

impl HostHttp {
    /// HTTPS trusts what MQTT over TLS trusts.
    pub fn new(ca: Option<&std::path::Path>) -> Result<HostHttp, String> {
        let agent = ureq::AgentBuilder::new().tls_config(tls_config(ca)?).build();
        Ok(HostHttp { agent, rx: None, left: Vec::new() })
    }
}

impl Http for HostHttp {
    async fn get(&mut self, url: &str, from: u32) -> Result<(u16, Option<u32>), HttpError> {
        let (tx, rx) = mpsc::channel(8);
        let url = url.to_string();
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            let r = agent
                .get(&url)
                .set("Range", &format!("bytes={from}-"))
                .timeout(std::time::Duration::from_secs(30))
                .call();
            let resp = match r {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Chunk::Fail(e.to_string()));
                    return;
                }
            };
            let len = resp.header("Content-Length").and_then(|l| l.parse().ok());
            let status = resp.status();
            if tx.blocking_send(Chunk::Head(status, len)).is_err() || !(200..300).contains(&status) {
                return;
            }
            let mut body = resp.into_reader();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match std::io::Read::read(&mut body, &mut buf) {
                    Ok(0) => {
                        let _ = tx.blocking_send(Chunk::End);
                        return;
                    }
                    Ok(n) => {
                        if tx.blocking_send(Chunk::Body(buf[..n].to_vec())).is_err() {
                            return; // closed by the device
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Chunk::Fail(e.to_string()));
                        return;
                    }
                }
            }
        });
        self.left.clear();
        let mut rx = rx;
        match rx.recv().await {
            Some(Chunk::Head(status, len)) => {
                self.rx = Some(rx);
                Ok((status, len))
            }
            Some(Chunk::Fail(e)) => {
                log::warn!("HTTP: {e}");
                Err(if e.contains("certificate") || e.contains("tls") || e.contains("TLS") {
                    HttpError::Tls
                } else {
                    HttpError::Connect
                })
            }
            _ => Err(HttpError::Connect),
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, HttpError> {
        loop {
            if !self.left.is_empty() {
                let n = buf.len().min(self.left.len());
                buf[..n].copy_from_slice(&self.left[..n]);
                self.left.drain(..n);
                return Ok(n);
            }
            let Some(rx) = self.rx.as_mut() else { return std::future::pending().await };
            match rx.recv().await {
                Some(Chunk::Body(b)) => self.left = b,
                Some(Chunk::End) => {
                    self.rx = None;
                    return Ok(0);
                }
                Some(Chunk::Fail(e)) => {
                    log::warn!("HTTP: {e}");
                    self.rx = None;
                    return Err(HttpError::Closed);
                }
                _ => {
                    self.rx = None;
                    return Err(HttpError::Closed);
                }
            }
        }
    }

    fn close(&mut self) {
        self.rx = None;
        self.left.clear();
    }
}
