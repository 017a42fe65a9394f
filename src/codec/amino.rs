//! TM2's amino binary encoding: the wire primitives every post-handshake message is built from
//! (NodeInfo, mconn packets, peer exchange).
//!
//! Amino's binary form is protobuf 3: a message is a sequence of fields, each a key
//! `uvarint(number << 3 | wire type)` and a value, a `uvarint` for integers and booleans
//! ([`WireType::Varint`]), `uvarint(len) bytes` for strings, byte strings and embedded
//! messages ([`WireType::Bytes`]). Fields appear in increasing number order; a field holding
//! its zero value (0, false, "", empty bytes, an all-empty embedded message) is left out; a
//! repeated field is its elements one after another under the same number. Two framings sit on
//! top:
//! - **Any** ([`put_any`], [`decode_any`]): an interface value is the message
//!   `{1: type URL, 2: the concrete value's encoding}` (field 2 left out when that is empty),
//!   e.g. `0a 09 "/p2p.Ping"`.
//! - **Sized** ([`put_uvarint`] then the body; [`sized_header`]): a stream message is
//!   `uvarint(len(body)) body`.
//!
//! ## Decoding is canonical
//!
//! gno's encoder writes exactly one encoding of each value, and its decoders already refuse
//! unknown fields, wrong wire types, decreasing field numbers and integers too wide for their
//! Go type. Ours refuse those too and, stricter, also every *other* encoding of a value than
//! the one gno writes: overlong varints (gno accepts `8f 00` for 15), zero values written out
//! (gno accepts `12 00`, an explicit empty Any value) and repeats of a non-repeated field. So
//! one value has exactly one accepted encoding (one exception: the *text* of an address,
//! `id@ip:port` in a NodeInfo or a peer-exchange response, is parsed as gno parses it, so
//! `tcp://id@...` or a port with a leading zero reads as the same address), what we accept is a
//! subset of what gno accepts, and everything gno writes is in it (tests/tm2_vectors.rs checks every encoding gno
//! wrote; tests/tm2_interop.rs compares decoders with gno's own on mutated inputs).
//!
//! Everything here is allocation-free: decoders borrow from the input, and every length is
//! checked against the bytes actually present (and the caller's limit) before it is used.

use std::fmt;

/// The longest uvarint: a `u64` takes at most 10 bytes.
pub const MAX_UVARINT_LEN: usize = 10;

/// How a field's value is laid out (the low 3 bits of its key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    /// A uvarint: integers, booleans.
    Varint,
    /// 8 little-endian bytes.
    Fixed64,
    /// `uvarint(len)` then `len` bytes: strings, byte strings, embedded messages.
    Bytes,
    /// 4 little-endian bytes.
    Fixed32,
}

impl WireType {
    const fn code(self) -> u64 {
        match self {
            Self::Varint => 0,
            Self::Fixed64 => 1,
            Self::Bytes => 2,
            Self::Fixed32 => 5,
        }
    }

    const fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(Self::Varint),
            1 => Some(Self::Fixed64),
            2 => Some(Self::Bytes),
            5 => Some(Self::Fixed32),
            _ => None,
        }
    }
}

impl fmt::Display for WireType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Varint => "varint",
            Self::Fixed64 => "fixed64",
            Self::Bytes => "length-delimited",
            Self::Fixed32 => "fixed32",
        })
    }
}

