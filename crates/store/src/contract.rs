//! The contract of the engine's [`Store`] seam, run against both implementations: the real
//! [`SqliteStore`] and the engine's in-memory fake [`MemStore`], which every engine unit test
//! runs on. A behaviour the fake has and SQLite lacks would let engine tests pass against a
//! store that does not exist, so each behaviour is one function generic over `S: Store`,
//! and [`contract!`] makes a `#[test]` of it per store (`sqlite::…` and `mem::…`).
//!
//! SQLite is the reference. Outcomes are compared, never error texts: the fake words its
//! errors differently. The behaviours live by table: `locks`, `deployments` (with the
//! journal), `instances` (with `service` and `activate`) and `controls`.

use switchyard_engine::fakes::{MemStore, Shared};

use crate::SqliteStore;

/// For each behaviour `fn name(store: &impl Store)` in the calling module, a test
/// `sqlite::name` on a fresh in-memory SQLite database and `mem::name` on a fresh MemStore.
macro_rules! contract {
    ($($behaviour:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $behaviour() {
                    super::$behaviour(&$crate::contract::sqlite());
                }
            )*
        }
        mod mem {
            $(
                #[test]
                fn $behaviour() {
                    super::$behaviour(&$crate::contract::mem());
                }
            )*
        }
    };
}

mod controls;
mod deployments;
mod instances;
mod locks;

fn sqlite() -> SqliteStore {
    SqliteStore::open_in_memory().unwrap()
}

/// A MemStore with its own [`Shared`] kill switch, which no contract test ever trips.
fn mem() -> MemStore {
    MemStore::new(&Shared::new())
}

/// A copy of `value` changed by `change`.
fn with<T: Clone>(value: &T, change: impl FnOnce(&mut T)) -> T {
    let mut copy = value.clone();
    change(&mut copy);
    copy
}
