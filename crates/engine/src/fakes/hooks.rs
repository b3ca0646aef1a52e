//! [`FakeHooks`]: hooks that run nothing, recording every call (in the shared call log as
//! `hooks.<point> <version> <replicas>`, and whole in `calls`); `failing` makes a point fail.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use super::Shared;
use crate::config::HookSpec;
use crate::model::HookPoint;
use crate::seams::*;

pub struct FakeHooks {
    shared: Rc<Shared>,
    /// Every call, in order.
    pub calls: RefCell<Vec<HookCall>>,
    /// Points whose hook fails (`exit 1`, printing `<point> broke`).
    pub failing: RefCell<BTreeSet<HookPoint>>,
}

impl FakeHooks {
    pub fn new(shared: &Rc<Shared>) -> FakeHooks {
        FakeHooks {
            shared: shared.clone(),
            calls: RefCell::default(),
            failing: RefCell::default(),
        }
    }

    /// The points called so far, in order.
    pub fn points(&self) -> Vec<HookPoint> {
        self.calls.borrow().iter().map(|c| c.hook).collect()
    }
}

impl Hooks for FakeHooks {
    fn run<'a>(&'a self, _: &'a HookSpec, call: &'a HookCall) -> HookFuture<'a> {
        Box::pin(async move {
            self.shared.alive().await;
            self.shared.record(format!(
                "hooks.{} {} {:?}",
                call.hook.as_str(),
                call.version,
                call.replicas
            ));
            self.calls.borrow_mut().push(call.clone());
            match self.failing.borrow().contains(&call.hook) {
                true => HookRun {
                    ok: false,
                    summary: "exit 1".into(),
                    output: format!("{} broke\n", call.hook.as_str()),
                },
                false => HookRun {
                    ok: true,
                    summary: "exit 0".into(),
                    output: "fine\n".into(),
                },
            }
        })
    }
}
