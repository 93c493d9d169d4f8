//! Chat: every line a client sends goes to all other connected clients.
//!
//! Shows the two things a shared instance gives a service: state shared by all
//! connections (the room), and connection handles kept beyond the callback that
//! received them (to write to other members later).
//!
//! And how to treat members that misbehave, so that one cannot stall the room:
//! - Each member has an **outbox** of at most [`OUTBOX_LIMIT`] bytes, written
//!   by a task of its own ([`portcullis_sdk::spawn`]): a sender never waits
//!   for a slow reader. A member whose outbox would overflow (it does not
//!   read, or reads slower than the room talks) is **disconnected**; the
//!   others keep receiving.
//! - A line longer than [`MAX_LINE`] bytes disconnects its sender (the
//!   partial line is held in memory until its newline).
//! - The room holds at most [`MAX_MEMBERS`]; a further connection is closed
//!   at once. With the two bounds above, what the room can hold is bounded
//!   by construction (256 × (64 KiB + 128 KiB) = 48 MiB, well inside the
//!   instance's 128 MiB, which a trap would take the whole room with), and
//!   a line costs at most 255 queue pushes.
//! - Each received byte is looked at once: only new bytes are searched for
//!   newlines.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use portcullis_sdk::{Connection, Error, Service, export_service};

/// The most bytes waiting to be written to one member.
pub const OUTBOX_LIMIT: usize = 128 * 1024;
/// The longest line a member may send, newline included.
pub const MAX_LINE: usize = 64 * 1024;
/// The most members at once.
pub const MAX_MEMBERS: usize = 256;

#[derive(Default)]
struct Chat {
    /// Everyone connected, by connection id.
    members: RefCell<HashMap<u64, Rc<Member>>>,
}

struct Member {
    conn: Connection,
    /// Bytes of a line not finished yet.
    partial: RefCell<Vec<u8>>,
    /// Lines waiting to be written to this member, shared with other outboxes.
    outbox: RefCell<VecDeque<Rc<[u8]>>>,
    queued: Cell<usize>,
    /// A task is writing the outbox.
    writing: Cell<bool>,
}

impl Service for Chat {
    async fn on_connect(&self, conn: &Connection) -> Result<(), Error> {
        if self.members.borrow().len() >= MAX_MEMBERS {
            portcullis_sdk::warn(&format!("chat: the room is full ({MAX_MEMBERS}); closing connection {}", conn.id()));
            return conn.close();
        }
        let member = Member {
            conn: conn.clone(),
            partial: RefCell::default(),
            outbox: RefCell::default(),
            queued: Cell::new(0),
            writing: Cell::new(false),
        };
        self.members.borrow_mut().insert(conn.id(), Rc::new(member));
        Ok(())
    }

    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?;
        if data.is_empty() {
            return conn.close();
        }
        let Some(sender) = self.members.borrow().get(&conn.id()).cloned() else {
            return conn.close();
        };
        let lines = match sender.complete_lines(&data) {
            Ok(lines) => lines,
            Err(why) => {
                portcullis_sdk::warn(&format!("chat: member {} {why}; disconnecting it", conn.id()));
                return conn.close();
            }
        };
        if let Some(lines) = lines {
            self.broadcast(conn.id(), lines.into());
        }
        Ok(())
    }

    async fn on_close(&self, conn: &Connection) {
        if let Some(member) = self.members.borrow_mut().remove(&conn.id()) {
            member.clear_outbox();
        }
    }
}

impl Chat {
    /// Queues `lines` for every member but their sender; never waits.
    fn broadcast(&self, from: u64, lines: Rc<[u8]>) {
        let others: Vec<Rc<Member>> =
            self.members.borrow().iter().filter(|(id, _)| **id != from).map(|(_, m)| m.clone()).collect();
        for member in others {
            member.send(lines.clone());
        }
    }
}

impl Member {
    /// Adds `data` to the partial line and takes out every complete line
    /// (through the last newline), or fails when a line is longer than
    /// [`MAX_LINE`]. Only `data` is searched.
    fn complete_lines(&self, data: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let mut partial = self.partial.borrow_mut();
        let mut line_start = -(partial.len() as isize);
        for (i, _) in data.iter().enumerate().filter(|(_, b)| **b == b'\n') {
            if (i as isize - line_start + 1) as usize > MAX_LINE {
                return Err(format!("sent a line over {MAX_LINE} bytes"));
            }
            line_start = i as isize + 1;
        }
        if data.len() as isize - line_start > MAX_LINE as isize {
            return Err(format!("sent a line over {MAX_LINE} bytes"));
        }
        if line_start <= 0 {
            // No newline in `data`: all of it is still one partial line.
            partial.extend_from_slice(data);
            return Ok(None);
        }
        let end = line_start as usize;
        let mut lines = std::mem::take(&mut *partial);
        lines.extend_from_slice(&data[..end]);
        partial.extend_from_slice(&data[end..]);
        Ok(Some(lines))
    }

    /// Empties the outbox (the member left or is being disconnected).
    fn clear_outbox(&self) {
        self.outbox.borrow_mut().clear();
        self.queued.set(0);
    }

    /// Queues `lines` for this member, starting its writer if none runs; a
    /// member whose outbox would pass [`OUTBOX_LIMIT`] is disconnected.
    fn send(self: Rc<Self>, lines: Rc<[u8]>) {
        if self.queued.get() + lines.len() > OUTBOX_LIMIT {
            portcullis_sdk::warn(&format!(
                "chat: member {} fell {OUTBOX_LIMIT} bytes behind; disconnecting it",
                self.conn.id()
            ));
            self.clear_outbox();
            let _ = self.conn.close();
            return;
        }
        self.queued.set(self.queued.get() + lines.len());
        self.outbox.borrow_mut().push_back(lines);
        if !self.writing.replace(true) {
            portcullis_sdk::spawn(self.write_outbox());
        }
    }

    /// Writes the outbox until it is empty, or until a write fails (the
    /// member left, or did not read for the host's write time-out).
    async fn write_outbox(self: Rc<Self>) {
        loop {
            let Some(lines) = self.outbox.borrow_mut().pop_front() else { break };
            let written = self.conn.write_all(&lines).await;
            // Not emptied meanwhile (a disconnect clears the outbox and its count).
            self.queued.set(self.queued.get().saturating_sub(lines.len()));
            if written.is_err() {
                self.clear_outbox();
                let _ = self.conn.close();
                break;
            }
        }
        self.writing.set(false);
    }
}

export_service!(Chat);
