//! devops-api: declares tenant databases on PostgreSQL (spec `04-devops-api.md`).

pub mod auth;
pub mod catalog;
pub mod config;
pub mod names;
pub mod plan;
pub mod scram;
pub mod spec;
pub mod store;
pub mod tenants;
