//! The console's listeners: the MQTT front door (Aliyun credential check, then a byte splice to
//! rumqttd) and the HTTP(S) file server with Range. Both optionally behind TLS.

use super::auth::{DeviceId, Login, Refusal, Registry};
use super::engine::{Engine, HttpRefusal, MAX_PAYLOAD};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
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

/// The live connection of each device: a newer login of the same device closes the older one,
/// as Aliyun does ("each new connection kicks the old one offline").
#[derive(Default)]
pub struct Sessions {
    next: std::sync::atomic::AtomicU64,
    live: Mutex<HashMap<DeviceId, (u64, Arc<Notify>)>>,
}

impl Sessions {
    fn open(&self, id: &DeviceId) -> (u64, Arc<Notify>) {
        let conn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let kick = Arc::new(Notify::new());
        if let Some((_, old)) = self.live.lock().unwrap().insert(id.clone(), (conn, kick.clone())) {
            old.notify_one();
        }
        (conn, kick)
    }
    fn close(&self, id: &DeviceId, conn: u64) {
        let mut live = self.live.lock().unwrap();
        if live.get(id).is_some_and(|(c, _)| *c == conn) {
            live.remove(id);
        }
    }
}

/// What one device may publish and subscribe to: its own `/ota/device/.../{pk}/{dn}` and
/// `/sys/{pk}/{dn}/...` topics (and its custom `/{pk}/{dn}/...` ones), wildcards only inside them.
struct Acl {
    sys: String,
    user: String,
    ota: [String; 4],
}

impl Acl {
    fn new((pk, dn): &DeviceId) -> Acl {
        Acl {
            sys: format!("/sys/{pk}/{dn}/"),
            user: format!("/{pk}/{dn}/"),
            ota: ["upgrade", "inform", "progress", "request"].map(|k| format!("/ota/device/{k}/{pk}/{dn}")),
        }
    }
    fn allows(&self, topic: &str) -> bool {
        let own = |prefix: &str| topic.strip_prefix(prefix).is_some_and(|rest| !rest.is_empty());
        own(&self.sys) || own(&self.user) || self.ota.iter().any(|t| t == topic)
    }
}

/// Reads an MQTT string (u16 BE length + bytes) at `at`.
fn mqtt_str(p: &[u8], at: usize) -> Option<(&str, usize)> {
    let n = u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]) as usize;
    let s = std::str::from_utf8(p.get(at + 2..at + 2 + n)?).ok()?;
    Some((s, at + 2 + n))
}

/// A packet: fixed header byte, remaining length, then `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// The start of the variable header of the packet at the start of `p`.
fn body_at(p: &[u8]) -> usize {
    1 + p[1..].iter().take(4).position(|b| b & 0x80 == 0).map_or(4, |i| i + 1)
}

/// SUBSCRIBE: packet id and (filter, qos) pairs.
fn parse_subscribe(p: &[u8]) -> Option<(u16, Vec<(String, u8)>)> {
    let at = body_at(p);
    let pid = u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]);
    let mut at = at + 2;
    let mut filters = Vec::new();
    while at < p.len() {
        let (f, next) = mqtt_str(p, at)?;
        filters.push((f.to_string(), *p.get(next)?));
        at = next + 1;
    }
    Some((pid, filters))
}

fn subscribe_packet(pid: u16, filters: &[(String, u8)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for (f, q) in filters {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f.as_bytes());
        body.push(*q);
    }
    packet(0x82, &body)
}

/// The packet id the console's own SUBSCRIBE for an `_ss=1` client uses.
const SERVER_SUB_PID: u16 = 0xFFF1;

