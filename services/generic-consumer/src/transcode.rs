//! Protobuf wire format straight to proto3 JSON, without building a `DynamicMessage`:
//! the fast path of the decoder for protobuf domains. A plan per message type is compiled
//! once from the contract's descriptors (field numbers, JSON keys already quoted, enum
//! names); a message is then read in one pass (values kept as slices of the payload) and
//! written in field-number order with the options the slow path uses: proto field names,
//! 64-bit integers as numbers, zero values written, unset message fields left out,
//! `google.protobuf.Timestamp` as RFC 3339 text.
//!
//! Protobuf's merge rules hold: the last value of a scalar field wins, a message field
//! that occurs twice is the merge of both (read as one), repeated scalars may come packed
//! or not. Unknown fields are skipped. A type the plan does not cover (maps, groups,
//! other well-known types) makes [`Plans::compile`] answer `None`, and the decoder takes
//! the `DynamicMessage` path for that contract; tests check that both paths write the
//! same JSON.

use std::collections::HashMap;

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};

use crate::row::{self, Micros};

/// Why a payload cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

fn error(reason: impl Into<String>) -> WireError {
    WireError(reason.into())
}

/// What a field holds, as the wire and JSON see it.
#[derive(Debug, Clone)]
enum FieldKind {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    /// Index into [`Plans::enums`].
    Enum(usize),
    /// Index into [`Plans::messages`].
    Message(usize),
}

impl FieldKind {
    /// Scalars that may come packed in a repeated field.
    fn packable(&self) -> bool {
        !matches!(self, Self::String | Self::Bytes | Self::Message(_))
    }
}

#[derive(Debug, Clone)]
struct FieldPlan {
    number: u32,
    /// `"name":`, ready to write.
    key: Box<[u8]>,
    kind: FieldKind,
    list: bool,
    /// Written only when set (message fields, oneof members, proto3 `optional`).
    presence: bool,
}

#[derive(Debug, Clone)]
struct MessagePlan {
    /// In field-number order.
    fields: Vec<FieldPlan>,
    /// Field number -> index in `fields` (`NONE` where there is no field): field numbers
    /// are small, so a table beats hashing each field of each message.
    table: Vec<u16>,
    /// Field numbers beyond the table's reach.
    far: HashMap<u32, usize>,
    /// `google.protobuf.Timestamp`: written as RFC 3339 text.
    timestamp: bool,
}

/// No field at this number.
const NONE: u16 = u16::MAX;
/// Field numbers up to this one are looked up in the table.
const TABLE_MAX: u32 = 2048;

impl MessagePlan {
    fn slot_of(&self, number: u32) -> Option<usize> {
        if number <= TABLE_MAX {
            match self.table.get(number as usize) {
                Some(&i) if i != NONE => Some(usize::from(i)),
                _ => None,
            }
        } else {
            self.far.get(&number).copied()
        }
    }
}

#[derive(Debug, Clone)]
struct EnumPlan {
    /// Number -> the value's name, quoted.
    names: HashMap<i32, Box<[u8]>>,
    /// The name of value 0 (the default), quoted, or `0` when there is none.
    default: Box<[u8]>,
}

/// The compiled plans of one message type and every type it reaches.
#[derive(Debug, Clone)]
pub struct Plans {
    messages: Vec<MessagePlan>,
    enums: Vec<EnumPlan>,
    by_name: HashMap<String, usize>,
}

/// A value as it came off the wire.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64(u64),
    Bytes(&'a [u8]),
}

/// What one field collected while a message was read: a scalar's last value, a
/// message's first occurrence, in place; a list's values and a message's further
/// occurrences (merged with the first) in `more`, allocated only when there are any.
#[derive(Debug, Default)]
struct Slot<'a> {
    first: Option<Raw<'a>>,
    more: Vec<Raw<'a>>,
}

impl<'a> Slot<'a> {
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn last(&self) -> Option<&Raw<'a>> {
        self.more.last().or(self.first.as_ref())
    }

    fn push(&mut self, raw: Raw<'a>) {
        if self.first.is_none() {
            self.first = Some(raw);
        } else {
            self.more.push(raw);
        }
    }

    fn set(&mut self, raw: Raw<'a>) {
        self.first = Some(raw);
    }

    fn all(&self) -> impl Iterator<Item = &Raw<'a>> {
        self.first.iter().chain(self.more.iter())
    }
}

/// Values of the top-level message a caller asked for while it is written.
#[derive(Debug, Default)]
pub struct Captured {
    pub event_id: Option<Box<str>>,
    pub timestamp: Option<Micros>,
}

/// Which top-level fields to capture: the event id (a string) and the timestamp (a
/// `Timestamp` message or RFC 3339 text).
#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub event_id: Option<u32>,
    pub timestamp: Option<u32>,
}

