//! MQTT stream download (docs/PROTOCOL.md §3.1): the block request, and the binary reply frame.
//!
//! ```text
//! 0            2              2+N               2+N+bSize      2+N+bSize+2
//! +------------+--------------+-----------------+--------------+
//! | N: u16 BE  | JSON header  | data (bSize)    | CRC-16/ARC LE|
//! +------------+--------------+-----------------+--------------+
//! header: {"id":"1","code":200,"message":"success",
//!          "data":{"fileToken":"...","fileLength":4096,"bSize":16,"bOffset":0}}
//! ```

use super::json::top_level;
use super::AlinkError;
use serde::{Deserialize, Serialize};

/// CRC-16/ARC (poly 0x8005 reflected, init 0): check("123456789") = 0xBB3D.
pub const CRC16_ARC: crc::Crc<u16, CrcTable> = crc::Crc::<u16, CrcTable>::new(&crc::CRC_16_ARC);

/// A 512-byte table on the microcontrollers; on a host, slice-by-16 (8 KiB), several times faster
/// per byte for a protocol where every downloaded byte is CRC-checked.
#[cfg(target_os = "none")]
type CrcTable = crc::Table<1>;
#[cfg(not(target_os = "none"))]
type CrcTable = crc::Table<16>;

mod field {
    pub const HEADER_LEN: core::ops::Range<usize> = 0..2;
    pub const HEADER: usize = 2;
    pub const CRC_LEN: usize = 2;
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileInfo {
    stream_id: u64,
    file_id: u32,
}

#[derive(Serialize)]
struct FileBlock {
    size: u32,
    offset: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestParams<'a> {
    file_token: &'a str,
    file_info: FileInfo,
    file_block: FileBlock,
}

#[derive(Serialize)]
struct Request<'a> {
    id: &'a str,
    version: &'static str,
    params: RequestParams<'a>,
}

/// `thing/file/download`: asks for `size` bytes at `offset` of the stream's file.
pub fn download_request(
    out: &mut [u8],
    id: &str,
    token: &str,
    stream_id: u64,
    file_id: u32,
    offset: u32,
    size: u32,
) -> Result<usize, AlinkError> {
    let r = Request {
        id,
        version: "1.0",
        params: RequestParams {
            file_token: token,
            file_info: FileInfo { stream_id, file_id },
            file_block: FileBlock { size, offset },
        },
    };
    Ok(serde_json_core::to_slice(&r, out)?)
}

/// One received block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block<'a> {
    /// The `id` of the request it answers (as text), if the reply echoes it.
    pub id: Option<&'a str>,
    /// `bOffset`
    pub offset: u32,
    /// `fileLength` (0 when absent)
    pub file_length: u32,
    /// `fileToken` as echoed
    pub token: Option<&'a str>,
    /// The data, CRC checked.
    pub data: &'a [u8],
}

/// What a `download_reply` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReply<'a> {
    /// A block: `code` 200, framing and CRC good.
    Data(Block<'a>),
    /// `code` other than 200: the platform refused the request (`msg` or `message` says why).
    Refused {
        /// `id` of the request, if echoed
        id: Option<&'a str>,
        /// `code` as a number (-1 if it is not one)
        code: i32,
        /// `msg` or `message`, JSON escapes left in
        msg: &'a str,
    },
    /// `code` 200 but the frame is cut or its CRC is wrong.
    Corrupt {
        /// `id` of the request, if echoed
        id: Option<&'a str>,
        /// `bOffset`, if the header has it
        offset: Option<u32>,
        /// what was wrong
        why: AlinkError,
    },
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplyData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    file_token: Option<&'a str>,
    file_length: Option<u32>,
    b_size: u32,
    b_offset: u32,
}

#[derive(Deserialize)]
struct ReplyIn<'a> {
    #[serde(borrow)]
    data: ReplyData<'a>,
}

#[derive(Serialize)]
struct ReplyOut<'a> {
    id: &'a str,
    code: u16,
    message: &'a str,
    data: ReplyData<'a>,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    id: &'a str,
    code: u16,
    msg: &'a str,
}