/// Why bytes are not the canonical amino encoding of the expected value. Always the sender's
/// fault when the bytes came off the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AminoError {
    /// The input ended inside a varint, a fixed-size value or a length-delimited value.
    #[error("truncated")]
    Truncated,
    /// A varint longer than the shortest form of its value.
    #[error("varint not in its shortest form")]
    OverlongVarint,
    /// A varint of more than 64 bits.
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    /// A field key with wire type 3, 4, 6 or 7 (groups and undefined types).
    #[error("invalid wire type {0}")]
    InvalidWireType(u8),
    /// A field key with number 0 or one past protobuf's largest (2^29 - 1).
    #[error("invalid field number {0}")]
    InvalidFieldNumber(u64),
    /// A field whose number is below the previous one's, or a non-repeated field written twice.
    #[error("field {field} after field {after}: fields must be in increasing order")]
    OutOfOrder {
        /// The offending field.
        field: u32,
        /// The field before it.
        after: u32,
    },
    /// A field number the message does not have.
    #[error("unknown field {0}")]
    UnknownField(u32),
    /// A known field with another wire type than its type has.
    #[error("field {field} has wire type {found}, expected {expected}")]
    WrongWireType {
        /// The field.
        field: u32,
        /// What the input has.
        found: WireType,
        /// What the field's type needs.
        expected: WireType,
    },
    /// An integer wider than its field's type (gno refuses these too: a channel id or eof
    /// flag over 8 bits).
    #[error("field {field}: {value} does not fit in {bits} bits")]
    IntegerOverflow {
        /// The field.
        field: u32,
        /// The value read.
        value: u64,
        /// The field type's width.
        bits: u32,
    },
    /// A boolean other than 0 or 1.
    #[error("field {field}: boolean {value} is neither 0 nor 1")]
    InvalidBool {
        /// The field.
        field: u32,
        /// The value read.
        value: u64,
    },
    /// A non-repeated field holding its zero value, which gno leaves out.
    #[error("field {0} holds its zero value (gno leaves it out)")]
    ExplicitZero(u32),
    /// A string field that is not UTF-8.
    #[error("field {0} is not valid UTF-8")]
    InvalidUtf8(u32),
    /// A field the message requires is absent.
    #[error("missing field {0}")]
    MissingField(u32),
    /// An Any whose type URL is not one the receiver expects here.
    #[error("unexpected type {0:?}")]
    UnexpectedType(String),
    /// Bytes left after a sized message's body or a value that must end the input.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// A sized message (prefix + body) larger than the receiver accepts; refused as soon as
    /// its length prefix is read, before any of the body.
    #[error("{len} bytes exceed the limit of {max}")]
    TooLarge {
        /// Prefix plus declared body length.
        len: u64,
        /// The receiver's limit.
        max: usize,
    },
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// How many bytes the uvarint encoding of `v` takes.
pub const fn uvarint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends the uvarint encoding of `v` (7 bits a byte, least significant first, high bit set
/// on every byte but the last).
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The key of field `number` with wire type `wire`.
pub const fn key(number: u32, wire: WireType) -> u64 {
    ((number as u64) << 3) | wire.code()
}

/// Appends the key of field `number`.
pub fn put_key(out: &mut Vec<u8>, number: u32, wire: WireType) {
    put_uvarint(out, key(number, wire));
}

/// Appends a varint field, left out when `v` is 0.
pub fn put_varint_field(out: &mut Vec<u8>, number: u32, v: u64) {
    if v != 0 {
        put_key(out, number, WireType::Varint);
        put_uvarint(out, v);
    }
}

/// Appends a boolean field, left out when false.
pub fn put_bool_field(out: &mut Vec<u8>, number: u32, v: bool) {
    put_varint_field(out, number, u64::from(v));
}

/// Appends a length-delimited field (string, bytes, embedded message), left out when empty.
pub fn put_bytes_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_element(out, number, bytes);
    }
}

/// Appends one element of a repeated length-delimited field: written even when empty, as gno
/// writes every element of a list.
pub fn put_element(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    put_key(out, number, WireType::Bytes);
    put_uvarint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Length of a length-delimited field of `len` bytes (key, length, bytes), as
/// [`put_element`] writes it.
pub const fn element_len(number: u32, len: usize) -> usize {
    uvarint_len(key(number, WireType::Bytes)) + uvarint_len(len as u64) + len
}

/// Length of a varint field holding `v`, as [`put_varint_field`] writes it (0 when `v` is 0).
pub const fn varint_field_len(number: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        uvarint_len(key(number, WireType::Varint)) + uvarint_len(v)
    }
}

/// Length of the Any of a value of `value_len` bytes under a type URL of `type_url_len` bytes.
pub const fn any_len(type_url_len: usize, value_len: usize) -> usize {
    element_len(1, type_url_len)
        + if value_len == 0 {
            0
        } else {
            element_len(2, value_len)
        }
}

