//! The firmware's main loop for the boards with a modem (qemu-an386, nrf52840-dk): boot info,
//! credentials from the PROVISION page, then modem bring-up, MQTT session and the OTA driver,
//! again and again, until the machine asks for a reset. Each board hands in its flash regions,
//! UART and clock; nothing here knows which chip it runs on.

use crate::driver::{self, Clock, Ctx, Exit, Http};
use crate::keys::TRUSTED_KEYS;
use crate::modem::{Modem, ModemConfig};
use crate::mqtt::{Mqtt, MqttError};
use core::mem::MaybeUninit;
use embedded_io_async::{Read, Write};
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use memory_layouts::Layout;
use shared::alink::{self, DeviceSecret, SignMethod, Topics};
use shared::boot::{boot_info, progress, LastBoot, Updater};
use shared::image::PublicKey;
use shared::ota::{BootOutcome, BootReport, Event, OtaConfig, OtaMachine};
use shared::provision::{self, Provision};
use shared::time::Duration;

/// The largest MQTT packet taken: a 4 KiB download block with its header and topic.
pub const MQTT_RX: usize = 4096 + 512;
/// MQTT keep-alive (s).
const KEEP_ALIVE: u16 = 120;

/// The OTA path's state, in a static of the board so its RAM shows in the binary
/// (`cargo xtask size` reads `OTA_STATE`, plus the MQTT session the task keeps: `OTA_MQTT_SESSION`).
pub struct OtaState<U> {
    /// The device's names (the machine's topics borrow them).
    product_key: heapless::String<64>,
    device_name: heapless::String<64>,
    /// The running image's module (the machine borrows it).
    module: heapless::String<{ shared::image::MAX_ALIYUN_STR }>,
    machine: MaybeUninit<OtaMachine<'static>>,
    modem: MaybeUninit<Modem<U>>,
    /// One MQTT payload: a download block plus its header.
    payload: [u8; MQTT_RX],
    /// Verify / rehash / confirm buffer.
    work: [u8; 1024],
}

impl<U> OtaState<U> {
    pub const fn new() -> Self {
        OtaState {
            product_key: heapless::String::new(),
            device_name: heapless::String::new(),
            module: heapless::String::new(),
            machine: MaybeUninit::uninit(),
            modem: MaybeUninit::uninit(),
            payload: [0; MQTT_RX],
            work: [0; 1024],
        }
    }
}

/// Bytes of the MQTT session over a modem on `U` (its receive and send buffers).
pub const fn mqtt_session_size<U: 'static>() -> u32 {
    core::mem::size_of::<Mqtt<&'static mut Modem<U>, MQTT_RX>>() as u32
}

/// The flash the app uses, each region as its own device (offset 0 = region start).
pub struct Flashes<A, R, S, D> {
    /// ACTIVE: the running image (read).
    pub active: A,
    /// BOOT_RECORD (read).
    pub boot_record: R,
    /// STATE (confirm, mark).
    pub state: S,
    /// DFU (download).
    pub dfu: D,
}

/// What the board provides.
pub struct Board<'a, C> {
    pub layout: &'static Layout,
    pub clock: &'a C,
    /// The PROVISION page (or its first bytes).
    pub provision: &'a [u8],
    /// The self-test result (reaching the broker is the rest of it).
    pub self_test: bool,
    /// Prints a line the user must see (semihosting on QEMU, defmt on the nRF).
    pub say: fn(core::fmt::Arguments<'_>),
}

