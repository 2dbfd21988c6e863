//! The SQLite store's decoders on damaged or foreign bytes: a chunk's data row (events with
//! their JSON heads), a chunk's state row, and the stored JSON read back as an event.
//!
//! The format has no checksum (SQLite's pages carry none either), so a flipped bit inside a
//! head is not detectable; what is checked: decoding never panics; a decoded chunk re-encodes
//! to bytes that decode to the same events; a chunk cut short is refused, or (cut at an event
//! boundary) yields exactly the events before the cut; a state row decodes only when whole and
//! re-encodes to the same bytes; and a stored event that reads back and validates survives the
//! encoder and the store unchanged.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use trackway::destination::EventRecord;
use trackway::fuzzing::{ChunkEvent, decode_chunk, decode_chunk_state, encode_chunk, encode_chunk_state};
use trackway_fuzz::{EventFields, check_stored_round_trip};
use trackway_wire::{EventKind, MessageId, Properties, Timestamp};

#[derive(Arbitrary, Debug)]
enum Case {
    /// Any bytes as a data row (with any context JSON) and as a state row.
    Raw { context: Vec<u8>, data: Vec<u8> },
    /// A row the store wrote, then cut short or with one byte changed.
    Written { events: Vec<(u64, EventFields, i64)>, cut: Option<u16>, flip: Option<(u16, u8)> },
}

fn check_state(state: &[u8]) {
    match decode_chunk_state(state) {
        Some((entries, live)) => {
            assert!(state.len().is_multiple_of(16));
            assert_eq!(entries.len(), state.len() / 16);
            assert_eq!(live, entries.iter().filter(|(_, p)| *p != 0).count());
            assert_eq!(encode_chunk_state(&entries), state, "state row re-encodes differently");
        }
        None => assert!(!state.len().is_multiple_of(16), "a whole state row was refused"),
    }
}

/// Reads every decoded event back as a destination would; none may panic.
fn read_back(events: &[ChunkEvent], context: &[u8]) {
    for e in events {
        let record = match e.context {
            Some(_) => {
                EventRecord::from_head(e.seq, e.id, e.timestamp, e.head.clone(), Bytes::copy_from_slice(context))
            }
            None => EventRecord::new(e.seq, e.id, e.timestamp, e.head.clone()),
        };
        let _ = record.json_len();
        if let Ok(event) = record.event()
            && event.properties.validate().is_ok()
        {
            check_stored_round_trip(event);
        }
    }
}

fn check_data(data: &[u8], context: &[u8]) -> Option<Vec<ChunkEvent>> {
    let events = decode_chunk(data)?;
    let again = decode_chunk(&encode_chunk(&events)).expect("a re-encoded chunk decodes");
    assert_eq!(again, events, "re-encoding changed the events");
    if !data.is_empty() {
        assert!(decode_chunk(&data[..data.len() - 1]).is_none(), "a chunk one byte short decoded");
    }
    read_back(&events, context);
    Some(events)
}

fuzz_target!(|case: Case| match case {
    Case::Raw { context, data } => {
        check_data(&data, &context);
        check_state(&data);
    }
    Case::Written { events, cut, flip } => {
        let context = br#"{"library":"trackway","library_version":"0.1.0"}"#;
        let written: Vec<ChunkEvent> = events
            .iter()
            .take(16)
            .map(|(seq, fields, queued_at)| {
                let event = fields.event(Properties::new());
                let mut head = Vec::new();
                trackway_wire::encode_event_head(&event, &mut head).expect("no properties to refuse");
                ChunkEvent {
                    seq: *seq,
                    id: MessageId::new_v7(event.timestamp),
                    kind: EventKind::ALL[usize::from(fields.kind) % 4],
                    timestamp: event.timestamp,
                    queued_at: Timestamp::from_unix_millis(*queued_at),
                    context: Some(1),
                    head: head.into(),
                }
            })
            .collect();
        let mut data = encode_chunk(&written);
        assert_eq!(check_data(&data, context).as_deref(), Some(written.as_slice()), "a written chunk reads back");
        if let Some(cut) = cut {
            let cut = usize::from(cut) % (data.len() + 1);
            // Cut at an event boundary: exactly the events before it; anywhere else: refused.
            let boundaries: Vec<usize> = (0..=written.len()).map(|k| encode_chunk(&written[..k]).len()).collect();
            match check_data(&data[..cut], context) {
                Some(events) => {
                    let k = boundaries.iter().position(|b| *b == cut).expect("decoded a cut inside an event");
                    assert_eq!(events, written[..k], "a cut chunk gave other events");
                }
                None => assert!(!boundaries.contains(&cut), "a cut at an event boundary was refused"),
            }
        }
        if let Some((at, xor)) = flip
            && !data.is_empty()
        {
            let at = usize::from(at) % data.len();
            data[at] ^= xor;
            check_data(&data, context);
        }
    }
});
