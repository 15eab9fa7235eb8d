//! `cargo xtask console`: a local stand-in for Aliyun's IoT Platform OTA service.
//!
//! ```text
//!  device --TCP/TLS--> front door (net.rs) --127.0.0.1--> rumqttd <--local link--> engine.rs
//!         CONNECT checked against the registry (auth.rs);   broker      jobs, pushes, blocks
//!         refused with CONNACK 4, else spliced through
//!  device --HTTP(S) Range--> file server (net.rs) ------------------------------> job files
//! ```
//!
//! rumqttd also checks every CONNECT itself (its external auth handler runs the same registry), so
//! its loopback listener is no way around the credentials.

pub mod auth;
pub mod engine;
pub mod net;

use anyhow::{Context, Result};
use auth::{DeviceEntry, Registry};
use engine::{DigestKind, Engine, JobSpec, Package, Protocol, Status};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// TLS listeners: MQTT over TLS and HTTPS, with a certificate for 127.0.0.1.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// MQTT over TLS (0: pick a free port).
    #[serde(default)]
    pub port: u16,
    /// HTTPS (0: pick a free port). Download URLs then use https.
    #[serde(default)]
    pub https_port: u16,
}

/// What the console serves.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub devices: Vec<DeviceEntry>,
    /// Plain MQTT (0: pick a free port).
    pub mqtt_port: u16,
    /// Plain HTTP for downloads (0: pick a free port).
    pub http_port: u16,
    pub tls: Option<TlsOptions>,
    /// Rewritten (atomically) whenever something changes.
    pub status_file: Option<PathBuf>,
    /// How long download URLs stay valid (default 1 hour).
    pub url_ttl: Option<Duration>,
    /// No log lines on stderr (the demo draws progress bars).
    pub quiet: bool,
}

/// A running console. Its threads live as long as the process.
pub struct Console {
    engine: Arc<Mutex<Engine>>,
    pub mqtt_port: u16,
    pub http_port: u16,
    pub tls_port: Option<u16>,
    pub https_port: Option<u16>,
    _rt: tokio::runtime::Runtime,
}