/// Appends an Any: `{1: type_url, 2: value}`, field 2 left out when `value` is empty.
pub fn put_any(out: &mut Vec<u8>, type_url: &str, value: &[u8]) {
    put_element(out, 1, type_url.as_bytes());
    put_bytes_field(out, 2, value);
}

/// Appends `body` as a sized message: `uvarint(len(body)) body`.
pub fn put_sized(out: &mut Vec<u8>, body: &[u8]) {
    put_uvarint(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// Length of a sized message whose body is `body_len` bytes.
pub const fn sized_len(body_len: usize) -> usize {
    uvarint_len(body_len as u64) + body_len
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Reads a canonical uvarint from the start of `buf`: `Ok(None)` if `buf` ends inside it,
/// else the value and how many bytes it took. An overlong form (a final `00` byte after the
/// first) or more than 64 bits is an error, detected without reading past the varint.
pub fn get_uvarint(buf: &[u8]) -> Result<Option<(u64, usize)>, AminoError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == MAX_UVARINT_LEN - 1 && byte > 1 {
            return Err(AminoError::VarintOverflow);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(AminoError::OverlongVarint);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Ok(None)
}

/// The header of a sized message at the start of `buf`: `Ok(None)` until its length prefix is
/// complete, then `(prefix length, total length)`. A message whose total (prefix + body)
/// exceeds `max` is refused as soon as the prefix is read, before any of the body.
pub fn sized_header(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, AminoError> {
    let Some((body, prefix)) = get_uvarint(buf)? else {
        return Ok(None);
    };
    let total = body.saturating_add(prefix as u64);
    if total > max as u64 {
        return Err(AminoError::TooLarge { len: total, max });
    }
    // Fits in usize: bounded by `max`.
    Ok(Some((prefix, total as usize)))
}

/// Splits a whole sized message into its body, requiring it to be all of `msg` and at most
/// `max` bytes with its prefix.
pub fn sized_body(msg: &[u8], max: usize) -> Result<&[u8], AminoError> {
    let (prefix, total) = sized_header(msg, max)?.ok_or(AminoError::Truncated)?;
    match msg.len().cmp(&total) {
        std::cmp::Ordering::Less => Err(AminoError::Truncated),
        std::cmp::Ordering::Greater => Err(AminoError::TrailingBytes(msg.len() - total)),
        std::cmp::Ordering::Equal => Ok(&msg[prefix..]),
    }
}

/// A field's value, borrowed from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A uvarint.
    Varint(u64),
    /// 8 bytes, little-endian.
    Fixed64(u64),
    /// A length-delimited value.
    Bytes(&'a [u8]),
    /// 4 bytes, little-endian.
    Fixed32(u32),
}

impl Value<'_> {
    /// The wire type the value came with.
    pub const fn wire_type(&self) -> WireType {
        match self {
            Self::Varint(_) => WireType::Varint,
            Self::Fixed64(_) => WireType::Fixed64,
            Self::Bytes(_) => WireType::Bytes,
            Self::Fixed32(_) => WireType::Fixed32,
        }
    }
}

/// One field read by [`Fields`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field number (1 ..= 2^29 - 1).
    pub number: u32,
    /// True when the previous field had the same number: legal only for a repeated field,
    /// which the message's decoder knows (see [`Field::single`]).
    pub repeat: bool,
    /// The value.
    pub value: Value<'a>,
}

impl<'a> Field<'a> {
    /// Refuses a repeat: for a field that is not repeated.
    pub const fn single(self) -> Result<Self, AminoError> {
        if self.repeat {
            Err(AminoError::OutOfOrder {
                field: self.number,
                after: self.number,
            })
        } else {
            Ok(self)
        }
    }

    /// An error for a field the message does not have.
    pub const fn unknown(self) -> AminoError {
        AminoError::UnknownField(self.number)
    }

    fn wrong(self, expected: WireType) -> AminoError {
        AminoError::WrongWireType {
            field: self.number,
            found: self.value.wire_type(),
            expected,
        }
    }

    /// The value of a varint field.
    pub fn varint(self) -> Result<u64, AminoError> {
        match self.value {
            Value::Varint(v) => Ok(v),
            _ => Err(self.wrong(WireType::Varint)),
        }
    }

    /// The value of a non-repeated varint field that must fit in 8 bits and, being written,
    /// is not 0.
    pub fn nonzero_u8(self) -> Result<u8, AminoError> {
        let v = self.single()?.varint()?;
        match u8::try_from(v) {
            Ok(0) => Err(AminoError::ExplicitZero(self.number)),
            Ok(b) => Ok(b),
            Err(_) => Err(AminoError::IntegerOverflow {
                field: self.number,
                value: v,
                bits: 8,
            }),
        }
    }

    /// The value of a non-repeated boolean field; being written, it must be `true` (1).
    pub fn true_bool(self) -> Result<bool, AminoError> {
        match self.single()?.varint()? {
            1 => Ok(true),
            0 => Err(AminoError::ExplicitZero(self.number)),
            value => Err(AminoError::InvalidBool {
                field: self.number,
                value,
            }),
        }
    }

    /// The bytes of a length-delimited field (any length: for elements of a repeated field).
    pub fn bytes(self) -> Result<&'a [u8], AminoError> {
        match self.value {
            Value::Bytes(b) => Ok(b),
            _ => Err(self.wrong(WireType::Bytes)),
        }
    }

    /// The bytes of a non-repeated length-delimited field, which being written is not empty.
    pub fn nonempty_bytes(self) -> Result<&'a [u8], AminoError> {
        match self.single()?.bytes()? {
            [] => Err(AminoError::ExplicitZero(self.number)),
            b => Ok(b),
        }
    }

    /// The text of a string field (any length: for elements of a repeated field).
    pub fn str(self) -> Result<&'a str, AminoError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| AminoError::InvalidUtf8(self.number))
    }

    /// The text of a non-repeated string field, which being written is not empty.
    pub fn nonempty_str(self) -> Result<&'a str, AminoError> {
        std::str::from_utf8(self.nonempty_bytes()?)
            .map_err(|_| AminoError::InvalidUtf8(self.number))
    }
}

