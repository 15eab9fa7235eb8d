//! The `host` board: the device simulated on Linux.
//!
//! One process life is one power-on: the bootloader logic (`shared::boot`, as on the chips) runs
//! over the flash file, then the app runs the OTA driver over MQTT (TCP, or TLS with rustls).
//! `Action::Reset` powers the device on again; `kill -9` is a power cut.

mod flash;
mod net;

use crate::driver::{self, Buffers, Exit, Settings};
use core::cell::RefCell;
use embassy_embedded_hal::flash::partition::BlockingPartition;
use embassy_sync::blocking_mutex::{raw::NoopRawMutex, Mutex};
use flash::FileFlash;
use memory_layouts::{Board, Region};
use serde::Deserialize;
use shared::alink::SignMethod;
use shared::boot::Slots;
use shared::image::{host_behaviour, PublicKey};
use shared::time::Duration;
use std::path::PathBuf;

/// `device.toml`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    product_key: String,
    device_name: String,
    device_secret: String,
    /// MQTT host; default `{product_key}.iot-as-mqtt.{region}.aliyuncs.com`.
    host: Option<String>,
    /// Legacy public instance: host `{product_key}.iot-as-mqtt.{region}.aliyuncs.com`.
    region: Option<String>,
    /// Instance with an ID (console "Instance details"): host `{instance}.mqtt.iothub.aliyuncs.com`.
    instance: Option<String>,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_tls")]
    tls: bool,
    /// Extra CA certificates (PEM) besides the Mozilla roots and the Aliyun IoT Root CA. With
    /// `modem`: the CA the module verifies the broker with (default: the Aliyun IoT Root CA).
    ca: Option<PathBuf>,
    #[serde(default = "default_sign")]
    sign_method: String,
    flash: PathBuf,
    #[serde(default = "default_keep_alive")]
    keep_alive: u16,
    #[serde(default = "default_block")]
    block_size: u32,
    #[serde(default = "default_window")]
    window: usize,
    /// `firmware/get` every this many seconds besides the one at connect (jobs without push).
    #[serde(default = "default_pull")]
    pull_interval_s: u64,
    /// How long a new image may try to reach the broker before it is reverted.
    #[serde(default = "default_confirm")]
    confirm_deadline_s: u64,
    /// Reach the broker through a Quectel-style AT modem whose UART is this serial port (a path:
    /// the modem simulator's pty, `cargo xtask modem-sim --tty`) or TCP address (the simulator
    /// without a line rate); `tls` then asks the modem for AT+QSSLOPEN.
    modem: Option<String>,
    /// With `modem`: the UART rate to run the module at (AT+IPR; a serial port only).
    #[serde(default = "default_modem_rate")]
    modem_rate: u32,
    /// The modem's APN.
    #[serde(default = "default_apn")]
    apn: String,
    /// With `modem`: the CA (PEM) the module verifies download hosts with, besides the bundled
    /// GlobalSign roots of Aliyun's package hosts.
    download_ca: Option<PathBuf>,
    /// With `modem`: the Aliyun module name of the cellular module's own firmware.
    #[serde(default = "default_module_name")]
    module_name: String,
}

fn default_module_name() -> String {
    "modem".into()
}

fn default_modem_rate() -> u32 {
    921_600
}

fn default_apn() -> String {
    "CMNET".into()
}

fn default_port() -> u16 {
    8883
}
fn default_tls() -> bool {
    true
}
fn default_sign() -> String {
    "hmacsha256".into()
}
fn default_keep_alive() -> u16 {
    300
}
/// Blocks as large as RAM allows: on Linux 64 KiB (an MCU uses 1-4 KiB). Fewer, larger blocks
/// is what makes a stream fast when the round trip is short.
fn default_block() -> u32 {
    65536
}
fn default_window() -> usize {
    4
}
fn default_pull() -> u64 {
    shared::ota::DEFAULT_PULL.as_millis() / 1000
}
fn default_confirm() -> u64 {
    shared::ota::DEFAULT_CONFIRM.as_millis() / 1000
}

fn fatal(msg: impl std::fmt::Display) -> ! {
    log::error!("{msg}");
    std::process::exit(2)
}

pub fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let mut args = std::env::args().skip(1);
    let path = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(p)) => PathBuf::from(p),
        _ => fatal("usage: app --config device.toml (run it with `cargo xtask device --config device.toml`)"),
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| fatal(format!("reading {}: {e}", path.display())));
    let cfg: Config = toml::from_str(&text).unwrap_or_else(|e| fatal(format!("{}: {e}", path.display())));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cfg)) {
        fatal(e)
    }
}

/// The MQTT receive buffer: the largest block Aliyun sends (128 KiB) plus its header and topic
/// (a push with the longest extData and URL fits too).
const MQTT_RX: usize = 131_072 + 2048;

async fn run(cfg: Config) -> Result<(), String> {
    let method = SignMethod::from_name(&cfg.sign_method)
        .ok_or_else(|| format!("sign_method {:?}: use hmacsha256, hmacsha1 or hmacmd5", cfg.sign_method))?;
    let host = match (&cfg.host, &cfg.instance, &cfg.region) {
        (Some(h), _, _) => h.clone(),
        (None, Some(i), _) => format!("{i}.mqtt.iothub.aliyuncs.com"),
        (None, None, Some(r)) => format!("{}.iot-as-mqtt.{r}.aliyuncs.com", cfg.product_key),
        (None, None, None) => return Err("device.toml needs `host`, `instance` or `region`".into()),
    };
    let modem_ca = match (&cfg.modem, &cfg.ca) {
        (Some(_), Some(p)) => Some(std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?),
        _ => None,
    };
    let mut download_ca = crate::DOWNLOAD_CA.to_vec();
    if let (Some(_), Some(p)) = (&cfg.modem, &cfg.download_ca) {
        download_ca.extend(std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?);
    }
    let clock = net::TokioClock(tokio::time::Instant::now());
    loop {
        match power_on(&cfg, &host, method, &clock, modem_ca.as_deref(), &download_ca).await? {
            Exit::Reset => log::info!("--- reset: power on again ---"),
            Exit::BadCredentials(code) => {
                return Err(format!("{host}:{}: {}", cfg.port, crate::mqtt::MqttError::Refused(code)))
            }
        }
    }
}