fn bind(port: u16) -> Result<std::net::TcpListener> {
    let l =
        std::net::TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("listening on 127.0.0.1:{port}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn broker_config(port: u16, registry: Arc<Registry>) -> rumqttd::Config {
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        // Uplinks are small; a device sending more than this is broken.
        max_payload_size: 256 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let ok = registry.check(&client_id, &user, pass.as_bytes()).is_ok();
        async move { ok }
    });
    let server = rumqttd::ServerSettings {
        name: "v4".into(),
        listen: ([127, 0, 0, 1], port).into(),
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 20_000,
            max_outgoing_packet_count: 200,
            // Per subscription log: a device's download replies (a window of blocks) fit.
            max_segment_size: 1 << 20,
            max_segment_count: 3,
            ..Default::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

impl Console {
    pub fn start(o: Options) -> Result<Console> {
        net::QUIET.store(o.quiet, std::sync::atomic::Ordering::Relaxed);
        let registry = Arc::new(Registry::new(&o.devices));
        let mqtt = bind(o.mqtt_port)?;
        let http = bind(o.http_port)?;
        let (mqtt_port, http_port) = (mqtt.local_addr()?.port(), http.local_addr()?.port());
        let tls = match &o.tls {
            Some(t) => Some((net::tls_acceptor(&t.cert, &t.key)?, bind(t.port)?, bind(t.https_port)?)),
            None => None,
        };
        let tls_port = tls.as_ref().map(|t| t.1.local_addr().map(|a| a.port())).transpose()?;
        let https_port = tls.as_ref().map(|t| t.2.local_addr().map(|a| a.port())).transpose()?;
        let http_base = match https_port {
            Some(p) => format!("https://127.0.0.1:{p}"),
            None => format!("http://127.0.0.1:{http_port}"),
        };
        let ids = o.devices.iter().map(|d| (d.product_key.clone(), d.device_name.clone()));
        let mut engine = Engine::new(ids, http_base);
        if let Some(ttl) = o.url_ttl {
            engine.url_ttl = ttl;
        }
        let engine = Arc::new(Mutex::new(engine));

        // The broker, on a loopback port of its own.
        let broker_port = crate::proc::free_port()?;
        let mut broker = rumqttd::Broker::new(broker_config(broker_port, registry.clone()));
        let (mut link_tx, mut link_rx) = broker.link("aliyun-ota-console").context("linking to the broker")?;
        std::thread::Builder::new().name("rumqttd".into()).spawn(move || {
            if let Err(e) = broker.start() {
                net::log(&format!("the broker stopped: {e}"));
            }
        })?;
        crate::proc::wait_port(broker_port, "rumqttd")?;
        for f in [
            "/ota/device/inform/+/+",
            "/ota/device/progress/+/+",
            "/sys/+/+/thing/ota/firmware/get",
            "/sys/+/+/thing/file/download",
        ] {
            link_tx.subscribe(f).context("subscribing the console")?;
        }

        // The engine's thread: broker notifications in, downlinks out, timeouts, status file.
        let (e, status_file) = (engine.clone(), o.status_file.clone());
        std::thread::Builder::new().name("ota-engine".into()).spawn(move || {
            let mut written = u64::MAX;
            let mut last_write = Instant::now();
            loop {
                match link_rx.recv_deadline(Instant::now() + Duration::from_millis(50)) {
                    Ok(Some(rumqttd::Notification::Forward(f))) => {
                        let topic = String::from_utf8_lossy(&f.publish.topic).into_owned();
                        e.lock().unwrap().uplink(&topic, &f.publish.payload, Instant::now());
                    }
                    Ok(_) | Err(rumqttd::local::LinkError::RecvTimeout(_)) => {}
                    Err(err) => {
                        net::log(&format!("the broker link closed: {err}"));
                        return;
                    }
                }
                // rumqttd parks a link whose outgoing buffer filled up until the link says it
                // is ready again (its TCP links do; a local link must do it itself), or the
                // console goes deaf after ~200 uplinks in a burst.
                let _ = link_rx.ready();
                let (out, generation) = {
                    let mut g = e.lock().unwrap();
                    g.tick(Instant::now());
                    (g.take_outbox(), g.generation)
                };
                for d in out {
                    if let Err(err) = link_tx.publish(d.topic, d.payload) {
                        net::log(&format!("publishing: {err}"));
                    }
                }
                if let Some(path) = &status_file {
                    if generation != written && last_write.elapsed() > Duration::from_millis(200) {
                        let json = serde_json::to_vec_pretty(&e.lock().unwrap().status()).unwrap_or_default();
                        let tmp = path.with_extension("json.tmp");
                        if std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, path)).is_ok() {
                            written = generation;
                            last_write = Instant::now();
                        }
                    }
                }
            }
        })?;

        // The listeners.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        {
            let _g = rt.enter();
            let door = |listener: std::net::TcpListener, acceptor| -> Result<()> {
                let (registry, engine) = (registry.clone(), engine.clone());
                let l = tokio::net::TcpListener::from_std(listener)?;
                rt.spawn(net::accept_loop(l, acceptor, move |s| {
                    net::front_door(s, broker_port, registry.clone(), engine.clone())
                }));
                Ok(())
            };
            let files = |listener: std::net::TcpListener, acceptor| -> Result<()> {
                let engine = engine.clone();
                let l = tokio::net::TcpListener::from_std(listener)?;
                rt.spawn(net::accept_loop(l, acceptor, move |s| net::http(s, engine.clone())));
                Ok(())
            };
            door(mqtt, None)?;
            files(http, None)?;
            if let Some((acceptor, mqtts, https)) = tls {
                door(mqtts, Some(acceptor.clone()))?;
                files(https, Some(acceptor))?;
            }
        }
        net::log(&format!(
            "MQTT on 127.0.0.1:{mqtt_port}{}, downloads on http://127.0.0.1:{http_port}{}, {} device(s) registered",
            tls_port.map_or(String::new(), |p| format!(" and TLS 127.0.0.1:{p}")),
            https_port.map_or(String::new(), |p| format!(" and https://127.0.0.1:{p}")),
            registry.len()
        ));
        Ok(Console { engine, mqtt_port, http_port, tls_port, https_port, _rt: rt })
    }

    /// Creates a job; returns its id.
    pub fn add_job(&self, spec: JobSpec) -> u32 {
        let (v, n) = (spec.package.version.clone(), spec.package.bytes.len());
        let id = self.engine.lock().unwrap().add_job(spec, Instant::now());
        net::log(&format!("job {id}: version {v} ({n} bytes)"));
        id
    }

    pub fn status(&self) -> Status {
        self.engine.lock().unwrap().status()
    }

    /// Reads the engine under its lock.
    pub fn with<R>(&self, f: impl FnOnce(&Engine) -> R) -> R {
        f(&self.engine.lock().unwrap())
    }

    /// Waits until `done` holds (checked every 20 ms), or fails after `timeout` saying `what`.
    pub fn wait(&self, timeout: Duration, what: &str, mut done: impl FnMut(&Engine) -> bool) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if self.with(&mut done) {
                return Ok(());
            }
            anyhow::ensure!(t0.elapsed() < timeout, "timed out after {} s waiting for {what}", timeout.as_secs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---- the subcommand ----

#[derive(clap::Args)]
pub struct Args {
    /// Console settings: devices, jobs, ports, TLS, status file (see README).
    #[arg(long)]
    config: PathBuf,
}

/// `console.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default = "default_mqtt")]
    mqtt_port: u16,
    #[serde(default = "default_http")]
    http_port: u16,
    tls: Option<TlsOptions>,
    status: Option<PathBuf>,
    #[serde(default)]
    device: Vec<DeviceEntry>,
    #[serde(default)]
    job: Vec<JobEntry>,
}

