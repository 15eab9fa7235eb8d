//! An MQTT 3.1.1 session over any `embedded-io-async` byte stream, with mqttrs as the packet
//! codec: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH (QoS 0 and 1 out, QoS 0/1 in), PUBACK,
//! PINGREQ. Aliyun takes MQTT 3.1.1 on every instance (MQTT 5 only on Enterprise ones).
//!
//! The receive buffer is the caller's, and a received PUBLISH stays in it (no copy) until the
//! next call to [`Mqtt::next`]: its topic and payload are handed out as ranges of
//! [`Mqtt::rx`]. A packet larger than the buffer is read and discarded, never a session error.

use core::ops::Range;
use embedded_io_async::{Read, Write};
use mqttrs::{
    decode_slice, encode_slice, Connect, Packet, Pid, Protocol, Publish, QoS, QosPid, Subscribe, SubscribeTopic,
};

/// Why the session ended or could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttError {
    /// The byte stream failed or closed.
    Io,
    /// The broker refused the CONNECT (return code as sent; Aliyun: 4 or 5 for bad credentials).
    Refused(u8),
    /// A packet did not decode.
    Protocol,
    /// A SUBSCRIBE was refused.
    SubscribeRefused,
    /// Nothing came from the broker for a whole keep-alive period (not even a PINGRESP).
    Silent,
}

impl core::fmt::Display for MqttError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MqttError::Io => f.write_str("connection lost"),
            MqttError::Refused(c) if shared::alink::credentials_refused(*c) => write!(
                f,
                "broker refused the connection (CONNACK {c}): bad username or password (check product key, device name, secret and sign method)"
            ),
            MqttError::Refused(c) => write!(f, "broker refused the connection (CONNACK code {c})"),
            MqttError::Protocol => f.write_str("malformed MQTT packet"),
            MqttError::SubscribeRefused => f.write_str("subscription refused"),
            MqttError::Silent => f.write_str("no PINGRESP from the broker: the link is dead"),
        }
    }
}

/// What [`Mqtt::next`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A PUBLISH; its topic and payload are these ranges of [`Mqtt::rx`] until the next call.
    Publish {
        /// topic name
        topic: Range<usize>,
        /// payload
        payload: Range<usize>,
    },
    /// A PUBLISH larger than the buffer: read and discarded (acknowledged if QoS 1).
    Oversized {
        /// its topic, if it fits
        topic: heapless::String<128>,
        /// bytes of its payload
        len: u32,
    },
    /// The PUBACK of our QoS 1 publish with this packet id.
    Acked(u16),
}

/// Total length of the packet at the start of `buf`, once its fixed header is complete.
fn packet_len(buf: &[u8]) -> Option<Result<usize, MqttError>> {
    let mut len = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        len |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some(Ok(1 + i + 1 + len));
        }
    }
    Some(Err(MqttError::Protocol))
}

/// Whether mqttrs can decode `packet` (one whole packet) without reading past it. mqttrs 0.4
/// indexes the buffer unchecked: a packet shorter than its fixed fields (a PUBACK without its
/// packet id, a PUBLISH whose topic runs past its end) would panic it. A broker never sends
/// CONNECT, SUBSCRIBE or UNSUBSCRIBE: those are refused too.
fn decodable(packet: &[u8]) -> bool {
    let Some(Ok(total)) = packet_len(packet) else { return false };
    let Some(hdr) = packet.get(1..).and_then(|b| b.iter().take(4).position(|b| b & 0x80 == 0)) else { return false };
    let Some(rest) = packet.get(hdr + 2..total) else { return false };
    match packet[0] >> 4 {
        // CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK: two bytes at least.
        2 | 4 | 5 | 6 | 7 | 9 | 11 => rest.len() >= 2,
        // PUBLISH: the topic, and the packet id above QoS 0.
        3 => {
            let pid = if ((packet[0] >> 1) & 3) > 0 { 2 } else { 0 };
            rest.len() >= 2 && rest.len() >= 2 + u16::from_be_bytes([rest[0], rest[1]]) as usize + pid
        }
        // PINGREQ, PINGRESP, DISCONNECT
        12..=14 => true,
        _ => false,
    }
}