const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

impl Plans {
    /// Plans for `root` and every type it reaches; `None` when one of them needs what the
    /// plans do not cover.
    pub fn compile(root: &MessageDescriptor) -> Option<Self> {
        let mut plans = Self {
            messages: Vec::new(),
            enums: Vec::new(),
            by_name: HashMap::new(),
        };
        let mut enums: HashMap<String, usize> = HashMap::new();
        plans.message(root, &mut enums)?;
        Some(plans)
    }

    fn message(
        &mut self,
        descriptor: &MessageDescriptor,
        enums: &mut HashMap<String, usize>,
    ) -> Option<usize> {
        let name = descriptor.full_name();
        if let Some(index) = self.by_name.get(name) {
            return Some(*index);
        }
        let timestamp = name == "google.protobuf.Timestamp";
        if name.starts_with("google.protobuf.") && !timestamp {
            return None;
        }
        if descriptor.is_map_entry() {
            return None;
        }
        let index = self.messages.len();
        self.by_name.insert(name.to_owned(), index);
        self.messages.push(MessagePlan {
            fields: Vec::new(),
            table: Vec::new(),
            far: HashMap::new(),
            timestamp,
        });
        let mut fields: Vec<FieldDescriptor> = descriptor.fields().collect();
        fields.sort_by_key(FieldDescriptor::number);
        let mut planned = Vec::with_capacity(fields.len());
        for field in fields {
            if field.is_map() || field.is_group() {
                return None;
            }
            let kind = match field.kind() {
                Kind::Double => FieldKind::Double,
                Kind::Float => FieldKind::Float,
                Kind::Int32 => FieldKind::Int32,
                Kind::Int64 => FieldKind::Int64,
                Kind::Uint32 => FieldKind::Uint32,
                Kind::Uint64 => FieldKind::Uint64,
                Kind::Sint32 => FieldKind::Sint32,
                Kind::Sint64 => FieldKind::Sint64,
                Kind::Fixed32 => FieldKind::Fixed32,
                Kind::Fixed64 => FieldKind::Fixed64,
                Kind::Sfixed32 => FieldKind::Sfixed32,
                Kind::Sfixed64 => FieldKind::Sfixed64,
                Kind::Bool => FieldKind::Bool,
                Kind::String => FieldKind::String,
                Kind::Bytes => FieldKind::Bytes,
                Kind::Enum(e) => {
                    if e.full_name() == "google.protobuf.NullValue" {
                        return None;
                    }
                    let index = match enums.get(e.full_name()) {
                        Some(index) => *index,
                        None => {
                            let quoted = |name: &str| -> Box<[u8]> {
                                serde_json::to_vec(name).unwrap_or_default().into()
                            };
                            let names: HashMap<i32, Box<[u8]>> =
                                e.values().map(|v| (v.number(), quoted(v.name()))).collect();
                            let default = names
                                .get(&0)
                                .cloned()
                                .unwrap_or_else(|| b"0".to_vec().into());
                            self.enums.push(EnumPlan { names, default });
                            enums.insert(e.full_name().to_owned(), self.enums.len() - 1);
                            self.enums.len() - 1
                        }
                    };
                    FieldKind::Enum(index)
                }
                Kind::Message(m) => FieldKind::Message(self.message(&m, enums)?),
            };
            let mut key = serde_json::to_vec(field.name()).unwrap_or_default();
            key.push(b':');
            planned.push(FieldPlan {
                number: field.number(),
                key: key.into(),
                kind,
                list: field.cardinality() == Cardinality::Repeated,
                presence: field.supports_presence(),
            });
        }
        let plan = &mut self.messages[index];
        let top = planned
            .iter()
            .map(|f| f.number)
            .filter(|n| *n <= TABLE_MAX)
            .max()
            .unwrap_or(0);
        plan.table = vec![NONE; top as usize + 1];
        for (i, field) in planned.iter().enumerate() {
            let i16 = u16::try_from(i).ok()?;
            if field.number <= TABLE_MAX {
                plan.table[field.number as usize] = i16;
            } else {
                plan.far.insert(field.number, i);
            }
        }
        plan.fields = planned;
        Some(index)
    }

    /// The plan index of the message type `full_name`.
    pub fn index_of(&self, full_name: &str) -> Option<usize> {
        self.by_name.get(full_name).copied()
    }

    /// Writes the message `plan` read from `ranges` (one occurrence each, merged in order)
    /// as a JSON object to `out`; captures what `capture` asks for.
    pub fn write(
        &self,
        plan: usize,
        ranges: &[&[u8]],
        out: &mut Vec<u8>,
        capture: &Capture,
    ) -> Result<Captured, WireError> {
        // The common case, a message as encoders write it (fields in number order, each
        // once, a list's elements together), is written as it is read; anything else is
        // read into slots first, then written.
        if let [range] = ranges {
            let start = out.len();
            let mut captured = Captured::default();
            if self.stream(plan, range, out, Some((capture, &mut captured)))? {
                return Ok(captured);
            }
            out.truncate(start);
        }
        self.gathered(plan, ranges, out, capture)
    }

