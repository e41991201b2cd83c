//! KMIP's Tag-Type-Length-Value encoding (KMIP 1.2 spec, section 9.1).
//!
//! Only what a client needs: a tree of items, an encoder and a decoder that
//! treats every byte from the server as hostile: each length is checked
//! against what is left, nesting and total size are capped, and errors are
//! returned rather than panics. Byte strings live in zeroizing buffers
//! because they carry plaintext key material on the way back from Decrypt.

use zeroize::Zeroizing;

/// Largest message this codec writes or reads, header included.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Deepest nesting of structures accepted from the wire.
pub const MAX_DEPTH: usize = 32;

/// Bytes of tag, type and length in front of every value.
pub const HEADER_LEN: usize = 8;

const TYPE_STRUCTURE: u8 = 0x01;
const TYPE_INTEGER: u8 = 0x02;
const TYPE_LONG_INTEGER: u8 = 0x03;
const TYPE_BIG_INTEGER: u8 = 0x04;
const TYPE_ENUMERATION: u8 = 0x05;
const TYPE_BOOLEAN: u8 = 0x06;
const TYPE_TEXT_STRING: u8 = 0x07;
const TYPE_BYTE_STRING: u8 = 0x08;
const TYPE_DATE_TIME: u8 = 0x09;
const TYPE_INTERVAL: u8 = 0x0A;

/// Why bytes are not a valid TTLV message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlvError {
    #[error("input ends inside the item at offset {0}")]
    Truncated(usize),
    #[error("item {tag:#08x} at offset {offset}: length {len} is invalid for type {typ:#04x}")]
    BadLength {
        tag: u32,
        typ: u8,
        len: usize,
        offset: usize,
    },
    #[error("item {tag:#08x} at offset {offset}: unknown type {typ:#04x}")]
    UnknownType { tag: u32, typ: u8, offset: usize },
    #[error("item at offset {0}: boolean is neither 0 nor 1")]
    BadBoolean(usize),
    #[error("item at offset {0}: text string is not UTF-8")]
    BadUtf8(usize),
    #[error("structures nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("{0} bytes after the message")]
    TrailingBytes(usize),
}

/// One typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Structure(Vec<Ttlv>),
    Integer(i32),
    LongInteger(i64),
    /// Big-endian two's complement; encoded sign-extended to a multiple of 8 bytes.
    BigInteger(Vec<u8>),
    Enumeration(u32),
    Boolean(bool),
    TextString(String),
    ByteString(Zeroizing<Vec<u8>>),
    /// Seconds since the Unix epoch.
    DateTime(i64),
    /// Seconds.
    Interval(u32),
}

/// A tagged value: the unit of a KMIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ttlv {
    /// The 3-byte tag (e.g. `0x420078`); the high byte is ignored.
    pub tag: u32,
    pub value: Value,
}

impl Ttlv {
    pub fn structure(tag: u32, items: Vec<Ttlv>) -> Self {
        Self {
            tag,
            value: Value::Structure(items),
        }
    }
    pub fn integer(tag: u32, v: i32) -> Self {
        Self {
            tag,
            value: Value::Integer(v),
        }
    }
    pub fn long_integer(tag: u32, v: i64) -> Self {
        Self {
            tag,
            value: Value::LongInteger(v),
        }
    }
    pub fn enumeration(tag: u32, v: u32) -> Self {
        Self {
            tag,
            value: Value::Enumeration(v),
        }
    }
    pub fn boolean(tag: u32, v: bool) -> Self {
        Self {
            tag,
            value: Value::Boolean(v),
        }
    }
    pub fn text(tag: u32, v: &str) -> Self {
        Self {
            tag,
            value: Value::TextString(v.to_owned()),
        }
    }
    pub fn bytes(tag: u32, v: &[u8]) -> Self {
        Self {
            tag,
            value: Value::ByteString(Zeroizing::new(v.to_vec())),
        }
    }
    pub fn date_time(tag: u32, secs: i64) -> Self {
        Self {
            tag,
            value: Value::DateTime(secs),
        }
    }

    /// The first direct child with `tag`, if this is a structure.
    pub fn child(&self, tag: u32) -> Option<&Ttlv> {
        self.children().iter().find(|c| c.tag == tag)
    }

