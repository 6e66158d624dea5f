//! End-to-end tests: the real `aiaas` binary on an ephemeral port, real models, real HTTP.

mod common;
mod config;
mod embeddings;
mod errors;
mod generation;
mod limits;
mod openai_sdk;
mod service;
mod usage;
