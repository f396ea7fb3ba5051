//! Everything between the desired state and the kernel: the map layout (pure), the update
//! plan (pure), and the thin layers that load programs and write maps.

mod batch;
pub mod fallback;
pub mod layout;
mod link_detach;
pub mod loader;
pub mod maps;
pub mod plan;
pub mod probe;
pub mod settings;
pub mod snapshot;
mod sys;
pub mod trace;