/// Reads the fields of one message body in order, refusing malformed keys and values, field
/// numbers that decrease, and values longer than the input. Whether a field is known, has the
/// right type, may repeat or holds a zero value is the message decoder's call (see [`Field`]).
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
    last: u32,
}

impl<'a> Fields<'a> {
    /// A reader over the message body `body`.
    pub const fn new(body: &'a [u8]) -> Self {
        Self {
            rest: body,
            last: 0,
        }
    }

    /// How many bytes of the body are not read yet.
    pub const fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The next field, or `None` at the end of the body.
    #[allow(clippy::should_implement_trait)] // fallible: Iterator would hide the error type
    pub fn next(&mut self) -> Result<Option<Field<'a>>, AminoError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (key, n) = get_uvarint(self.rest)?.ok_or(AminoError::Truncated)?;
        let wire =
            WireType::from_code(key & 7).ok_or(AminoError::InvalidWireType((key & 7) as u8))?;
        let Ok(number @ 1..=0x1fff_ffff) = u32::try_from(key >> 3) else {
            return Err(AminoError::InvalidFieldNumber(key >> 3));
        };
        if number < self.last {
            return Err(AminoError::OutOfOrder {
                field: number,
                after: self.last,
            });
        }
        let rest = &self.rest[n..];
        let (value, used) = match wire {
            WireType::Varint => {
                let (v, used) = get_uvarint(rest)?.ok_or(AminoError::Truncated)?;
                (Value::Varint(v), used)
            }
            WireType::Fixed64 => {
                let b: [u8; 8] = rest
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(AminoError::Truncated)?;
                (Value::Fixed64(u64::from_le_bytes(b)), 8)
            }
            WireType::Fixed32 => {
                let b: [u8; 4] = rest
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(AminoError::Truncated)?;
                (Value::Fixed32(u32::from_le_bytes(b)), 4)
            }
            WireType::Bytes => {
                let (len, used) = get_uvarint(rest)?.ok_or(AminoError::Truncated)?;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|len| used.checked_add(len))
                    .filter(|&end| end <= rest.len())
                    .ok_or(AminoError::Truncated)?;
                (Value::Bytes(&rest[used..end]), end)
            }
        };
        self.rest = &rest[used..];
        let repeat = number == self.last;
        self.last = number;
        Ok(Some(Field {
            number,
            repeat,
            value,
        }))
    }
}

