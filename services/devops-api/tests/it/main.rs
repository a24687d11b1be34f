//! devops-api end to end: the real server on port 0 against the throwaway PostgreSQL of
//! `make test` (`TEST_DATABASE_URL`), each test on a database of its own.

mod helpers;

mod access;
mod admin;
mod attacks;
mod hostile;
mod lifecycle;
mod safety;
mod upgrade;
