//! The console's listeners: the MQTT front door (Aliyun credential check, then a byte splice to
//! rumqttd) and the HTTP(S) file server with Range. Both optionally behind TLS.

use super::auth::Registry;
use super::engine::Engine;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A TLS acceptor from a certificate chain and key (PEM files).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a TLS server")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections forever, each handled by `serve` on its own task (TLS first if given).
pub async fn accept_loop<F, Fut>(listener: TcpListener, tls: Option<TlsAcceptor>, serve: F)
where
    F: Fn(Box<dyn Stream>) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let (tls, serve) = (tls.clone(), serve.clone());
        tokio::spawn(async move {
            let stream: Box<dyn Stream> = match tls {
                None => Box::new(tcp),
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => Box::new(s),
                    _ => return,
                },
            };
            let _ = serve(stream).await;
        });
    }
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One device connection: read its CONNECT, check the Aliyun credentials, then either refuse
/// with the CONNACK code Aliyun sends (rumqttd would just close the socket, and the device could
/// not say why) or hand the connection to the broker.
pub async fn front_door(
    mut s: Box<dyn Stream>,
    broker_port: u16,
    registry: Arc<Registry>,
    engine: Arc<Mutex<Engine>>,
) -> Result<()> {
    let mut buf = Vec::with_capacity(512);
    let (client_id, user, pass) = loop {
        let mut chunk = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // A slow sender (a UART behind a modem) delivers CONNECT a few bytes at a time; mqttrs
        // takes a cut fixed header for a malformed one, so wait for the whole packet first.
        match packet_len(&buf) {
            None if buf.len() < 5 => continue,
            Some(len) if len <= 4096 && buf.len() < len => continue,
            _ => {}
        }
        match mqttrs::decode_slice(&buf) {
            Ok(Some(mqttrs::Packet::Connect(c))) => {
                break (
                    c.client_id.to_string(),
                    c.username.unwrap_or("").to_string(),
                    c.password.unwrap_or(b"").to_vec(),
                )
            }
            Ok(Some(_)) => bail!("the first packet is not CONNECT"),
            Ok(None) if buf.len() < 4096 => continue,
            _ => bail!("not an MQTT 3.1.1 CONNECT"),
        }
    };
    let id = match registry.check(&client_id, &user, &pass) {
        Ok(id) => id,
        Err(refusal) => {
            let guess = user.split_once('&').map(|(dn, pk)| (pk.to_string(), dn.to_string()));
            log(&format!("refused {user:?}: {refusal} (CONNACK {})", refusal.connack_code()));
            engine.lock().unwrap().refused(guess.as_ref(), refusal.to_string());
            s.write_all(&[0x20, 0x02, 0x00, refusal.connack_code()]).await?;
            s.shutdown().await?;
            return Ok(());
        }
    };
    let mut up = TcpStream::connect(("127.0.0.1", broker_port)).await?;
    up.set_nodelay(true)?;
    up.write_all(&buf).await?;
    engine.lock().unwrap().online(&id, true);
    let r = tokio::io::copy_bidirectional_with_sizes(&mut s, &mut up, 1 << 16, 1 << 16).await;
    engine.lock().unwrap().online(&id, false);
    r.map(|_| ()).map_err(Into::into)
}

/// The whole length of the MQTT packet starting `buf`, once its fixed header is complete.
fn packet_len(buf: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some(2 + i + len);
        }
    }
    None
}

/// One HTTP/1.1 request for `/ota/{job}/{file}?Expires=..&device=..`, with or without `Range`.
pub async fn http(mut s: Box<dyn Stream>, engine: Arc<Mutex<Engine>>) -> Result<()> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await?? == 0 || head.len() > 16384 {
            return Ok(());
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines.next().and_then(|l| l.strip_prefix("GET ")).and_then(|l| l.split(' ').next()).unwrap_or("");
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_string());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |k: &str| query.split('&').filter_map(|kv| kv.split_once('=')).find(|(a, _)| *a == k).map(|(_, v)| v);
    let found = match path.strip_prefix("/ota/").and_then(|p| p.split_once('/')) {
        Some((job, file)) => job.parse::<u32>().ok().and_then(|j| {
            let (name, bytes) = engine.lock().unwrap().job_file(j)?;
            (name == file).then_some((j, bytes))
        }),
        None => None,
    };
    let Some((job, bytes)) = found else {
        return respond(&mut s, "404 Not Found", &[], b"no such file\n").await;
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    if param("Expires").and_then(|e| e.parse::<u64>().ok()).is_none_or(|e| e < now) {
        return respond(&mut s, "403 Forbidden", &[], b"the URL has expired: ask for a new one (firmware/get)\n").await;
    }
    let len = bytes.len() as u64;
    let (status, first, last) = match range.as_deref().map(parse_range) {
        None => ("200 OK", 0, len.saturating_sub(1)),
        Some(Some((a, b))) if a < len => ("206 Partial Content", a, b.unwrap_or(len - 1).min(len - 1)),
        Some(_) => {
            let cr = format!("Content-Range: bytes */{len}");
            return respond(&mut s, "416 Range Not Satisfiable", &[&cr], b"").await;
        }
    };
    let device = param("device").and_then(|d| engine.lock().unwrap().device_named(d));
    engine.lock().unwrap().http_served(device.as_ref(), job, first, last + 1 - first);
    let cr = format!("Content-Range: bytes {first}-{last}/{len}");
    let extra: Vec<&str> = if status.starts_with("206") { vec![&cr] } else { vec![] };
    respond(&mut s, status, &extra, &bytes[first as usize..=last as usize]).await
}

/// `bytes=A-` or `bytes=A-B` (one range; suffix ranges are not used by devices).
fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    let a = a.trim().parse().ok()?;
    let b = match b.trim() {
        "" => None,
        b => Some(b.parse().ok()?),
    };
    (b.is_none_or(|b| b >= a)).then_some((a, b))
}

async fn respond(s: &mut Box<dyn Stream>, status: &str, headers: &[&str], body: &[u8]) -> Result<()> {
    let mut h =
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\nAccept-Ranges: bytes\r\n", body.len());
    if !body.is_empty() && status.starts_with('2') {
        h.push_str("Content-Type: application/octet-stream\r\n");
    }
    for x in headers {
        h.push_str(x);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    s.write_all(h.as_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await?;
    s.shutdown().await?;
    Ok(())
}

/// Set while the demo draws progress bars.
pub static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Console log lines go to stderr with the time of day.
pub fn log(msg: &str) {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = t.as_secs() % 86400;
    if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("[console {:02}:{:02}:{:02}.{:03}] {msg}", s / 3600, s / 60 % 60, s % 60, t.subsec_millis());
    }
}

#[cfg(test)]
mod tests {
    use super::{packet_len, parse_range};

    #[test]
    fn a_connect_cut_anywhere_is_incomplete_not_malformed() {
        let mut pkt = vec![0x10, 0x80, 0x01];
        pkt.resize(3 + 128, 0);
        for cut in 0..pkt.len() {
            assert!(packet_len(&pkt[..cut]).is_none_or(|l| l > cut), "cut at {cut}");
        }
        assert_eq!(packet_len(&pkt), Some(131));
        assert_eq!(packet_len(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF]), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-"), Some((0, None)));
        assert_eq!(parse_range("bytes=512-1023"), Some((512, Some(1023))));
        assert_eq!(parse_range("bytes=9-3"), None);
        assert_eq!(parse_range("bytes=-500"), None);
        assert_eq!(parse_range("items=0-1"), None);
    }
}
