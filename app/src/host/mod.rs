//! The `host` board: the device simulated on Linux.
//!
//! One process life is one power-on: the bootloader logic (`shared::boot`, as on the chips) runs
//! over the flash file, then the app runs the OTA driver over MQTT (TCP, or TLS with rustls).
//! `Action::Reset` powers the device on again; `kill -9` is a power cut.

mod flash;
mod net;

use crate::driver::{self, Ctx, Exit};
use crate::keys::TRUSTED_KEYS;
use crate::modem::ModemConfig;
use crate::mqtt::{Mqtt, MqttError};
use core::cell::RefCell;
use embassy_embedded_hal::flash::partition::BlockingPartition;
use embassy_sync::blocking_mutex::{raw::NoopRawMutex, Mutex};
use flash::FileFlash;
use memory_layouts::{Board, Region};
use serde::Deserialize;
use shared::alink::{self, DeviceSecret, SignMethod, Topics};
use shared::boot::{boot_info, progress, LastBoot, Slots, Updater};
use shared::image::{host_self_test, PublicKey};
use shared::ota::{BootOutcome, BootReport, Event, OtaConfig, OtaMachine};
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
    #[serde(default = "default_module")]
    module: String,
    #[serde(default = "default_sign")]
    sign_method: String,
    flash: PathBuf,
    #[serde(default = "default_keep_alive")]
    keep_alive: u16,
    #[serde(default = "default_block")]
    block_size: u32,
    #[serde(default = "default_window")]
    window: usize,
    /// Reach the broker through a Quectel-style AT modem whose UART is this TCP address (the
    /// modem simulator, `cargo xtask modem-sim`); `tls` then asks the modem for AT+QSSLOPEN.
    modem: Option<String>,
    /// The modem's APN.
    #[serde(default = "default_apn")]
    apn: String,
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
fn default_module() -> String {
    "default".into()
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

/// The MQTT receive buffer: the largest block Aliyun sends (128 KiB) plus its header and topic.
const MQTT_RX: usize = 131_072 + 2048;

async fn run(cfg: Config) -> Result<(), String> {
    if !(256..=131_072).contains(&cfg.block_size) {
        return Err(format!("block_size {} is outside Aliyun's 256..=131072", cfg.block_size));
    }
    if !(1..=8).contains(&cfg.window) {
        return Err(format!("window {} is outside 1..=8", cfg.window));
    }
    let method = SignMethod::from_name(&cfg.sign_method)
        .ok_or_else(|| format!("sign_method {:?}: use hmacsha256, hmacsha1 or hmacmd5", cfg.sign_method))?;
    let host = match (&cfg.host, &cfg.instance, &cfg.region) {
        (Some(h), _, _) => h.clone(),
        (None, Some(i), _) => format!("{i}.mqtt.iothub.aliyuncs.com"),
        (None, None, Some(r)) => format!("{}.iot-as-mqtt.{r}.aliyuncs.com", cfg.product_key),
        (None, None, None) => return Err("device.toml needs `host`, `instance` or `region`".into()),
    };
    let clock = net::TokioClock(tokio::time::Instant::now());
    loop {
        match power_on(&cfg, &host, method, &clock).await? {
            PowerOff::Reset => log::info!("--- reset: power on again ---"),
        }
    }
}

enum PowerOff {
    Reset,
}

async fn power_on(cfg: &Config, host: &str, method: SignMethod, clock: &net::TokioClock) -> Result<PowerOff, String> {
    let layout = Board::Host.layout();
    let file = FileFlash::open(&cfg.flash, layout.flash.length as usize).map_err(|e| e.to_string())?;
    let m = Mutex::<NoopRawMutex, _>::new(RefCell::new(file));
    let part = |r: Region| BlockingPartition::new(&m, r.origin - layout.flash.origin, r.length);
    let keys = TRUSTED_KEYS.map(PublicKey);
    let mut buf = [0u8; 1024];

    // The bootloader.
    let mut slots = Slots {
        active: part(layout.active),
        dfu: part(layout.dfu),
        state: part(layout.state),
        boot_record: part(layout.boot_record),
    };
    let b = shared::boot::boot(&mut slots, &keys, layout.geometry.erased, &mut buf)
        .map_err(|e| format!("bootloader: {e}; the device cannot start"))?;
    let v = b.image.aliyun_version.as_deref().unwrap_or("?");
    log::info!(
        "boot: running {v} (image {}), last boot: {:?}, security counter {}",
        b.image.header.version,
        b.record.last,
        b.record.sec_cnt
    );

    // The app.
    let info =
        boot_info(&mut slots.active, &mut slots.boot_record, &mut slots.state, &keys, layout.geometry.erased, &mut buf)
            .map_err(|e| format!("reading the boot info: {e}"))?;
    let version = info.running.aliyun_version.clone().unwrap_or_default();
    let module = info.running.module.clone().unwrap_or_else(|| "default".try_into().unwrap());
    let self_test = {
        let mut body = vec![0u8; info.running.header.img_size as usize];
        let hdr = info.running.header.hdr_size as u32;
        embedded_storage::nor_flash::ReadNorFlash::read(&mut slots.active, hdr, &mut body)
            .map_err(|e| format!("{e:?}"))?;
        host_self_test(&body).unwrap_or(true)
    };
    let resume = progress::load(&mut slots.dfu).ok().flatten();
    let outcome = match info.last {
        LastBoot::Reverted => BootOutcome::Reverted,
        LastBoot::Refused(e) => BootOutcome::Refused(e),
        _ => BootOutcome::Nothing,
    };
    let topics = Topics { product_key: &cfg.product_key, device_name: &cfg.device_name };
    let mut ota = OtaConfig::new(topics, &cfg.module, layout.active.length, layout.geometry.erase_size);
    ota.block_size = cfg.block_size;
    ota.window = cfg.window;
    let mut machine = OtaMachine::new(ota);
    machine.handle(
        clock_now(clock),
        Event::Booted(BootReport {
            version: &version,
            module: &module,
            awaiting_confirm: info.awaiting_confirm,
            outcome,
            sec_cnt: info.sec_cnt,
            resume,
        }),
    );
    let Slots { dfu, state, .. } = slots;
    let mut updater = Updater::new(dfu, state, layout.geometry.erased, 0);
    let ctx = Ctx {
        keys: &keys,
        sec_cnt: info.sec_cnt,
        slot_size: layout.active.length,
        self_test,
        keep_alive: Duration::from_secs(cfg.keep_alive as u64 / 2),
        erased: layout.geometry.erased,
    };
    let dev = DeviceSecret {
        product_key: &cfg.product_key,
        device_name: &cfg.device_name,
        device_secret: &cfg.device_secret,
    };
    let creds = alink::credentials(&dev, method, None, None, if cfg.tls { 2 } else { 3 }).map_err(|e| e.to_string())?;
    let mut http = net::HostHttp::new(cfg.ca.as_deref())?;
    let mut msg = vec![0u8; cfg.block_size as usize + 1024];
    let mut work = vec![0u8; 64 * 1024];
    let mut backoff = 1;
    let mut modem = None;
    let modem_ca = match (&cfg.modem, &cfg.ca) {
        (Some(_), Some(p)) => Some(std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?),
        _ => None,
    };
    loop {
        let link = match (&cfg.modem, modem.as_mut()) {
            (None, _) => net::connect(host, cfg.port, cfg.tls, cfg.ca.as_deref()).await.map(net::Link::direct),
            (Some(uart), None) => match net::modem_uart(uart).await {
                // The UART (re)opened: bring the modem up on the next turn.
                Ok(m) => {
                    modem = Some(m);
                    continue;
                }
                Err(e) => Err(e),
            },
            (Some(uart), Some(m)) => {
                let mc = ModemConfig {
                    apn: &cfg.apn,
                    host,
                    port: cfg.port,
                    tls: cfg.tls,
                    register_timeout: Duration::from_secs(60),
                    // The module verifies the broker with `ca` if given, else Aliyun's 8883 CA.
                    ca: Some(modem_ca.as_deref().unwrap_or(crate::ALIYUN_IOT_ROOT_CA)),
                };
                match net::modem_link(m, clock, &mc).await {
                    Ok(l) => Ok(l),
                    Err(e) => {
                        modem = None;
                        Err(format!("{e} (UART {uart})"))
                    }
                }
            }
        };
        let io = match link {
            Ok(io) => io,
            Err(e) => {
                log::warn!("{e}; retrying in {backoff} s");
                tokio::time::sleep(std::time::Duration::from_secs(backoff)).await;
                backoff = (backoff * 2).min(30);
                continue;
            }
        };
        let mut mqtt =
            match Mqtt::<_, MQTT_RX>::connect(io, &creds.client_id, &creds.username, &creds.password, cfg.keep_alive)
                .await
            {
                Ok(s) => Box::new(s),
                Err(e @ MqttError::Refused(_)) => return Err(format!("{host}:{}: {e}", cfg.port)),
                Err(e) => {
                    log::warn!("MQTT connect to {host}:{}: {e}; retrying in {backoff} s", cfg.port);
                    tokio::time::sleep(std::time::Duration::from_secs(backoff)).await;
                    continue;
                }
            };
        let subs = driver::downlinks(&topics);
        let subs: Vec<&str> = subs.iter().map(|t| t.as_str()).collect();
        if let Err(e) = mqtt.subscribe(&subs).await {
            log::warn!("subscribe: {e}; reconnecting");
            continue;
        }
        backoff = 1;
        log::info!(
            "connected to {host}:{} as {} ({}), module {}",
            cfg.port,
            creds.client_id.as_str(),
            match (&cfg.modem, cfg.tls) {
                (None, true) => "TLS",
                (None, false) => "plain TCP",
                (Some(_), true) => "modem, TLS in the modem",
                (Some(_), false) => "modem, TCP",
            },
            cfg.module
        );
        let mut session = driver::Session {
            mqtt: &mut *mqtt,
            http: &mut http,
            clock,
            m: &mut machine,
            up: &mut updater,
            ctx: &ctx,
            work: &mut work,
        };
        match session.run(&mut msg).await {
            Exit::Reset => return Ok(PowerOff::Reset),
            Exit::Disconnected(e) => {
                log::warn!("MQTT: {e}; reconnecting in {backoff} s");
                tokio::time::sleep(std::time::Duration::from_secs(backoff)).await;
                backoff = (backoff * 2).min(30);
            }
        }
    }
}

fn clock_now(c: &net::TokioClock) -> shared::time::Instant {
    crate::driver::Clock::now(c)
}
