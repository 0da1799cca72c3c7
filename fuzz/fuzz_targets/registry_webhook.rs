//! Registry notification envelopes from the network: the parser must never panic, and every
//! push it accepts must pass the same validation the loader relies on.
#![no_main]
use imagewolf_agent::notification::{parse_registry_envelope_detailed, validate_image_ref};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for registry_override in [None, Some("10.77.0.1:5000")] {
        if let Ok(envelope) = parse_registry_envelope_detailed(data, registry_override) {
            for push in &envelope.pushes {
                assert!(validate_image_ref(&push.image).is_ok(), "{push:?}");
                let _ = push.image.pull_reference();
            }
        }
    }
});