/// Splits a canonical Any into its type URL and value: field 1 (a non-empty type URL) then, only
/// when non-empty, field 2; nothing else. The type URL is returned as bytes, for the caller to
/// compare with the ones it knows.
pub fn decode_any(body: &[u8]) -> Result<(&[u8], &[u8]), AminoError> {
    let mut fields = Fields::new(body);
    let type_url = match fields.next()? {
        Some(f) if f.number == 1 => f.nonempty_bytes()?,
        Some(f) if f.number == 2 => return Err(AminoError::MissingField(1)),
        Some(f) => return Err(f.unknown()),
        None => return Err(AminoError::MissingField(1)),
    };
    let value = match fields.next()? {
        Some(f) if f.number == 2 => f.nonempty_bytes()?,
        Some(f) if f.number == 1 => return Err(f.single().err().unwrap_or(f.unknown())),
        Some(f) => return Err(f.unknown()),
        None => return Ok((type_url, &[])),
    };
    match fields.next()? {
        None => Ok((type_url, value)),
        Some(f) if f.number == 2 => Err(f.single().err().unwrap_or(f.unknown())),
        Some(f) => Err(f.unknown()),
    }
}

/// The error for a value where the type has no fields (Ping, Pong, a peer-exchange Request): an
/// [`AminoError::UnknownField`] naming the value's first field (or its malformation).
pub fn unexpected_value(value: &[u8]) -> AminoError {
    match Fields::new(value).next() {
        Ok(Some(f)) => f.unknown(),
        Ok(None) => AminoError::ExplicitZero(2),
        Err(e) => e,
    }
}

