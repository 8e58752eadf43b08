//! How records and figures are printed: one line per record, as text or as JSON.

use std::io::Write;

use serde_json::json;

use crate::failure::Failure;

/// One record as the commands print it, whether it came from the files or from `Log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub partition: u32,
    pub offset: u64,
    pub version: u64,
    pub global_position: u64,
    pub timestamp_ms: u64,
    pub key: Vec<u8>,
    pub event_id: Option<u128>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub payload: Vec<u8>,
}

impl From<&annal::Record> for Row {
    fn from(record: &annal::Record) -> Row {
        Row {
            partition: record.partition,
            offset: record.offset,
            version: record.version,
            global_position: record.global_position,
            timestamp_ms: record.timestamp_ms,
            key: record.key.to_vec(),
            event_id: record.event_id,
            headers: record
                .headers
                .iter()
                .map(|h| (h.name.to_vec(), h.value.to_vec()))
                .collect(),
            payload: record.payload.to_vec(),
        }
    }
}

/// How a record is printed.
#[derive(Clone, Copy, Debug)]
pub struct RowFormat {
    pub json: bool,
    /// Longest payload preview in bytes; 0 prints the size alone.
    pub preview_bytes: usize,
}

impl Row {
    pub fn line(&self, format: RowFormat) -> String {
        if format.json {
            return self.json().to_string();
        }
        let mut line = format!(
            "partition={} offset={} version={} global={} time={} key={}",
            self.partition,
            self.offset,
            self.version,
            self.global_position,
            time_text(self.timestamp_ms),
            quoted(&self.key, usize::MAX)
        );
        if let Some(id) = self.event_id {
            line.push_str(&format!(" id={id:032x}"));
        }
        for (name, value) in &self.headers {
            line.push_str(&format!(
                " header.{}={}",
                header_name(name),
                quoted(value, 64)
            ));
        }
        line.push_str(&format!(" payload={}B", self.payload.len()));
        if format.preview_bytes > 0 && !self.payload.is_empty() {
            line.push(' ');
            line.push_str(&quoted(&self.payload, format.preview_bytes));
        }
        line
    }

    pub fn json(&self) -> serde_json::Value {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(name, value)| (lossless(name), json!(lossless(value))))
            .collect();
        let mut object = json!({
            "partition": self.partition,
            "offset": self.offset,
            "version": self.version,
            "global_position": self.global_position,
            "timestamp_ms": self.timestamp_ms,
            "key": lossless(&self.key),
            "event_id": self.event_id.map(|id| format!("{id:032x}")),
            "headers": headers,
            "payload_bytes": self.payload.len(),
        });
        match std::str::from_utf8(&self.payload) {
            Ok(text) => object["payload"] = json!(text),
            Err(_) => object["payload_hex"] = json!(hex(&self.payload)),
        }
        object
    }
}

/// Bytes as a string for JSON: the text when it is UTF-8, else `hex:` and the hex digits.
fn lossless(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("hex:{}", hex(bytes)),
    }
}

/// A header name as it is when it is a plain word, quoted otherwise.
fn header_name(name: &[u8]) -> String {
    let plain = !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        String::from_utf8_lossy(name).into_owned()
    } else {
        quoted(name, usize::MAX)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes for a text line: printable text in quotes (escaped as Rust does), anything else as
/// hex; cut after `limit` bytes with `…` and the size.
pub fn quoted(bytes: &[u8], limit: usize) -> String {
    let shown = &bytes[..bytes.len().min(limit)];
    let cut = if shown.len() < bytes.len() { "…" } else { "" };
    match std::str::from_utf8(shown) {
        Ok(text) if text.chars().all(|c| !c.is_control() || c == '\t') => {
            format!("\"{}{cut}\"", text.escape_debug())
        }
        _ => format!("hex:{}{cut}", hex(shown)),
    }
}

/// Milliseconds since the Unix epoch as an ISO 8601 UTC time (`2026-11-30T11:02:16.123Z`).
pub fn time_text(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A byte count for people: `512 B`, `3.1 KiB`, `24.0 MiB`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A count with thousands separators: `12,345`.
pub fn count_text(n: u64) -> String {
    let digits = n.to_string();
    let mut text = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(c);
    }
    text
}

/// Prints one line on stdout.
pub fn print_line(line: &str) -> Result<(), Failure> {
    let mut out = Out::new();
    out.line(line)?;
    out.flush()
}

/// Buffered stdout: one write per line would cost a system call per record. Call
/// [`flush`](Out::flush) at the end to hear of a failed write; dropping it flushes silently.
pub struct Out(std::io::BufWriter<std::io::Stdout>);

impl Out {
    pub fn new() -> Out {
        Out(std::io::BufWriter::new(std::io::stdout()))
    }

    pub fn line(&mut self, line: &str) -> Result<(), Failure> {
        writeln!(self.0, "{line}").map_err(|e| Failure::io("write", "stdout", e))
    }

    pub fn row(&mut self, row: &Row, format: RowFormat) -> Result<(), Failure> {
        self.line(&row.line(format))
    }

    pub fn flush(&mut self) -> Result<(), Failure> {
        self.0
            .flush()
            .map_err(|e| Failure::io("write", "stdout", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_iso_8601() {
        assert_eq!(time_text(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time_text(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(time_text(1_796_036_536_789), "2026-11-30T11:02:16.789Z");
    }

    #[test]
    fn bytes_are_quoted_when_printable_and_hex_otherwise() {
        assert_eq!(quoted(b"abc", 10), "\"abc\"");
        assert_eq!(quoted(b"abcdef", 3), "\"abc…\"");
        assert_eq!(quoted(&[0, 255], 10), "hex:00ff");
        assert_eq!(count_text(1_234_567), "1,234,567");
        assert_eq!(bytes_text(3 << 20), "3.0 MiB");
    }
}