    /// Writes the message while reading it, in one pass and without allocating; `false`
    /// (with `out` partly written) when its fields are not in the order this needs.
    fn stream(
        &self,
        plan: usize,
        data: &[u8],
        out: &mut Vec<u8>,
        mut capture: Option<(&Capture, &mut Captured)>,
    ) -> Result<bool, WireError> {
        let message = &self.messages[plan];
        out.push(b'{');
        let mut first = true;
        let mut next = 0usize;
        let mut reader = Reader { data };
        while !reader.done() {
            let (number, wire) = reader.key()?;
            let Some(i) = message.slot_of(number) else {
                reader.value(wire)?; // unknown field
                continue;
            };
            if i < next {
                return Ok(false); // a field again, or out of order
            }
            for field in &message.fields[next..i] {
                self.default_field(field, &mut first, out);
            }
            next = i + 1;
            let field = &message.fields[i];
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&field.key);
            let raw = reader.value(wire)?;
            if field.list {
                out.push(b'[');
                let mut count = 0usize;
                if !self.element(field, raw, &mut count, out)? {
                    return Ok(false);
                }
                // The list's further elements, while they come next.
                loop {
                    let mut ahead = Reader { data: reader.data };
                    if ahead.done() {
                        break;
                    }
                    let (again, wire) = ahead.key()?;
                    if again != number {
                        break;
                    }
                    let raw = ahead.value(wire)?;
                    reader = ahead;
                    if !self.element(field, raw, &mut count, out)? {
                        return Ok(false);
                    }
                }
                out.push(b']');
                continue;
            }
            if let Some((wanted, captured)) = capture.as_mut()
                && let Raw::Bytes(bytes) = raw
            {
                if wanted.event_id == Some(number) {
                    captured.event_id = event_id_of(bytes);
                }
                if wanted.timestamp == Some(number) {
                    captured.timestamp = self.timestamp_of(&field.kind, &[bytes])?;
                }
            }
            match (&field.kind, raw) {
                (FieldKind::Message(m), Raw::Bytes(bytes)) => {
                    if !self.stream_nested(*m, bytes, out)? {
                        return Ok(false);
                    }
                }
                (kind, raw) if wire_of(raw) == kind_wire(kind) => self.scalar(kind, raw, out)?,
                _ => return Err(wrong_wire(number, raw)),
            }
        }
        for field in &message.fields[next..] {
            self.default_field(field, &mut first, out);
        }
        out.push(b'}');
        Ok(true)
    }

    /// A nested message while streaming: a `Timestamp` as its text, any other streamed.
    fn stream_nested(&self, m: usize, bytes: &[u8], out: &mut Vec<u8>) -> Result<bool, WireError> {
        if self.messages[m].timestamp {
            self.message_value(m, &[bytes], out)?;
            Ok(true)
        } else {
            self.stream(m, bytes, out, None)
        }
    }

    /// One occurrence of a list field: an element, or a packed run of them.
    fn element(
        &self,
        field: &FieldPlan,
        raw: Raw<'_>,
        count: &mut usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, WireError> {
        let comma = |out: &mut Vec<u8>, count: &mut usize| {
            if *count > 0 {
                out.push(b',');
            }
            *count += 1;
        };
        match (&field.kind, raw) {
            (FieldKind::Message(m), Raw::Bytes(bytes)) => {
                comma(out, count);
                if !self.stream_nested(*m, bytes, out)? {
                    return Ok(false);
                }
            }
            (FieldKind::String | FieldKind::Bytes, Raw::Bytes(_)) => {
                comma(out, count);
                self.scalar(&field.kind, raw, out)?;
            }
            (kind, Raw::Bytes(packed)) if kind.packable() => {
                let mut inner = Reader { data: packed };
                let wire = kind_wire(kind);
                while !inner.done() {
                    comma(out, count);
                    self.scalar(kind, inner.value(wire)?, out)?;
                }
            }
            (kind, raw) if wire_of(raw) == kind_wire(kind) => {
                comma(out, count);
                self.scalar(kind, raw, out)?;
            }
            _ => return Err(wrong_wire(field.number, raw)),
        }
        Ok(true)
    }

    /// A field the message does not carry: its zero value, unless it has presence.
    fn default_field(&self, field: &FieldPlan, first: &mut bool, out: &mut Vec<u8>) {
        if field.presence {
            return;
        }
        if !*first {
            out.push(b',');
        }
        *first = false;
        out.extend_from_slice(&field.key);
        if field.list {
            out.extend_from_slice(b"[]");
        } else {
            self.default(&field.kind, out);
        }
    }

    /// Reads into slots, then writes: any order, repeats merged.
    fn gathered(
        &self,
        plan: usize,
        ranges: &[&[u8]],
        out: &mut Vec<u8>,
        capture: &Capture,
    ) -> Result<Captured, WireError> {
        let message = &self.messages[plan];
        let slots = self.gather(message, ranges)?;
        let mut captured = Captured::default();
        if let Some(number) = capture.event_id
            && let Some(i) = message.slot_of(number)
            && let Some(Raw::Bytes(bytes)) = slots[i].last()
        {
            captured.event_id = event_id_of(bytes);
        }
        if let Some(number) = capture.timestamp
            && let Some(i) = message.slot_of(number)
        {
            captured.timestamp =
                self.timestamp_of(&message.fields[i].kind, &bytes_of(&slots[i]))?;
        }
        self.emit(message, &slots, out)?;
        Ok(captured)
    }

    /// Reads every field of `ranges` into its slot.
    fn gather<'a>(
        &self,
        message: &MessagePlan,
        ranges: &[&'a [u8]],
    ) -> Result<Vec<Slot<'a>>, WireError> {
        let mut slots: Vec<Slot<'a>> = Vec::with_capacity(message.fields.len());
        slots.resize_with(message.fields.len(), Slot::default);
        for range in ranges {
            let mut reader = Reader { data: range };
            while !reader.done() {
                let (number, wire) = reader.key()?;
                let raw = reader.value(wire)?;
                let Some(i) = message.slot_of(number) else {
                    continue; // unknown field
                };
                let field = &message.fields[i];
                let slot = &mut slots[i];
                match (&field.kind, raw) {
                    (FieldKind::Message(_), Raw::Bytes(_)) => slot.push(raw),
                    (FieldKind::String | FieldKind::Bytes, Raw::Bytes(_)) => {
                        if field.list {
                            slot.push(raw);
                        } else {
                            slot.set(raw);
                        }
                    }
                    (kind, Raw::Bytes(packed)) if field.list && kind.packable() => {
                        let mut inner = Reader { data: packed };
                        let wire = kind_wire(kind);
                        while !inner.done() {
                            slot.push(inner.value(wire)?);
                        }
                    }
                    (kind, raw) if wire_of(raw) == kind_wire(kind) => {
                        if field.list {
                            slot.push(raw);
                        } else {
                            slot.set(raw);
                        }
                    }
                    _ => return Err(wrong_wire(number, raw)),
                }
            }
        }
        Ok(slots)
    }

    fn emit(
        &self,
        message: &MessagePlan,
        slots: &[Slot<'_>],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        out.push(b'{');
        let mut first = true;
        for (field, slot) in message.fields.iter().zip(slots) {
            if field.presence && slot.is_empty() {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(&field.key);
            if field.list {
                out.push(b'[');
                for (k, raw) in slot.all().enumerate() {
                    if k > 0 {
                        out.push(b',');
                    }
                    match &field.kind {
                        FieldKind::Message(m) => {
                            let Raw::Bytes(bytes) = raw else {
                                return Err(error("a message element that is not bytes"));
                            };
                            self.message_value(*m, &[bytes], out)?;
                        }
                        kind => self.scalar(kind, *raw, out)?,
                    }
                }
                out.push(b']');
            } else {
                match &field.kind {
                    FieldKind::Message(m) => match slot.first {
                        Some(Raw::Bytes(only)) if slot.more.is_empty() => {
                            self.message_value(*m, &[only], out)?
                        }
                        _ => self.message_value(*m, &bytes_of(slot), out)?,
                    },
                    kind => match slot.last() {
                        Some(raw) => self.scalar(kind, *raw, out)?,
                        None => self.default(kind, out),
                    },
                }
            }
        }
        out.push(b'}');
        Ok(())
    }

    fn message_value(
        &self,
        m: usize,
        ranges: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let plan = &self.messages[m];
        if plan.timestamp {
            let (seconds, nanos) = timestamp_fields(ranges)?;
            if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&seconds) {
                return Err(error("timestamp out of range"));
            }
            out.push(b'"');
            write_timestamp(out, seconds, nanos);
            out.push(b'"');
            return Ok(());
        }
        let slots = self.gather(plan, ranges)?;
        self.emit(plan, &slots, out)
    }

    /// The microseconds a captured timestamp field holds (a `Timestamp`'s occurrences
    /// merged, or the last RFC 3339 text); `None` when it is unset or not a timestamp.
    fn timestamp_of(
        &self,
        kind: &FieldKind,
        ranges: &[&[u8]],
    ) -> Result<Option<Micros>, WireError> {
        Ok(match kind {
            FieldKind::Message(ts) if self.messages[*ts].timestamp && !ranges.is_empty() => {
                let (seconds, nanos) = timestamp_fields(ranges)?;
                Some(row::micros_of(seconds, nanos))
            }
            FieldKind::String => ranges
                .last()
                .and_then(|text| std::str::from_utf8(text).ok())
                .and_then(row::parse_rfc3339),
            _ => None,
        })
    }

    fn default(&self, kind: &FieldKind, out: &mut Vec<u8>) {
        match kind {
            FieldKind::Bool => out.extend_from_slice(b"false"),
            FieldKind::String | FieldKind::Bytes => out.extend_from_slice(b"\"\""),
            FieldKind::Enum(e) => out.extend_from_slice(&self.enums[*e].default),
            FieldKind::Double | FieldKind::Float => out.extend_from_slice(b"0.0"),
            _ => out.push(b'0'),
        }
    }

    fn scalar(&self, kind: &FieldKind, raw: Raw<'_>, out: &mut Vec<u8>) -> Result<(), WireError> {
        let mut ints = itoa::Buffer::new();
        match (kind, raw) {
            (FieldKind::Int32, Raw::Varint(v)) => {
                out.extend_from_slice(ints.format(v as i64 as i32).as_bytes())
            }
            (FieldKind::Int64, Raw::Varint(v)) => {
                out.extend_from_slice(ints.format(v as i64).as_bytes())
            }
            (FieldKind::Uint32, Raw::Varint(v)) => {
                out.extend_from_slice(ints.format(v as u32).as_bytes())
            }
            (FieldKind::Uint64, Raw::Varint(v)) => out.extend_from_slice(ints.format(v).as_bytes()),
            (FieldKind::Sint32, Raw::Varint(v)) => {
                let v = v as u32;
                let n = ((v >> 1) as i32) ^ -((v & 1) as i32);
                out.extend_from_slice(ints.format(n).as_bytes());
            }
            (FieldKind::Sint64, Raw::Varint(v)) => {
                let n = ((v >> 1) as i64) ^ -((v & 1) as i64);
                out.extend_from_slice(ints.format(n).as_bytes());
            }
            (FieldKind::Bool, Raw::Varint(v)) => {
                out.extend_from_slice(if v != 0 { b"true" } else { b"false" })
            }
            (FieldKind::Enum(e), Raw::Varint(v)) => {
                let number = v as i64 as i32;
                match self.enums[*e].names.get(&number) {
                    Some(name) => out.extend_from_slice(name),
                    None => out.extend_from_slice(ints.format(number).as_bytes()),
                }
            }
            (FieldKind::Fixed32, Raw::Fixed32(v)) => {
                out.extend_from_slice(ints.format(v).as_bytes())
            }
            (FieldKind::Sfixed32, Raw::Fixed32(v)) => {
                out.extend_from_slice(ints.format(v as i32).as_bytes())
            }
            (FieldKind::Float, Raw::Fixed32(v)) => float(f64::from(f32::from_bits(v)), true, out),
            (FieldKind::Fixed64, Raw::Fixed64(v)) => {
                out.extend_from_slice(ints.format(v).as_bytes())
            }
            (FieldKind::Sfixed64, Raw::Fixed64(v)) => {
                out.extend_from_slice(ints.format(v as i64).as_bytes())
            }
            (FieldKind::Double, Raw::Fixed64(v)) => float(f64::from_bits(v), false, out),
            (FieldKind::String, Raw::Bytes(bytes)) => push_json_bytes(out, bytes)?,
            (FieldKind::Bytes, Raw::Bytes(bytes)) => {
                use base64::Engine as _;
                out.push(b'"');
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(bytes)
                        .as_bytes(),
                );
                out.push(b'"');
            }
            _ => return Err(error("a value that does not fit its field's type")),
        }
        Ok(())
    }
}

