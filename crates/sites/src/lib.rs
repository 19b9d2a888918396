//! fleetgate's site model, in one place for the config file, the registry, the admin API and
//! the CLI.
//!
//! Layers, each using only those before it: [`field`] (where an error is) and [`units`]
//! (durations, sizes) -> [`spec`] (the serde form, `[[site]]` in TOML and JSON alike) ->
//! [`validate`] (the rules, [`SiteSpec::validate`] -> [`Site`]) -> [`registry`] (registry sites
//! in the shared store, versions, conflicts) -> [`batch`] (many sites added at once).
//!
//! **Architecture invariant:** `sites` never imports `fleetgate` (nor reads config files,
//! the environment or signals); it reaches storage only through `store::Storage`.

pub mod batch;
pub mod field;
pub mod registry;
pub mod spec;
pub mod units;
pub mod validate;

pub use batch::{Checked, Created, Refused};
pub use field::{FieldError, FieldPath, Segment};
pub use registry::{Entry, OnDemandState, Registry, RegistryError, Source};
pub use spec::{
    HealthSpec, HstsSettingsSpec, HstsSpec, ProxySpec, RedirectSpec, RespondSpec, SiteSpec,
    SizeSpec, TlsFilesSpec, TlsSpec,
};
pub use units::{parse_duration, parse_size};
pub use validate::{MAX_NAMES_PER_CERT, Site, SiteAction, SiteEnv, TlsChoice, parse_key_type};