/// The start of a PUBLISH too large for the buffer.
#[derive(Debug, PartialEq, Eq)]
struct Head<'a> {
    /// Bytes up to the payload.
    end: usize,
    topic: &'a str,
    /// Its packet id, at QoS 1.
    pid: Option<u16>,
    /// Bytes of its payload.
    payload: usize,
}

/// What a PUBLISH too large for the buffer starts with, once that much is buffered.
fn publish_head(buf: &[u8], total: usize) -> Option<Result<Head<'_>, MqttError>> {
    let first = *buf.first()?;
    let hdr = 1 + buf.get(1..)?.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    let tlen = u16::from_be_bytes([*buf.get(hdr)?, *buf.get(hdr + 1)?]) as usize;
    let qos = (first >> 1) & 3;
    let pid_at = hdr + 2 + tlen;
    let end = pid_at + if qos > 0 { 2 } else { 0 };
    let (Some(topic), Some(head)) = (buf.get(hdr + 2..pid_at), buf.get(..end)) else {
        return if end > buf.len() && end <= total { None } else { Some(Err(MqttError::Protocol)) };
    };
    let pid = (qos > 0).then(|| u16::from_be_bytes([head[pid_at], head[pid_at + 1]]));
    let topic = core::str::from_utf8(topic).map_err(|_| MqttError::Protocol);
    Some(topic.map(|topic| Head { end, topic, pid, payload: total.saturating_sub(end) }))
}

/// One connected session.
pub struct Mqtt<'b, T> {
    io: T,
    rx: &'b mut [u8],
    have: usize,
    /// Bytes at the front of `rx` that belong to the packet handed out last.
    current: usize,
    /// Bytes of an oversized packet still to be read and dropped.
    discard: usize,
    tx: [u8; 512],
    pid: u16,
    /// PUBACKs due for QoS 1 PUBLISHes handed out: sent by [`Mqtt::send_acks`], never from
    /// inside [`Mqtt::next`] (which a caller may drop at any await: a PUBACK cut there would lose
    /// its PUBLISH, or be sent twice).
    acks: heapless::Deque<u16, 16>,
    /// Bytes received so far (wrapping): whether the broker said anything lately.
    pub received: u32,
}

impl<'b, T: Read + Write> Mqtt<'b, T> {
    /// Sends CONNECT and waits for CONNACK. `rx` bounds the largest packet taken (a download
    /// block plus its header and topic; a larger one is discarded).
    pub async fn connect(
        io: T,
        rx: &'b mut [u8],
        client_id: &str,
        username: &str,
        password: &str,
        keep_alive: u16,
    ) -> Result<Self, MqttError> {
        assert!(rx.len() >= 512, "the MQTT receive buffer holds at least a topic and a packet header");
        let mut s = Mqtt {
            io,
            rx,
            have: 0,
            current: 0,
            discard: 0,
            tx: [0; 512],
            pid: 0,
            acks: heapless::Deque::new(),
            received: 0,
        };
        let p = Packet::Connect(Connect {
            protocol: Protocol::MQTT311,
            keep_alive,
            client_id,
            clean_session: true,
            last_will: None,
            username: Some(username),
            password: Some(password.as_bytes()),
        });
        s.send(&p).await?;
        let n = s.fill().await?;
        if !decodable(&s.rx[..n]) {
            return Err(MqttError::Protocol);
        }
        let r = match decode_slice(&s.rx[..n]).map_err(|_| MqttError::Protocol)? {
            Some(Packet::Connack(c)) => match c.code {
                mqttrs::ConnectReturnCode::Accepted => Ok(()),
                code => Err(MqttError::Refused(code as u8)),
            },
            _ => Err(MqttError::Protocol),
        };
        s.consume(n);
        r.map(|()| s)
    }