async fn power_on(
    cfg: &Config,
    host: &str,
    method: SignMethod,
    clock: &net::TokioClock,
    modem_ca: Option<&[u8]>,
    download_ca: &[u8],
) -> Result<Exit, String> {
    let layout = Board::Host.layout();
    let file = FileFlash::open(&cfg.flash, layout.flash.length as usize).map_err(|e| e.to_string())?;
    let m = Mutex::<NoopRawMutex, _>::new(RefCell::new(file));
    let part = |r: Region| BlockingPartition::new(&m, r.origin - layout.flash.origin, r.length);
    let keys = crate::keys::TRUSTED_KEYS.map(PublicKey);
    let mut buf = [0u8; 1024];

    // The bootloader.
    let mut slots = Slots {
        active: part(layout.active),
        dfu: part(layout.dfu),
        state: part(layout.state),
        boot_record: part(layout.boot_record),
    };
    let policy = shared::boot::Policy { keys: &keys, boot_attempts: layout.boot_attempts };
    let b = shared::boot::boot(&mut slots, &policy, &mut buf)
        .map_err(|e| format!("bootloader: {e}; the device cannot start"))?;
    log::info!(
        "boot: running {} (image {}), last boot: {:?}, security counter {}",
        b.image.aliyun_version.as_deref().unwrap_or("?"),
        b.image.header.version,
        b.record.last,
        b.record.sec_cnt
    );
    // The simulated firmware: what its body says it does.
    let behaviour = {
        let mut body = vec![0u8; b.image.header.img_size as usize];
        let hdr = b.image.header.hdr_size as u32;
        embedded_storage::nor_flash::ReadNorFlash::read(&mut slots.active, hdr, &mut body)
            .map_err(|e| format!("{e:?}"))?;
        host_behaviour(&body).unwrap_or_default()
    };
    let wrong = format!("{}-but-this-build-lost-it", cfg.device_secret);
    let secret = if behaviour.login { cfg.device_secret.as_str() } else { wrong.as_str() };
    let settings = Settings {
        keep_alive: cfg.keep_alive,
        block_size: cfg.block_size,
        window: cfg.window,
        pull_interval: Duration::from_secs(cfg.pull_interval_s),
        confirm_deadline: Duration::from_secs(cfg.confirm_deadline_s),
        ..Settings::new(&cfg.product_key, &cfg.device_name, secret, method, cfg.tls)
    };
    let say: fn(core::fmt::Arguments<'_>) = |args| log::info!("{args}");
    let Slots { active, dfu, state, boot_record } = slots;
    let mut flashes = Slots { active, boot_record, state, dfu };
    let (mut rx, mut body, mut work) = (vec![0u8; MQTT_RX], vec![0u8; 16 * 1024], vec![0u8; 64 * 1024]);
    let booted = driver::boot(&mut flashes, &mut work, say).map_err(|e| e.to_string())?;
    let mut patcher = Box::new(shared::delta::Patcher::new());
    let bufs = Buffers { mqtt: &mut rx, http: &mut body, work: &mut work, patcher: &mut patcher };
    let mut machine = core::mem::MaybeUninit::uninit();
    let self_test = behaviour.self_test;
    let r = match cfg.modem.as_deref() {
        None => {
            let mut link = net::HostLink { host, port: cfg.port, tls: cfg.tls, ca: cfg.ca.as_deref() };
            let mut http = net::HostHttp::new(cfg.ca.as_deref())?;
            let board = driver::BoardIo {
                layout,
                link: &mut link,
                http: &mut http,
                module: &mut driver::NoModule,
                clock,
                self_test,
                say,
            };
            driver::run(booted, flashes, board, &settings, &mut machine, bufs).await
        }
        Some(uart) => {
            // The modem on its "UART", for this power-on (the module keeps running across the
            // device's resets, as a real one does; its state is the simulator's).
            let modem = crate::cellular::shared(net::modem_uart(uart).await?);
            let mut link = crate::cellular::ModemLink {
                modem: &modem,
                clock,
                cfg: crate::modem::ModemConfig {
                    // A pty has its own flow control; a module on a real port wants RTS/CTS.
                    uart: crate::modem::UartConfig { rate: cfg.modem_rate, rtscts: true },
                    apn: &cfg.apn,
                    host,
                    port: cfg.port,
                    tls: cfg.tls,
                    register_timeout: Duration::from_secs(60),
                    // The module verifies the broker with `ca` if given, else with its endpoint's root.
                    ca: Some(modem_ca.unwrap_or_else(|| crate::root_ca(cfg.port))),
                },
            };
            let mut http = crate::cellular::ModemHttp::new(&modem, clock, download_ca);
            let mut module = crate::cellular::ModemModule::new(&modem, clock, &cfg.module_name, download_ca);
            let board = driver::BoardIo {
                layout,
                link: &mut link,
                http: &mut http,
                module: &mut module,
                clock,
                self_test,
                say,
            };
            driver::run(booted, flashes, board, &settings, &mut machine, bufs).await
        }
    };
    r.map_err(|e| e.to_string())
}
