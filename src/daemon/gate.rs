//! How many windows are between dispatch and commit. A revoke waits here until none is, so
//! that the windows holding the revoked partitions are committed (or abandoned) before the next
//! owner's recovery scan reads the outputs: otherwise one could commit after that scan and be
//! written twice.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub(super) struct WindowGate {
    in_flight: Mutex<usize>,
    idle: Condvar,
}

/// Held by a window task; counted out when it is dropped, whatever the window's end.
pub(super) struct InFlight(Arc<WindowGate>);

impl WindowGate {
    pub(super) fn enter(self: &Arc<Self>) -> InFlight {
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        InFlight(self.clone())
    }

    /// Waits until no window is in flight, at most `limit`; false if one still is.
    pub(super) fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            in_flight = self.idle.wait_timeout(in_flight, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = self.0.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *in_flight = in_flight.saturating_sub(1);
        if *in_flight == 0 {
            self.0.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_waits_for_every_window_in_flight() {
        let gate = Arc::new(WindowGate::default());
        assert!(gate.wait_idle(Duration::ZERO));
        let first = gate.enter();
        let in_flight = gate.enter();
        drop(first);
        assert!(!gate.wait_idle(Duration::from_millis(20)), "one of two is still in flight");
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.wait_idle(Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(in_flight);
        assert!(waiter.join().unwrap());
    }
}