/// An [`AminoError::UnexpectedType`] for a type URL the receiver does not take here, shown as
/// text (lossily, and at most 64 bytes of it: the bytes are the peer's).
pub fn unexpected_type(type_url: &[u8]) -> AminoError {
    let shown = &type_url[..type_url.len().min(64)];
    AminoError::UnexpectedType(String::from_utf8_lossy(shown).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uvarint_boundaries_round_trip() {
        for v in [
            0u64,
            1,
            0x7f,
            0x80,
            0x3fff,
            0x4000,
            u64::from(u32::MAX),
            u64::MAX >> 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            assert_eq!(out.len(), uvarint_len(v), "{v}");
            assert_eq!(get_uvarint(&out), Ok(Some((v, out.len()))), "{v}");
            for cut in 0..out.len() {
                assert_eq!(get_uvarint(&out[..cut]), Ok(None), "{v} cut {cut}");
            }
        }
        let mut out = Vec::new();
        put_uvarint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!(uvarint_len(u64::MAX), MAX_UVARINT_LEN);
    }

    #[test]
    fn uvarint_refuses_overlong_forms_and_overflow() {
        assert_eq!(get_uvarint(&[0x8f, 0x00]), Err(AminoError::OverlongVarint));
        assert_eq!(get_uvarint(&[0x80, 0x00]), Err(AminoError::OverlongVarint));
        assert_eq!(
            get_uvarint(&[0x80, 0x80, 0x00]),
            Err(AminoError::OverlongVarint)
        );
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(get_uvarint(&max), Ok(Some((u64::MAX, 10))));
        max[9] = 0x02;
        assert_eq!(get_uvarint(&max), Err(AminoError::VarintOverflow));
        max[9] = 0x81;
        assert_eq!(get_uvarint(&max), Err(AminoError::VarintOverflow));
        // An endless run of continuation bytes stops at the tenth byte.
        assert_eq!(get_uvarint(&[0x80; 64]), Err(AminoError::VarintOverflow));
    }

    #[test]
    fn sized_header_refuses_oversize_before_the_body() {
        let mut buf = Vec::new();
        put_uvarint(&mut buf, 10_000);
        assert_eq!(
            sized_header(&buf, 10_001),
            Err(AminoError::TooLarge {
                len: 10_002,
                max: 10_001
            })
        );
        assert_eq!(sized_header(&buf, 10_002), Ok(Some((2, 10_002))));
        assert_eq!(sized_header(&buf[..1], 10), Ok(None));
        let mut huge = Vec::new();
        put_uvarint(&mut huge, u64::MAX);
        assert!(matches!(
            sized_header(&huge, 1 << 40),
            Err(AminoError::TooLarge { len: u64::MAX, .. })
        ));
    }

    #[test]
    fn sized_body_needs_exactly_one_message() {
        assert_eq!(sized_body(&[2, 7, 8], 10), Ok(&[7u8, 8][..]));
        assert_eq!(sized_body(&[2, 7], 10), Err(AminoError::Truncated));
        assert_eq!(
            sized_body(&[2, 7, 8, 9], 10),
            Err(AminoError::TrailingBytes(1))
        );
        assert_eq!(sized_body(&[], 10), Err(AminoError::Truncated));
    }

    #[test]
    fn fields_read_every_wire_type_in_order() {
        let mut body = Vec::new();
        put_varint_field(&mut body, 1, 300);
        put_key(&mut body, 2, WireType::Fixed64);
        body.extend_from_slice(&7u64.to_le_bytes());
        put_element(&mut body, 3, b"ab");
        put_element(&mut body, 3, b"");
        put_key(&mut body, 4, WireType::Fixed32);
        body.extend_from_slice(&9u32.to_le_bytes());
        let mut f = Fields::new(&body);
        let a = f.next().unwrap().unwrap();
        assert_eq!((a.number, a.repeat, a.varint()), (1, false, Ok(300)));
        assert_eq!(f.next().unwrap().unwrap().value, Value::Fixed64(7));
        let c = f.next().unwrap().unwrap();
        assert_eq!((c.number, c.repeat, c.str()), (3, false, Ok("ab")));
        let d = f.next().unwrap().unwrap();
        assert_eq!((d.repeat, d.bytes()), (true, Ok(&b""[..])));
        assert!(d.single().is_err());
        assert_eq!(f.next().unwrap().unwrap().value, Value::Fixed32(9));
        assert_eq!(f.next(), Ok(None));
    }

    #[test]
    fn fields_refuse_what_gno_refuses() {
        // Decreasing numbers.
        let mut f = Fields::new(&[0x10, 0x01, 0x08, 0x01]);
        f.next().unwrap();
        assert_eq!(f.next(), Err(AminoError::OutOfOrder { field: 1, after: 2 }));
        // Wire types 3, 4, 6, 7.
        for wt in [3u8, 4, 6, 7] {
            assert_eq!(
                Fields::new(&[0x08 | wt, 0]).next(),
                Err(AminoError::InvalidWireType(wt))
            );
        }
        // Field number 0.
        assert_eq!(
            Fields::new(&[0x00, 0x01]).next(),
            Err(AminoError::InvalidFieldNumber(0))
        );
        // A length past the end, and one that overflows usize arithmetic.
        assert_eq!(
            Fields::new(&[0x0a, 0x05, 1]).next(),
            Err(AminoError::Truncated)
        );
        let mut huge = vec![0x0a];
        put_uvarint(&mut huge, u64::MAX);
        assert_eq!(Fields::new(&huge).next(), Err(AminoError::Truncated));
        // Truncated fixed values and varints.
        assert_eq!(
            Fields::new(&[0x09, 1, 2]).next(),
            Err(AminoError::Truncated)
        );
        assert_eq!(Fields::new(&[0x0d, 1]).next(), Err(AminoError::Truncated));
        assert_eq!(
            Fields::new(&[0x08, 0x80]).next(),
            Err(AminoError::Truncated)
        );
        assert_eq!(Fields::new(&[0x88]).next(), Err(AminoError::Truncated));
    }

    #[test]
    fn typed_getters_check_type_width_and_zero() {
        let field = |number, value| Field {
            number,
            repeat: false,
            value,
        };
        assert_eq!(field(1, Value::Varint(0x30)).nonzero_u8(), Ok(0x30));
        assert_eq!(
            field(1, Value::Varint(256)).nonzero_u8(),
            Err(AminoError::IntegerOverflow {
                field: 1,
                value: 256,
                bits: 8
            })
        );
        assert_eq!(
            field(1, Value::Varint(0)).nonzero_u8(),
            Err(AminoError::ExplicitZero(1))
        );
        assert_eq!(
            field(2, Value::Bytes(b"x")).varint(),
            Err(AminoError::WrongWireType {
                field: 2,
                found: WireType::Bytes,
                expected: WireType::Varint
            })
        );
        assert_eq!(field(3, Value::Varint(1)).true_bool(), Ok(true));
        assert_eq!(
            field(3, Value::Varint(2)).true_bool(),
            Err(AminoError::InvalidBool { field: 3, value: 2 })
        );
        assert_eq!(
            field(4, Value::Bytes(b"")).nonempty_str(),
            Err(AminoError::ExplicitZero(4))
        );
        assert_eq!(
            field(4, Value::Bytes(&[0xff])).nonempty_str(),
            Err(AminoError::InvalidUtf8(4))
        );
    }

    #[test]
    fn any_round_trips_and_is_canonical() {
        let mut out = Vec::new();
        put_any(&mut out, "/p2p.Ping", &[]);
        assert_eq!(out, b"\x0a\x09/p2p.Ping");
        assert_eq!(decode_any(&out), Ok((&b"/p2p.Ping"[..], &[][..])));
        assert_eq!(any_len(9, 0), out.len());
        let mut out = Vec::new();
        put_any(&mut out, "/p2p.Msg", b"\x08\x30");
        assert_eq!(any_len(8, 2), out.len());
        assert_eq!(decode_any(&out), Ok((&b"/p2p.Msg"[..], &b"\x08\x30"[..])));
        // An explicit empty value (gno accepts it, never writes it), a repeated field, fields
        // in the wrong order, an unknown field, no type URL.
        for bad in [
            &b"\x0a\x09/p2p.Ping\x12\x00"[..],
            b"\x0a\x01a\x0a\x01a",
            b"\x12\x01a\x0a\x01a",
            b"\x0a\x01a\x1a\x00",
            b"\x0a\x00",
            b"",
            b"\x0a\x01a\x12\x01x\x12\x01x",
        ] {
            assert!(decode_any(bad).is_err(), "{bad:02x?}");
        }
    }

    #[test]
    fn lengths_match_what_is_written() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384] {
            let mut out = Vec::new();
            put_element(&mut out, 3, &vec![0; len]);
            assert_eq!(out.len(), element_len(3, len));
            assert_eq!(sized_len(len), uvarint_len(len as u64) + len);
        }
        for v in [0u64, 1, 255, 256] {
            let mut out = Vec::new();
            put_varint_field(&mut out, 2, v);
            assert_eq!(out.len(), varint_field_len(2, v));
        }
    }

    proptest! {
        #[test]
        fn uvarint_round_trips(v in any::<u64>()) {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            prop_assert_eq!(get_uvarint(&out), Ok(Some((v, out.len()))));
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = get_uvarint(&bytes);
            let _ = sized_header(&bytes, 1024);
            let _ = decode_any(&bytes);
            let mut f = Fields::new(&bytes);
            while let Ok(Some(_)) = f.next() {}
        }

        #[test]
        fn an_accepted_uvarint_is_the_canonical_one(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            if let Ok(Some((v, n))) = get_uvarint(&bytes) {
                let mut out = Vec::new();
                put_uvarint(&mut out, v);
                prop_assert_eq!(&out[..], &bytes[..n]);
            }
        }
    }
}
