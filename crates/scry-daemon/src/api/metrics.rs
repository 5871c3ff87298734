//! `GET /metrics`: the Prometheus exposition ([`crate::service::metrics`]). Behind the same
//! access check as every route: over TCP Prometheus sends the token
//! (`authorization: {credentials_file: $SCRY_HOME/token}` in its scrape config).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::{route, ApiError, Route};
use crate::service::metrics;
use crate::Shared;

pub(super) fn routes() -> Vec<Route> {
    vec![route(
        "/metrics",
        &[("GET", "metrics::exposition")],
        get(exposition),
    )]
}

async fn exposition(State(shared): State<Arc<Shared>>) -> Result<impl IntoResponse, ApiError> {
    let text = metrics::exposition(&shared).await?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text))
}