/// Seconds and nanos of a `Timestamp` read from its occurrences (merged: the last wins).
fn timestamp_fields(ranges: &[&[u8]]) -> Result<(i64, i32), WireError> {
    let (mut seconds, mut nanos) = (0, 0);
    for range in ranges {
        let mut reader = Reader { data: range };
        while !reader.done() {
            let (number, wire) = reader.key()?;
            match (number, reader.value(wire)?) {
                (1, Raw::Varint(v)) => seconds = v as i64,
                (2, Raw::Varint(v)) => nanos = v as i64 as i32,
                (1 | 2, _) => return Err(error("a Timestamp field of the wrong wire type")),
                _ => {}
            }
        }
    }
    Ok((seconds, nanos))
}

/// A captured event id: non-empty UTF-8 text.
fn event_id_of(bytes: &[u8]) -> Option<Box<str>> {
    if bytes.is_empty() {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(Into::into)
}

/// A field whose value came with a wire type its type does not take.
fn wrong_wire(number: u32, raw: Raw<'_>) -> WireError {
    error(format!(
        "field {number} has wire type {} (not what its type takes)",
        wire_of(raw)
    ))
}

/// A float as serde_json writes it; non-finite values as proto3 JSON's strings.
fn float(value: f64, single: bool, out: &mut Vec<u8>) {
    if value.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if value == f64::INFINITY {
        out.extend_from_slice(b"\"Infinity\"");
    } else if value == f64::NEG_INFINITY {
        out.extend_from_slice(b"\"-Infinity\"");
    } else if single {
        let _ = serde_json::to_writer(&mut *out, &(value as f32));
    } else {
        let _ = serde_json::to_writer(&mut *out, &value);
    }
}

/// A string field's bytes as a JSON string: one branch-free pass (it vectorises) tells
/// whether they are ASCII and whether they need escaping; only non-ASCII text is then
/// checked to be UTF-8.
fn push_json_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), WireError> {
    let (high, escape) = bytes.iter().fold((0u8, false), |(high, escape), &b| {
        (high | b, escape | (b < 0x20) | (b == b'"') | (b == b'\\'))
    });
    if high >= 0x80 && std::str::from_utf8(bytes).is_err() {
        return Err(error("a string field holds invalid UTF-8"));
    }
    row::push_json_utf8(out, bytes, escape);
    Ok(())
}

