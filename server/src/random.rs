//! The system's random source, for what must not be guessed: resume
//! tokens (the core takes it as a [`RandomSource`], so that it reads no
//! device of its own).

use crate::core::RandomSource;

/// The kernel's random numbers, through ring.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRandom;

impl RandomSource for SystemRandom {
    fn fill(&self, bytes: &mut [u8]) {
        use ring::rand::SecureRandom;
        // The system's source does not fail once the process runs; if it
        // ever did, going on with predictable tokens would hand sessions
        // to whoever guesses them, so stop loudly instead.
        ring::rand::SystemRandom::new()
            .fill(bytes)
            .expect("the system random number generator failed");
    }
}