    /// The receive buffer (ranges of [`Incoming::Publish`] index it).
    pub fn rx(&self) -> &[u8] {
        self.rx
    }

    async fn send(&mut self, p: &Packet<'_>) -> Result<(), MqttError> {
        let n = encode_slice(p, &mut self.tx).map_err(|_| MqttError::Protocol)?;
        self.io.write_all(&self.tx[..n]).await.map_err(|_| MqttError::Io)?;
        self.io.flush().await.map_err(|_| MqttError::Io)
    }

    fn ack_later(&mut self, pid: u16) -> Result<(), MqttError> {
        // More unacknowledged than the broker's window: the caller never sent them.
        self.acks.push_back(pid).map_err(|_| MqttError::Protocol)
    }

    /// Sends the PUBACKs due (call it where it is not cancelled: a PUBACK leaves the queue only
    /// once written).
    pub async fn send_acks(&mut self) -> Result<(), MqttError> {
        while let Some(&pid) = self.acks.front() {
            self.send(&Packet::Puback(Pid::try_from(pid).map_err(|_| MqttError::Protocol)?)).await?;
            self.acks.pop_front();
        }
        Ok(())
    }

    async fn read_more(&mut self) -> Result<(), MqttError> {
        let n = self.io.read(&mut self.rx[self.have..]).await.map_err(|_| MqttError::Io)?;
        if n == 0 {
            return Err(MqttError::Io);
        }
        self.have += n;
        self.received = self.received.wrapping_add(n as u32);
        Ok(())
    }

    /// Reads until a whole packet that fits is buffered; returns its length.
    async fn fill(&mut self) -> Result<usize, MqttError> {
        loop {
            if let Some(len) = packet_len(&self.rx[..self.have]) {
                let len = len?;
                if len <= self.have {
                    return Ok(len);
                }
                if len > self.rx.len() {
                    return Err(MqttError::Protocol); // only PUBLISH may be oversized: see `next`
                }
            }
            self.read_more().await?;
        }
    }

    fn consume(&mut self, n: usize) {
        self.rx.copy_within(n..self.have, 0);
        self.have -= n;
    }

    /// Subscribes to `topics` at QoS 1 and waits for the SUBACK (messages before it are dropped).
    pub async fn subscribe(&mut self, topics: &[&str]) -> Result<(), MqttError> {
        self.pid = self.pid.wrapping_add(1).max(1) & 0x7FFF; // the OTA reports use 0x8000..
        let mut list = heapless07::Vec::new();
        for t in topics {
            let topic_path = heapless07::String::from(*t);
            list.push(SubscribeTopic { topic_path, qos: QoS::AtLeastOnce }).map_err(|_| MqttError::Protocol)?;
        }
        let pid = Pid::try_from(self.pid.max(1)).map_err(|_| MqttError::Protocol)?;
        self.send(&Packet::Subscribe(Subscribe::new(pid, list))).await?;
        loop {
            match self.next_packet().await? {
                Got::Suback(refused) => return if refused { Err(MqttError::SubscribeRefused) } else { Ok(()) },
                _ => self.release(),
            }
        }
    }

