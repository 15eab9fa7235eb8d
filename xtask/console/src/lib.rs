//! The local stand-in for Aliyun's IoT Platform OTA service (the Aliyun twin), as strict as it
//! (the rules are listed in `engine.rs` and `net.rs`); `cargo xtask console` serves one from a
//! `console.toml` ([`serve`]), the test rigs, the demo, the benches and the tests start one in
//! process ([`Console::start`]).
//!
//! ```text
//!  device --TCP/TLS--> front door (net.rs) --127.0.0.1--> rumqttd <--local link--> engine.rs
//!         CONNECT checked (auth.rs: credentials;        broker      jobs, pushes, blocks
//!         keep-alive, securemode), refused with its CONNACK code; then every packet
//!         filtered: own topics only, 256 KB, `_ss=1` subscribed by the server
//!  device --HTTP(S) Range--> file server (net.rs) ------------------------------> job files
//! ```
//!
//! rumqttd also checks every CONNECT itself (its external auth handler runs the same registry), so
//! its loopback listener is no way around the credentials. With `outside_broker` the engine is a
//! client of another broker (mosquitto, for interop) and nothing is filtered.
//!
//! Modules: [`auth`] (device registry, CONNECT credentials), [`engine`] (jobs, the devices'
//! tasks, MQTT block server, release packages loaded from `cargo xtask release` folders), [`net`]
//! (front door, HTTP(S) file server), [`tls`] (test certificates made by openssl).
//!
//! What it may use: `shared` (the wire formats it checks), `machine` (ports, processes,
//! openssl). It may not use the test rigs (`testbed`) or the CLI (`xtask`): they use it.

pub mod auth;
pub mod engine;
pub mod net;
pub mod tls;

use anyhow::{Context, Result};
use auth::{DeviceEntry, Registry};
use engine::{BlockService, DigestKind, Engine, JobSpec, Package, Protocol, Status};
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
    /// How long download URLs stay valid (default 24 hours).
    pub url_ttl: Option<Duration>,
    /// How block requests are served (default: all at once).
    pub blocks: BlockService,
    /// Where download URLs point instead of the console's own HTTP(S) server (a CDN in front).
    pub download_base: Option<String>,
    /// No log lines on stderr (the demo draws progress bars).
    pub quiet: bool,
    /// The engine on an outside broker on 127.0.0.1 (mosquitto, for interop tests) as an MQTT
    /// client, instead of its own broker behind the front door (no credential or topic checks).
    pub outside_broker: Option<u16>,
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

