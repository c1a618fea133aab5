//! Pipelined setup calls over a signed-on connection: many signed requests
//! in flight at once (up to a window), answers matched by request id. Used
//! for the owner's provisioning and the terminals' funding, outside the
//! measured window.
use std::time::Duration;

use anyhow::{anyhow, bail};
use cardd::client::AnyClient;
use cardd::crypto::sign_request;
use cardd::error::Refusal;
use cardd::pb::{self, client_message::Body, server_message, ClientMessage, ServerMessage};
use ed25519_dalek::SigningKey;
use futures::{SinkExt, StreamExt};
use prost::Message;

/// Request ids used by these calls start here, far from the ids the
/// [`AnyClient`] itself hands out for its own calls.
const FIRST_REQUEST_ID: u64 = 1 << 40;

/// Rounds of resending requests refused with TOO_MANY_IN_FLIGHT.
const RETRY_ROUNDS: usize = 5;

/// Sends every request in `requests` (signed with the client's key),
/// keeping up to `window` in flight, and returns the answers in the order
/// of `requests`. `progress` is called once per final answer. Fails if the
/// connection breaks or an answer takes longer than `timeout`.
///
/// A request refused with TOO_MANY_IN_FLIGHT changed nothing: it is sent
/// again (the same bytes), with a smaller window. The server can refuse so
/// even when the client never has more in flight than it allows: it frees
/// a request's slot only after queueing the answer, so the client may
/// read the answer and send the next request before the slot is free.
pub async fn pipeline(
    client: &mut AnyClient,
    requests: &[pb::Request],
    window: usize,
    timeout: Duration,
    mut progress: impl FnMut(),
) -> anyhow::Result<Vec<Result<pb::Reply, Refusal>>> {
    let busy = |a: &Result<pb::Reply, Refusal>| matches!(a, Err(r) if r.code == pb::ErrorCode::TooManyInFlight);
    let mut answers = pipeline_round(client, requests, window, timeout, &mut progress).await?;
    let mut window = window;
    for _ in 0..RETRY_ROUNDS {
        let again: Vec<usize> = (0..answers.len()).filter(|&i| busy(&answers[i])).collect();
        if again.is_empty() {
            break;
        }
        window = (window / 2).max(1);
        let subset: Vec<pb::Request> = again.iter().map(|&i| requests[i].clone()).collect();
        let retried = pipeline_round(client, &subset, window, timeout, &mut progress).await?;
        for (i, a) in again.into_iter().zip(retried) {
            answers[i] = a;
        }
    }
    Ok(answers)
}

async fn pipeline_round(
    client: &mut AnyClient,
    requests: &[pb::Request],
    window: usize,
    timeout: Duration,
    progress: &mut impl FnMut(),
) -> anyhow::Result<Vec<Result<pb::Reply, Refusal>>> {
    let window = window.max(1);
    let key = client.key().clone();
    let framed = client.framed();
    let mut answers: Vec<Option<Result<pb::Reply, Refusal>>> = vec![None; requests.len()];
    let mut next = 0usize;
    let mut in_flight = 0usize;
    let mut done = 0usize;
    while done < requests.len() {
        let mut fed = false;
        while in_flight < window && next < requests.len() {
            let request_id = FIRST_REQUEST_ID + next as u64;
            framed
                .feed(signed_frame(&key, request_id, &requests[next]))
                .await?;
            next += 1;
            in_flight += 1;
            fed = true;
        }
        if fed {
            SinkExt::<bytes::Bytes>::flush(framed).await?;
        }
        let frame = match tokio::time::timeout(timeout, framed.next()).await {
            Err(_) => bail!(
                "no answer within {timeout:?} ({done} of {} answered)",
                requests.len()
            ),
            Ok(None) => bail!(
                "the server closed the connection ({done} of {} answered)",
                requests.len()
            ),
            Ok(Some(Err(e))) => bail!("connection: {e}"),
            Ok(Some(Ok(frame))) => frame,
        };
        let (index, answer) = match_answer(&frame, &answers[..next])?;
        if !matches!(&answer, Err(r) if r.code == pb::ErrorCode::TooManyInFlight) {
            progress();
        }
        answers[index] = Some(answer);
        in_flight -= 1;
        done += 1;
    }
    Ok(answers
        .into_iter()
        .map(|a| a.expect("every request answered"))
        .collect())
}

/// A frame carrying `request` signed with `key`, under `request_id`.
fn signed_frame(key: &SigningKey, request_id: u64, request: &pb::Request) -> bytes::Bytes {
    let bytes = request.encode_to_vec();
    let signature = sign_request(key, &bytes);
    let msg = ClientMessage {
        request_id,
        body: Some(Body::Signed(pb::SignedRequest {
            request: bytes,
            signature,
        })),
    };
    bytes::Bytes::from(msg.encode_to_vec())
}

/// Decodes an answer and finds which of the requests sent so far (`sent`,
/// `None` while unanswered) it answers. An answer to no such request, or a
/// connection-level refusal, ends the round.
fn match_answer(
    frame: &[u8],
    sent: &[Option<Result<pb::Reply, Refusal>>],
) -> anyhow::Result<(usize, Result<pb::Reply, Refusal>)> {
    let msg = ServerMessage::decode(frame).map_err(|e| anyhow!("undecodable answer: {e}"))?;
    let index = msg
        .request_id
        .checked_sub(FIRST_REQUEST_ID)
        .and_then(|i| usize::try_from(i).ok())
        .filter(|i| *i < sent.len() && sent[*i].is_none());
    let Some(index) = index else {
        // Request id 0: a connection-level error (e.g. a frame refused).
        if let Some(server_message::Body::Error(e)) = msg.body {
            bail!("the server refused: {} ({})", error_name(e.code), e.message);
        }
        bail!("an answer to unknown request {}", msg.request_id);
    };
    let answer = match msg.body {
        Some(server_message::Body::Reply(r)) => Ok(r),
        Some(server_message::Body::Error(e)) => Err(Refusal::new(
            pb::ErrorCode::try_from(e.code).unwrap_or_default(),
            e.message,
        )),
        other => bail!("expected a reply, got {other:?}"),
    };
    Ok((index, answer))
}

/// The protocol name of an error code number.
pub fn error_name(code: i32) -> String {
    pb::ErrorCode::try_from(code)
        .map_or_else(|_| format!("ERROR_{code}"), |c| c.as_str_name().to_string())
}
