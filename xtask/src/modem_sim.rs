//! A Quectel-style cellular modem simulator: speaks the AT subset of `app/src/modem.rs` on a TCP
//! port on 127.0.0.1 (the device's "UART"), and once a socket opens in transparent mode bridges
//! the byte stream to the target (the local console's broker), plain for `AT+QIOPEN` or TLS toward
//! the broker for `AT+QSSLOPEN`, verifying the broker with the CA the device uploaded
//! (`AT+QFUPL`) and set on SSL context 1 (`AT+QSSLCFG` seclevel 1, cacert). Like the real module it
//! echoes commands until `ATE0`, reports
//! `NO CARRIER` when the link drops, and leaves data mode on `+++` framed by 1 s of silence.
//!
//! Faults for tests: no SIM, slow network registration, and a link that drops after N bytes.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the simulated modem behaves.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// `AT+CPIN?` answers `+CME ERROR: 10` (SIM not inserted).
    pub no_sim: bool,
    /// Registration polls answered "searching" before "registered".
    pub register_after_polls: u32,
    /// The first data session drops after this many bytes toward the device (`NO CARRIER`).
    pub drop_first_link_after: Option<u64>,
}

/// What the simulator saw.
#[derive(Clone, Debug, Default)]
pub struct SimLog {
    /// Every command line, in order.
    pub commands: Vec<String>,
    /// Data sessions opened (CONNECT sent).
    pub links: u32,
    /// Links dropped by the simulator (fault) or by the far end.
    pub drops: u32,
}

pub struct ModemSim {
    pub port: u16,
    pub log: Arc<Mutex<SimLog>>,
    _rt: tokio::runtime::Runtime,
}

impl ModemSim {
    pub fn start(o: SimOptions) -> Result<ModemSim> {
        Self::start_on(0, o)
    }

    pub fn start_on(port: u16, o: SimOptions) -> Result<ModemSim> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = rt.block_on(TcpListener::bind(("127.0.0.1", port))).context("binding the UART port")?;
        let port = listener.local_addr()?.port();
        let log = Arc::new(Mutex::new(SimLog::default()));
        let (l, o) = (log.clone(), Arc::new(o));
        rt.spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                let (l, o) = (l.clone(), o.clone());
                tokio::spawn(async move {
                    let _ = Session {
                        uart: s,
                        echo: true,
                        polls: 0,
                        active: false,
                        files: HashMap::new(),
                        seclevel: 0,
                        cacert: None,
                        log: l,
                        o,
                    }
                    .run()
                    .await;
                });
            }
        });
        Ok(ModemSim { port, log, _rt: rt })
    }

    pub fn log(&self) -> SimLog {
        self.log.lock().unwrap().clone()
    }
}

struct Session {
    uart: TcpStream,
    echo: bool,
    polls: u32,
    active: bool,
    /// The module's file system (AT+QFUPL / AT+QFDEL).
    files: HashMap<String, Vec<u8>>,
    /// SSL context 1: AT+QSSLCFG "seclevel" and "cacert".
    seclevel: u8,
    cacert: Option<String>,
    log: Arc<Mutex<SimLog>>,
    o: Arc<SimOptions>,
}

trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

