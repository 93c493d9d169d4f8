//! What was read and not yet taken by a read: the bytes a delivery brought
//! (native backend) or the SDK read ahead (WASI backend), and the end of the
//! stream after them.

/// The unread part of a delivery: `bytes[start..]` (an offset, so that reading
/// a big delivery in small pieces copies each byte once), and whether the
/// stream ends after them.
#[derive(Default)]
pub(crate) struct Unread {
    bytes: Vec<u8>,
    start: usize,
    /// The stream ends after these bytes.
    pub(crate) end: bool,
    /// A read returned that end.
    pub(crate) end_read: bool,
}

impl Unread {
    #[cfg_attr(feature = "wasi", allow(dead_code))] // the native backend's
    pub(crate) fn new(bytes: Vec<u8>, end: bool) -> Self {
        Unread { bytes, start: 0, end, end_read: false }
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// Nothing is left but the end of the stream.
    #[cfg_attr(feature = "wasi", allow(dead_code))] // the native backend's
    pub(crate) fn at_end(&self) -> bool {
        self.end && self.len() == 0
    }

    /// Up to `max` bytes (all without a limit) from the front.
    pub(crate) fn take(&mut self, max: Option<usize>) -> Vec<u8> {
        let n = max.map_or(self.len(), |max| max.min(self.len()));
        if n == self.len() && self.start == 0 {
            return std::mem::take(&mut self.bytes); // the whole delivery: no copy
        }
        let out = self.bytes[self.start..self.start + n].to_vec();
        self.start += n;
        out
    }

    /// Puts `bytes` (taken by a read that then failed) back in front.
    pub(crate) fn restore(&mut self, mut bytes: Vec<u8>) {
        bytes.extend_from_slice(&self.bytes[self.start..]);
        *self = Unread { bytes, start: 0, end: self.end, end_read: false };
    }

    /// Adds bytes that arrived after these (no copy when none are left).
    #[cfg_attr(not(feature = "wasi"), allow(dead_code))] // the WASI backend's
    pub(crate) fn append(&mut self, more: Vec<u8>) {
        if self.len() == 0 {
            self.bytes = more;
            self.start = 0;
        } else {
            self.bytes.extend_from_slice(&more);
        }
    }
}
