//! The `[service.rolling]` table: [`RollingSpec`], for `strategy = "rolling"` and
//! `strategy = "in-place"`, merged field by field over the compiled-in preset
//! (`strategies/in-place.toml` for an in-place service, `strategies/rolling.toml` otherwise) and
//! validated with the same line-and-field errors as the rest of the config.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::presets::preset;
use super::raw::RawService;
use super::{Checker, StrategyKind};

/// How a rolling deploy replaces replicas, like a Kubernetes Deployment's rolling update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollingSpec {
    /// Replicas that may run above `replicas` while the rollout moves.
    pub max_surge: u16,
    /// Replicas that may be out of the upstream below `replicas` while the rollout moves.
    pub max_unavailable: u16,
    /// What a failed batch does.
    pub on_failure: OnFailure,
    /// In-place with one replica cannot avoid a gap; it runs only when this is set.
    pub allow_downtime: bool,
}

/// What a rolling deploy does when a batch fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Restore the replaced replicas to the previous version (the default).
    Rollback,
    /// Leave the service as it is, for `switchyard rollback` or `switchyard deploy` to finish.
    Pause,
}

impl OnFailure {
    pub fn parse(s: &str) -> Result<OnFailure, String> {
        match s {
            "rollback" => Ok(OnFailure::Rollback),
            "pause" => Ok(OnFailure::Pause),
            other => Err(format!(
                "unknown on_failure {other:?}: use \"rollback\" (restore the replaced replicas) or \"pause\" (leave the service for `switchyard rollback` or `switchyard deploy`)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Rollback => "rollback",
            OnFailure::Pause => "pause",
        }
    }
}

impl Default for RollingSpec {
    fn default() -> Self {
        RollingSpec {
            max_surge: 1,
            max_unavailable: 0,
            on_failure: OnFailure::Rollback,
            allow_downtime: false,
        }
    }
}

impl RollingSpec {
    /// The settings a deploy of `kind` uses: in-place never surges, so it must take at least
    /// one replica out at a time.
    pub fn for_kind(self, kind: super::StrategyKind) -> RollingSpec {
        match kind {
            super::StrategyKind::InPlace => RollingSpec {
                max_surge: 0,
                max_unavailable: self.max_unavailable.max(1),
                ..self
            },
            _ => self,
        }
    }
}

/// `[service.rolling]` as written, or a preset's `[rolling]` table.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRolling {
    max_surge: Option<Spanned<u16>>,
    max_unavailable: Option<Spanned<u16>>,
    on_failure: Option<Spanned<String>>,
    allow_downtime: Option<Spanned<bool>>,
}

impl RawRolling {
    /// The service's value where it set one, the preset's otherwise.
    pub(super) fn over(self, preset: RawRolling) -> RawRolling {
        RawRolling {
            max_surge: self.max_surge.or(preset.max_surge),
            max_unavailable: self.max_unavailable.or(preset.max_unavailable),
            on_failure: self.on_failure.or(preset.on_failure),
            allow_downtime: self.allow_downtime.or(preset.allow_downtime),
        }
    }
}

/// Where every `[service.rolling]` error points.
const F: &str = "service.rolling";

/// The rolling and in-place presets set every key (tested), so a merged value is always there.
const FULL: &str = "strategies/rolling.toml and in-place.toml set every [rolling] key";

/// One service's `[service.rolling]` merged over its preset, with where each value's errors
/// point.
struct Merged<'a> {
    /// The table as the service wrote it.
    user: &'a RawRolling,
    in_place: bool,
    max_surge: u16,
    max_unavailable: u16,
    allow_downtime: bool,
    preset_on_failure: String,
    /// Where to point when a value came from the preset: the service's replicas, then its
    /// strategy, then the service table itself.
    fallback: (Range<usize>, &'static str),
}

impl<'a> Merged<'a> {
    fn new(service: &'a Spanned<RawService>, strategy: Option<StrategyKind>) -> Merged<'a> {
        let s = service.get_ref();
        let user = &s.rolling;
        let in_place = strategy == Some(StrategyKind::InPlace);
        let preset_kind = if in_place {
            StrategyKind::InPlace
        } else {
            StrategyKind::Rolling
        };
        let preset = preset(preset_kind).rolling;
        let merged = user.clone().over(preset.clone());
        let value = |v: &Option<Spanned<u16>>| *v.as_ref().expect(FULL).get_ref();
        let fallback = match (&s.replicas, &s.strategy) {
            (Some(r), _) => (r.span(), "service.replicas"),
            (None, Some(k)) => (k.span(), "service.strategy"),
            (None, None) => (service.span(), "service"),
        };
        Merged {
            user,
            in_place,
            max_surge: value(&merged.max_surge),
            max_unavailable: value(&merged.max_unavailable),
            allow_downtime: *merged.allow_downtime.as_ref().expect(FULL).get_ref(),
            preset_on_failure: preset.on_failure.as_ref().expect(FULL).get_ref().clone(),
            fallback,
        }
    }

    /// The span and field of `name`: the service's own key if it set one, else the fallback.
    fn at<T>(&self, v: &Option<Spanned<T>>, name: &str) -> (Range<usize>, String) {
        match v {
            Some(v) => (v.span(), format!("{F}.{name}")),
            None => (self.fallback.0.clone(), self.fallback.1.to_owned()),
        }
    }
}

impl Checker<'_> {
    /// Resolves and validates `[service.rolling]` for a service whose `strategy` and `replicas`
    /// were already checked (`None` when they were invalid: the checks that need them are
    /// skipped). Errors point at the field the service set; a problem that comes from the preset
    /// points at the service's `replicas` or `strategy`.
    pub(super) fn rolling(
        &mut self,
        service: &Spanned<RawService>,
        strategy: Option<StrategyKind>,
        replicas: Option<u16>,
    ) -> RollingSpec {
        let m = Merged::new(service, strategy);
        self.rolling_moves(&m);
        if let Some(replicas) = replicas {
            self.rolling_within_replicas(&m, replicas);
        }
        let on_failure = match &m.user.on_failure {
            Some(o) => self
                .check(o, &format!("{F}.on_failure"), |o| OnFailure::parse(o))
                .unwrap_or(OnFailure::Rollback),
            None => {
                OnFailure::parse(&m.preset_on_failure).expect("preset values are valid (tested)")
            }
        };
        RollingSpec {
            max_surge: m.max_surge,
            max_unavailable: m.max_unavailable,
            on_failure,
            allow_downtime: m.allow_downtime,
        }
    }

