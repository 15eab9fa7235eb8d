//! An MQTT 3.1.1 session over any `embedded-io-async` byte stream, with mqttrs as the packet
//! codec: CONNECT/CONNACK, SUBSCRIBE/SUBACK, PUBLISH (QoS 0 out, QoS 0/1 in), PINGREQ. Aliyun
//! takes MQTT 3.1.1 on every instance (MQTT 5 only on Enterprise ones).

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
    /// A packet did not decode, or does not fit the receive buffer.
    Protocol,
    /// A SUBSCRIBE was refused.
    SubscribeRefused,
}

impl core::fmt::Display for MqttError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MqttError::Io => f.write_str("connection lost"),
            MqttError::Refused(4) | MqttError::Refused(5) => {
                f.write_str("broker refused the connection: bad username or password (check product key, device name, secret and sign method)")
            }
            MqttError::Refused(c) => write!(f, "broker refused the connection (CONNACK code {c})"),
            MqttError::Protocol => f.write_str("malformed or oversized MQTT packet"),
            MqttError::SubscribeRefused => f.write_str("subscription refused"),
        }
    }
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

/// One connected session. `RX` bounds the largest packet accepted (a download block plus header).
pub struct Mqtt<T, const RX: usize> {
    io: T,
    rx: [u8; RX],
    have: usize,
    tx: [u8; 512],
    pid: u16,
    /// Topic of the last message returned by [`Mqtt::next`].
    pub topic: heapless::String<128>,
}

impl<T: Read + Write, const RX: usize> Mqtt<T, RX> {
    /// Sends CONNECT and waits for CONNACK.
    pub async fn connect(
        io: T,
        client_id: &str,
        username: &str,
        password: &str,
        keep_alive: u16,
    ) -> Result<Self, MqttError> {
        let mut s = Mqtt { io, rx: [0; RX], have: 0, tx: [0; 512], pid: 0, topic: heapless::String::new() };
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
        loop {
            let n = s.fill().await?;
            let r = match decode_slice(&s.rx[..n]).map_err(|_| MqttError::Protocol)? {
                Some(Packet::Connack(c)) => match c.code {
                    mqttrs::ConnectReturnCode::Accepted => Ok(()),
                    code => Err(MqttError::Refused(code as u8)),
                },
                _ => Err(MqttError::Protocol),
            };
            s.consume(n);
            r?;
            return Ok(s);
        }
    }

    async fn send(&mut self, p: &Packet<'_>) -> Result<(), MqttError> {
        let n = encode_slice(p, &mut self.tx).map_err(|_| MqttError::Protocol)?;
        self.io.write_all(&self.tx[..n]).await.map_err(|_| MqttError::Io)?;
        self.io.flush().await.map_err(|_| MqttError::Io)
    }

    /// Reads until a whole packet is buffered; returns its length.
    async fn fill(&mut self) -> Result<usize, MqttError> {
        loop {
            if let Some(len) = packet_len(&self.rx[..self.have]) {
                let len = len?;
                if len > RX {
                    return Err(MqttError::Protocol);
                }
                if self.have >= len {
                    return Ok(len);
                }
            }
            let n = self.io.read(&mut self.rx[self.have..]).await.map_err(|_| MqttError::Io)?;
            if n == 0 {
                return Err(MqttError::Io);
            }
            self.have += n;
        }
    }

    fn consume(&mut self, n: usize) {
        self.rx.copy_within(n..self.have, 0);
        self.have -= n;
    }

    /// Subscribes to `topics` at QoS 1 and waits for the SUBACK (messages before it are dropped).
    pub async fn subscribe(&mut self, topics: &[&str]) -> Result<(), MqttError> {
        self.pid = self.pid.wrapping_add(1).max(1);
        let mut list = heapless07::Vec::new();
        for t in topics {
            let topic_path = heapless07::String::from(*t);
            list.push(SubscribeTopic { topic_path, qos: QoS::AtLeastOnce }).map_err(|_| MqttError::Protocol)?;
        }
        let pid = Pid::try_from(self.pid).map_err(|_| MqttError::Protocol)?;
        self.send(&Packet::Subscribe(Subscribe::new(pid, list))).await?;
        loop {
            let n = self.fill().await?;
            let r = match decode_slice(&self.rx[..n]).map_err(|_| MqttError::Protocol)? {
                Some(Packet::Suback(s)) => {
                    Some(if s.return_codes.iter().any(|c| matches!(c, mqttrs::SubscribeReturnCodes::Failure)) {
                        Err(MqttError::SubscribeRefused)
                    } else {
                        Ok(())
                    })
                }
                _ => None,
            };
            self.consume(n);
            if let Some(r) = r {
                return r;
            }
        }
    }

    /// Publishes at QoS 0 (what Aliyun's SDKs use for OTA uplinks).
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), MqttError> {
        let p = Packet::Publish(Publish {
            dup: false,
            qospid: QosPid::AtMostOnce,
            retain: false,
            topic_name: topic,
            payload,
        });
        self.send(&p).await
    }

    /// Sends a PINGREQ (keep-alive).
    pub async fn ping(&mut self) -> Result<(), MqttError> {
        self.send(&Packet::Pingreq).await
    }

    /// Waits for the next PUBLISH; copies its payload into `out` and its topic into
    /// [`Mqtt::topic`]. Acknowledges QoS 1 ones. Other packets are taken care of.
    pub async fn next(&mut self, out: &mut [u8]) -> Result<usize, MqttError> {
        loop {
            let n = self.fill().await?;
            let mut ack = None;
            let got = match decode_slice(&self.rx[..n]).map_err(|_| MqttError::Protocol)? {
                Some(Packet::Publish(p)) => {
                    if p.payload.len() > out.len() {
                        return Err(MqttError::Protocol);
                    }
                    out[..p.payload.len()].copy_from_slice(p.payload);
                    self.topic.clear();
                    self.topic.push_str(p.topic_name).map_err(|_| MqttError::Protocol)?;
                    if let QosPid::AtLeastOnce(pid) = p.qospid {
                        ack = Some(pid);
                    }
                    Some(p.payload.len())
                }
                _ => None, // PINGRESP, PUBACK, ...
            };
            self.consume(n);
            if let Some(pid) = ack {
                self.send(&Packet::Puback(pid)).await?;
            }
            if let Some(len) = got {
                return Ok(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_is_decoded() {
        assert_eq!(packet_len(&[0x30]), None);
        assert_eq!(packet_len(&[0x30, 0x05]), Some(Ok(7)));
        assert_eq!(packet_len(&[0x30, 0x80, 0x01]), Some(Ok(3 + 128)));
        assert_eq!(packet_len(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]), Some(Err(MqttError::Protocol)));
    }
}