impl Session {
    async fn run(mut self) -> Result<()> {
        let mut line = Vec::new();
        loop {
            let mut b = [0u8; 1];
            if self.uart.read(&mut b).await? == 0 {
                return Ok(());
            }
            if b[0] != b'\r' && b[0] != b'\n' {
                line.push(b[0]);
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let cmd = String::from_utf8_lossy(&line).trim().to_string();
            line.clear();
            if cmd == "+++" {
                continue; // an escape while already in command mode
            }
            if self.echo {
                self.uart.write_all(format!("{cmd}\r\n").as_bytes()).await?;
            }
            self.log.lock().unwrap().commands.push(cmd.clone());
            if let Some(link) = self.command(&cmd).await? {
                self.data_mode(link).await?;
            }
        }
    }

    async fn reply(&mut self, lines: &[&str]) -> Result<()> {
        let mut out = String::new();
        for l in lines {
            out.push_str("\r\n");
            out.push_str(l);
            out.push_str("\r\n");
        }
        self.uart.write_all(out.as_bytes()).await?;
        Ok(())
    }

    /// Answers one command; returns the link when it opened one.
    async fn command(&mut self, cmd: &str) -> Result<Option<Box<dyn Link>>> {
        match cmd {
            "AT" => self.reply(&["OK"]).await?,
            "ATE0" => {
                self.echo = false;
                self.reply(&["OK"]).await?
            }
            "AT+CPIN?" if self.o.no_sim => self.reply(&["+CME ERROR: 10"]).await?,
            "AT+CPIN?" => self.reply(&["+CPIN: READY", "OK"]).await?,
            "AT+CEREG?" | "AT+CREG?" => {
                self.polls += 1;
                let stat = if self.polls > self.o.register_after_polls { 1 } else { 2 };
                let name = &cmd[2..cmd.len() - 1];
                self.reply(&[&format!("{name}: 0,{stat}"), "OK"]).await?
            }
            "AT+QIACT?" if self.active => self.reply(&["+QIACT: 1,1,1,\"10.0.0.2\"", "OK"]).await?,
            "AT+QIACT?" => self.reply(&["OK"]).await?,
            "AT+QIACT=1" => {
                self.active = true;
                self.reply(&["OK"]).await?
            }
            c if c.starts_with("AT+QICSGP=1,1,\"") => self.reply(&["OK"]).await?,
            c if c.starts_with("AT+QICLOSE=") => self.reply(&["OK"]).await?,
            c if c.starts_with("AT+QFDEL=") => {
                let name = c["AT+QFDEL=".len()..].trim_matches('"');
                let found = self.files.remove(name).is_some();
                self.reply(&[if found { "OK" } else { "+CME ERROR: 405" }]).await?
            }
            c if c.starts_with("AT+QFUPL=") => {
                // "name",size[,timeout]: CONNECT, exactly size bytes, +QFUPL: size,checksum.
                let args: Vec<&str> = c["AT+QFUPL=".len()..].split(',').collect();
                let name = args[0].trim_matches('"').to_string();
                let Some(size) = args.get(1).and_then(|s| s.parse::<usize>().ok()) else {
                    return self.reply(&["ERROR"]).await.map(|_| None);
                };
                self.uart.write_all(b"\r\nCONNECT\r\n").await?;
                let mut data = vec![0u8; size];
                self.uart.read_exact(&mut data).await?;
                // Quectel's checksum: XOR of the big-endian 16-bit words.
                let sum = data.chunks(2).fold(0u16, |x, w| x ^ u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
                self.files.insert(name, data);
                self.reply(&[&format!("+QFUPL: {size},{sum:x}"), "OK"]).await?
            }
            c if c.starts_with("AT+QSSLCFG=") => {
                let args: Vec<&str> = c["AT+QSSLCFG=".len()..].split(',').collect();
                match (args[0], args.get(1).copied(), args.get(2).map(|a| a.trim_matches('"'))) {
                    ("\"seclevel\"", Some("1"), Some(l)) => self.seclevel = l.parse().unwrap_or(0),
                    ("\"cacert\"", Some("1"), Some(f)) => self.cacert = Some(f.to_string()),
                    _ => {}
                }
                self.reply(&["OK"]).await?
            }
            c if c.starts_with("AT+QIOPEN=1,0,\"TCP\",") || c.starts_with("AT+QSSLOPEN=1,1,4,") => {
                let tls = c.starts_with("AT+QSSLOPEN");
                match self.open(c, tls).await {
                    Ok(link) => {
                        self.log.lock().unwrap().links += 1;
                        self.uart.write_all(b"\r\nCONNECT\r\n").await?;
                        return Ok(Some(link));
                    }
                    Err(_) => self.reply(&["ERROR"]).await?,
                }
            }
            _ => self.reply(&["ERROR"]).await?,
        }
        Ok(None)
    }

    /// Opens the socket a QIOPEN/QSSLOPEN asks for (127.0.0.1 only).
    async fn open(&mut self, cmd: &str, tls: bool) -> Result<Box<dyn Link>> {
        anyhow::ensure!(self.active, "no PDP context");
        // ...,"host",port,<mode>
        let fields: Vec<&str> = cmd.split(',').collect();
        let n = fields.len();
        anyhow::ensure!(n >= 4 && fields[n - 1] == "2", "transparent mode only");
        let (host, port) = if tls { (fields[n - 3], fields[n - 2]) } else { (fields[n - 4], fields[n - 3]) };
        let host = host.trim_matches('"');
        anyhow::ensure!(host == "127.0.0.1" || host == "localhost", "the simulator connects to 127.0.0.1 only");
        let port: u16 = port.parse()?;
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        if !tls {
            return Ok(Box::new(tcp));
        }
        use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
        // Context 1 as the device configured it: the server verified with the uploaded CA.
        // (A real module at seclevel 0 would not verify at all; that is not simulated.)
        anyhow::ensure!(self.seclevel >= 1, "SSL context 1 does not verify the server (seclevel 0)");
        let ca = self.cacert.as_ref().and_then(|f| self.files.get(f)).context("no CA file set on SSL context 1")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            roots.add(c?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1".to_string())?;
        let s = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.context("TLS")?;
        Ok(Box::new(s))
    }

    /// Transparent mode: bytes both ways until the far end closes (`NO CARRIER`), the fault
    /// drops the link, or the device sends `+++` framed by silence.
    async fn data_mode(&mut self, link: Box<dyn Link>) -> Result<()> {
        let (mut lr, mut lw) = tokio::io::split(link);
        let first = self.log.lock().unwrap().links == 1;
        let mut budget = if first { self.o.drop_first_link_after } else { None };
        let mut down = [0u8; 16 * 1024];
        let mut up = [0u8; 16 * 1024];
        let mut last_up = tokio::time::Instant::now();
        let mut plus = 0usize;
        loop {
            tokio::select! {
                r = lr.read(&mut down) => {
                    let n = r.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    let n = match budget {
                        Some(b) => n.min(b as usize),
                        None => n,
                    };
                    self.uart.write_all(&down[..n]).await?;
                    if let Some(b) = budget.as_mut() {
                        *b -= n as u64;
                        if *b == 0 {
                            break;
                        }
                    }
                }
                r = self.uart.read(&mut up) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(());
                    }
                    let quiet = last_up.elapsed() >= Duration::from_millis(900);
                    last_up = tokio::time::Instant::now();
                    // `+++` after a second of silence, in one write or byte by byte (a UART
                    // delivers one byte at a time), is held back as an escape candidate.
                    let data = &up[..n];
                    if (quiet || plus > 0) && plus + n <= 3 && data.iter().all(|&b| b == b'+') {
                        plus += n;
                        if plus < 3 {
                            continue;
                        }
                        // Escape if a second of silence follows too.
                        let mut more = [0u8; 1];
                        match tokio::time::timeout(Duration::from_millis(900), self.uart.read(&mut more)).await {
                            Err(_) => {
                                self.reply(&["OK"]).await?;
                                return Ok(());
                            }
                            Ok(r) => {
                                let k = r?;
                                lw.write_all(b"+++").await?;
                                lw.write_all(&more[..k]).await?;
                                plus = 0;
                                last_up = tokio::time::Instant::now();
                                continue;
                            }
                        }
                    }
                    if plus > 0 {
                        lw.write_all(&b"+++"[..plus]).await?;
                        plus = 0;
                    }
                    lw.write_all(&up[..n]).await?;
                }
            }
        }
        self.log.lock().unwrap().drops += 1;
        self.reply(&["NO CARRIER"]).await
    }
}

// ---- the subcommand ----

#[derive(clap::Args)]
pub struct Args {
    /// TCP port on 127.0.0.1 for the device's UART (0: pick one and print it).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Answer AT+CPIN? with "SIM not inserted".
    #[arg(long)]
    no_sim: bool,
}

pub fn run(a: Args) -> Result<()> {
    let o = SimOptions { no_sim: a.no_sim, ..Default::default() };
    let sim = ModemSim::start_on(a.port, o)?;
    println!("modem simulator: UART on 127.0.0.1:{} (device.toml: modem = \"127.0.0.1:{}\")", sim.port, sim.port);
    let mut seen = 0;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let log = sim.log();
        for c in &log.commands[seen..] {
            println!("> {c}");
        }
        seen = log.commands.len();
    }
}
