//! The strategy presets from `strategies/`, compiled in: [`Preset`] and [`preset`], which
//! supply the defaults a service may override.

use serde::Deserialize;

use super::canary::RawCanary;
use super::rolling::RawRolling;
use super::StrategyKind;

/// A strategy preset from `strategies/`, compiled in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Preset {
    #[allow(dead_code)]
    pub(super) kind: String,
    pub(super) retain: usize,
    pub(super) healthy_after: u32,
    pub(super) drain_timeout: String,
    #[serde(default)]
    pub(super) canary: RawCanary,
    #[serde(default)]
    pub(super) rolling: RawRolling,
}

pub(super) const BLUE_GREEN_PRESET: &str = include_str!("../../../../strategies/blue-green.toml");
pub(super) const CANARY_PRESET: &str = include_str!("../../../../strategies/canary.toml");
pub(super) const ROLLING_PRESET: &str = include_str!("../../../../strategies/rolling.toml");
pub(super) const IN_PLACE_PRESET: &str = include_str!("../../../../strategies/in-place.toml");

pub(super) fn preset(kind: StrategyKind) -> Preset {
    let text = match kind {
        StrategyKind::BlueGreen => BLUE_GREEN_PRESET,
        StrategyKind::Canary => CANARY_PRESET,
        StrategyKind::Rolling => ROLLING_PRESET,
        StrategyKind::InPlace => IN_PLACE_PRESET,
    };
    toml::from_str(text).expect("compiled-in strategy presets are valid (tested)")
}
