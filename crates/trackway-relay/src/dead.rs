//! `relay dead`: the dead letters, listed and requeued. A dead letter is the event as stored,
//! with the destination that refused it and the reason (the server's status and body).

use bytes::Bytes;

use crate::engine::{Engine as _, EngineError};
use crate::ingest::{CALL_HEADER, DESTINATIONS_HEADER, KEY_HEADER};
use crate::jetstream::JetStream;
use crate::worker::{DEAD_DESTINATION_HEADER, DEAD_MSG_ID_HEADER, DEAD_REASON_HEADER};

/// One dead letter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeadLetter {
    /// Its position in the dead-letter stream.
    pub sequence: u64,
    /// The destination that refused it.
    pub destination: String,
    /// Why.
    pub reason: String,
    /// The original message id.
    pub msg_id: String,
    /// The Segment call, for `alias` and `group`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// The stored event (JSON).
    #[serde(skip)]
    pub payload: Bytes,
}

/// The dead letters, of `destination` only if given, oldest first.
///
/// # Errors
/// JetStream unreachable, or the stream missing.
pub async fn list(js: &JetStream, destination: Option<&str>) -> Result<Vec<DeadLetter>, EngineError> {
    let mut stream = js.dead_stream().await?;
    let info = stream.info().await.map_err(|e| EngineError(format!("dead-letter stream info: {e}")))?.clone();
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        // A position whose letter was requeued (deleted) has nothing.
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        let header = |n: &str| m.headers.get(n).map(|v| v.as_str().to_owned());
        let letter = DeadLetter {
            sequence: seq,
            destination: header(DEAD_DESTINATION_HEADER).unwrap_or_default(),
            reason: header(DEAD_REASON_HEADER).unwrap_or_default(),
            msg_id: header(DEAD_MSG_ID_HEADER).unwrap_or_default(),
            call: header(CALL_HEADER),
            payload: m.payload.clone(),
        };
        if destination.is_none_or(|d| d == letter.destination) {
            out.push(letter);
        }
    }
    Ok(out)
}

/// Puts the dead letters (of `destination` only if given) back in the events stream for their
/// destination alone, then removes them from the dead letters. Returns how many.
///
/// # Errors
/// JetStream unreachable; letters requeued before the error stay requeued.
pub async fn requeue(js: &JetStream, destination: Option<&str>) -> Result<usize, EngineError> {
    let stream = js.dead_stream().await?;
    let mut n = 0;
    for letter in list(js, destination).await? {
        // A new id: the original is still inside the duplicate window and would be dropped.
        let msg_id = format!("requeue:{}:{}", letter.destination, letter.sequence);
        let mut headers = vec![(DESTINATIONS_HEADER, letter.destination.as_str()), (KEY_HEADER, "requeue")];
        if let Some(call) = &letter.call {
            headers.push((CALL_HEADER, call.as_str()));
        }
        // Back in the person's partition, behind what was appended since.
        let partition = crate::partition::partition_of(&letter.payload, js.nats().partition_count());
        let subject = js.nats().partition_subject(partition);
        js.append(&msg_id, &subject, &headers, letter.payload.clone()).await?;
        stream
            .delete_message(letter.sequence)
            .await
            .map_err(|e| EngineError(format!("removing dead letter {}: {e}", letter.sequence)))?;
        n += 1;
    }
    Ok(n)
}
