//! devops-api: declares tenant databases on PostgreSQL (spec `04-devops-api.md`).

pub mod catalog;
pub mod names;
pub mod plan;
pub mod scram;
pub mod spec;