    /// The rollout can replace a replica at all, and in-place does not surge.
    fn rolling_moves(&mut self, m: &Merged) {
        let user = m.user;
        if m.max_surge == 0 && m.max_unavailable == 0 {
            // Point at the one the service set; in-place must keep max_surge at 0, so its
            // max_unavailable is the one to raise.
            let (span, field) = match (&user.max_surge, &user.max_unavailable) {
                (Some(_), Some(_)) if m.in_place => m.at(&user.max_unavailable, "max_unavailable"),
                (Some(_), _) => m.at(&user.max_surge, "max_surge"),
                (None, _) => m.at(&user.max_unavailable, "max_unavailable"),
            };
            self.push(
                Some(span),
                &field,
                "max_surge and max_unavailable are both 0: the rollout could never replace a replica"
                    .into(),
            );
        }
        if m.in_place && m.max_surge != 0 {
            let (span, field) = m.at(&user.max_surge, "max_surge");
            self.push(
                Some(span),
                &field,
                "in-place runs with no extra capacity: max_surge must be 0 (use strategy = \"rolling\" to surge)"
                    .into(),
            );
        }
    }

    /// Neither bound exceeds `replicas`, and in-place with one replica accepts the downtime.
    fn rolling_within_replicas(&mut self, m: &Merged, replicas: u16) {
        let user = m.user;
        for (name, v, n) in [
            ("max_surge", &user.max_surge, m.max_surge),
            ("max_unavailable", &user.max_unavailable, m.max_unavailable),
        ] {
            if n > replicas {
                let (span, field) = m.at(v, name);
                self.push(
                    Some(span),
                    &field,
                    format!("{name} {n} is more than replicas ({replicas})"),
                );
            }
        }
        if m.in_place && replicas == 1 && !m.allow_downtime {
            let (span, field) = m.at(&user.allow_downtime, "allow_downtime");
            self.push(
                Some(span),
                &field,
                "in-place with 1 replica stops it before its replacement is up, so requests fail for the gap: set allow_downtime = true in [service.rolling] to accept that, or use strategy = \"rolling\" or \"blue-green\""
                    .into(),
            );
        }
    }
}
