//! The `qemu-an386` board: the real firmware under `qemu-system-arm -M mps2-an386`.
//!
//! Flash is QEMU's file-backed `mps.ram` through [`shared::flash::RamNor`] (NOR rules: erase to
//! 0xFF, writes AND, 8 KiB pages, 16-byte words); the modem hangs on UART0 (QEMU's
//! `-serial chardev:modem`, a socket to the modem simulator); the log goes out by semihosting.
//! Credentials come from the PROVISION page. The OTA driver is the one every board runs.

mod rt;
mod uart;

use crate::driver::{self, Clock, Ctx, Exit, Http};
use crate::keys::TRUSTED_KEYS;
use crate::modem::{Modem, ModemConfig};
use crate::mqtt::{Mqtt, MqttError};
use core::mem::MaybeUninit;
use cortex_m_rt::{entry, exception, ExceptionFrame};
use cortex_m_semihosting::hprintln;
use embedded_storage::nor_flash::ReadNorFlash;
use memory_layouts::{Board, Region};
use shared::alink::{self, DeviceSecret, SignMethod, Topics};
use shared::boot::{boot_info, progress, LastBoot, Updater};
use shared::flash::RamNor;
use shared::image::{PublicKey, SliceFlash};
use shared::ota::{BootOutcome, BootReport, Event, OtaConfig, OtaMachine};
use shared::provision::{self, Provision};
use shared::time::Duration;
use uart::Uart;

const BOARD: Board = Board::QemuAn386;
/// The largest MQTT packet taken: a 4 KiB download block with its header and topic.
const MQTT_RX: usize = 4096 + 512;
/// MQTT keep-alive (s).
const KEEP_ALIVE: u16 = 120;

type Flash = RamNor<'static, 8192, 16>;

/// The OTA path's state, allocated statically so its RAM shows in the binary (`cargo xtask size`
/// reports it, with the MQTT session the task keeps on the stack: [`OTA_MQTT_SESSION`]).
pub struct OtaState {
    /// The device's names (the machine's topics borrow them).
    product_key: heapless::String<64>,
    device_name: heapless::String<64>,
    /// The running image's module (the machine borrows it).
    module: heapless::String<{ shared::image::MAX_ALIYUN_STR }>,
    machine: MaybeUninit<OtaMachine<'static>>,
    modem: MaybeUninit<Modem<Uart>>,
    /// One MQTT payload: a download block plus its header.
    payload: [u8; MQTT_RX],
    /// Verify / rehash / confirm buffer.
    work: [u8; 1024],
}

#[used]
#[no_mangle]
pub static mut OTA_STATE: OtaState = OtaState {
    product_key: heapless::String::new(),
    device_name: heapless::String::new(),
    module: heapless::String::new(),
    machine: MaybeUninit::uninit(),
    modem: MaybeUninit::uninit(),
    payload: [0; MQTT_RX],
    work: [0; 1024],
};

/// Bytes of the MQTT session (its receive and send buffers), which lives in the task's future.
#[used]
#[no_mangle]
pub static OTA_MQTT_SESSION: u32 = core::mem::size_of::<Mqtt<&'static mut Modem<Uart>, MQTT_RX>>() as u32;

/// A region of `mps.ram` as a byte slice.
///
/// # Safety
/// The region must be used through one slice at a time (the app's regions never overlap).
unsafe fn region(r: Region) -> &'static mut [u8] {
    core::slice::from_raw_parts_mut(r.origin as *mut u8, r.length as usize)
}

#[entry]
fn main() -> ! {
    let mut p = cortex_m::Peripherals::take().unwrap();
    log::set_logger(&Semihosting).ok();
    log::set_max_level(log::LevelFilter::Info);
    rt::init(p.SYST);
    let uart = Uart::init(&mut p.NVIC);
    // SAFETY: main runs once; nothing else takes OTA_STATE.
    let state = unsafe { &mut *core::ptr::addr_of_mut!(OTA_STATE) };
    let e = rt::block_on(run(state, uart));
    hprintln!("app: {}; resetting in 10 s", e);
    let clock = rt::SysTickClock;
    rt::block_on(clock.sleep_until(clock.now() + Duration::from_secs(10)));
    cortex_m::peripheral::SCB::sys_reset()
}

