//! Whether a window is between dispatch and commit. A revoke waits here, so that the window
//! holding the revoked partitions is committed (or abandoned) before the next owner's recovery
//! scan reads the outputs: otherwise it could commit after that scan and be written twice.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct WindowGate {
    busy: Mutex<bool>,
    idle: Condvar,
}

/// Held by the window task; the gate opens when it is dropped, whatever the window's end.
pub struct InFlight(Arc<WindowGate>);

impl WindowGate {
    pub fn enter(self: &Arc<Self>) -> InFlight {
        *self.busy.lock().unwrap_or_else(|e| e.into_inner()) = true;
        InFlight(self.clone())
    }

    /// Waits until no window is in flight, at most `limit`; false if one still is.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            busy = self.idle.wait_timeout(busy, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.0.idle.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_waits_for_the_window_in_flight() {
        let gate = Arc::new(WindowGate::default());
        assert!(gate.wait_idle(Duration::ZERO));
        let in_flight = gate.enter();
        assert!(!gate.wait_idle(Duration::from_millis(20)));
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.wait_idle(Duration::from_secs(10)))
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(in_flight);
        assert!(waiter.join().unwrap());
    }
}
