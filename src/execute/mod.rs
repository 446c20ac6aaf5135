//! Execution: `machine` is the life of one node (an item's first request, or a step) as a pure
//! `(state, event) -> (state, effects)`; `graph` the items' job graphs around it (which node
//! follows which, the results they read, the notifications taken, the actions due), with no
//! I/O; `backoff` turns the manifest's retry policy into delays;
//! `pace` is the adaptive send rate under the manifest's ceiling (slower when the provider
//! pushes back);
//! `store` is the redb checkpoint store; `runner` is the tokio loop around them (rate limiters,
//! group commit, notifications, provider adapters); `command` is `run`, `resume`, `status`,
//! `report`, `list` and `unlock`; `listener` serves the notification
//! listener's connections (idle, slow and surplus ones closed); `outlook` is what one `run` will send (its start line and
//! confirm prompt); `http` builds the HTTP client that reaches a provider (TLS, proxies) and puts
//! its failures into words; `secret` keeps a batch's own secret (keyed keys); `crash` holds the
//! crash points the crash tests use. The store, the lock and the secret raise typed errors
//! (`StoreError`, `LockError`, `SecretError`); `errors` is the one place that turns them, and
//! transport failures and provider refusals, into messages and exit codes.

pub mod backoff;
pub mod command;
pub mod crash;
pub mod errors;
pub mod fixed;
pub mod graph;
pub mod http;
pub mod listener;
pub mod lock;
pub mod machine;
pub mod outlook;
pub mod pace;
pub mod progress;
pub mod rows;
pub mod runner;
pub mod secret;
pub mod status;
pub mod store;
