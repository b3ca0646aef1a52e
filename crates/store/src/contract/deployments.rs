//! The contract of deployments and their journals: `begin`, `journal`, `finish`,
//! `unfinished` (the newest running one, journal in order), `deployment` and `history`
//! (newest first, filtered by service, limited).

use switchyard_engine::{DeploymentRecord, Outcome, Step, Store};

use crate::fixtures::{deployment, instance, name, steps};

contract!(
    begin_journal_finish_round_trip,
    deployment_ids_increase,
    journal_seq_counts_per_deployment,
    unfinished_is_the_newest_running_deployment_with_its_journal,
    unfinished_of_a_service_with_none_running_is_none,
    an_unknown_deployment_is_none,
    finishing_an_unknown_deployment_is_an_error,
    journaling_to_an_unknown_deployment_is_an_error,
    history_is_newest_first_filtered_and_limited,
);

fn begin_journal_finish_round_trip(store: &impl Store) {
    let new = deployment("web", "v2");
    let id = store.begin(&new).unwrap();
    let steps = steps(&instance("c1", "web", "v2", id, 0, 4001));
    for (at, step) in steps.iter().enumerate() {
        store.journal(id, 10 + at as i64, step).unwrap();
    }

    let running = DeploymentRecord {
        id,
        service: new.service.clone(),
        kind: new.kind,
        strategy: new.strategy.clone(),
        from_version: new.from_version.clone(),
        to_version: new.to_version.clone(),
        color: new.color,
        who: new.who.clone(),
        started_ms: new.started_ms,
        finished_ms: None,
        outcome: Outcome::Running,
        message: String::new(),
    };
    let (record, journal) = store.deployment(id).unwrap().expect("recorded");
    assert_eq!(record, running);
    let read: Vec<(i64, i64, Step)> = journal
        .into_iter()
        .map(|e| (e.seq, e.at_ms, e.step))
        .collect();
    let written: Vec<(i64, i64, Step)> = (1..)
        .zip(10..)
        .zip(steps.iter().cloned())
        .map(|((seq, at), step)| (seq, at, step))
        .collect();
    assert_eq!(read, written);

    store
        .finish(id, 99, Outcome::Failed, "unhealthy: 503")
        .unwrap();
    let (record, journal) = store.deployment(id).unwrap().unwrap();
    let failed = DeploymentRecord {
        finished_ms: Some(99),
        outcome: Outcome::Failed,
        message: "unhealthy: 503".to_owned(),
        ..running
    };
    assert_eq!(record, failed);
    assert_eq!(journal.len(), steps.len());
}

