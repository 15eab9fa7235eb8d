//! The AT modem of app/src/modem.rs (line splitting, responses to every command of the bring-up,
//! `+QFUPL`, the socket URCs, `+QIRD`/`+QSSLRECV` framing, the send prompt, FOTA URCs) against a
//! modem that answers with the input. A 0x00 byte is a pause (the next read waits past the command's timeout).
//! Never panics, always ends. First byte: bit 0 TLS, bit 1 upload a CA, bit 2 RTS/CTS (AT+IFC),
//! the high nibble seeds the read sizes; the rest is what the modem says.
#![no_main]
use embassy_futures::block_on;
use embedded_io_async::{Read, Write};
use fuzz::modem::{Modem, ModemConfig, Shared, Socket, UartConfig, MQTT};
use fuzz::{FakeClock, Script};
use libfuzzer_sys::fuzz_target;
use shared::time::Duration;

const CA: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, said)) = data.split_first() else { return };
    let clock = FakeClock::default();
    let cfg = ModemConfig {
        uart: UartConfig { rate: 921_600, rtscts: ctl & 4 != 0 },
        apn: "CMNET",
        host: "iot-06z00.mqtt.iothub.aliyuncs.com",
        port: if ctl & 1 == 1 { 8883 } else { 1883 },
        tls: ctl & 1 == 1,
        register_timeout: Duration::from_secs(3),
        ca: (ctl & 2 != 0).then_some(CA),
    };
    let m: Shared<_> = Shared::new(Modem::new(Script::new(said, ctl >> 4, Some(0))));
    block_on(async {
        // A new open after each session, as the driver does (recovery from data mode).
        for _ in 0..4 {
            if m.lock().await.open(&clock, &cfg).await.is_err() {
                continue;
            }
            let mut s = Socket { modem: &m, clock: &clock, id: MQTT };
            let mut buf = [0u8; 96];
            for _ in 0..8 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = s.write(b"\x10\x00").await;
            let mut g = m.lock().await;
            while g.next_fota().is_some() {}
        }
    });
});