    /// Publishes at QoS 0, or at QoS 1 with packet id `qos1` (its PUBACK comes back from
    /// [`Mqtt::next`] as [`Incoming::Acked`]).
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos1: Option<u16>) -> Result<(), MqttError> {
        let qospid = match qos1 {
            Some(pid) => QosPid::AtLeastOnce(Pid::try_from(pid).map_err(|_| MqttError::Protocol)?),
            None => QosPid::AtMostOnce,
        };
        let p = Packet::Publish(Publish { dup: false, qospid, retain: false, topic_name: topic, payload });
        self.send(&p).await
    }

    /// Sends a PINGREQ (keep-alive).
    pub async fn ping(&mut self) -> Result<(), MqttError> {
        self.send(&Packet::Pingreq).await
    }

    /// Drops the packet handed out last.
    fn release(&mut self) {
        let n = core::mem::take(&mut self.current);
        self.consume(n);
    }

    /// The next packet, kept at the front of `rx` (or discarded, if too large).
    async fn next_packet(&mut self) -> Result<Got, MqttError> {
        self.release();
        while self.discard > 0 {
            if self.have == 0 {
                self.read_more().await?;
            }
            let n = self.discard.min(self.have);
            self.consume(n);
            self.discard -= n;
        }
        loop {
            if let Some(len) = packet_len(&self.rx[..self.have]) {
                let len = len?;
                if len > self.rx.len() && self.rx[0] >> 4 == 3 {
                    // A PUBLISH larger than the buffer: keep its head, drop the rest as it comes.
                    if let Some(head) = publish_head(&self.rx[..self.have], len) {
                        let Head { end, topic, pid, payload } = head?;
                        let mut t = heapless::String::new();
                        let _ = t.push_str(topic);
                        let n = end.min(self.have);
                        self.consume(n);
                        self.discard = len - n;
                        if let Some(pid) = pid {
                            self.ack_later(pid)?;
                        }
                        return Ok(Got::Oversized(t, payload as u32));
                    }
                } else if len > self.rx.len() {
                    return Err(MqttError::Protocol);
                } else if len <= self.have {
                    self.current = len;
                    if !decodable(&self.rx[..len]) {
                        return Err(MqttError::Protocol);
                    }
                    let rx_ptr = self.rx.as_ptr() as usize;
                    let got = match decode_slice(&self.rx[..len]).map_err(|_| MqttError::Protocol)? {
                        Some(Packet::Publish(p)) => {
                            let at = |s: &[u8]| s.as_ptr() as usize - rx_ptr;
                            let topic = at(p.topic_name.as_bytes())..at(p.topic_name.as_bytes()) + p.topic_name.len();
                            let payload = at(p.payload)..at(p.payload) + p.payload.len();
                            let ack = match p.qospid {
                                QosPid::AtLeastOnce(pid) => Some(pid),
                                _ => None,
                            };
                            (Got::Publish(topic, payload), ack)
                        }
                        Some(Packet::Puback(pid)) => (Got::Acked(pid.get()), None),
                        Some(Packet::Suback(s)) => {
                            let refused =
                                s.return_codes.iter().any(|c| matches!(c, mqttrs::SubscribeReturnCodes::Failure));
                            (Got::Suback(refused), None)
                        }
                        _ => (Got::Other, None), // PINGRESP, ...
                    };
                    if let Some(pid) = got.1 {
                        self.ack_later(pid.get())?;
                    }
                    return Ok(got.0);
                }
            }
            self.read_more().await?;
        }
    }

    /// Waits for the next PUBLISH or PUBACK. The PUBLISH stays in the buffer until the next call;
    /// QoS 1 ones are acknowledged; other packets (PINGRESP, ...) are taken care of.
    pub async fn next(&mut self) -> Result<Incoming, MqttError> {
        loop {
            match self.next_packet().await? {
                Got::Publish(topic, payload) => return Ok(Incoming::Publish { topic, payload }),
                Got::Oversized(topic, len) => return Ok(Incoming::Oversized { topic, len }),
                Got::Acked(pid) => return Ok(Incoming::Acked(pid)),
                Got::Suback(_) | Got::Other => {}
            }
        }
    }
}