/// `google.protobuf.Timestamp` as proto3 JSON writes it (prost-types' form): normalized,
/// `YYYY-MM-DDTHH:MM:SS`, then no fraction, or 3, 6 or 9 digits, then `Z`. The seconds
/// are in range (years 1 to 9999).
fn write_timestamp(out: &mut Vec<u8>, seconds: i64, nanos: i32) {
    let (mut seconds, mut nanos) = (seconds, i64::from(nanos));
    seconds += nanos.div_euclid(1_000_000_000);
    nanos = nanos.rem_euclid(1_000_000_000);
    let mut whole = Vec::with_capacity(24);
    row::write_rfc3339(&mut whole, seconds.saturating_mul(1_000_000));
    // `whole` is `...SSZ`: drop the `Z`, add the fraction prost-types writes.
    whole.pop();
    out.extend_from_slice(&whole);
    let digits = |out: &mut Vec<u8>, value: i64, width: usize| {
        let mut buffer = [b'0'; 9];
        let mut rest = value;
        for digit in buffer[..width].iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.extend_from_slice(&buffer[..width]);
    };
    if nanos != 0 {
        out.push(b'.');
        if nanos % 1_000_000 == 0 {
            digits(out, nanos / 1_000_000, 3);
        } else if nanos % 1000 == 0 {
            digits(out, nanos / 1000, 6);
        } else {
            digits(out, nanos, 9);
        }
    }
    out.push(b'Z');
}

