//! What the boards with a modem (qemu-an386, nrf52840-dk) add to the device loop: settings from
//! the PROVISION page and the AT modem as the link. Each board hands in its flash regions, UART
//! and clock; nothing here knows which chip it runs on.

use crate::cellular::{ModemHttp, ModemLink, ModemModule};
use crate::driver::{self, Buffers, Clock, Exit, Settings};
use crate::modem::{ModemConfig, Shared, UartConfig};
use core::mem::MaybeUninit;
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use memory_layouts::Layout;
use shared::alink::SignMethod;
use shared::boot::Slots;
use shared::delta::Patcher;
use shared::ota::OtaMachine;
use shared::provision::{self, Provision};
use shared::time::Duration;

/// The largest MQTT packet taken: a download block (5 KiB by default; up to 8 KiB fits) with its
/// header and topic, or a push of up to 8 KiB (an HTTPS URL with an STS token, `_package_udi` and
/// batch tags); a larger one is read, discarded and refused with a reason.
pub const MQTT_RX: usize = 8192 + 512;
/// HTTPS body bytes handed to the machine at a time (one modem read at most).
const HTTP_CHUNK: usize = 1536;
/// The Aliyun module name of the cellular module's own firmware.
pub const MODEM_MODULE: &str = "modem";
/// MQTT keep-alive (s): short enough for cellular NAT timeouts.
const KEEP_ALIVE: u16 = 120;

/// The OTA path's state, in a static of the board so its RAM shows in the binary (`cargo xtask
/// size` reads `OTA_STATE`, plus the MQTT session in the task: `OTA_MQTT_SESSION`).
pub struct OtaState<U> {
    // Not `Option`s: a `None` of these is not all zeroes, which would put the whole static in
    // `.data` (its image in flash, copied at start).
    machine: MaybeUninit<OtaMachine>,
    modem: MaybeUninit<Shared<U>>,
    /// Applies differential packages (its heatshrink window and header buffer).
    patcher: MaybeUninit<Patcher>,
    /// HTTPS body chunks.
    http: [u8; HTTP_CHUNK],
    /// One MQTT packet (kept in place while the machine works on it).
    mqtt: [u8; MQTT_RX],
    /// Verify / rehash / confirm buffer.
    work: [u8; 1024],
}

impl<U> OtaState<U> {
    pub const fn new() -> Self {
        OtaState {
            machine: MaybeUninit::uninit(),
            modem: MaybeUninit::uninit(),
            patcher: MaybeUninit::uninit(),
            http: [0; HTTP_CHUNK],
            mqtt: [0; MQTT_RX],
            work: [0; 1024],
        }
    }
}

/// Bytes of the MQTT session over a modem on `U` (its send buffer and state; the receive buffer
/// is in `OTA_STATE`).
pub const fn mqtt_session_size<U: 'static>() -> u32 {
    core::mem::size_of::<crate::mqtt::Mqtt<'static, crate::modem::Socket<'static, U, NoClock>>>() as u32
}

/// A clock type for sizes only.
pub struct NoClock;

/// Declares a modem board's OTA statics for a modem on `$uart`: `OTA_STATE`, and the sizes
/// `cargo xtask size` reads beside it (`OTA_MQTT_SESSION`, `OTA_DELTA_PATCHER`, `OTA_DELTA_HEAD`).
macro_rules! ota_statics {
    ($uart:ty) => {
        #[used]
        #[no_mangle]
        pub static mut OTA_STATE: $crate::device::OtaState<$uart> = $crate::device::OtaState::new();

        /// Bytes of the MQTT session, which lives in the task's future (read by `cargo xtask size`).
        #[used]
        #[no_mangle]
        pub static OTA_MQTT_SESSION: u32 = $crate::device::mqtt_session_size::<$uart>();

        /// Bytes of the delta patcher, part of `OTA_STATE` (read by `cargo xtask size`).
        #[used]
        #[no_mangle]
        pub static OTA_DELTA_PATCHER: u32 = core::mem::size_of::<shared::delta::Patcher>() as u32;

        /// Bytes of `OtaMachine` only a delta uses (the patch's first bytes), read by `cargo xtask
        /// size`.
        #[used]
        #[no_mangle]
        pub static OTA_DELTA_HEAD: u32 = shared::ota::DELTA_HEAD_RAM as u32;
    };
}
pub(crate) use ota_statics;

/// What the board provides.
pub struct BoardSetup<'a, C> {
    pub layout: &'static Layout,
    pub clock: &'a C,
    /// The PROVISION page (or its first bytes).
    pub provision: &'a [u8],
    /// The module's UART: the rate to bring it to, RTS/CTS wired or not.
    pub uart: UartConfig,
    /// The self-test result (reaching the broker is the rest of it).
    pub self_test: bool,
    /// Prints a line the user must see (semihosting on QEMU, defmt on the embassy boards).
    pub say: fn(core::fmt::Arguments<'_>),
}

/// Runs the device; returns when it must reset (`Ok`), or why it cannot start (`Err`).
pub async fn run<U, A, R, S, D, C>(
    state: &'static mut OtaState<U>,
    f: Slots<A, D, S, R>,
    uart: U,
    b: BoardSetup<'_, C>,
) -> Result<Exit, &'static str>
where
    U: crate::modem::ModemUart,
    A: ReadNorFlash,
    R: ReadNorFlash,
    S: NorFlash,
    D: NorFlash,
    C: Clock,
{
    let OtaState { machine, modem, patcher, http, mqtt, work } = state;
    let mut f = f;
    let booted = driver::boot(&mut f, &mut work[..], b.say).map_err(|e| {
        (b.say)(format_args!("app: {}", e));
        "cannot read the boot info"
    })?;
    let prov: Provision<'_> = provision::decode(b.provision).map_err(|e| {
        (b.say)(format_args!("app: {}", e));
        "no credentials"
    })?;
    let sign_method = SignMethod::from_name(prov.sign_method).ok_or("provisioned sign_method is unknown")?;
    let mut settings = Settings::new(prov.product_key, prov.device_name, prov.device_secret, sign_method, prov.tls);
    settings.keep_alive = KEEP_ALIVE;
    let modem: &Shared<U> = modem.write(crate::cellular::shared(uart));
    let mut link = ModemLink {
        modem,
        clock: b.clock,
        cfg: ModemConfig {
            apn: prov.apn,
            host: prov.host,
            port: prov.port,
            tls: prov.tls,
            uart: b.uart,
            register_timeout: Duration::from_secs(60),
            // The module verifies the broker with the root its endpoint chains to.
            ca: Some(crate::root_ca(prov.port)),
        },
    };
    let board = driver::BoardIo {
        layout: b.layout,
        link: &mut link,
        http: &mut ModemHttp::new(modem, b.clock, crate::DOWNLOAD_CA),
        module: &mut ModemModule::new(modem, b.clock, MODEM_MODULE, crate::DOWNLOAD_CA),
        clock: b.clock,
        self_test: b.self_test,
        say: b.say,
    };
    let patcher = patcher.write(Patcher::new());
    let bufs = Buffers { mqtt: &mut mqtt[..], http: &mut http[..], work: &mut work[..], patcher };
    driver::run(booted, f, board, &settings, machine, bufs).await.map_err(|e| {
        (b.say)(format_args!("app: {}", e));
        "cannot start"
    })
}
