//! switchyard's integration and end-to-end tests: one binary, one module per area.
//! Run with `cargo test --test tests`; areas needing nginx or Docker fail under `CI` when
//! the component is missing and skip loudly elsewhere.

mod support;

mod adopt;
mod api;
mod canary;
mod cli;
mod container;
mod contrib;
mod dashboard;
mod docker_down;
mod dynamic;
mod e2e;
mod evidence;
mod front;
mod hooks;
mod init;
mod nginx;
mod notify;
mod proxy;
mod registry;
mod rolling;
mod routing;
mod secrets;
mod serve;
mod serve_tls;
mod stream;
mod watch;