fn bytes_of<'a>(slot: &Slot<'a>) -> Vec<&'a [u8]> {
    slot.all()
        .filter_map(|raw| match raw {
            Raw::Bytes(b) => Some(*b),
            _ => None,
        })
        .collect()
}

fn wire_of(raw: Raw<'_>) -> u8 {
    match raw {
        Raw::Varint(_) => 0,
        Raw::Fixed64(_) => 1,
        Raw::Bytes(_) => 2,
        Raw::Fixed32(_) => 5,
    }
}

fn kind_wire(kind: &FieldKind) -> u8 {
    match kind {
        FieldKind::Double | FieldKind::Fixed64 | FieldKind::Sfixed64 => 1,
        FieldKind::Float | FieldKind::Fixed32 | FieldKind::Sfixed32 => 5,
        FieldKind::String | FieldKind::Bytes | FieldKind::Message(_) => 2,
        _ => 0,
    }
}

/// Reads the wire format.
pub(crate) struct Reader<'a> {
    pub(crate) data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn done(&self) -> bool {
        self.data.is_empty()
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        if let Some(&byte) = self.data.first()
            && byte < 0x80
        {
            self.data = &self.data[1..];
            return Ok(u64::from(byte));
        }
        let mut value = 0u64;
        for (i, byte) in self.data.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.data = &self.data[i + 1..];
                return Ok(value);
            }
        }
        Err(error("a varint runs past the end or past ten bytes"))
    }

    /// A field's number and wire type.
    #[inline(always)]
    pub(crate) fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| error("a field number out of range"))?;
        if number == 0 {
            return Err(error("field number 0"));
        }
        Ok((number, (key & 7) as u8))
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.data.len() < n {
            return Err(error("a value runs past the end of the message"));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    #[inline(always)]
    fn value(&mut self, wire: u8) -> Result<Raw<'a>, WireError> {
        Ok(match wire {
            0 => Raw::Varint(self.varint()?),
            1 => {
                let bytes = self.take(8)?;
                Raw::Fixed64(u64::from_le_bytes(bytes.try_into().unwrap_or_default()))
            }
            2 => {
                let len =
                    usize::try_from(self.varint()?).map_err(|_| error("a length out of range"))?;
                Raw::Bytes(self.take(len)?)
            }
            5 => {
                let bytes = self.take(4)?;
                Raw::Fixed32(u32::from_le_bytes(bytes.try_into().unwrap_or_default()))
            }
            other => {
                return Err(error(format!(
                    "wire type {other} (groups are not supported)"
                )));
            }
        })
    }

    /// The value of a length-delimited field, or `None` for another wire type (skipped).
    pub(crate) fn bytes_or_skip(&mut self, wire: u8) -> Result<Option<&'a [u8]>, WireError> {
        match self.value(wire)? {
            Raw::Bytes(bytes) => Ok(Some(bytes)),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

    use super::*;

    fn options() -> SerializeOptions {
        SerializeOptions::new()
            .use_proto_field_name(true)
            .stringify_64_bit_integers(false)
            .skip_default_fields(false)
    }

    /// The slow path's JSON of `message` (written as text, as the decoder writes it).
    fn reference(message: &DynamicMessage) -> serde_json::Value {
        let mut text = Vec::new();
        message
            .serialize_with_options(&mut serde_json::Serializer::new(&mut text), &options())
            .expect("serializes");
        serde_json::from_slice(&text).expect("JSON")
    }

    fn fast(plans: &Plans, descriptor: &MessageDescriptor, bytes: &[u8]) -> serde_json::Value {
        let plan = plans.index_of(descriptor.full_name()).expect("planned");
        let mut out = Vec::new();
        plans
            .write(plan, &[bytes], &mut out, &Capture::default())
            .expect("transcodes");
        // The slot path writes the same bytes as the streaming one.
        let mut gathered = Vec::new();
        plans
            .gathered(plan, &[bytes], &mut gathered, &Capture::default())
            .expect("transcodes");
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&gathered)
        );
        serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out));
        })
    }

    const EVERY_TYPE: &str = r#"
