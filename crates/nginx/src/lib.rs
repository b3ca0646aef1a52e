//! switchyard's nginx router: everything that touches nginx.
//!
//! - [`templates`]: tera rendering of `templates/` into nginx files ([`Templates`]).
//! - [`stage`]: the [`Layout`] of an nginx's files, staged validation with `nginx -t`,
//!   atomic installs.
//! - [`router`]: [`NginxRouter`], the engine's `Router`: confirmed reloads and drain waits,
//!   or routing without reloads ([`routing`]: documents in nginx's shared memory).
//! - [`sites`]: which server a request reaches (listen, host name, path), from the claims
//!   recorded in the service files.
//! - [`managed`]: [`ManagedNginx`], an nginx switchyard starts with its own prefix.
//! - [`procs`] and [`control`]: the master's workers from `/proc`, the generation endpoint.

pub mod control;
pub mod managed;
pub mod procs;
pub mod router;
pub mod routing;
pub mod sites;
pub mod stage;
pub mod tailer;
pub mod templates;

pub use managed::ManagedNginx;
pub use router::NginxRouter;
pub use routing::Routing;
pub use stage::Layout;
pub use templates::Templates;
