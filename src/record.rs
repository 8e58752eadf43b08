//! What goes in ([`Event`]) and what comes out ([`Record`]) of the log.

use bytes::Bytes;

use crate::storage::frame::{FrameInfo, RecordRanges};

/// One event to append: a payload and optional headers (name/value pairs such as the event type,
/// a schema version or a correlation id). The key is given per append, not per event.
///
/// ```
/// use annal::Event;
/// let event = Event::new(b"{\"sku\":\"A1\"}").header("type", "OrderPlaced").header("v", "2");
/// assert_eq!(event.payload(), b"{\"sku\":\"A1\"}");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event<'a> {
    payload: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
    id: Option<u128>,
}

impl<'a> Event<'a> {
    /// An event with this payload and no headers.
    pub fn new(payload: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        Event {
            payload: payload.as_ref(),
            headers: Vec::new(),
            id: None,
        }
    }

    /// Gives the event a 128-bit id (a UUID's bits, say). Appending an event whose id is
    /// already in its key's partition writes nothing and returns where the original is
    /// (idempotent retries, [`Log::append_to`](crate::Log::append_to)); the id is stored in the
    /// record and kept for as long as the record is.
    pub fn id(mut self, id: u128) -> Self {
        self.id = Some(id);
        self
    }

    /// The event's id, if it has one.
    pub fn event_id(&self) -> Option<u128> {
        self.id
    }

    /// Adds a header. Names need not be unique; order is kept.
    pub fn header(
        mut self,
        name: &'a (impl AsRef<[u8]> + ?Sized),
        value: &'a (impl AsRef<[u8]> + ?Sized),
    ) -> Self {
        self.headers.push((name.as_ref(), value.as_ref()));
        self
    }

    /// The payload.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The headers, in the order they were added.
    pub fn headers(&self) -> &[(&'a [u8], &'a [u8])] {
        &self.headers
    }

    /// Payload plus header names and values (and 16 bytes for an id): the size checked
    /// against [`Options::event_bytes_max`](crate::Options::event_bytes_max).
    pub fn size_bytes(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        let id = if self.id.is_some() { 16 } else { 0 };
        (self.payload.len() + headers + id) as u64
    }
}

impl<'a> From<&'a [u8]> for Event<'a> {
    fn from(payload: &'a [u8]) -> Self {
        Event::new(payload)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Event<'a> {
    fn from(payload: &'a [u8; N]) -> Self {
        Event::new(payload)
    }
}

impl<'a> From<&'a Vec<u8>> for Event<'a> {
    fn from(payload: &'a Vec<u8>) -> Self {
        Event::new(payload)
    }
}

impl<'a> From<&'a str> for Event<'a> {
    fn from(payload: &'a str) -> Self {
        Event::new(payload)
    }
}

impl<'a> From<&'a String> for Event<'a> {
    fn from(payload: &'a String) -> Self {
        Event::new(payload)
    }
}

impl<'a> From<&Event<'a>> for Event<'a> {
    fn from(event: &Event<'a>) -> Self {
        event.clone()
    }
}

/// One header of a stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: Bytes,
    pub value: Bytes,
}

/// One event as read back from the log. `key`, header and `payload` bytes point into the mapped
/// segment file: cloning them or the record copies no event data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// The partition the record is in.
    pub partition: u32,
    /// Position in the partition: contiguous from 0.
    pub offset: u64,
    /// Milliseconds since the Unix epoch, assigned at append; never decreasing in the log.
    pub timestamp_ms: u64,
    /// Position in its key's stream: contiguous from 0 per key.
    pub version: u64,
    /// Position in the log's one global order across all partitions: contiguous from 0.
    pub global_position: u64,
    /// The id the event was appended with, if any.
    pub event_id: Option<u128>,
    /// The key the event was appended under.
    pub key: Bytes,
    /// The headers, in the order they were given.
    pub headers: Vec<Header>,
    /// The payload.
    pub payload: Bytes,
}

impl Record {
    /// The value of the first header called `name`, if any.
    pub fn header(&self, name: impl AsRef<[u8]>) -> Option<&Bytes> {
        let name = name.as_ref();
        self.headers
            .iter()
            .find(|header| header.name == name)
            .map(|header| &header.value)
    }
}

impl Record {
    /// The record at `ranges` (relative to the frame at `frame_start` of `map`), the
    /// `record_index`-th of its frame. Its bytes are slices of `map`: nothing is copied.
    pub(crate) fn from_frame(
        partition: u32,
        map: &Bytes,
        frame_start: usize,
        info: &FrameInfo,
        ranges: RecordRanges,
        record_index: u64,
    ) -> Record {
        let at = |r: std::ops::Range<usize>| map.slice(frame_start + r.start..frame_start + r.end);
        // Most events have no headers: skip the iterator machinery for them.
        let headers = if ranges.headers.is_empty() {
            Vec::new()
        } else {
            let frame = &map[frame_start..];
            ranges
                .headers
                .iter(frame)
                .map(|(name, value)| Header {
                    name: at(name),
                    value: at(value),
                })
                .collect()
        };
        Record {
            partition,
            offset: info.base_offset + record_index,
            timestamp_ms: info.timestamp_ms,
            version: info.base_version + record_index,
            global_position: info.global_position + record_index,
            event_id: ranges.event_id,
            key: at(info.key_range()),
            headers,
            payload: at(ranges.payload),
        }
    }
}