syntax = "proto3";
package contracts.every;
import "google/protobuf/timestamp.proto";
enum Colour { COLOUR_UNSPECIFIED = 0; COLOUR_RED = 1; COLOUR_BLUE = 2; }
message Inner { string name = 1; repeated sint64 deltas = 2; Colour colour = 3; }
message Every {
  double d = 1; float f = 2; int32 i32 = 3; int64 i64 = 4; uint32 u32 = 5; uint64 u64 = 6;
  sint32 s32 = 7; sint64 s64 = 8; fixed32 fx32 = 9; fixed64 fx64 = 10; sfixed32 sfx32 = 11;
  sfixed64 sfx64 = 12; bool b = 13; string s = 14; bytes by = 15; Colour colour = 16;
  Inner inner = 17; repeated Inner inners = 18; repeated int32 packed = 19;
  repeated string names = 20; google.protobuf.Timestamp at = 21; optional int32 maybe = 22;
  oneof choice { string text = 23; Inner nested = 24; }
  repeated double ds = 25; repeated Colour colours = 26; repeated bytes blobs = 27;
}
"#;

    fn every() -> (DescriptorPool, MessageDescriptor) {
        let pool = crate::contract::compile_for_test("contracts/every/every.proto", EVERY_TYPE);
        let every = pool
            .get_message_by_name("contracts.every.Every")
            .expect("message");
        (pool, every)
    }

    fn from_json(descriptor: &MessageDescriptor, json: &str) -> DynamicMessage {
        let mut de = serde_json::Deserializer::from_str(json);
        DynamicMessage::deserialize(descriptor.clone(), &mut de).expect("valid JSON")
    }

    #[test]
    fn every_scalar_type_nested_repeated_and_timestamps_match_the_slow_path() {
        let (_pool, every) = every();
        let plans = Plans::compile(&every).expect("covered");
        for json in [
            "{}",
            r#"{"d": 1.5, "f": -0.25, "i32": -7, "i64": "-9007199254740993", "u32": 4000000000,
               "u64": "18446744073709551615", "s32": -2147483648, "s64": "-5", "fx32": 7,
               "fx64": "12", "sfx32": -3, "sfx64": "-4", "b": true, "s": "h\u00e9 \"q\"\n",
               "by": "AAEC/w==", "colour": "COLOUR_BLUE", "inner": {"name": "x", "deltas": ["-1", "2"]},
               "inners": [{}, {"colour": "COLOUR_RED"}], "packed": [1, -1, 300],
               "names": ["a", ""], "at": "2026-11-22T10:00:00.120Z", "maybe": 0,
               "nested": {"name": "n"}, "ds": [0.1, "NaN", "-Infinity"],
               "colours": ["COLOUR_RED", "COLOUR_UNSPECIFIED"], "blobs": ["", "AA=="]}"#,
            r#"{"at": "1970-01-01T00:00:00.000001Z", "text": "t", "d": "Infinity", "f": 3.0e38}"#,
            r#"{"at": "0001-01-01T00:00:00Z", "i32": 2147483647, "colour": 7}"#,
        ] {
            let message = from_json(&every, json);
            let bytes = message.encode_to_vec();
            assert_eq!(fast(&plans, &every, &bytes), reference(&message), "{json}");
        }
    }

    #[test]
    fn the_contracts_samples_match_the_slow_path() {
        let pool = contracts::descriptor_pool().expect("pool");
        for name in [
            "contracts.delivery.DeliveryEventsV10Topic",
            "contracts.payments.PaymentEventsV2Topic",
        ] {
            let topic = pool.get_message_by_name(name).expect("topic");
            let (context, contract) = match name {
                "contracts.delivery.DeliveryEventsV10Topic" => crate::contract::for_test(
                    "delivery",
                    "contracts.delivery.delivery_events_v10",
                    "DeliveryEventsV10Topic",
                    &[],
                ),
                _ => crate::contract::for_test(
                    "payments",
                    "contracts.payments.payment_events_v2",
                    "PaymentEventsV2Topic",
                    &[],
                ),
            };
            drop(context);
            let plans = Plans::compile(&topic).expect("covered");
            for n in 0..200 {
                let (_, message) = crate::samples::sample(&contract, n);
                let bytes = message.encode_to_vec();
                assert_eq!(
                    fast(&plans, &topic, &bytes),
                    reference(&message),
                    "{name} #{n}"
                );
            }
        }
    }

    #[test]
    fn protobuf_merge_rules_hold_on_the_wire() {
        let (_pool, every) = every();
        let plans = Plans::compile(&every).expect("covered");
        let inner = every
            .parent_pool()
            .get_message_by_name("contracts.every.Inner")
            .expect("inner");
        // Two occurrences of `inner` (merged), `i32` twice (the last wins), `packed`
        // unpacked and packed mixed, and an unknown field 99 (skipped).
        let first = from_json(&inner, r#"{"name": "a", "deltas": ["1"]}"#).encode_to_vec();
        let second =
            from_json(&inner, r#"{"deltas": ["2"], "colour": "COLOUR_RED"}"#).encode_to_vec();
        let mut wire = Vec::new();
        let mut put = |key: u64, value: &[u8]| {
            prost::encoding::encode_varint(key, &mut wire);
            wire.extend_from_slice(value);
        };
        let len = |bytes: &[u8]| {
            let mut v = Vec::new();
            prost::encoding::encode_varint(bytes.len() as u64, &mut v);
            v.extend_from_slice(bytes);
            v
        };
        put(17 << 3 | 2, &len(&first));
        put(3 << 3, &[5]);
        put(19 << 3, &[1]);
        put(19 << 3 | 2, &len(&[2, 3]));
        put(99 << 3 | 2, &len(b"unknown"));
        put(17 << 3 | 2, &len(&second));
        put(3 << 3, &[9]);
        let message = DynamicMessage::decode(every.clone(), wire.as_slice()).expect("decodes");
        let ours = fast(&plans, &every, &wire);
        assert_eq!(ours, reference(&message));
        assert_eq!(ours["i32"], 9);
        assert_eq!(ours["inner"]["name"], "a");
        assert_eq!(ours["inner"]["deltas"], serde_json::json!([1, 2]));
        assert_eq!(ours["packed"], serde_json::json!([1, 2, 3]));
    }

    #[test]
    fn malformed_wire_data_is_an_error_not_a_panic() {
        let (_pool, every) = every();
        let plans = Plans::compile(&every).expect("covered");
        let plan = plans.index_of("contracts.every.Every").expect("planned");
        for bad in [
            &[0x0a, 0xff, 0xff, 0x01][..],
            &[0x80][..],
            &[0x00, 0x01][..],
            &[0x72, 0x02, 0xff, 0xfe][..], // s = invalid UTF-8
            &[0x18 | 2, 0x01, 0x00][..],   // i32 as bytes: wrong wire type? (packable, so packed)
            &[0x70][..],                   // s as a varint
            &[0x0b][..],                   // a group
        ] {
            let mut out = Vec::new();
            let result = plans.write(plan, &[bad], &mut out, &Capture::default());
            let slow = DynamicMessage::decode(every.clone(), bad);
            assert_eq!(
                result.is_err(),
                slow.is_err(),
                "{bad:?}: {result:?} vs {slow:?}"
            );
        }
    }
}