/// Reads a `download_reply` payload. `Err`: not even its JSON header can be read.
///
/// Error replies are the header alone (`{"id":..,"code":N,"msg":".."}`), with or without data and
/// a trailer after it: how Aliyun frames them is not documented, so both are read.
pub fn parse_download_reply(p: &[u8]) -> Result<BlockReply<'_>, AlinkError> {
    let n = u16::from_be_bytes(p.get(field::HEADER_LEN).ok_or(AlinkError::FrameTooShort)?.try_into().unwrap()) as usize;
    let header = p.get(field::HEADER..field::HEADER + n).ok_or(AlinkError::FrameTooShort)?;
    let id = top_level(header, "id").map(|i| i.text());
    let code = top_level(header, "code").ok_or(AlinkError::Json)?.text();
    if code != "200" {
        let msg = top_level(header, "msg").or_else(|| top_level(header, "message")).map_or("", |m| m.text());
        return Ok(BlockReply::Refused { id, code: code.parse().unwrap_or(-1), msg });
    }
    let (r, _): (ReplyIn<'_>, usize) = serde_json_core::from_slice(header)?;
    let corrupt = |why| BlockReply::Corrupt { id, offset: Some(r.data.b_offset), why };
    let size = r.data.b_size as usize;
    let expected = field::HEADER + n + size + field::CRC_LEN;
    if p.len() != expected {
        return Ok(corrupt(AlinkError::LengthMismatch { expected, got: p.len() }));
    }
    let data = &p[field::HEADER + n..field::HEADER + n + size];
    let trailer = u16::from_le_bytes([p[expected - 2], p[expected - 1]]);
    let computed = CRC16_ARC.checksum(data);
    if computed != trailer {
        return Ok(corrupt(AlinkError::CrcMismatch { computed, trailer }));
    }
    Ok(BlockReply::Data(Block {
        id,
        offset: r.data.b_offset,
        file_length: r.data.file_length.unwrap_or(0),
        token: r.data.file_token,
        data,
    }))
}

/// Writes an error `download_reply` (what the console sends for a request Aliyun refuses): the
/// length-prefixed JSON header `{"id":..,"code":N,"msg":".."}` alone.
pub fn emit_download_error(out: &mut [u8], id: &str, code: u16, msg: &str) -> Result<usize, AlinkError> {
    let n = serde_json_core::to_slice(
        &ErrorOut { id, code, msg },
        out.get_mut(field::HEADER..).ok_or(AlinkError::TooLong)?,
    )?;
    if n > u16::MAX as usize {
        return Err(AlinkError::TooLong);
    }
    out[field::HEADER_LEN].copy_from_slice(&(n as u16).to_be_bytes());
    Ok(field::HEADER + n)
}

