//! Docker Hub webhook bodies from the network: the parser must never panic, and what it
//! accepts must pass the same validation the loader relies on.
#![no_main]
use imagewolf_agent::notification::{parse_hub_webhook, validate_image_ref};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for hub in ["docker.io", "mirror.local:5000"] {
        if let Ok(push) = parse_hub_webhook(data, hub) {
            assert!(validate_image_ref(&push.image).is_ok(), "{push:?}");
            let _ = push.image.pull_reference();
        }
    }
});
