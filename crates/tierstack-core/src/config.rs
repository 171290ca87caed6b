//! Tier configuration: each backend's config type is the factory for its tier.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::tier::Tier;

/// What every tier is built with, besides its own config.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuildContext {
    /// The application's schema version. Shared tiers put it in their storage
    /// keys, so that two versions of a tool share one store side by side.
    pub schema_version: u32,
}

impl BuildContext {
    /// A context for `schema_version`.
    pub fn new(schema_version: u32) -> Self {
        Self { schema_version }
    }
}

/// A backend's configuration, deserialised from a config file by its `kind`
/// (`kind: memory`, `kind: sqlite`, …) and turned into a tier by `build`.
///
/// Implementations are `#[non_exhaustive]` structs with `serde(default,
/// deny_unknown_fields)`, whose `Debug` hides secrets; a backend registers its
/// `kind` with `#[typetag::serde(name = "...")]` on the impl.
#[typetag::serde(tag = "kind")]
#[async_trait]
pub trait TierConfig: fmt::Debug + Send + Sync {
    /// Builds the tier (opening files, connecting to servers).
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Tier>>;
}