/// Writes a `download_reply` frame (what the console sends); returns its length.
pub fn emit_download_reply(
    out: &mut [u8],
    id: &str,
    token: Option<&str>,
    file_length: u32,
    offset: u32,
    data: &[u8],
) -> Result<usize, AlinkError> {
    let r = ReplyOut {
        id,
        code: 200,
        message: "success",
        data: ReplyData {
            file_token: token,
            file_length: Some(file_length),
            b_size: data.len() as u32,
            b_offset: offset,
        },
    };
    let n = serde_json_core::to_slice(&r, out.get_mut(field::HEADER..).ok_or(AlinkError::TooLong)?)?;
    let end = field::HEADER + n + data.len() + field::CRC_LEN;
    if end > out.len() || n > u16::MAX as usize {
        return Err(AlinkError::TooLong);
    }
    out[field::HEADER_LEN].copy_from_slice(&(n as u16).to_be_bytes());
    out[field::HEADER + n..end - 2].copy_from_slice(data);
    out[end - 2..end].copy_from_slice(&CRC16_ARC.checksum(data).to_le_bytes());
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/PROTOCOL.md §3.1: one block of 16 bytes 00..0f.
    const FRAME_HEX: &str = "00717b226964223a2231222c22636f6465223a3230302c226d657373616765223a2273756363657373222c2264617461223a7b2266696c65546f6b656e223a2264656661756c74222c2266696c654c656e677468223a343039362c226253697a65223a31362c22624f6666736574223a307d7d000102030405060708090a0b0c0d0e0f0a17";

    fn frame() -> Vec<u8> {
        hex::decode(FRAME_HEX).unwrap()
    }

    #[test]
    fn crc16_arc_check_value() {
        assert_eq!(CRC16_ARC.checksum(b"123456789"), 0xBB3D);
        assert_eq!(CRC16_ARC.checksum(&(0..16).collect::<Vec<u8>>()), 0x170A);
    }

    #[test]
    fn the_aliyun_md_frame_parses() {
        let f = frame();
        assert_eq!(f.len(), 133);
        let BlockReply::Data(b) = parse_download_reply(&f).unwrap() else { panic!() };
        assert_eq!((b.id, b.offset, b.file_length, b.token), (Some("1"), 0, 4096, Some("default")));
        assert_eq!(b.data, &(0..16).collect::<Vec<u8>>()[..]);
    }

    #[test]
    fn we_emit_the_aliyun_md_frame_byte_for_byte() {
        let mut out = [0u8; 256];
        let n = emit_download_reply(&mut out, "1", Some("default"), 4096, 0, &(0..16).collect::<Vec<u8>>()).unwrap();
        assert_eq!(hex::encode(&out[..n]), FRAME_HEX);
    }

    #[test]
    fn the_request_matches_the_documented_shape() {
        let mut out = [0u8; 256];
        let n = download_request(&mut out, "1", "default", 1397345, 1, 0, 4096).unwrap();
        assert_eq!(
            core::str::from_utf8(&out[..n]).unwrap(),
            r#"{"id":"1","version":"1.0","params":{"fileToken":"default","fileInfo":{"streamId":1397345,"fileId":1},"fileBlock":{"size":4096,"offset":0}}}"#
        );
    }

    #[test]
    fn a_flipped_data_byte_is_a_crc_mismatch() {
        let mut f = frame();
        f[2 + 0x71 + 3] ^= 1;
        let r = parse_download_reply(&f).unwrap();
        assert!(
            matches!(
                r,
                BlockReply::Corrupt {
                    id: Some("1"),
                    offset: Some(0),
                    why: AlinkError::CrcMismatch { trailer: 0x170A, .. }
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn wrong_lengths_are_typed_errors() {
        let f = frame();
        let cut = |why| Ok(BlockReply::Corrupt { id: Some("1"), offset: Some(0), why });
        assert_eq!(parse_download_reply(&f[..132]), cut(AlinkError::LengthMismatch { expected: 133, got: 132 }));
        assert_eq!(parse_download_reply(&f[..1]), Err(AlinkError::FrameTooShort));
        assert_eq!(parse_download_reply(&f[..50]), Err(AlinkError::FrameTooShort));
        let mut long = f.clone();
        long.push(0);
        assert_eq!(parse_download_reply(&long), cut(AlinkError::LengthMismatch { expected: 133, got: 134 }));
    }

    #[test]
    fn an_error_reply_is_refused_with_its_message_framed_either_way() {
        // The doc's message, header alone (what the console sends) ...
        let mut out = [0u8; 128];
        let n = emit_download_error(&mut out, "7", 400, "file size has exceeded the limit 16 MB").unwrap();
        let want = BlockReply::Refused { id: Some("7"), code: 400, msg: "file size has exceeded the limit 16 MB" };
        assert_eq!(parse_download_reply(&out[..n]), Ok(want));
        // ... and with an empty block and its CRC trailer after it, `message` instead of `msg`.
        let h = br#"{"code":9201,"message":"stream not found","id":8}"#;
        let mut f = (h.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(h);
        f.extend_from_slice(&[0, 0]);
        assert_eq!(
            parse_download_reply(&f),
            Ok(BlockReply::Refused { id: Some("8"), code: 9201, msg: "stream not found" })
        );
        // A header without a code is not a reply.
        let h = br#"{"id":"1"}"#;
        let mut f = (h.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(h);
        assert_eq!(parse_download_reply(&f), Err(AlinkError::Json));
    }

    #[test]
    fn the_real_capture_header_shape_parses() {
        // 3P-C-OTA: {"code":200,"data":{"bOffset":0,"fileLength":5092,"bSize":256},"id":"1","message":"success"}
        let h = br#"{"code":200,"data":{"bOffset":0,"fileLength":5092,"bSize":256},"id":"1","message":"success"}"#;
        assert_eq!(h.len(), 0x5C);
        let mut f = (h.len() as u16).to_be_bytes().to_vec();
        f.extend_from_slice(h);
        f.extend_from_slice(&[0xAB; 256]);
        f.extend_from_slice(&CRC16_ARC.checksum(&[0xAB; 256]).to_le_bytes());
        assert_eq!(&f[..2], &[0x00, 0x5C]);
        let BlockReply::Data(b) = parse_download_reply(&f).unwrap() else { panic!() };
        assert_eq!((b.offset, b.file_length, b.data.len(), b.token), (0, 5092, 256, None));
    }

    #[test]
    fn random_frames_never_panic() {
        let mut x = 0x1234_5678u32;
        for len in 0..400 {
            let mut f: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse_download_reply(&f);
            if len > 2 {
                f[0] = 0;
                f[1] = (len as u8).min(100);
                let _ = parse_download_reply(&f);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn mutated_frames_never_panic_and_never_pass_a_bad_crc(at in 0usize..133, val in proptest::prelude::any::<u8>()) {
            let mut f = frame();
            let changed = f[at] != val;
            f[at] = val;
            if let Ok(BlockReply::Data(b)) = parse_download_reply(&f) {
                // Only header bytes that do not change the data may still parse as a good block.
                proptest::prop_assert!(!changed || at < 2 + 0x71, "a changed data or CRC byte passed");
                proptest::prop_assert_eq!(b.data.len(), 16);
            }
        }
    }
}