fn default_mqtt() -> u16 {
    1883
}
fn default_http() -> u16 {
    8080
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobEntry {
    /// A folder made by `cargo xtask release`.
    release: PathBuf,
    #[serde(default)]
    from: Vec<String>,
    #[serde(default = "default_protocol")]
    protocol: Protocol,
    #[serde(default = "default_digest")]
    digest: DigestKind,
    #[serde(default = "default_timeout")]
    timeout_s: u64,
}

fn default_protocol() -> Protocol {
    Protocol::Mqtt
}
fn default_digest() -> DigestKind {
    DigestKind::Md5
}
fn default_timeout() -> u64 {
    600
}

pub fn run(a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    let cfg: ConfigFile = toml::from_str(&text).with_context(|| format!("{}", a.config.display()))?;
    anyhow::ensure!(!cfg.device.is_empty(), "{}: no [[device]] registered", a.config.display());
    let base = a.config.parent().unwrap_or(std::path::Path::new("."));
    let mut jobs = Vec::new();
    for j in &cfg.job {
        let package = Package::load(&base.join(&j.release))?;
        let spec = JobSpec {
            package,
            from: j.from.clone(),
            protocol: j.protocol,
            digest: j.digest,
            timeout: Duration::from_secs(j.timeout_s),
        };
        jobs.push(spec);
    }
    crate::proc::raise_fd_limit()?;
    let console = Console::start(Options {
        devices: cfg.device,
        mqtt_port: cfg.mqtt_port,
        http_port: cfg.http_port,
        tls: cfg.tls,
        status_file: cfg.status.map(|s| base.join(s)),
        url_ttl: None,
        quiet: false,
    })?;
    for j in jobs {
        console.add_job(j);
    }
    let mut shown = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let generation = console.with(|e| e.generation);
        if generation != shown {
            shown = generation;
            print!("{}", table(&console.status()));
        }
    }
}

/// The status table: one row per device.
pub fn table(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<7} {:<10} {:>4} {:>5} {:<12} detail",
        "device", "online", "version", "job", "step", "state"
    );
    for d in &s.devices {
        let (job, step, state, detail) = match d.task() {
            Some(t) => (t.job.to_string(), t.step.to_string(), format!("{:?}", t.state).to_lowercase(), t.desc.clone()),
            None => ("-".into(), "-".into(), "idle".into(), String::new()),
        };
        let detail = match &d.last_refusal {
            Some(r) if !d.online => format!("refused: {r}"),
            _ => detail,
        };
        let name = format!("{}/{}", d.product_key, d.device_name);
        let _ = writeln!(
            out,
            "{name:<28} {:<7} {:<10} {job:>4} {step:>5} {state:<12} {detail}",
            if d.online { "yes" } else { "no" },
            d.version().unwrap_or("?"),
        );
    }
    let c = &s.counts;
    let _ = writeln!(
        out,
        "messages: {} inform, {} progress, {} pushes, {} firmware/get, {} block requests, {} block replies ({} KiB), {} HTTP requests; {} connects, {} refused\n",
        c.inform,
        c.progress,
        c.pushes,
        c.firmware_get,
        c.download_requests,
        c.download_replies,
        c.download_bytes / 1024,
        c.http_requests,
        c.connects,
        c.refused
    );
    out
}

/// A device entry for the console's registry.
pub fn device(pk: &str, dn: &str, secret: &str) -> DeviceEntry {
    DeviceEntry { product_key: pk.into(), device_name: dn.into(), device_secret: secret.into() }
}
