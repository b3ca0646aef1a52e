//! `adopt` against the fakes: a running instance switchyard did not start becomes the live
//! version, the next deploy replaces it (stopped and kept, never removed), and every refusal
//! leaves the store and nginx as they were.

use super::*;
use crate::deploy::adopt::{Adoptee, ADOPT};

/// A container "started by hand": the fake runtime starts it, and adopt is told its id.
async fn by_hand(w: &World, version: &str) -> Adoptee {
    let spec = InstanceSpec {
        service: w.spec.name.clone(),
        version: v(version),
        color: Color::Blue,
        deployment: 0,
        replica: 0,
        source: w.spec.source_for(&v(version)),
        port: w.spec.port,
        env: Default::default(),
        host_port: Some(18080),
        container: Default::default(),
        secrets: Default::default(),
    };
    let started = w.runtime.start(&spec).await.unwrap();
    Adoptee {
        id: started.id,
        name: "springboot1".into(),
        version: v(version),
        host_port: 18080,
    }
}

fn one_replica() -> World {
    let mut w = World::new();
    w.spec.replicas = 1;
    w
}

#[tokio::test(start_paused = true)]
async fn adopted_container_is_live_and_the_next_deploy_replaces_it() {
    let w = one_replica();
    let adoptee = by_hand(&w, "v1").await;
    let report = w.deployer().adopt(&w.spec, &adoptee).await.unwrap();
    assert_eq!(report.addr.to_string(), "127.0.0.1:18080");
    w.assert_consistent("v1");
    let history = w.store.history(None, 10).unwrap();
    assert_eq!(history[0].strategy, ADOPT);
    assert_eq!(history[0].outcome, Outcome::Succeeded);
    let steps = w.journal_steps();
    assert!(
        steps.iter().position(|s| s == "journal serve")
            < steps.iter().position(|s| s == "journal routed"),
        "{steps:?}"
    );

    let before = w.shared.calls().len();
    w.deploy("v2").await.unwrap();
    w.assert_consistent("v2");
    let calls = &w.shared.calls()[before..];
    assert!(
        position(calls, "router.wait_drained") < position(calls, "runtime.stop springboot1"),
        "stopped only after the drain: {calls:#?}"
    );
    assert!(
        !calls.iter().any(|c| c == "runtime.remove springboot1"),
        "the adopted container is stopped and kept, not removed: {calls:#?}"
    );
    assert!(w.runtime.existing().contains(&adoptee.id));
    assert_eq!(w.retained_versions(), ["v1"], "kept for rollback");
}

#[tokio::test(start_paused = true)]
async fn rollback_restarts_the_adopted_container() {
    let w = one_replica();
    let adoptee = by_hand(&w, "v1").await;
    w.deployer().adopt(&w.spec, &adoptee).await.unwrap();
    w.deploy("v2").await.unwrap();
    w.deployer().rollback(&w.spec).await.unwrap();
    w.assert_consistent("v1");
    assert!(w.runtime.running().contains(&adoptee.id));
}

#[tokio::test(start_paused = true)]
async fn unhealthy_container_is_refused_and_nothing_is_recorded() {
    let w = one_replica();
    w.runtime.unhealthy.borrow_mut().insert("v1".into());
    let adoptee = by_hand(&w, "v1").await;
    let err = w.deployer().adopt(&w.spec, &adoptee).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("springboot1"), "{err}");
    assert_nothing_recorded(&w);
}

#[tokio::test(start_paused = true)]
async fn a_service_switchyard_runs_already_is_refused() {
    let w = one_replica();
    w.deploy("v1").await.unwrap();
    let adoptee = by_hand(&w, "v0").await;
    let err = w.deployer().adopt(&w.spec, &adoptee).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    assert!(err.to_string().contains("already runs v1"), "{err}");
    assert_eq!(w.store.history(None, 10).unwrap().len(), 1);
    w.assert_consistent_with_extra("v1", &adoptee.id);
}

#[tokio::test(start_paused = true)]
async fn nginx_refusing_fails_the_adoption_and_leaves_the_container_running() {
    let w = one_replica();
    let adoptee = by_hand(&w, "v1").await;
    w.router.reject_next.set(true);
    let err = w.deployer().adopt(&w.spec, &adoptee).await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let record = w.store.service(&w.spec.name).unwrap();
    assert!(record.active.is_none() && record.retained.is_empty());
    assert!(w.runtime.running().contains(&adoptee.id));
    assert!(w.store.unfinished(&w.spec.name).unwrap().is_none());
    assert!(w.store.lock(&w.spec.name).unwrap().is_none());
}

fn assert_nothing_recorded(w: &World) {
    assert!(w.store.history(None, 10).unwrap().is_empty());
    assert_eq!(
        w.store.service(&w.spec.name).unwrap(),
        ServiceRecord::default()
    );
    assert!(w.router.backends("web").is_empty());
    assert!(w.store.lock(&w.spec.name).unwrap().is_none());
}

impl World {
    /// [`World::assert_consistent`] with one more running instance nobody adopted.
    fn assert_consistent_with_extra(&self, version: &str, extra: &str) {
        assert_eq!(self.live_versions(), [version]);
        assert!(self.runtime.running().contains(extra));
        assert_eq!(self.runtime.running().len(), 2);
    }
}

/// An adoption killed after each of its journal writes, then `deploy v2`: v2 ends up live
/// and consistent, and the adopted container is never removed (at most stopped and kept).
#[tokio::test(start_paused = true)]
async fn an_adoption_killed_anywhere_is_settled_by_the_next_deploy_without_removing_the_container()
{
    let writes = {
        let w = one_replica();
        let adoptee = by_hand(&w, "v1").await;
        w.deployer().adopt(&w.spec, &adoptee).await.unwrap();
        w.journal_steps().len()
    };
    assert!(writes >= 3, "instance_started, serve, routed");
    for n in 1..=writes {
        let w = one_replica();
        let adoptee = by_hand(&w, "v1").await;
        w.killed_during(n, w.deployer().adopt(&w.spec, &adoptee))
            .await;
        w.deploy("v2")
            .await
            .unwrap_or_else(|e| panic!("killed after write {n}: {e}"));
        w.assert_consistent("v2");
        assert!(
            w.runtime.existing().contains(&adoptee.id),
            "killed after write {n}: the adopted container is kept: {:#?}",
            w.shared.calls()
        );
    }
}

/// `retain` counts the adopted version like any other: two deploys later it is pruned, by
/// container id, as a retained slot past `retain` is.
#[tokio::test(start_paused = true)]
async fn the_adopted_container_is_pruned_past_retain_like_any_old_version() {
    let w = one_replica();
    let adoptee = by_hand(&w, "v1").await;
    w.deployer().adopt(&w.spec, &adoptee).await.unwrap();
    w.deploy("v2").await.unwrap();
    assert!(w.runtime.existing().contains(&adoptee.id));
    w.deploy("v3").await.unwrap();
    w.assert_consistent("v3");
    assert_eq!(w.retained_versions(), ["v2"], "retain = 1");
    assert!(
        !w.runtime.existing().contains(&adoptee.id),
        "pruned: {:#?}",
        w.shared.calls()
    );
}
