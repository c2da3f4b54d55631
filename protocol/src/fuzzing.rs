//! What the `decode` fuzz target checks, here so that `cargo test` replays
//! its corpus with the same check.

use crate::{ClientToServer, DeviceToServer, ServerToClient, ServerToDevice};

/// Decodes, and if that succeeds, checks that the message re-encodes to
/// text that decodes to the same message.
macro_rules! round_trip {
    ($ty:ty, $text:expr) => {
        if let Ok(message) = <$ty>::decode($text) {
            let encoded = message.encode();
            match <$ty>::decode(&encoded) {
                Ok(again) if format!("{again:?}") == format!("{message:?}") => {}
                other => panic!("{encoded} decodes to {other:?}, not {message:?}"),
            }
        }
    };
}

/// Runs `data` through every decoder; panics on a broken round trip.
pub fn check_decoders(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    round_trip!(DeviceToServer, text);
    round_trip!(ClientToServer, text);
    round_trip!(ServerToDevice, text);
    round_trip!(ServerToClient, text);
}

#[cfg(test)]
mod tests {
    /// Every file of the `decode` fuzz corpus and its regressions replays
    /// clean.
    #[test]
    fn fuzz_corpus_replays() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut replayed = 0;
        for dir in ["corpus/decode", "regressions/decode"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("corpus entry").path();
                let data = std::fs::read(&path).expect("corpus file");
                super::check_decoders(&data);
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no corpus under {}", root.display());
    }
}
