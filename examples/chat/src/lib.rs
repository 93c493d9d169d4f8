//! Chat: every line a client sends goes to all other connected clients.
//!
//! Shows the two things a shared instance gives a service: state shared by all
//! connections (the room), and connection handles kept beyond the callback that
//! received them (to write to other members later).

use std::cell::RefCell;
use std::collections::HashMap;

use portcullis_sdk::{Connection, Error, Service, export_service};

#[derive(Default)]
struct Chat {
    /// Everyone connected, by connection id: kept handles.
    members: RefCell<HashMap<u64, Connection>>,
    /// Bytes of a line not finished yet, per connection.
    partial: RefCell<HashMap<u64, Vec<u8>>>,
}

impl Service for Chat {
    async fn on_connect(&self, conn: &Connection) -> Result<(), Error> {
        self.members.borrow_mut().insert(conn.id(), conn.clone());
        Ok(())
    }

    async fn on_read_ready(&self, conn: &Connection) -> Result<(), Error> {
        let data = conn.read().await?;
        if data.is_empty() {
            return conn.close();
        }
        let lines = {
            let mut partial = self.partial.borrow_mut();
            let pending = partial.entry(conn.id()).or_default();
            pending.extend_from_slice(&data);
            complete_lines(pending)
        };
        if lines.is_empty() {
            return Ok(());
        }
        // Copy the recipients out first: writes await, and other callbacks may
        // change the room meanwhile.
        let others: Vec<Connection> =
            self.members.borrow().iter().filter(|(id, _)| **id != conn.id()).map(|(_, c)| c.clone()).collect();
        for other in others {
            // A member that left meanwhile is not this sender's problem.
            let _ = other.write_all(&lines).await;
        }
        Ok(())
    }

    async fn on_close(&self, conn: &Connection) {
        self.members.borrow_mut().remove(&conn.id());
        self.partial.borrow_mut().remove(&conn.id());
    }
}

/// Takes every complete line (through the last `\n`) out of `pending`.
fn complete_lines(pending: &mut Vec<u8>) -> Vec<u8> {
    match pending.iter().rposition(|&b| b == b'\n') {
        Some(end) => pending.drain(..=end).collect(),
        None => Vec::new(),
    }
}

export_service!(Chat);