/// Runs until the machine asks for a reset (`Ok`), or the device cannot go on (`Err`: why).
pub async fn run<U, A, R, S, D, C>(
    state: &'static mut OtaState<U>,
    mut f: Flashes<A, R, S, D>,
    uart: U,
    b: Board<'_, C>,
) -> Result<(), &'static str>
where
    U: Read + Write,
    A: ReadNorFlash,
    R: ReadNorFlash,
    S: NorFlash,
    D: NorFlash,
    C: Clock,
{
    let OtaState { product_key, device_name, module, machine, modem, payload, work } = state;
    let l = b.layout;
    let keys = TRUSTED_KEYS.map(PublicKey);
    let clock = b.clock;

    let info = boot_info(&mut f.active, &mut f.boot_record, &mut f.state, &keys, l.geometry.erased, work)
        .map_err(|_| "reading the boot info failed")?;
    let version = info.running.aliyun_version.clone().unwrap_or_default();
    (b.say)(format_args!("app: running {}", version.as_str()));
    *module = info.running.module.clone().unwrap_or_else(|| "default".try_into().unwrap());

    let prov: Provision<'_> = provision::decode(b.provision).map_err(|e| {
        (b.say)(format_args!("app: {}", e));
        "no credentials"
    })?;
    let method = SignMethod::from_name(prov.sign_method).ok_or("provisioned sign_method is unknown")?;
    // `decode` checked that both fit.
    let _ = product_key.push_str(prov.product_key);
    let _ = device_name.push_str(prov.device_name);
    let (product_key, device_name, module): (&'static str, &'static str, &'static str) =
        (product_key, device_name, module);
    let topics = Topics { product_key, device_name };
    let m = machine.write(OtaMachine::new(OtaConfig::new(topics, module, l.active.length, l.geometry.erase_size)));
    let resume = progress::load(&mut f.dfu).ok().flatten();
    let outcome = match info.last {
        LastBoot::Reverted => BootOutcome::Reverted,
        LastBoot::Refused(e) => BootOutcome::Refused(e),
        _ => BootOutcome::Nothing,
    };
    m.handle(
        clock.now(),
        Event::Booted(BootReport {
            version: &version,
            module,
            awaiting_confirm: info.awaiting_confirm,
            outcome,
            sec_cnt: info.sec_cnt,
            resume,
        }),
    );
    let mut up = Updater::new(f.dfu, f.state, l.geometry.erased, 0);
    let ctx = Ctx {
        keys: &keys,
        sec_cnt: info.sec_cnt,
        slot_size: l.active.length,
        self_test: b.self_test,
        keep_alive: Duration::from_secs(KEEP_ALIVE as u64 / 2),
        erased: l.geometry.erased,
    };
    let dev = DeviceSecret {
        product_key: prov.product_key,
        device_name: prov.device_name,
        device_secret: prov.device_secret,
    };
    let creds = alink::credentials(&dev, method, None, None, if prov.tls { 2 } else { 3 })
        .map_err(|_| "the provisioned credentials do not make a client id")?;
    let modem = modem.write(Modem::new(uart));
    let mc = ModemConfig {
        apn: prov.apn,
        host: prov.host,
        port: prov.port,
        tls: prov.tls,
        register_timeout: Duration::from_secs(60),
        // The broker's CA on 8883; the module verifies the server with it.
        ca: Some(crate::ALIYUN_IOT_ROOT_CA),
    };
    let mut http = NoHttp;
    let mut backoff = 1;
    loop {
        if let Err(e) = modem.open(clock, &mc).await {
            log::warn!("{}", e);
        } else {
            log::info!("modem: {} socket to {}:{} open", if prov.tls { "TLS" } else { "TCP" }, prov.host, prov.port);
            let c = Mqtt::<_, MQTT_RX>::connect(
                &mut *modem,
                &creds.client_id,
                &creds.username,
                &creds.password,
                KEEP_ALIVE,
            );
            match c.await {
                Err(e @ MqttError::Refused(_)) => {
                    (b.say)(format_args!("app: {}:{}: {}", prov.host, prov.port, e));
                    return Err("the broker refused the credentials");
                }
                Err(e) => log::warn!("MQTT connect: {}", e),
                Ok(mut mqtt) => {
                    let subs = driver::downlinks(&topics);
                    let subs = [subs[0].as_str(), subs[1].as_str(), subs[2].as_str()];
                    match mqtt.subscribe(&subs).await {
                        Err(e) => log::warn!("subscribe: {}", e),
                        Ok(()) => {
                            backoff = 1;
                            log::info!("connected as {} over the modem", creds.client_id.as_str());
                            let mut session = driver::Session {
                                mqtt: &mut mqtt,
                                http: &mut http,
                                clock,
                                m: &mut *m,
                                up: &mut up,
                                ctx: &ctx,
                                work: &mut work[..],
                            };
                            match session.run(&mut payload[..]).await {
                                Exit::Reset => return Ok(()),
                                Exit::Disconnected(e) => log::warn!("MQTT: {}", e),
                            }
                        }
                    }
                }
            }
        }
        log::info!("reconnecting in {} s", backoff);
        clock.sleep_until(clock.now() + Duration::from_secs(backoff)).await;
        backoff = (backoff * 2).min(30);
    }
}

/// These boards download over MQTT only (the modem's own HTTP(S) client is not driven yet): an
/// HTTPS job fails cleanly and the console is told why.
struct NoHttp;

impl Http for NoHttp {
    async fn get(&mut self, _url: &str, _from: u32) -> Result<(u16, Option<u32>), ()> {
        log::warn!("HTTPS download: not supported on this board; use MQTT stream jobs");
        Err(())
    }
    async fn read(&mut self, _buf: &mut [u8]) -> Result<usize, ()> {
        core::future::pending().await
    }
    fn close(&mut self) {}
}
