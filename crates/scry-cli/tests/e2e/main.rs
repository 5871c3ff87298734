//! End-to-end tests: the real `scry` binary against real Python processes, one module per
//! topic. Interpreters come from `SCRY_TEST_PYTHONS` (set by `scripts/test` to the test
//! matrix), else `python3`.

mod support;

mod attach;
mod attach_follow;
mod daemon;
mod debug;
mod demo;
mod discovery;
mod dump;
mod embedded;
mod faults;
mod garbage;
mod lines;
mod logs;
mod mcp;
mod metrics;
mod names;
pub mod probes;
mod ps_tree;
mod queries;
mod reap;
mod reliability;
mod security;
mod snapshots;
mod top;
mod trace;
mod web;
mod webdriver;
mod workflow;