/// One device connection: read its CONNECT, check it as Aliyun does (keep-alive 30..=1200,
/// securemode 2 on TLS and 3 on plain TCP, the credentials), answer a refusal with its CONNACK
/// code (rumqttd would just close the socket, and the device could not say why), else hand the
/// connection to the broker through a filter that applies the device's topic rights, subscribes
/// `_ss=1` clients to their OTA topics, and tells the engine when the device is subscribed.
#[allow(clippy::too_many_arguments)]
pub async fn front_door(
    mut s: Box<dyn Stream>,
    tls: bool,
    broker_port: u16,
    registry: Arc<Registry>,
    engine: Arc<Mutex<Engine>>,
    sessions: Arc<Sessions>,
) -> Result<()> {
    let mut buf = Vec::with_capacity(512);
    let (client_id, user, pass, keep_alive) = loop {
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
                    c.keep_alive,
                )
            }
            Ok(Some(_)) => bail!("the first packet is not CONNECT"),
            Ok(None) if buf.len() < 4096 => continue,
            _ => bail!("not an MQTT 3.1.1 CONNECT"),
        }
    };
    let guess = user.split_once('&').map(|(dn, pk)| (pk.to_string(), dn.to_string()));
    let checked = registry.check(&client_id, &user, &pass).and_then(|login| {
        if !shared::alink::KEEP_ALIVE.contains(&keep_alive) {
            // The C LinkSDK documents "server unavailable" for a keep-alive below 30 s.
            return Err(Refusal::Unavailable(format!("keep-alive {keep_alive} s is outside Aliyun's 30..=1200 s")));
        }
        match (tls, login.securemode) {
            (true, 2) | (false, 3) => Ok(login),
            (true, m) => Err(Refusal::Malformed(format!("securemode={m} on the TLS port (TLS is securemode=2)"))),
            (false, m) => {
                Err(Refusal::Malformed(format!("securemode={m} on the plain TCP port (plain is securemode=3)")))
            }
        }
    });
    let login = match checked {
        Ok(login) => login,
        Err(refusal) => {
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
    let id = login.id.clone();
    let (conn, kicked) = sessions.open(&id);
    engine.lock().unwrap().online(&id, true, conn);
    let r = splice(s, up, &login, &engine, &kicked).await;
    engine.lock().unwrap().online(&id, false, conn);
    sessions.close(&id, conn);
    r
}

/// Carries the connection's packets both ways, applying the device's rights (see `front_door`).
async fn splice(
    client: Box<dyn Stream>,
    broker: TcpStream,
    login: &Login,
    engine: &Mutex<Engine>,
    kicked: &Notify,
) -> Result<()> {
    let id = &login.id;
    let acl = Acl::new(id);
    let upgrade = &acl.ota[0];
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = broker.into_split();
    let (mut from_client, mut from_broker) = (Vec::new(), Vec::new());
    let (mut cbuf, mut bbuf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    // SUBACKs to fix up: packet id -> which filters the console refused (0x80 in their place),
    // and whether the device's upgrade topic is among the ones granted.
    let mut fixups: HashMap<u16, (Vec<bool>, bool)> = HashMap::new();
    let mut connack_seen = false;
    let subscribed = |e: &Mutex<Engine>| e.lock().unwrap().subscribed(id, std::time::Instant::now());
    loop {
        tokio::select! {
            _ = kicked.notified() => {
                log(&format!("{}/{}: a newer connection of the device replaces this one", id.0, id.1));
                return Ok(());
            }
            n = cr.read(&mut cbuf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                from_client.extend_from_slice(&cbuf[..n]);
                while let Some(len) = packet_len(&from_client) {
                    if len > MAX_PAYLOAD + 1024 {
                        log(&format!("{}/{}: a packet of {len} bytes (Aliyun takes 256 KB): closed", id.0, id.1));
                        return Ok(());
                    }
                    if from_client.len() < len {
                        break;
                    }
                    let p: Vec<u8> = from_client.drain(..len).collect();
                    match p[0] >> 4 {
                        3 => {
                            let at = body_at(&p);
                            let topic = mqtt_str(&p, at).map(|(t, _)| t.to_string()).unwrap_or_default();
                            if acl.allows(&topic) {
                                bw.write_all(&p).await?;
                            } else {
                                log(&format!("{}/{}: PUBLISH to {topic:?} dropped (not its topic)", id.0, id.1));
                                if (p[0] >> 1) & 3 == 1 {
                                    let pid_at = at + 2 + topic.len();
                                    if let Some(pid) = p.get(pid_at..pid_at + 2) {
                                        cw.write_all(&packet(0x40, pid)).await?;
                                    }
                                }
                            }
                        }
                        8 => {
                            let (pid, filters) = parse_subscribe(&p).context("malformed SUBSCRIBE")?;
                            let refused: Vec<bool> = filters.iter().map(|(f, _)| !acl.allows(f)).collect();
                            for (f, _) in filters.iter().filter(|(f, _)| !acl.allows(f)) {
                                log(&format!("{}/{}: SUBSCRIBE to {f:?} refused (0x80: not its topic)", id.0, id.1));
                            }
                            let granted: Vec<(String, u8)> =
                                filters.iter().filter(|(f, _)| acl.allows(f)).cloned().collect();
                            let has_upgrade = granted.iter().any(|(f, _)| f == upgrade);
                            if granted.is_empty() {
                                let mut body = pid.to_be_bytes().to_vec();
                                body.extend(std::iter::repeat_n(0x80, filters.len()));
                                cw.write_all(&packet(0x90, &body)).await?;
                            } else {
                                fixups.insert(pid, (refused, has_upgrade));
                                bw.write_all(&subscribe_packet(pid, &granted)).await?;
                            }
                        }
                        1 => bail!("a second CONNECT"),
                        _ => bw.write_all(&p).await?,
                    }
                }
            }
            n = br.read(&mut bbuf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                from_broker.extend_from_slice(&bbuf[..n]);
                while let Some(len) = packet_len(&from_broker).filter(|&l| l <= from_broker.len()) {
                    let p: Vec<u8> = from_broker.drain(..len).collect();
                    match p[0] >> 4 {
                        2 if !connack_seen => {
                            connack_seen = true;
                            cw.write_all(&p).await?;
                            if p.get(3) == Some(&0) && login.server_subscribes {
                                // Aliyun subscribes its own SDKs (`_ss=1`) to their topics.
                                let t = &id;
                                let filters: Vec<(String, u8)> = [
                                    format!("/ota/device/upgrade/{}/{}", t.0, t.1),
                                    format!("/sys/{}/{}/thing/ota/firmware/get_reply", t.0, t.1),
                                    format!("/sys/{}/{}/thing/file/download_reply", t.0, t.1),
                                ]
                                .into_iter()
                                .map(|f| (f, 1))
                                .collect();
                                bw.write_all(&subscribe_packet(SERVER_SUB_PID, &filters)).await?;
                            }
                        }
                        9 => {
                            let at = body_at(&p);
                            let pid = u16::from_be_bytes([p[at], p[at + 1]]);
                            if pid == SERVER_SUB_PID && login.server_subscribes {
                                subscribed(engine);
                                continue; // the console's own: the device never asked
                            }
                            match fixups.remove(&pid) {
                                Some((refused, has_upgrade)) => {
                                    let mut granted = p[at + 2..].iter();
                                    let mut body = pid.to_be_bytes().to_vec();
                                    body.extend(refused.iter().map(|&r| if r { 0x80 } else { *granted.next().unwrap_or(&0x80) }));
                                    if has_upgrade {
                                        subscribed(engine);
                                    }
                                    cw.write_all(&packet(0x90, &body)).await?;
                                }
                                None => cw.write_all(&p).await?,
                            }
                        }
                        _ => cw.write_all(&p).await?,
                    }
                }
            }
        }
    }
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
    let parsed = match range.as_deref() {
        None => Some((0, None)),
        Some(r) => parse_range(r),
    };
    let Some((first, last)) = parsed else {
        return respond(&mut s, "416 Range Not Satisfiable", &[], b"").await;
    };
    let want = last.map_or(u64::MAX, |l| l + 1 - first);
    let got = engine.lock().unwrap().http_get(path, query, first, want, std::time::Instant::now());
    let bytes = match got {
        Ok(b) => b,
        Err(HttpRefusal::NotFound) => return respond(&mut s, "404 Not Found", &[], b"no such file\n").await,
        Err(HttpRefusal::Expired) => {
            let msg = b"the URL has expired: ask for a new one (firmware/get)\n";
            return respond(&mut s, "403 Forbidden", &[], msg).await;
        }
    };
    let len = bytes.len() as u64;
    if first >= len {
        let cr = format!("Content-Range: bytes */{len}");
        return respond(&mut s, "416 Range Not Satisfiable", &[&cr], b"").await;
    }
    let last = last.unwrap_or(len - 1).min(len - 1);
    let status = if range.is_some() { "206 Partial Content" } else { "200 OK" };
    let cr = format!("Content-Range: bytes {first}-{last}/{len}");
    let extra: Vec<&str> = if range.is_some() { vec![&cr] } else { vec![] };
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