enum Got {
    Publish(Range<usize>, Range<usize>),
    Oversized(heapless::String<128>, u32),
    Acked(u16),
    Suback(bool),
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker that says `said` and keeps what it was told.
    struct Broker<'a> {
        said: &'a [u8],
        told: std::vec::Vec<u8>,
    }

    impl embedded_io_async::ErrorType for Broker<'_> {
        type Error = embedded_io_async::ErrorKind;
    }

    impl Read for Broker<'_> {
        async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let n = self.said.len().min(buf.len());
            buf[..n].copy_from_slice(&self.said[..n]);
            self.said = &self.said[n..];
            Ok(n)
        }
    }

    impl Write for Broker<'_> {
        async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            self.told.extend_from_slice(buf);
            Ok(buf.len())
        }
        async fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    #[test]
    fn a_qos1_publish_is_handed_out_without_writing_and_acknowledged_by_send_acks() {
        // `next()` runs inside the driver's select, which drops it whenever the download or a
        // timer wins: a PUBACK written from inside it could be cut (its PUBLISH then released
        // without being handed out) or written twice. It only queues the PUBACK.
        let mut said = std::vec![0x20, 0x02, 0x00, 0x00]; // CONNACK
        said.extend_from_slice(&[0x32, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x12, 0x34, b'x']); // QoS 1, pid 0x1234
        let mut rx = [0u8; 512];
        embassy_futures::block_on(async {
            let mut m = Mqtt::connect(Broker { said: &said, told: std::vec::Vec::new() }, &mut rx, "c", "u", "p", 60)
                .await
                .unwrap();
            let connect_len = m.io.told.len();
            assert!(matches!(m.next().await, Ok(Incoming::Publish { .. })));
            assert_eq!(m.io.told.len(), connect_len, "next() wrote nothing");
            m.send_acks().await.unwrap();
            assert_eq!(&m.io.told[connect_len..], &[0x40, 0x02, 0x12, 0x34], "the PUBACK");
            m.send_acks().await.unwrap();
            assert_eq!(m.io.told.len(), connect_len + 4, "sent once");
        });
    }

    #[test]
    fn remaining_length_is_decoded() {
        assert_eq!(packet_len(&[0x30]), None);
        assert_eq!(packet_len(&[0x30, 0x05]), Some(Ok(7)));
        assert_eq!(packet_len(&[0x30, 0x80, 0x01]), Some(Ok(3 + 128)));
        assert_eq!(packet_len(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]), Some(Err(MqttError::Protocol)));
    }

    #[test]
    fn packets_shorter_than_their_fields_are_refused_before_mqttrs_reads_past_them() {
        // Found by fuzzing (fuzz target `mqtt`): a SUBSCRIBE of length 0 where the CONNACK goes
        // panicked mqttrs (index out of bounds), and so did a PUBACK without its packet id.
        let bad: [&[u8]; 8] = [
            &[0x82, 0x00],
            &[0x40, 0x00],
            &[0x40, 0x01, 0x00],
            &[0x20, 0x01, 0x00],
            &[0x90, 0x01, 0x01],
            &[0x32, 0x03, 0x00, 0x01, b'a'],
            &[0x30, 0x02, 0x00, 0x05],
            &[0x10, 0x00],
        ];
        for p in bad {
            assert!(!decodable(p), "{p:02x?}");
        }
        let good: [&[u8]; 5] = [
            &[0x20, 0x02, 0x00, 0x00],
            &[0x40, 0x02, 0x80, 0x01],
            &[0x90, 0x03, 0x00, 0x01, 0x01],
            &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x07, b'x'],
            &[0xD0, 0x00],
        ];
        for p in good {
            assert!(decodable(p), "{p:02x?}");
            assert!(decode_slice(p).is_ok_and(|p| p.is_some()), "{p:02x?}");
        }
    }

    #[test]
    fn the_head_of_an_oversized_publish_is_read_once_it_is_there() {
        // QoS 1 PUBLISH, remaining length 200: topic "a/b", pid 0x0102, 193 payload bytes.
        let mut p = vec![0x32, 0xC8, 0x01, 0, 3, b'a', b'/', b'b', 0x01, 0x02];
        p.resize(203, 0xAA);
        assert_eq!(packet_len(&p), Some(Ok(203)));
        for cut in 0..10 {
            assert_eq!(publish_head(&p[..cut], 203), None, "cut {cut}");
        }
        let head = |end, pid, payload| Some(Ok(Head { end, topic: "a/b", pid, payload }));
        assert_eq!(publish_head(&p[..10], 203), head(10, Some(0x0102), 193));
        p[0] = 0x30; // QoS 0: no packet id
        assert_eq!(publish_head(&p[..10], 203), head(8, None, 195));
    }
}
