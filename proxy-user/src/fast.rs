//! Hash maps for the controller's indexes, which hold up to a million small keys taken from
//! the API server and the maps Sluice itself writes, never from packets: a fast hasher
//! instead of the standard one, whose flooding resistance is not needed here.

pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