/// The engine's thread: uplinks in (`recv` until a deadline), downlinks out (`send`), timeouts,
/// the status file.
fn spawn_pump(
    e: Arc<Mutex<Engine>>,
    status_file: Option<PathBuf>,
    mut recv: impl FnMut(Instant) -> Result<Option<(String, Vec<u8>)>, String> + Send + 'static,
    mut send: impl FnMut(String, Vec<u8>) -> Result<(), String> + Send + 'static,
) -> Result<()> {
    std::thread::Builder::new().name("ota-engine".into()).spawn(move || {
        let mut written = u64::MAX;
        let mut last_write = Instant::now();
        let mut last_tick = Instant::now();
        loop {
            match recv(Instant::now() + Duration::from_millis(50)) {
                Ok(Some((topic, payload))) => e.lock().unwrap().uplink(&topic, &payload, Instant::now()),
                Ok(None) => {}
                Err(err) => {
                    net::log(&format!("the broker link closed: {err}"));
                    return;
                }
            }
            let (out, generation) = {
                let mut g = e.lock().unwrap();
                if last_tick.elapsed() >= Duration::from_millis(100) {
                    last_tick = Instant::now();
                    g.tick(last_tick); // timeouts are minutes: no need to look at every uplink
                }
                (g.take_outbox(), g.generation)
            };
            for d in out {
                if let Err(err) = send(d.topic, d.payload) {
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
    Ok(())
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
        let http_base = o.download_base.clone().unwrap_or(http_base);
        let mut engine = Engine::new(ids, http_base, Instant::now());
        if let Some(ttl) = o.url_ttl {
            engine.url_ttl = ttl;
        }
        engine.blocks = o.blocks;
        engine.door = o.outside_broker.is_none();
        let engine = Arc::new(Mutex::new(engine));
        const UPLINKS: [&str; 4] = [
            "/ota/device/inform/+/+",
            "/ota/device/progress/+/+",
            "/sys/+/+/thing/ota/firmware/get",
            "/sys/+/+/thing/file/download",
        ];

        let broker_port = match o.outside_broker {
            Some(port) => {
                // The engine as a client of the outside broker.
                machine::proc::wait_port(port, "the outside broker")?;
                let mut mo = rumqttc::MqttOptions::new("aliyun-ota-console", "127.0.0.1", port);
                mo.set_keep_alive(Duration::from_secs(30));
                mo.set_max_packet_size(1 << 20, 1 << 20);
                let (client, mut conn) = rumqttc::Client::new(mo, 1024);
                for f in UPLINKS {
                    client.subscribe(f, rumqttc::QoS::AtMostOnce).context("subscribing the console")?;
                }
                let (tx, rx) = std::sync::mpsc::channel::<(String, Vec<u8>)>();
                std::thread::Builder::new().name("console-mqtt".into()).spawn(move || {
                    for ev in conn.iter() {
                        match ev {
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                                if tx.send((p.topic, p.payload.to_vec())).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                net::log(&format!("the outside broker link: {e}"));
                                std::thread::sleep(Duration::from_millis(200));
                            }
                        }
                    }
                })?;
                let recv = move |deadline: Instant| match rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(m) => Ok(Some(m)),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
                    Err(e) => Err(e.to_string()),
                };
                let send = move |topic: String, payload: Vec<u8>| {
                    client.publish(topic, rumqttc::QoS::AtMostOnce, false, payload).map_err(|e| e.to_string())
                };
                spawn_pump(engine.clone(), o.status_file.clone(), recv, send)?;
                std::thread::sleep(Duration::from_millis(300)); // its subscriptions in place
                port
            }
            None => {
                // The broker, on a loopback port of its own.
                let broker_port = machine::proc::free_port()?;
                let mut broker = rumqttd::Broker::new(broker_config(broker_port, registry.clone()));
                let (mut link_tx, mut link_rx) = broker.link("aliyun-ota-console").context("linking to the broker")?;
                std::thread::Builder::new().name("rumqttd".into()).spawn(move || {
                    if let Err(e) = broker.start() {
                        net::log(&format!("the broker stopped: {e}"));
                    }
                })?;
                machine::proc::wait_port(broker_port, "rumqttd")?;
                for f in UPLINKS {
                    link_tx.subscribe(f).context("subscribing the console")?;
                }
                let recv = move |deadline: Instant| {
                    let r = match link_rx.recv_deadline(deadline) {
                        Ok(Some(rumqttd::Notification::Forward(f))) => Ok(Some((
                            String::from_utf8_lossy(&f.publish.topic).into_owned(),
                            f.publish.payload.to_vec(),
                        ))),
                        Ok(_) | Err(rumqttd::local::LinkError::RecvTimeout(_)) => Ok(None),
                        Err(err) => Err(err.to_string()),
                    };
                    // rumqttd parks a link whose outgoing buffer filled up until the link says it
                    // is ready again (its TCP links do; a local link must do it itself), or the
                    // console goes deaf after ~200 uplinks in a burst.
                    let _ = link_rx.ready();
                    r
                };
                let send = move |topic: String, payload: Vec<u8>| {
                    link_tx.publish(topic, payload).map(|_| ()).map_err(|e| e.to_string())
                };
                spawn_pump(engine.clone(), o.status_file.clone(), recv, send)?;
                broker_port
            }
        };

        // The listeners.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        {
            let _g = rt.enter();
            let sessions = Arc::new(net::Sessions::default());
            let door = |listener: std::net::TcpListener, acceptor: Option<tokio_rustls::TlsAcceptor>| -> Result<()> {
                let (registry, engine, sessions) = (registry.clone(), engine.clone(), sessions.clone());
                let l = tokio::net::TcpListener::from_std(listener)?;
                let tls = acceptor.is_some();
                rt.spawn(net::accept_loop(l, acceptor, move |s| {
                    net::front_door(s, tls, broker_port, registry.clone(), engine.clone(), sessions.clone())
                }));
                Ok(())
            };
            let files = |listener: std::net::TcpListener, acceptor| -> Result<()> {
                let engine = engine.clone();
                let l = tokio::net::TcpListener::from_std(listener)?;
                rt.spawn(net::accept_loop(l, acceptor, move |s| net::http(s, engine.clone())));
                Ok(())
            };
            // On an outside broker the devices connect to it; the console's MQTT port is unused.
            if o.outside_broker.is_none() {
                door(mqtt, None)?;
            }
            files(http, None)?;
            if let Some((acceptor, mqtts, https)) = tls {
                if o.outside_broker.is_none() {
                    door(mqtts, Some(acceptor.clone()))?;
                }
                files(https, Some(acceptor))?;
            }
        }
        net::log(&format!(
            "MQTT on 127.0.0.1:{mqtt_port}{}, downloads on http://127.0.0.1:{http_port}{}, {} device(s) registered",
            tls_port.map_or(String::new(), |p| format!(" and TLS 127.0.0.1:{p}")),
            https_port.map_or(String::new(), |p| format!(" and https://127.0.0.1:{p}")),
            registry.len()
        ));
        let mqtt_port = o.outside_broker.unwrap_or(mqtt_port);
        Ok(Console { engine, mqtt_port, http_port, tls_port, https_port, _rt: rt })
    }

    /// Creates a job (refused as Aliyun's API would); returns its id.
    pub fn add_job(&self, spec: JobSpec) -> Result<u32> {
        let (v, n) = (spec.package.version.clone(), spec.package.bytes.len());
        let id = self.engine.lock().unwrap().add_job(spec, Instant::now())?;
        net::log(&format!("job {id}: version {v} ({n} bytes)"));
        Ok(id)
    }

    pub fn status(&self) -> Status {
        self.engine.lock().unwrap().status()
    }

    /// Changes the engine under its lock (its service modes, for tests and benches).
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        f(&mut self.engine.lock().unwrap())
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

// ---- `cargo xtask console`: a console from a config file ----

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
    /// Ship the release's differential package from this version (`release --delta-from`)
    /// instead of its image; `from` is then that version.
    delta: Option<String>,
    #[serde(default)]
    from: Vec<String>,
    #[serde(default = "default_protocol")]
    protocol: Protocol,
    #[serde(default = "default_digest")]
    digest: DigestKind,
    /// TimeoutInMinutes, from the device's first progress report (none when absent).
    timeout_min: Option<u64>,
    /// NeedPush: false means devices must pull (`firmware/get`).
    #[serde(default = "default_true")]
    need_push: bool,
    /// TargetSelection SPECIFIC: only these device names (default: every registered device).
    devices: Option<Vec<String>>,
    /// extData: batch tags (up to 10), and `udi` as `_package_udi`.
    #[serde(default)]
    tags: std::collections::BTreeMap<String, String>,
    udi: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_protocol() -> Protocol {
    Protocol::Mqtt
}
fn default_digest() -> DigestKind {
    DigestKind::Md5
}

/// Serves the console described by `config` (a `console.toml`: devices, jobs, ports, TLS, status
/// file; see README) and prints the status table whenever it changes, until killed.
pub fn serve(config: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let cfg: ConfigFile = toml::from_str(&text).with_context(|| format!("{}", config.display()))?;
    anyhow::ensure!(!cfg.device.is_empty(), "{}: no [[device]] registered", config.display());
    let base = config.parent().unwrap_or(std::path::Path::new("."));
    let mut jobs = Vec::new();
    for j in &cfg.job {
        let package = match &j.delta {
            Some(from) => Package::load_delta(&base.join(&j.release), from)?,
            None => Package::load(&base.join(&j.release))?,
        };
        let mut ext_data: Vec<(String, String)> = j.tags.clone().into_iter().collect();
        ext_data.extend(j.udi.clone().map(|u| ("_package_udi".to_string(), u)));
        let from = match (&j.delta, j.from.is_empty()) {
            (Some(d), true) => vec![d.clone()],
            _ => j.from.clone(),
        };
        let spec = JobSpec {
            from,
            digest: j.digest,
            timeout: j.timeout_min.map(|m| Duration::from_secs(m * 60)),
            need_push: j.need_push,
            devices: j.devices.clone(),
            ext_data,
            ..JobSpec::new(package, j.protocol)
        };
        jobs.push(spec);
    }
    machine::proc::raise_fd_limit()?;
    let console = Console::start(Options {
        devices: cfg.device,
        mqtt_port: cfg.mqtt_port,
        http_port: cfg.http_port,
        tls: cfg.tls,
        status_file: cfg.status.map(|s| base.join(s)),
        quiet: false,
        ..Default::default()
    })?;
    for j in jobs {
        console.add_job(j)?;
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
