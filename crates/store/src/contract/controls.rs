//! The contract of promote and abort requests: `put_control` (a later request replaces an
//! earlier one) and `take_control` (takes it once), per deployment.

use switchyard_engine::{Control, Store};

use crate::fixtures::deployment;

contract!(
    a_request_is_taken_once_and_a_later_one_replaces_it,
    requests_are_kept_per_deployment,
    a_request_for_an_unknown_deployment_is_an_error,
);

fn a_request_is_taken_once_and_a_later_one_replaces_it(store: &impl Store) {
    let id = store.begin(&deployment("web", "v2")).unwrap();
    assert_eq!(store.take_control(id).unwrap(), None);
    store.put_control(id, Control::Promote, 2).unwrap();
    store.put_control(id, Control::Abort, 3).unwrap();
    assert_eq!(store.take_control(id).unwrap(), Some(Control::Abort));
    assert_eq!(store.take_control(id).unwrap(), None, "taken once");
    store.put_control(id, Control::Promote, 4).unwrap();
    assert_eq!(store.take_control(id).unwrap(), Some(Control::Promote));
}

fn requests_are_kept_per_deployment(store: &impl Store) {
    let web = store.begin(&deployment("web", "v2")).unwrap();
    let api = store.begin(&deployment("api", "v2")).unwrap();
    store.put_control(web, Control::Abort, 1).unwrap();
    store.put_control(api, Control::Promote, 2).unwrap();
    assert_eq!(store.take_control(api).unwrap(), Some(Control::Promote));
    assert_eq!(store.take_control(api).unwrap(), None);
    assert_eq!(store.take_control(web).unwrap(), Some(Control::Abort));
    assert_eq!(
        store.take_control(api + 1).unwrap(),
        None,
        "unknown: nothing to take"
    );
}

/// Regression: MemStore kept a request for a deployment it never began; SQLite's foreign
/// key refuses it, so `switchyard promote 42` must fail on both.
fn a_request_for_an_unknown_deployment_is_an_error(store: &impl Store) {
    let id = store.begin(&deployment("web", "v2")).unwrap();
    assert!(store.put_control(id + 1, Control::Promote, 1).is_err());
    assert_eq!(store.take_control(id + 1).unwrap(), None);
}
