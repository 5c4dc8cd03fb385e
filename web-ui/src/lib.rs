//! The Glimpse web page, embedded into the binary so that it works offline.
//!
//! Not built yet: the page arrives with the server issue (#4).
#![warn(missing_docs)]