fn deployment_ids_increase(store: &impl Store) {
    let ids: Vec<i64> = ["web", "api", "web"]
        .into_iter()
        .map(|s| store.begin(&deployment(s, "v1")).unwrap())
        .collect();
    assert!(ids[0] > 0, "{ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

fn journal_seq_counts_per_deployment(store: &impl Store) {
    let a = store.begin(&deployment("web", "v1")).unwrap();
    let b = store.begin(&deployment("api", "v1")).unwrap();
    store.journal(a, 1, &Step::WaitHealthy).unwrap();
    store.journal(a, 2, &Step::Drain).unwrap();
    store.journal(b, 3, &Step::OldStopped).unwrap();
    let (_, journal) = store.deployment(b).unwrap().unwrap();
    let read: Vec<(i64, &Step)> = journal.iter().map(|e| (e.seq, &e.step)).collect();
    assert_eq!(read, [(1, &Step::OldStopped)]);
}

fn unfinished_is_the_newest_running_deployment_with_its_journal(store: &impl Store) {
    let old = store.begin(&deployment("web", "v1")).unwrap();
    let newer = store.begin(&deployment("web", "v2")).unwrap();
    let done = store.begin(&deployment("web", "v3")).unwrap();
    store.begin(&deployment("api", "v9")).unwrap();
    store.journal(newer, 1, &Step::WaitHealthy).unwrap();
    store.journal(old, 2, &Step::Drain).unwrap();
    store.journal(newer, 3, &Step::OldStopped).unwrap();
    store.finish(done, 5, Outcome::Succeeded, "").unwrap();

    let (record, journal) = store.unfinished(&name("web")).unwrap().unwrap();
    assert_eq!(
        Some((record.clone(), journal.clone())),
        store.deployment(newer).unwrap()
    );
    assert_eq!(record.outcome, Outcome::Running);
    let steps: Vec<&Step> = journal.iter().map(|e| &e.step).collect();
    assert_eq!(steps, [&Step::WaitHealthy, &Step::OldStopped]);

    store.finish(newer, 6, Outcome::Failed, "x").unwrap();
    assert_eq!(store.unfinished(&name("web")).unwrap().unwrap().0.id, old);
}

fn unfinished_of_a_service_with_none_running_is_none(store: &impl Store) {
    assert_eq!(store.unfinished(&name("web")).unwrap(), None);
    let id = store.begin(&deployment("web", "v1")).unwrap();
    store.finish(id, 5, Outcome::Succeeded, "").unwrap();
    store.begin(&deployment("api", "v1")).unwrap();
    assert_eq!(store.unfinished(&name("web")).unwrap(), None);
}

/// Regression: MemStore indexed its deployments by `id - 1`, so id 0 panicked on the
/// subtraction instead of answering `None`.
fn an_unknown_deployment_is_none(store: &impl Store) {
    let id = store.begin(&deployment("web", "v1")).unwrap();
    for unknown in [0, -1, id + 1, i64::MAX] {
        assert_eq!(
            store.deployment(unknown).unwrap(),
            None,
            "deployment {unknown}"
        );
    }
}

/// Regression: MemStore panicked on the index instead of returning an error.
fn finishing_an_unknown_deployment_is_an_error(store: &impl Store) {
    let id = store.begin(&deployment("web", "v1")).unwrap();
    for unknown in [0, id + 1] {
        assert!(
            store.finish(unknown, 1, Outcome::Succeeded, "").is_err(),
            "deployment {unknown}"
        );
    }
    assert_eq!(
        store.deployment(id).unwrap().unwrap().0.outcome,
        Outcome::Running
    );
}

/// Regression: MemStore panicked on the index; SQLite's foreign key refuses the row.
fn journaling_to_an_unknown_deployment_is_an_error(store: &impl Store) {
    let id = store.begin(&deployment("web", "v1")).unwrap();
    for unknown in [0, id + 1] {
        assert!(
            store.journal(unknown, 1, &Step::Drain).is_err(),
            "deployment {unknown}"
        );
    }
    assert_eq!(store.deployment(id).unwrap().unwrap().1, []);
}

fn history_is_newest_first_filtered_and_limited(store: &impl Store) {
    let (mut web, mut all) = (Vec::new(), Vec::new());
    for v in ["v1", "v2", "v3"] {
        web.push(store.begin(&deployment("web", v)).unwrap());
        all.push(*web.last().unwrap());
        all.push(store.begin(&deployment("api", v)).unwrap());
    }
    web.reverse();
    all.reverse();
    let ids = |service: Option<&str>, limit: usize| -> Vec<i64> {
        let service = service.map(name);
        let records = store.history(service.as_ref(), limit).unwrap();
        records.into_iter().map(|r| r.id).collect()
    };
    assert_eq!(ids(Some("web"), 10), web);
    assert_eq!(ids(Some("web"), 2), web[..2]);
    assert_eq!(ids(None, 4), all[..4]);
    assert_eq!(ids(None, usize::MAX), all);
    assert!(ids(None, 0).is_empty());
    assert!(ids(Some("db"), 10).is_empty());
    let newest = store.history(None, 1).unwrap().remove(0);
    assert_eq!(
        Some(newest),
        store.deployment(all[0]).unwrap().map(|(d, _)| d)
    );
}