/// Runs until the machine asks for a reset (`Ok`), or the device cannot go on (`Err`: then it
/// says why and resets later).
async fn run(state: &'static mut OtaState, uart: Uart) -> &'static str {
    let OtaState { product_key, device_name, module, machine, modem, payload, work } = state;
    let l = BOARD.layout();
    let keys = TRUSTED_KEYS.map(PublicKey);
    let clock = rt::SysTickClock;

    // SAFETY: ACTIVE (this image) and BOOT_RECORD are only read; STATE, DFU and PROVISION are
    // each taken once, here.
    let (active, record, state_flash, dfu, prov_page) =
        unsafe { (&*region(l.active), &*region(l.boot_record), region(l.state), region(l.dfu), &*region(l.provision)) };
    let (mut active, mut record) = (SliceFlash(active), SliceFlash(record));
    let (mut state_flash, mut dfu) = (Flash::new(state_flash), Flash::new(dfu));

    let info = match boot_info(&mut active, &mut record, &mut state_flash, &keys, l.geometry.erased, work) {
        Ok(i) => i,
        Err(_) => return "reading the boot info failed",
    };
    let version = info.running.aliyun_version.clone().unwrap_or_default();
    hprintln!("app: running {}", version.as_str());
    *module = info.running.module.clone().unwrap_or_else(|| "default".try_into().unwrap());

    let mut prov_buf = [0u8; provision::HEADER + provision::MAX_PAYLOAD];
    let _ = SliceFlash(prov_page).read(0, &mut prov_buf);
    let prov: Provision<'_> = match provision::decode(&prov_buf) {
        Ok(p) => p,
        Err(e) => {
            hprintln!("app: {}", e);
            return "no credentials";
        }
    };
    let Some(method) = SignMethod::from_name(prov.sign_method) else { return "provisioned sign_method is unknown" };
    // `decode` checked both fit.
    let _ = product_key.push_str(prov.product_key);
    let _ = device_name.push_str(prov.device_name);
    let (product_key, device_name): (&'static str, &'static str) = (product_key, device_name);
    let topics = Topics { product_key, device_name };
    let module: &'static str = module;
    let m = machine.write(OtaMachine::new(OtaConfig::new(topics, module, l.active.length, l.geometry.erase_size)));
    let resume = progress::load(&mut dfu).ok().flatten();
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
    let mut up = Updater::new(dfu, state_flash, l.geometry.erased, 0);
    let ctx = Ctx {
        keys: &keys,
        sec_cnt: info.sec_cnt,
        slot_size: l.active.length,
        // The self-test is reaching the broker through the modem (the session runs it once
        // connected); a build with `self-test-fails` fails it, to show the rollback.
        self_test: !cfg!(feature = "self-test-fails"),
        keep_alive: Duration::from_secs(KEEP_ALIVE as u64 / 2),
        erased: l.geometry.erased,
    };
    let dev = DeviceSecret {
        product_key: prov.product_key,
        device_name: prov.device_name,
        device_secret: prov.device_secret,
    };
    let Ok(creds) = alink::credentials(&dev, method, None, None, if prov.tls { 2 } else { 3 }) else {
        return "the provisioned credentials do not make a client id";
    };
    let modem = modem.write(Modem::new(uart));
    let mc = ModemConfig {
        apn: prov.apn,
        host: prov.host,
        port: prov.port,
        tls: prov.tls,
        register_timeout: Duration::from_secs(60),
    };
    let mut http = NoHttp;
    let mut backoff = 1;
    loop {
        let retry = match modem.open(&clock, &mc).await {
            Err(e) => {
                log::warn!("{}", e);
                true
            }
            Ok(()) => {
                log::info!(
                    "modem: {} socket to {}:{} open",
                    if prov.tls { "TLS" } else { "TCP" },
                    prov.host,
                    prov.port
                );
                match Mqtt::<_, MQTT_RX>::connect(
                    &mut *modem,
                    &creds.client_id,
                    &creds.username,
                    &creds.password,
                    KEEP_ALIVE,
                )
                .await
                {
                    Err(e @ MqttError::Refused(_)) => {
                        hprintln!("app: {}:{}: {}", prov.host, prov.port, e);
                        return "the broker refused the credentials";
                    }
                    Err(e) => {
                        log::warn!("MQTT connect: {}", e);
                        true
                    }
                    Ok(mut mqtt) => {
                        let subs = driver::downlinks(&topics);
                        let subs = [subs[0].as_str(), subs[1].as_str(), subs[2].as_str()];
                        if let Err(e) = mqtt.subscribe(&subs).await {
                            log::warn!("subscribe: {}", e);
                            true
                        } else {
                            backoff = 1;
                            log::info!("connected as {} over the modem", creds.client_id.as_str());
                            let mut session = driver::Session {
                                mqtt: &mut mqtt,
                                http: &mut http,
                                clock: &clock,
                                m: &mut *m,
                                up: &mut up,
                                ctx: &ctx,
                                work: &mut work[..],
                            };
                            match session.run(&mut payload[..]).await {
                                Exit::Reset => {
                                    hprintln!("app: reset");
                                    cortex_m::peripheral::SCB::sys_reset()
                                }
                                Exit::Disconnected(e) => {
                                    log::warn!("MQTT: {}", e);
                                    true
                                }
                            }
                        }
                    }
                }
            }
        };
        if retry {
            log::info!("reconnecting in {} s", backoff);
            clock.sleep_until(clock.now() + Duration::from_secs(backoff)).await;
            backoff = (backoff * 2).min(30);
        }
    }
}

/// This board downloads over MQTT only (the modem's own HTTP(S) client is not driven yet): an
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

/// The `log` facade over semihosting (QEMU prints it on its stdout).
struct Semihosting;

impl log::Log for Semihosting {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        hprintln!("{} {}", r.level(), r.args());
    }
    fn flush(&self) {}
}

/// Feeds the watchdog the bootloader started.
pub fn feed_watchdog() {
    const WDOG: usize = 0x4000_8000;
    // SAFETY: the CMSDK watchdog's LOCK and INTCLR registers.
    unsafe {
        core::ptr::write_volatile((WDOG + 0xC00) as *mut u32, 0x1ACC_E551); // unlock
        core::ptr::write_volatile((WDOG + 0x00C) as *mut u32, 1); // INTCLR: clear + reload
        core::ptr::write_volatile((WDOG + 0xC00) as *mut u32, 0); // lock
    }
}

#[exception]
unsafe fn HardFault(_ef: &ExceptionFrame) -> ! {
    cortex_m::peripheral::SCB::sys_reset()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("app: panic: {}", info);
    cortex_m::peripheral::SCB::sys_reset()
}
