//! devops-api end to end.
