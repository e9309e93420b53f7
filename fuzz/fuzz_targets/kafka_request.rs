//! A request frame as the Kafka listener reads it: the header, then the walk of the body
//! against the request's layout, then the decoder, which runs only on bodies the walk passed.
//! Libfuzzer's malloc limit turns any allocation sized from a count on the wire into a crash.

#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::{RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;
use libfuzzer_sys::fuzz_target;

#[path = "../../broker/src/kafka/shape/mod.rs"]
mod shape;

fuzz_target!(|data: &[u8]| {
    // The first byte picks one of the APIs the broker serves, the second its version within
    // the served range; the rest is the frame after the API key and version.
    let [pick, version, rest @ ..] = data else {
        return;
    };
    let Some((api, (min, max))) = shape::served().nth(usize::from(*pick) % shape::served().count())
    else {
        return;
    };
    let version = min + i16::from(*version) % (max - min + 1);
    let mut frame = Bytes::copy_from_slice(rest);
    let Ok(_header) = RequestHeader::decode(&mut frame, api.request_header_version(version)) else {
        return;
    };
    if shape::check(api, version, &frame).is_ok() {
        let _ = RequestKind::decode(api, &mut frame, version);
    }
});
