//! Blue-green deploys killed after any journal write, then settled by the next `deploy` or
//! `rollback`, including after `activate`.

use super::*;

/// Number of journal writes in an uninterrupted v1 -> v2 deploy.
async fn journal_writes_in_a_deploy() -> usize {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    let before = w.journal_steps().len();
    w.deploy("v2").await.unwrap();
    w.journal_steps().len() - before
}

/// Kills the v1 -> v2 deploy after journal write `n`, then runs `next` in a new process.
async fn killed_then(n: usize, persist: bool, unhealthy_after_kill: bool) -> World {
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.shared.kill_after_journal(n, persist);
    let killed = tokio::time::timeout(Duration::from_secs(3600), w.deploy("v2")).await;
    assert!(
        w.shared.is_dead(),
        "step {n}: the kill switch fired ({killed:?})"
    );
    w.shared.revive();
    w.host.restart();
    if unhealthy_after_kill {
        w.runtime.unhealthy.borrow_mut().insert("v2".into());
    }
    w
}

#[tokio::test(start_paused = true)]
async fn a_deploy_killed_after_any_step_is_completed_by_the_next_deploy() {
    let steps = journal_writes_in_a_deploy().await;
    assert!(steps >= 10, "{steps}");
    for n in 1..=steps {
        for persist in [true, false] {
            let w = killed_then(n, persist, false).await;
            let status = w.store.unfinished(&w.spec.name).unwrap();
            assert!(
                status.is_some() || n == steps,
                "step {n}: status shows the interrupted deployment"
            );
            w.deploy("v2")
                .await
                .unwrap_or_else(|e| panic!("step {n} persist {persist}: {e}"));
            w.assert_consistent("v2");
            let history = w.store.history(None, 10).unwrap();
            assert!(
                history.iter().all(|d| d.outcome != Outcome::Running),
                "step {n}: {history:#?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_deploy_killed_after_any_step_is_settled_by_rollback() {
    // One resume for every strategy: `rollback` undoes the interrupted v1 -> v2 deploy
    // wherever it was killed (v1 is restored), and after a finished one goes back to v1.
    let steps = journal_writes_in_a_deploy().await;
    for n in 1..=steps {
        let w = killed_then(n, true, false).await;
        let report = w
            .deployer()
            .rollback(&w.spec)
            .await
            .unwrap_or_else(|e| panic!("step {n}: {e}"));
        assert_eq!(report.to.as_str(), "v1", "step {n}");
        w.assert_consistent("v1");
        let history = w.store.history(None, 10).unwrap();
        assert!(
            history.iter().all(|d| d.outcome != Outcome::Running),
            "step {n}: {history:#?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_routed_deploy_whose_new_slot_died_is_routed_back_on_resume() {
    let steps = journal_writes_in_a_deploy().await;
    for n in 1..=steps {
        let w = killed_then(n, true, true).await;
        let interrupted = w.store.unfinished(&w.spec.name).unwrap();
        let routed = interrupted
            .as_ref()
            .is_some_and(|(_, j)| j.iter().any(|e| e.step.name() == "serve"));
        let result = w.deploy("v3").await;
        assert!(result.is_ok(), "step {n}: {result:?}");
        w.assert_consistent("v3");
        if let Some((record, _)) = interrupted {
            let (after, _) = w.store.deployment(record.id).unwrap().unwrap();
            assert_eq!(after.outcome, Outcome::Failed, "step {n}");
            if routed {
                assert!(
                    after.message.contains("v1 was restored"),
                    "step {n}: {}",
                    after.message
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_deploy_killed_after_it_was_activated_is_finished_not_undone() {
    // Review finding: with v1 retained, deploying v3 prunes v1 after `activate`; a kill there
    // used to make the resume remove the live v3.
    let w = World::new();
    w.deploy("v1").await.unwrap();
    w.deploy("v2").await.unwrap();
    let before = w
        .shared
        .calls()
        .iter()
        .filter(|c| c.starts_with("journal"))
        .count();
    w.deploy("v3").await.unwrap();
    let steps = w
        .shared
        .calls()
        .iter()
        .filter(|c| c.starts_with("journal"))
        .count()
        - before;
    for n in 1..=steps {
        for unhealthy in [false, true] {
            let w = World::new();
            w.deploy("v1").await.unwrap();
            w.deploy("v2").await.unwrap();
            w.shared.kill_after_journal(n, true);
            let _ = tokio::time::timeout(Duration::from_secs(3600), w.deploy("v3")).await;
            assert!(w.shared.is_dead(), "step {n}");
            w.shared.revive();
            w.host.restart();
            if unhealthy {
                w.runtime.unhealthy.borrow_mut().insert("v3".into());
            }
            let record = w.store.service(&w.spec.name).unwrap();
            let activated = record.active.unwrap().version.as_str() == "v3";
            w.deploy("v4")
                .await
                .unwrap_or_else(|e| panic!("step {n} unhealthy {unhealthy}: {e}"));
            w.assert_consistent("v4");
            if activated {
                assert_eq!(
                    w.retained_versions(),
                    ["v3"],
                    "step {n}: the live v3 was kept, not removed"
                );
            }
        }
    }
}
