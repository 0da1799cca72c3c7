//! Tracker inputs from the network: announce query strings (tracker side) and bencoded
//! announce replies (client side). Neither parser may panic on any input.
#![no_main]
use imagewolf_bt::tracker::{decode_response, AnnounceRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The same bytes as a reply body, as a raw query when they are UTF-8 (as hyper hands
    // URIs over), and lossily decoded (to reach the parser with arbitrary bytes mapped in).
    let _ = decode_response(data);
    if let Ok(query) = std::str::from_utf8(data) {
        let _ = AnnounceRequest::from_query(query);
    }
    let _ = AnnounceRequest::from_query(&String::from_utf8_lossy(data));
});
