//! End-to-end tests: the real `aiaas` binary on an ephemeral port, real models, real HTTP.

mod audio;
mod common;
mod config;
mod embeddings;
mod errors;
mod files;
mod generation;
mod images;
mod inference;
mod lifecycle;
mod limits;
mod metrics;
mod openai_sdk;
mod openapi;
mod service;
mod tls;
mod usage;
