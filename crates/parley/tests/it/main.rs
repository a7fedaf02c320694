//! Integration tests: the real server on 127.0.0.1:0, real clients (the library in-process and
//! the `parley` binary where the user's experience is the point). One file per feature.

mod support;

mod accounts;
mod bench;
mod chat;
mod cli;
mod conformance;
mod connection_limits;
mod downloads;
mod files;
mod files_private;
mod flood;
mod frames;
mod guesses;
mod history;
mod large_rooms;
mod leaving;
mod mailbox;
mod names;
mod private;
mod rooms;
mod scripts;
mod shutdown;
mod slow_client;
mod tls;
mod upload_limits;
mod uploads;
mod web;
