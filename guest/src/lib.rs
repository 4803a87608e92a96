//! The default sampler.
