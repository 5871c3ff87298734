//! Server-sent-event streams of the daemon's live events.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::{LiveEvent, Shared};

/// A stream of the live events that `pick` keeps (it names the SSE event type). A slow reader is
/// told how many it missed; the stream ends when the daemon stops, so graceful shutdown never
/// waits on a follower.
pub fn live<F>(
    shared: &Shared,
    mut pick: F,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>>
where
    F: FnMut(&LiveEvent) -> Option<&'static str> + Send + 'static,
{
    let rx = shared.subscribe();
    let mut stop = shared.shutdown_signal();
    let events = BroadcastStream::new(rx).filter_map(move |item| match item {
        Ok(ev) => {
            pick(&ev).map(|name| Ok(SseEvent::default().event(name).data(ev.data.to_string())))
        }
        Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
            Some(Ok(SseEvent::default()
                .event("lagged")
                .data(json!({"missed": n}).to_string())))
        }
    });
    let events = futures_util::StreamExt::take_until(events, async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
