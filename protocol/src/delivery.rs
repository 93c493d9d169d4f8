//! When a connection's `on_read_ready` runs: the delivery rule of the
//! portcullis WIT (interface `callbacks`), as one pure function.
//!
//! Each connection counts what happens on its read side: bytes (or the end,
//! or a failure) *arrived*, and the service *took* bytes (or the end). When a
//! callback begins, the dispatch keeps a [`Mark`] of both counters. The next
//! callback runs only once something is there to read *and* something
//! changed since that mark ([`next`]). So:
//!
//! - a service that returns without reading is not called again until more
//!   bytes come (it costs no CPU, however long the client waits);
//! - one that read part is called again at once for the rest;
//! - the end of the stream, and a failure, are delivered once each.
//!
//! The host (`host/src/net/tcp/delivery.rs`) and the SDK's WASI backend
//! (`guest-sdk/src/sys/wasi/tcp/mod.rs`) each count and read ahead their own way,
//! and both ask [`next`] what to do.

/// A connection's delivery counters, as they stand or as a callback found
/// them when it began.
///
/// ```
/// use portcullis_protocol::delivery::Mark;
/// let began = Mark::default();
/// let now = Mark { arrived: 1, taken: 0 };
/// assert_ne!(began, now, "something arrived since");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// Times bytes, the end of the stream or a failure arrived.
    pub arrived: u64,
    /// Times the service took bytes or the end.
    pub taken: u64,
}

/// How a connection's incoming stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// More may come.
    Open,
    /// The peer ended it (a FIN).
    Ended,
    /// It broke (a reset, an error).
    Failed,
}

/// What is waiting for the service on one connection's read side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSide {
    /// The counters now.
    pub mark: Mark,
    /// Bytes read ahead that the service has not taken.
    pub buffered: usize,
    /// How the incoming stream stands.
    pub stream: Stream,
    /// Whether the service has seen the end (or the failure): a read
    /// returned it or a delivery carried it, so it is no longer something to
    /// deliver.
    pub end_seen: bool,
    /// The service shut the connection for reading: nothing more comes.
    pub read_shut: bool,
}

/// What the dispatch does next (see [`next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Something is there and it is new since the mark: run `on_read_ready`.
    Deliver,
    /// Nothing new to deliver, and more may come: read on (unless the
    /// read-ahead is full: then wait until the service takes some).
    ReadOn,
    /// Nothing new to deliver, and nothing more comes (the stream ended or
    /// failed, or reading was shut): the read side is over; the connection
    /// ends when it is closed.
    ReadOver,
}

/// What a connection's wait for its next delivery ends in (after the waits
/// and reads [`next`] asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Run `on_read_ready`; the mark is where the counters stand now, to
    /// keep for the next wait.
    Deliver(Mark),
    /// The connection is over: run `on_close`.
    Closed,
}

/// The delivery rule: what to do, given the [`Mark`] taken when the last
/// callback began (`Mark::default()` before the first) and the read side now.
///
/// ```
/// use portcullis_protocol::delivery::{next, Mark, Next, ReadSide, Stream};
/// let began = Mark { arrived: 1, taken: 0 };
/// // The service returned without reading: nothing changed, nothing to do.
/// let untouched = ReadSide { mark: began, buffered: 5, stream: Stream::Open, end_seen: false, read_shut: false };
/// assert_eq!(next(began, &untouched), Next::ReadOn);
/// // More bytes arrived: deliver.
/// let more = ReadSide { mark: Mark { arrived: 2, taken: 0 }, buffered: 9, ..untouched };
/// assert_eq!(next(began, &more), Next::Deliver);
/// ```
pub fn next(began: Mark, now: &ReadSide) -> Next {
    let something_there = now.buffered > 0 || (now.stream != Stream::Open && !now.end_seen);
    if something_there && now.mark != began {
        Next::Deliver
    } else if now.stream != Stream::Open || now.read_shut {
        Next::ReadOver
    } else {
        Next::ReadOn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule, case by case: what the backends' own tests (the host's
    /// `net::tcp::delivery` and `tests/tcp_conformance.rs`, run on both
    /// backends) follow from.
    #[test]
    fn the_delivery_rule_table() {
        let began = Mark { arrived: 3, taken: 2 };
        let arrived = Mark { arrived: 4, taken: 2 };
        let took = Mark { arrived: 3, taken: 3 };
        let side =
            |mark, buffered, stream, end_seen, read_shut| ReadSide { mark, buffered, stream, end_seen, read_shut };
        use Next::*;
        use Stream::*;
        let table = [
            // (case, read side now, what to do)
            ("bytes arrived", side(arrived, 10, Open, false, false), Deliver),
            (
                "nothing changed: a callback that did not read is not called again",
                side(began, 10, Open, false, false),
                ReadOn,
            ),
            ("it took part, the rest waits: called again", side(took, 4, Open, false, false), Deliver),
            ("it took all: wait for more", side(took, 0, Open, false, false), ReadOn),
            ("nothing there, nothing new", side(began, 0, Open, false, false), ReadOn),
            ("the end arrived", side(arrived, 0, Ended, false, false), Deliver),
            ("the end arrived behind bytes", side(arrived, 6, Ended, false, false), Deliver),
            ("the end, given back untouched: not again", side(began, 0, Ended, false, false), ReadOver),
            ("the end read: over", side(took, 0, Ended, true, false), ReadOver),
            ("bytes left before an end it has read", side(took, 2, Ended, true, false), Deliver),
            ("a failure arrived", side(arrived, 0, Failed, false, false), Deliver),
            ("a failure it was told of and did not read", side(began, 0, Failed, false, false), ReadOver),
            ("reading shut, nothing new", side(began, 0, Open, false, true), ReadOver),
            ("reading shut with bytes it left", side(began, 5, Open, false, true), ReadOver),
        ];
        for (case, now, want) in table {
            assert_eq!(next(began, &now), want, "{case}");
        }
    }
}
