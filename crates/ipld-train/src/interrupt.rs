//! SIGINT and SIGTERM (issue 23): during training the first signal asks the loop to stop after
//! the step in progress, write a checkpoint and exit non-zero with the command that resumes; a
//! second signal, or one outside training (loading data, evaluating: nothing unsaved to lose),
//! exits at once with status 130. Only the binary installs the handler: a library user's
//! process keeps its own signal handling, and [`requested`] is then always false.

use std::sync::atomic::{AtomicU8, Ordering};

const AT_ONCE: u8 = 0;
const TRAINING: u8 = 1;
const REQUESTED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(AT_ONCE);

/// The exit status of an interrupted command (128 + SIGINT, as shells report it).
pub const EXIT_STATUS: u8 = 130;

/// Installs the process's SIGINT/SIGTERM handler (call once, from the binary).
pub fn install() -> Result<(), String> {
    ctrlc::set_handler(|| {
        let deferred = STATE
            .compare_exchange(TRAINING, REQUESTED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if deferred {
            eprintln!(
                "\ninterrupt: stopping after this step and writing a checkpoint \
                 (interrupt again to exit at once, without one)"
            );
        } else {
            crate::lock::release_all();
            eprintln!("\ninterrupted: exiting at once");
            std::process::exit(i32::from(EXIT_STATUS));
        }
    })
    .map_err(|e| format!("installing the interrupt handler: {e}"))
}

/// Whether a signal asked training to stop.
pub fn requested() -> bool {
    STATE.load(Ordering::SeqCst) == REQUESTED
}

/// Defers signals to the training loop until dropped: the loop polls [`requested`].
pub struct TrainingGuard(());

impl TrainingGuard {
    /// Signals from now on stop training after the current step.
    pub fn new() -> Self {
        let _ = STATE.compare_exchange(AT_ONCE, TRAINING, Ordering::SeqCst, Ordering::SeqCst);
        Self(())
    }
}

impl Default for TrainingGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TrainingGuard {
    fn drop(&mut self) {
        // A request already made stays visible to the caller; otherwise signals exit at once.
        let _ = STATE.compare_exchange(TRAINING, AT_ONCE, Ordering::SeqCst, Ordering::SeqCst);
    }
}
