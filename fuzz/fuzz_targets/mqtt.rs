//! The MQTT session of app/src/mqtt.rs (packet framing, mqttrs decoding, the oversized-PUBLISH
//! path) against a broker that sends the input: CONNECT/CONNACK, SUBSCRIBE/SUBACK, then PUBLISH
//! /PUBACK/... until the stream ends. Never panics; a PUBLISH's ranges lie in the buffer.
//! First byte: low nibble sizes the receive buffer (512..=2432 bytes), high nibble seeds the read
//! sizes; the rest is what the broker sends.
#![no_main]
use embassy_futures::block_on;
use fuzz::mqtt::{Incoming, Mqtt};
use fuzz::Script;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else { return };
    let mut rx = vec![0u8; 512 + usize::from(ctl & 0x0F) * 128];
    let len = rx.len();
    let io = Script::new(stream, ctl >> 4, None);
    block_on(async {
        let Ok(mut s) = Mqtt::connect(io, &mut rx, "a1B2c3D4e5F.dev-001", "dev-001&a1B2c3D4e5F", "pw", 120).await
        else {
            return;
        };
        if let Err(fuzz::mqtt::MqttError::Io) = s.subscribe(&["/ota/device/upgrade/a/b", "/sys/a/b/#"]).await {
            return;
        }
        for i in 0..256u16 {
            // As the driver does: the PUBACKs due go out outside `next()`.
            if s.send_acks().await.is_err() {
                return;
            }
            match s.next().await {
                Ok(Incoming::Publish { topic, payload }) => {
                    assert!(topic.start <= topic.end && topic.end <= len, "topic {topic:?} outside the buffer");
                    assert!(payload.start <= payload.end && payload.end <= len, "payload {payload:?} outside");
                    assert!(core::str::from_utf8(&s.rx()[topic]).is_ok(), "a topic that is not UTF-8");
                    if i % 4 == 0 && s.publish("/ota/device/progress/a/b", b"{}", Some(0x8000 | i)).await.is_err() {
                        return;
                    }
                }
                Ok(Incoming::Oversized { len: n, .. }) => assert!(n as usize <= 1 << 28),
                Ok(Incoming::Acked(_)) => {
                    if s.ping().await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
});
