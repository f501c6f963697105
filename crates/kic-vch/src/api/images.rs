//! Image routes: pull, list, inspect, tag, remove, history, load, save, login, system df.

use super::AppState;
use axum::Router;

pub fn routes() -> Router<AppState> {
    Router::new()
}