    /// Removes and returns the first direct child with `tag`.
    pub fn take_child(&mut self, tag: u32) -> Option<Ttlv> {
        match &mut self.value {
            Value::Structure(items) => {
                let i = items.iter().position(|c| c.tag == tag)?;
                Some(items.remove(i))
            }
            _ => None,
        }
    }

    /// Direct children; empty unless this is a structure.
    pub fn children(&self) -> &[Ttlv] {
        match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        }
    }

    pub fn as_enumeration(&self) -> Option<u32> {
        match self.value {
            Value::Enumeration(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_integer(&self) -> Option<i32> {
        match self.value {
            Value::Integer(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::TextString(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::ByteString(v) => Some(v),
            _ => None,
        }
    }
    /// Moves the byte string out, leaving an empty one behind.
    pub fn take_bytes(&mut self) -> Option<Zeroizing<Vec<u8>>> {
        match &mut self.value {
            Value::ByteString(v) => Some(std::mem::take(v)),
            _ => None,
        }
    }

    fn value_len(&self) -> usize {
        match &self.value {
            Value::Structure(items) => items.iter().map(Ttlv::encoded_len).sum(),
            Value::Integer(_) | Value::Enumeration(_) | Value::Interval(_) => 4,
            Value::LongInteger(_) | Value::Boolean(_) | Value::DateTime(_) => 8,
            Value::BigInteger(v) => padded(v.len().max(1)),
            Value::TextString(v) => v.len(),
            Value::ByteString(v) => v.len(),
        }
    }

    /// Bytes this item takes on the wire, padding included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + padded(self.value_len())
    }

    fn write(&self, out: &mut Vec<u8>) {
        let (typ, len) = (self.type_byte(), self.value_len());
        out.extend_from_slice(&(self.tag & 0x00FF_FFFF).to_be_bytes()[1..]);
        out.push(typ);
        // Callers bound the total size by MAX_MESSAGE, far below u32::MAX.
        out.extend_from_slice(&(len as u32).to_be_bytes());
        let start = out.len();
        match &self.value {
            Value::Structure(items) => items.iter().for_each(|c| c.write(out)),
            Value::Integer(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::Enumeration(v) | Value::Interval(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::LongInteger(v) | Value::DateTime(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::Boolean(v) => out.extend_from_slice(&u64::from(*v).to_be_bytes()),
            Value::BigInteger(v) => {
                let negative = v.first().is_some_and(|b| b & 0x80 != 0);
                let fill = if negative { 0xFF } else { 0x00 };
                out.resize(out.len() + (len - v.len()), fill);
                out.extend_from_slice(v);
            }
            Value::TextString(v) => out.extend_from_slice(v.as_bytes()),
            Value::ByteString(v) => out.extend_from_slice(v),
        }
        out.resize(start + padded(len), 0);
    }

    fn type_byte(&self) -> u8 {
        match self.value {
            Value::Structure(_) => TYPE_STRUCTURE,
            Value::Integer(_) => TYPE_INTEGER,
            Value::LongInteger(_) => TYPE_LONG_INTEGER,
            Value::BigInteger(_) => TYPE_BIG_INTEGER,
            Value::Enumeration(_) => TYPE_ENUMERATION,
            Value::Boolean(_) => TYPE_BOOLEAN,
            Value::TextString(_) => TYPE_TEXT_STRING,
            Value::ByteString(_) => TYPE_BYTE_STRING,
            Value::DateTime(_) => TYPE_DATE_TIME,
            Value::Interval(_) => TYPE_INTERVAL,
        }
    }
}

/// `usize::is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
#[allow(clippy::manual_is_multiple_of)]
pub(super) fn multiple_of(n: usize, of: usize) -> bool {
    n % of == 0
}

fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// Encodes one item; the buffer is sized up front so that no stray copy
/// of a byte string is left behind by reallocation.
pub fn encode(item: &Ttlv) -> Result<Zeroizing<Vec<u8>>, TtlvError> {
    let len = item.encoded_len();
    if len > MAX_MESSAGE {
        return Err(TtlvError::TooLarge);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    item.write(&mut out);
    Ok(out)
}

/// Reads the header of a message: its tag, type and the number of bytes
/// that follow it.
pub fn parse_header(header: &[u8; HEADER_LEN]) -> (u32, u8, usize) {
    let tag = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    (tag, header[3], len as usize)
}

/// Decodes exactly one item spanning all of `buf`.
pub fn decode(buf: &[u8]) -> Result<Ttlv, TtlvError> {
    if buf.len() > MAX_MESSAGE {
        return Err(TtlvError::TooLarge);
    }
    let mut pos = 0;
    let item = read_item(buf, &mut pos, 0)?;
    match buf.len() - pos {
        0 => Ok(item),
        n => Err(TtlvError::TrailingBytes(n)),
    }
}

fn read_item(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Ttlv, TtlvError> {
    let offset = *pos;
    let header: &[u8; HEADER_LEN] = buf
        .get(offset..offset + HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(TtlvError::Truncated(offset))?;
    let (tag, typ, len) = parse_header(header);
    let body_start = offset + HEADER_LEN;
    let remaining = buf.len() - body_start;
    if len > remaining {
        return Err(TtlvError::Truncated(offset));
    }
    let span = padded(len);
    if span > remaining {
        return Err(TtlvError::Truncated(offset));
    }
    let body = &buf[body_start..body_start + len];
    let bad_len = TtlvError::BadLength {
        tag,
        typ,
        len,
        offset,
    };
    let fixed = |want: usize| {
        if len == want {
            Ok(())
        } else {
            Err(bad_len.clone())
        }
    };
    let value = match typ {
        TYPE_STRUCTURE => {
            if !multiple_of(len, 8) {
                return Err(bad_len);
            }
            if depth >= MAX_DEPTH {
                return Err(TtlvError::TooDeep);
            }
            let mut items = Vec::new();
            let mut inner = 0;
            while inner < body.len() {
                items.push(
                    read_item(body, &mut inner, depth + 1).map_err(|e| shift(e, body_start))?,
                );
            }
            Value::Structure(items)
        }
        TYPE_INTEGER => {
            fixed(4)?;
            Value::Integer(i32::from_be_bytes(array(body)))
        }
        TYPE_ENUMERATION => {
            fixed(4)?;
            Value::Enumeration(u32::from_be_bytes(array(body)))
        }
        TYPE_INTERVAL => {
            fixed(4)?;
            Value::Interval(u32::from_be_bytes(array(body)))
        }
        TYPE_LONG_INTEGER => {
            fixed(8)?;
            Value::LongInteger(i64::from_be_bytes(array(body)))
        }
        TYPE_DATE_TIME => {
            fixed(8)?;
            Value::DateTime(i64::from_be_bytes(array(body)))
        }
        TYPE_BOOLEAN => {
            fixed(8)?;
            match u64::from_be_bytes(array(body)) {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                _ => return Err(TtlvError::BadBoolean(offset)),
            }
        }
        TYPE_BIG_INTEGER => {
            if len == 0 || !multiple_of(len, 8) {
                return Err(bad_len);
            }
            Value::BigInteger(body.to_vec())
        }
        TYPE_TEXT_STRING => match std::str::from_utf8(body) {
            Ok(s) => Value::TextString(s.to_owned()),
            Err(_) => return Err(TtlvError::BadUtf8(offset)),
        },
        TYPE_BYTE_STRING => Value::ByteString(Zeroizing::new(body.to_vec())),
        _ => return Err(TtlvError::UnknownType { tag, typ, offset }),
    };
    *pos = body_start + span;
    Ok(Ttlv { tag, value })
}

/// Makes offsets reported from inside a structure absolute.
fn shift(e: TtlvError, by: usize) -> TtlvError {
    match e {
        TtlvError::Truncated(o) => TtlvError::Truncated(o + by),
        TtlvError::BadLength {
            tag,
            typ,
            len,
            offset,
        } => TtlvError::BadLength {
            tag,
            typ,
            len,
            offset: offset + by,
        },
        TtlvError::UnknownType { tag, typ, offset } => TtlvError::UnknownType {
            tag,
            typ,
            offset: offset + by,
        },
        TtlvError::BadBoolean(o) => TtlvError::BadBoolean(o + by),
        TtlvError::BadUtf8(o) => TtlvError::BadUtf8(o + by),
        other => other,
    }
}

/// `body` has been checked to have exactly N bytes.
fn array<const N: usize>(body: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&body[..N]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let clean: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '|')
            .collect();
        hex::decode(clean).unwrap()
    }

    fn check(item: Ttlv, wire: &str) {
        let wire = hex(wire);
        assert_eq!(
            &encode(&item).unwrap()[..],
            &wire[..],
            "encoding of {item:?}"
        );
        assert_eq!(decode(&wire).unwrap(), item, "decoding of {wire:02x?}");
    }

    // The examples of KMIP 1.2, section 9.1.2.
    #[test]
    fn spec_integer() {
        check(
            Ttlv::integer(0x420020, 8),
            "420020 | 02 | 00000004 | 00000008 00000000",
        );
    }

    #[test]
    fn spec_long_integer() {
        check(
            Ttlv::long_integer(0x420020, 123_456_789_000_000_000),
            "420020 | 03 | 00000008 | 01B69B4BA5749200",
        );
    }

    #[test]
    fn spec_big_integer() {
        let wire = "420020 | 04 | 00000010 | 0000000003FD35EB 6BC2DF4618080000";
        let item = |v: &str| Ttlv {
            tag: 0x420020,
            value: Value::BigInteger(hex(v)),
        };
        check(item("0000000003FD35EB6BC2DF4618080000"), wire);
        // Shorter values are sign-extended to whole 8-byte words.
        assert_eq!(
            &encode(&item("03FD35EB6BC2DF4618080000")).unwrap()[..],
            &hex(wire)[..]
        );
    }

    #[test]
    fn spec_enumeration() {
        check(
            Ttlv::enumeration(0x420020, 255),
            "420020 | 05 | 00000004 | 000000FF 00000000",
        );
    }

    #[test]
    fn spec_boolean() {
        check(
            Ttlv::boolean(0x420020, true),
            "420020 | 06 | 00000008 | 0000000000000001",
        );
    }

    #[test]
    fn spec_text_string() {
        check(
            Ttlv::text(0x420020, "Hello World"),
            "420020 | 07 | 0000000B | 48656C6C6F20576F 726C640000000000",
        );
    }

    #[test]
    fn spec_byte_string() {
        check(
            Ttlv::bytes(0x420020, &[1, 2, 3]),
            "420020 | 08 | 00000003 | 0102030000000000",
        );
    }

    #[test]
    fn spec_date_time() {
        // Friday, March 14, 2008, 11:56:40 GMT
        check(
            Ttlv::date_time(0x420020, 0x47DA_67F8),
            "420020 | 09 | 00000008 | 0000000047DA67F8",
        );
    }

    #[test]
    fn spec_interval() {
        let item = Ttlv {
            tag: 0x420020,
            value: Value::Interval(864_000),
        };
        check(item, "420020 | 0A | 00000004 | 000D2F00 00000000");
    }

    #[test]
    fn spec_structure() {
        let item = Ttlv::structure(
            0x420020,
            vec![
                Ttlv::enumeration(0x420004, 254),
                Ttlv::integer(0x420005, 255),
            ],
        );
        check(
            item,
            "420020 | 01 | 00000020 | 420004 | 05 | 00000004 | 000000FE 00000000 \
             | 420005 | 02 | 00000004 | 000000FF 00000000",
        );
    }

    #[test]
    fn round_trip_nested_message() {
        let item = Ttlv::structure(
            0x420078,
            vec![
                Ttlv::structure(
                    0x420077,
                    vec![
                        Ttlv::structure(
                            0x420069,
                            vec![Ttlv::integer(0x42006A, 1), Ttlv::integer(0x42006B, 2)],
                        ),
                        Ttlv::integer(0x42000D, 1),
                    ],
                ),
                Ttlv::text(0x420094, ""),
                Ttlv::text(0x420094, "exactly8"),
                Ttlv::bytes(0x4200C2, &[0xAA; 17]),
                Ttlv::bytes(0x4200C2, &[]),
                Ttlv::boolean(0x4200C5, false),
                Ttlv::integer(0x42002A, -1),
                Ttlv::long_integer(0x420020, i64::MIN),
                Ttlv::date_time(0x420092, -1),
                Ttlv::structure(0x420091, vec![]),
            ],
        );
        let wire = encode(&item).unwrap();
        assert_eq!(wire.len(), item.encoded_len());
        assert!(multiple_of(wire.len(), 8));
        assert_eq!(decode(&wire).unwrap(), item);
    }

    #[test]
    fn negative_big_integer_is_sign_extended() {
        let item = Ttlv {
            tag: 0x420020,
            value: Value::BigInteger(vec![0x80, 0x01]),
        };
        assert_eq!(&encode(&item).unwrap()[8..], &hex("FFFFFFFFFFFF8001")[..]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let item = Ttlv::structure(
            0x420078,
            vec![Ttlv::text(0x420094, "abc"), Ttlv::integer(0x42000D, 1)],
        );
        let wire = encode(&item).unwrap();
        for n in 0..wire.len() {
            assert!(decode(&wire[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        assert_eq!(decode(&wire[..4]), Err(TtlvError::Truncated(0)));
        let mut longer = wire.to_vec();
        longer.extend_from_slice(&[0; 8]);
        assert_eq!(decode(&longer), Err(TtlvError::TrailingBytes(8)));
    }

    #[test]
    fn missing_padding_is_truncation() {
        assert_eq!(
            decode(&hex("420020 | 07 | 00000001 | 41")),
            Err(TtlvError::Truncated(0))
        );
    }

    #[test]
    fn lying_lengths_are_rejected() {
        // A structure claiming more than it holds, and a child overrunning its parent.
        assert_eq!(
            decode(&hex("420078 | 01 | FFFFFFF8")),
            Err(TtlvError::Truncated(0))
        );
        let wire = hex("420078 | 01 | 00000010 | 420094 | 07 | 00000010 | 0000000000000000");
        assert_eq!(decode(&wire), Err(TtlvError::Truncated(8)));
        // Fixed-size types with the wrong length, and an unaligned structure.
        assert!(matches!(
            decode(&hex("420020 | 02 | 00000008 | 0000000000000001")),
            Err(TtlvError::BadLength { len: 8, .. })
        ));
        assert!(matches!(
            decode(&hex("420020 | 06 | 00000004 | 0000000100000000")),
            Err(TtlvError::BadLength { .. })
        ));
        assert!(matches!(
            decode(&hex("420020 | 01 | 00000004 | 0000000000000000")),
            Err(TtlvError::BadLength { .. })
        ));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert_eq!(
            decode(&hex("420020 | 06 | 00000008 | 0000000000000002")),
            Err(TtlvError::BadBoolean(0))
        );
        assert_eq!(
            decode(&hex("420020 | 07 | 00000002 | C328000000000000")),
            Err(TtlvError::BadUtf8(0))
        );
        assert!(matches!(
            decode(&hex("420020 | 0B | 00000000")),
            Err(TtlvError::UnknownType { typ: 0x0B, .. })
        ));
    }

    #[test]
    fn nesting_and_size_are_capped() {
        let mut item = Ttlv::integer(0x420020, 1);
        for _ in 0..=MAX_DEPTH {
            item = Ttlv::structure(0x420020, vec![item]);
        }
        let wire = encode(&item).unwrap();
        assert_eq!(decode(&wire), Err(TtlvError::TooDeep));

        let big = Ttlv::bytes(0x4200C2, &vec![0; MAX_MESSAGE]);
        assert_eq!(encode(&big), Err(TtlvError::TooLarge));
        assert_eq!(decode(&vec![0; MAX_MESSAGE + 1]), Err(TtlvError::TooLarge));
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..96);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if buf.len() >= 8 && rng.gen_bool(0.7) {
                buf[3] = rng.gen_range(1..=10);
                let l = rng.gen_range(0..=(len as u32));
                buf[4..8].copy_from_slice(&l.to_be_bytes());
            }
            let _ = decode(&buf);
        }
    }
}
